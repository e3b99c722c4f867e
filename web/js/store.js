// What the client keeps in the browser (localStorage, one origin):
//  - the session: JID, resource (so this browser stays the same XMPP device and
//    its inbox-log cursor catches up after a reload) and SCRAM keys, never the
//    password (see xmpp/scram.js);
//  - the outbox: messages typed but not yet acknowledged by the server, with
//    their origin-id, so they survive a reload or a dropped connection;
//  - small UI state: read marks per chat, theme, a chat-list snapshot for a fast
//    first paint;
//  - what was typed but not sent when this browser was signed out (its device
//    revoked): kept for the same account's next sign-in, dropped for another.
const KEY = 'kith.';

function load(name, fallback) {
  try {
    const raw = localStorage.getItem(KEY + name);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}
function save(name, value) {
  try {
    if (value === undefined || value === null) localStorage.removeItem(KEY + name);
    else localStorage.setItem(KEY + name, JSON.stringify(value));
  } catch (e) {
    console.warn('kith: storage is full or unavailable', e);
  }
}

export const session = {
  get: () => load('session', null),
  set: (s) => save('session', s),
  clear: () => {
    const keep = new Set([KEY + 'theme', KEY + 'unsent']);
    for (const k of Object.keys(localStorage)) if (k.startsWith(KEY) && !keep.has(k)) localStorage.removeItem(k);
  },
};

/** Messages not yet acknowledged by the server: [{id, to, xml, body, time, ...}]. */
export const outbox = {
  all: () => load('outbox', []),
  add(item) { save('outbox', [...outbox.all().filter((o) => o.id !== item.id), item]); },
  remove(ids) {
    const set = new Set(ids);
    save('outbox', outbox.all().filter((o) => !set.has(o.id)));
  },
};

export const prefs = {
  get: (name, fallback) => load('pref.' + name, fallback),
  set: (name, value) => save('pref.' + name, value),
};

/** The time of the last message the user has seen, per chat. */
export const readMarks = {
  get: (jid) => load('read', {})[jid] || 0,
  set(jid, time) {
    const all = load('read', {});
    if ((all[jid] || 0) >= time) return;
    all[jid] = time;
    save('read', all);
  },
};

export const snapshot = {
  get: () => load('chats', null),
  set: (chats) => save('chats', chats),
};

/**
 * Who confirmed our group messages (XEP-0333 markers are not in the room's
 * archive): {room: {stanzaId: {d: [occupant…], r: [occupant…]}}}, the newest
 * 200 messages per group.
 */
export const groupTicks = {
  get: (room) => load('gticks', {})[room] || {},
  update(room, entries) {
    if (!Object.keys(entries).length) return;
    const all = load('gticks', {});
    const kept = Object.assign(all[room] || {}, entries);
    const ids = Object.keys(kept);
    for (const id of ids.slice(0, Math.max(0, ids.length - 200))) delete kept[id];
    all[room] = kept;
    save('gticks', all);
  },
};

/** {jid, outbox, drafts} left when a session was signed out, for that account's next sign-in. */
export const unsent = {
  get: () => load('unsent', null),
  set: (value) => save('unsent', value),
  clear: () => save('unsent', null),
};

/** The groups this account is in, as far as this browser knows: {room: {name, nick, occupantId}}. */
export const groupList = {
  get: () => load('groups', {}),
  set: (groups) => save('groups', groups),
};
