// The client's model and protocol logic: chats, messages and their ticks,
// contacts and presence, history (MAM), the outbox. The UI (ui/*.js) renders
// from it and calls its methods; it emits 'change' {jid?} when something moved.
// Future modules (phone sign-in, linked devices, groups on MUC, media via
// HTTP upload, PEP profile) plug in beside it and speak their own protocols
// through the same Connection.
import { NS, x, form, child, children, childText, bare, uid, domainOf } from './xmpp/xml.js';
import * as groups from './groups.js';
import * as chat from './chat.js';
import { outbox, readMarks, snapshot, groupList, groupTicks } from './store.js';
import * as upload from './upload.js';

const TICKS = { pending: 0, sent: 1, delivered: 2, read: 3 };
// kith's privacy settings on the user's own account (features/privacy.rs): an
// IQ works for every kind of sign-in (the HTTP API needs a device credential).
const PRIVACY = 'urn:kith:privacy:0';
export const PRIVACY_DEFAULTS = { 'last-seen': 'everyone', 'profile-photo': 'everyone', about: 'everyone', 'read-receipts': true };
const PAGE = 40;

export class App extends EventTarget {
  constructor(conn) {
    super();
    this.conn = conn;
    this.me = conn.jid;
    this.chats = new Map();
    this.roster = new Map();
    this.blocked = new Set();
    this.effects = new Map(); // target id -> events that arrived before their message
    this.mamQueries = new Map();
    // Whether the server keeps an archive of 1:1 messages (XEP-0313): assumed
    // until it refuses the question. Groups keep theirs either way.
    this.archived = true;
    this.profile = { name: '', avatar: null };
    this.privacy = { ...PRIVACY_DEFAULTS };
    this.openJid = null;
    this.service = groups.serviceOf(domainOf(this.me));
    for (const [room, g] of Object.entries(groupList.get())) this.chat(room).group = { ...g, joined: false, role: 'none', affiliation: 'member' };
    for (const c of snapshot.get() || []) {
      const entry = this.chat(c.jid);
      Object.assign(entry, { name: c.name, preview: c.preview, activity: c.activity, snapshotUnread: c.unread });
    }
    conn.addEventListener('session', (e) => this.onSession(e.detail.resumed));
    conn.addEventListener('stanza', (e) => this.onStanza(e.detail.el));
    conn.addEventListener('acked', (e) => this.onAcked(e.detail.ids));
    conn.addEventListener('status', () => this.changed());
    document.addEventListener('visibilitychange', () => this.onVisibility());
  }

  changed(jid) { this.dispatchEvent(new CustomEvent('change', { detail: { jid } })); }

  chat(jid) {
    jid = bare(jid);
    let c = this.chats.get(jid);
    if (!c) {
      c = { jid, name: null, messages: [], byId: new Map(), complete: false, loadedHistory: false, olderCursor: '', activity: 0,
        typing: false, online: false, lastSeen: null, vcard: null, avatar: null };
      this.chats.set(jid, c);
    }
    return c;
  }

  displayName(jid) {
    const c = this.chats.get(jid);
    return this.roster.get(jid)?.name || c?.vcardName || c?.name || jid.split('@')[0];
  }

  // ---- session -------------------------------------------------------------------------
  async onSession(resumed) {
    if (!resumed) {
      this.conn.send(x('presence'));
      await Promise.allSettled([
        this.loadRoster(),
        this.conn.iq(x('iq', { type: 'set' }, x('enable', { xmlns: NS.CARBONS }))),
        this.loadBlocklist(),
        this.loadProfile(),
        this.loadPrivacy(),
        upload.discover(this.conn).then((service) => { this.upload = service; }, () => { this.upload = null; }),
      ]);
      await this.loadRecent().catch((e) => console.warn('kith: history unavailable', e));
      for (const c of this.chats.values()) if (c.group) this.joinGroup(c.jid);
    }
    await this.flushOutbox(!resumed);
    this.onVisibility();
    this.changed();
    if (!performance.getEntriesByName('kith:synced').length) performance.mark('kith:synced');
  }

  async loadRoster() {
    const res = await this.conn.iq(x('iq', { type: 'get' }, x('query', { xmlns: NS.ROSTER })));
    for (const item of children(child(res, 'query', NS.ROSTER), 'item')) this.rosterItem(item);
  }

  rosterItem(item) {
    const jid = bare(item.getAttribute('jid'));
    if (item.getAttribute('subscription') === 'remove') { this.roster.delete(jid); return; }
    this.roster.set(jid, { name: item.getAttribute('name'), subscription: item.getAttribute('subscription') });
    const c = this.chat(jid);
    if (!c.vcard) this.fetchVcard(jid);
  }

  async loadBlocklist() {
    const res = await this.conn.iq(x('iq', { type: 'get' }, x('blocklist', { xmlns: NS.BLOCKING })));
    this.blocked = new Set(children(child(res, 'blocklist', NS.BLOCKING), 'item').map((i) => i.getAttribute('jid')));
  }

  // ---- incoming ------------------------------------------------------------------------
  onStanza(el) {
    if (el.localName === 'iq') {
      const q = child(el, 'query', NS.ROSTER);
      if (q) for (const item of children(q, 'item')) this.rosterItem(item);
      this.changed();
      return;
    }
    if (el.localName === 'presence') return this.onPresence(el);
    if (el.localName !== 'message') return;
    const invited = el.getAttribute('type') !== 'error' && groups.invitedTo(el);
    if (invited && domainOf(invited) === this.service) return this.onAddedToGroup(invited, childText(el, 'body'));
    const result = child(el, 'result', NS.MAM);
    if (result) {
      const q = this.mamQueries.get(result.getAttribute('queryid'));
      const fwd = child(result, 'forwarded', NS.FORWARD);
      const inner = fwd && child(fwd, 'message');
      if (q && inner) q.push({ el: inner, stamp: child(fwd, 'delay', NS.DELAY)?.getAttribute('stamp'), archiveId: result.getAttribute('id') });
      return;
    }
    // XEP-0280 §9: only our own account may send carbons.
    const from = el.getAttribute('from');
    for (const kind of ['received', 'sent']) {
      const carbon = child(el, kind, NS.CARBONS);
      if (carbon) {
        if (from && bare(from) !== this.me) return;
        const inner = child(child(carbon, 'forwarded', NS.FORWARD), 'message');
        if (inner) this.apply(chat.read(inner, this.me, { mine: this.mine }), { live: true, carbon: true });
        return;
      }
    }
    if (el.getAttribute('type') === 'groupchat') return this.onGroupMessage(el);
    this.apply(chat.read(el, this.me, { mine: this.mine }), { live: true });
  }

  onPresence(el) {
    const from = bare(el.getAttribute('from'));
    if (domainOf(from) === this.service) return this.onGroupPresence(el);
    const type = el.getAttribute('type');
    if (!from || from === this.me) return;
    if (type === 'subscribe') {
      // WhatsApp-like: people you chat with see when you are online.
      this.conn.send(x('presence', { to: from, type: 'subscribed' }));
      if (!['both', 'to'].includes(this.roster.get(from)?.subscription)) this.conn.send(x('presence', { to: from, type: 'subscribe' }));
      return;
    }
    if (type && type !== 'unavailable') return;
    const c = this.chat(from);
    c.online = !type;
    if (type === 'unavailable') {
      // Last seen is what the server tells (XEP-0012, filtered by the contact's
      // privacy setting), never guessed from the presence alone.
      c.lastSeen = null;
      this.setTyping(c, null, false);
      this.lastSeen(from, Date.now());
    }
    this.changed(from);
  }

  /** Applies events read from stanzas to the model. */
  apply(events, { live = false, carbon = false } = {}) {
    const touched = new Set();
    for (const ev of events) {
      if (!ev.peer || ev.peer === this.me && !ev.outgoing) continue;
      const c = this.chat(ev.peer);
      touched.add(c.jid);
      switch (ev.kind) {
        case 'message': this.addMessage(c, ev, { live, carbon }); break;
        case 'state':
          if (!ev.outgoing && live) this.setTyping(c, ev.group ? ev.nick : null, ev.state === 'composing');
          break;
        case 'error': {
          const m = c.byId.get(ev.id);
          if (m && m.outgoing) m.error = ev.condition;
          break;
        }
        default: this.applyEffect(c, ev);
      }
    }
    for (const jid of touched) this.changed(jid);
  }

  /** Who is typing in a chat (XEP-0085): '' in a 1:1 chat, the nick in a group. */
  setTyping(c, who, on) {
    c.typers = c.typers || new Map();
    const key = who || '';
    clearTimeout(c.typers.get(key));
    c.typers.delete(key);
    if (on) c.typers.set(key, setTimeout(() => { this.setTyping(c, who, false); this.changed(c.jid); }, 30000));
    c.typing = c.typers.size > 0;
  }

  /** "typing…", or in a group "Alice is typing…". */
  typingText(c) {
    if (!c.typing) return '';
    const names = [...(c.typers?.keys() || [])].filter(Boolean);
    if (!c.group || !names.length) return 'typing…';
    return names.length === 1 ? `${names[0]} is typing…` : `${names.length} people are typing…`;
  }

  addMessage(c, ev, { live, carbon }) {
    const existing = ev.id && c.byId.get(ev.id);
    if (existing) {
      if (ev.stanzaId) existing.stanzaId = ev.stanzaId;
      this.restoreGroupTicks(c, existing);
      if (existing.state === 'pending' && ev.outgoing && !live) existing.state = 'sent';
      if (ev.retracted) { existing.retracted = true; existing.body = ''; }
      return;
    }
    const m = {
      id: ev.id || uid(), stanzaId: ev.stanzaId, from: ev.from, outgoing: ev.outgoing, body: ev.body,
      time: ev.time, nick: ev.outgoing ? null : ev.nick, replyTo: ev.replyTo, geo: ev.geo, media: ev.media || null, retracted: !!ev.retracted, edited: false,
      reactions: {}, state: ev.outgoing ? 'sent' : null,
    };
    c.byId.set(m.id, m);
    // keep time order; most arrivals go at the end
    let i = c.messages.length;
    while (i > 0 && c.messages[i - 1].time > m.time) i--;
    c.messages.splice(i, 0, m);
    this.restoreGroupTicks(c, m);
    if (m.time > c.activity) { c.activity = m.time; c.snapshotUnread = 0; c.preview = null; }
    for (const effect of this.effects.get(m.id) || []) this.applyEffect(c, effect);
    this.effects.delete(m.id);
    if (!ev.outgoing && live && !carbon) {
      if (ev.wantsReceipt && !ev.group) this.conn.send(chat.receipt(ev.peer, m.id, uid()));
      // A group message is confirmed to its sender with a XEP-0333 received
      // marker for the room's stanza id, which the room passes back to them.
      // Only occupants may write to the room (§7.4): after a catch-up it waits for the join.
      if (ev.group && ev.markable && m.stanzaId) {
        const send = () => this.conn.send(this.typed(c.jid, chat.marker(c.jid, m.stanzaId, uid(), 'received')));
        if (c.group?.joined) send(); else this.joinGroup(c.jid).then(send, () => {});
      }
      this.setTyping(c, ev.group ? ev.nick : null, false);
      if (ev.markable) m.markable = true;
      this.notify(c, m);
    } else if (!ev.outgoing && ev.markable) {
      m.markable = true;
    }
    if (this.openJid === c.jid) this.markRead(c.jid);
  }

  applyEffect(c, ev) {
    // Markers in a group name the room's stanza id (XEP-0333 §… / XEP-0359).
    const target = c.byId.get(ev.target) || (c.group ? c.messages.find((m) => m.stanzaId === ev.target) : null);
    if (!target) {
      const list = this.effects.get(ev.target) || [];
      list.push(ev);
      this.effects.set(ev.target, list);
      return;
    }
    switch (ev.kind) {
      case 'receipt':
        if (c.group && target.outgoing && !ev.outgoing) {
          this.groupReceipt(c, target, ev);
        } else if (target.outgoing && !ev.outgoing) {
          // XEP-0333 §3: a marker for a message covers the ones before it.
          for (const m of c.messages) {
            if (m.outgoing && m.time <= target.time && TICKS[m.state] < TICKS[ev.level]) m.state = ev.level;
          }
        } else if (!target.outgoing && ev.outgoing && ev.level === 'read') {
          readMarks.set(c.jid, target.time); // read on another of our devices
        }
        break;
      case 'edit':
        // XEP-0308 §5: only the original sender may correct a message.
        if (ev.from === target.from && !target.retracted) { target.body = ev.body; target.edited = true; }
        break;
      case 'retract':
        if (ev.from === target.from) { target.retracted = true; target.body = ''; target.geo = null; }
        break;
      case 'reactions':
        if (ev.emojis.length) target.reactions[ev.from] = ev.emojis;
        else delete target.reactions[ev.from];
        break;
      default:
    }
  }

  /**
   * A member's received/displayed marker for our group message: it covers our
   * earlier messages too. A message is ✓✓ once every other member has it and
   * read once every other member displayed it (WhatsApp's rule); until then it
   * stays ✓ and its label says how many have read it.
   */
  groupReceipt(c, target, ev) {
    const who = ev.from;
    const seen = {};
    for (const m of c.messages) {
      if (!m.outgoing || m.time > target.time || !m.stanzaId) continue;
      m.deliveredTo = m.deliveredTo || new Set();
      m.readBy = m.readBy || new Set();
      m.deliveredTo.add(who);
      if (ev.level === 'read') m.readBy.add(who);
      seen[m.stanzaId] = { d: [...m.deliveredTo], r: [...m.readBy] };
    }
    // Markers are not in the room's archive: the page remembers them for reloads.
    groupTicks.update(c.jid, seen);
    this.groupTickStates(c);
  }

  /** Each of our group messages' tick from who confirmed it and the member count. */
  groupTickStates(c) {
    // Without the member list nothing can be claimed beyond ✓.
    const others = c.group?.members?.length > 1 ? c.group.members.length - 1 : Infinity;
    for (const m of c.messages) {
      if (!m.outgoing || !m.readBy) continue;
      const level = m.readBy.size >= others ? 'read' : m.deliveredTo.size >= others ? 'delivered' : null;
      if (level && TICKS[m.state] < TICKS[level]) m.state = level;
      m.readCount = m.readBy.size;
    }
  }

  /** Who had confirmed this group message before a reload (groupTicks). */
  restoreGroupTicks(c, m) {
    const kept = c.group && m.outgoing && m.stanzaId && !m.readBy && groupTicks.get(c.jid)[m.stanzaId];
    if (!kept) return;
    m.deliveredTo = new Set(kept.d);
    m.readBy = new Set(kept.r);
    this.groupTickStates(c);
  }

  onAcked(ids) {
    outbox.remove(ids);
    for (const c of this.chats.values()) {
      let hit = false;
      for (const id of ids) {
        const m = c.byId.get(id);
        if (m && m.state === 'pending') { m.state = 'sent'; hit = true; }
      }
      if (hit) this.changed(c.jid);
    }
  }

  // ---- history (XEP-0313) ------------------------------------------------------------------
  async mam({ with: peer, room, before = '', max = PAGE, fulltext } = {}) {
    const queryid = uid();
    const items = [];
    this.mamQueries.set(queryid, items);
    try {
      // A group's history is the room's own archive (XEP-0313 §6, to the room).
      const fields = { with: room ? undefined : peer };
      if (fulltext) fields['{urn:xmpp:fulltext:0}fulltext'] = fulltext;
      const res = await this.conn.iq(x('iq', { type: 'set', to: room },
        x('query', { xmlns: NS.MAM, queryid }, form(NS.MAM, fields),
          x('set', { xmlns: NS.RSM }, x('max', {}, String(max)), x('before', {}, before)))));
      const fin = child(res, 'fin', NS.MAM);
      const set = child(fin, 'set', NS.RSM);
      return { items, complete: fin?.getAttribute('complete') === 'true', first: childText(set, 'first') };
    } catch (e) {
      // No archive on this server (`[archive] enabled = false`): nothing
      // before this browser's own messages can be fetched or searched.
      if (!room && e.condition === 'service-unavailable') this.archived = false;
      throw e;
    } finally {
      this.mamQueries.delete(queryid);
    }
  }

  applyArchived(items) {
    for (const it of items) this.apply(chat.read(it.el, this.me, { stamp: it.stamp, archiveId: it.archiveId, mine: this.mine }));
  }

  async loadRecent() {
    const page = await this.mam({ max: 100 });
    this.applyArchived(page.items);
    this.saveSnapshot();
  }

  async loadOlder(jid) {
    const c = this.chat(jid);
    if (c.complete || c.loading) return false;
    if (!c.group && !this.archived) {
      c.complete = true; // nothing to ask for: see `archived`
      this.changed(jid);
      return false;
    }
    c.loading = true;
    try {
      await this.conn.whenReady();
      // The page before the last one fetched (its RSM <first>; the newest page
      // first): a page of reactions, receipts or edits adds no message but
      // still moves the cursor back.
      const oldest = c.olderCursor;
      const page = await this.mam(c.group ? { room: jid, before: oldest } : { with: jid, before: oldest });
      this.applyArchived(page.items);
      c.loadedHistory = true;
      const moved = !!page.first && page.first !== oldest;
      if (moved) c.olderCursor = page.first;
      c.complete = page.complete || page.items.length === 0 || !moved;
      return moved;
    } catch (e) {
      return false; // offline or refused: the next scroll tries again
    } finally {
      c.loading = false;
      this.changed(jid);
    }
  }

  async search(text) {
    if (!this.archived) throw Object.assign(new Error('no archive'), { condition: 'service-unavailable' });
    const page = await this.mam({ fulltext: text, max: 20 });
    return page.items.map((it) => chat.read(it.el, this.me, { stamp: it.stamp, archiveId: it.archiveId, mine: this.mine }))
      .flat().filter((e) => e.kind === 'message' && e.body);
  }

  // ---- sending (the outbox) ------------------------------------------------------------------
  send(jid, body, { replyTo, geo, media } = {}) {
    const id = uid();
    const c = this.chat(jid);
    const reply = replyTo ? { id: replyTo.id, from: replyTo.outgoing ? this.me : c.group ? replyTo.from : jid, body: replyTo.body } : null;
    const stanza = this.typed(jid, chat.message({ id, to: jid, body, replyTo: reply, geo, media }));
    const m = { id, from: this.me, outgoing: true, body, time: Date.now(), state: 'pending', reactions: {},
      replyTo: reply ? { id: reply.id, quote: reply.body } : null, geo: geo || null, media: media || null, edited: false, retracted: false };
    c.byId.set(id, m);
    c.messages.push(m);
    c.activity = m.time;
    outbox.add({ id, to: jid, xml: String(stanza), time: m.time, body, reply: m.replyTo, geo: m.geo, media: m.media });
    const g = c.group;
    // Only occupants may write to a room (§7.4): a group message waits for the join.
    if (g && !g.joined) this.joinGroup(jid).then(() => { if (!this.conn.pending(id)) this.conn.send(stanza, id); }, () => {});
    else this.conn.send(stanza, id);
    this.changed(jid);
    return m;
  }

  /**
   * Sends what the outbox holds. After a fresh session (not a resumption) the
   * server may have stored a message whose ack we never got: the archive is
   * asked first, and a message already there (same origin-id) is not sent again;
   * a server without an archive gets the outbox as it is.
   */
  async flushOutbox(fresh) {
    let items = outbox.all();
    if (!items.length) return;
    for (const it of items) {
      const c = this.chat(it.to);
      if (!c.byId.has(it.id)) {
        const m = { id: it.id, from: this.me, outgoing: true, body: it.body, time: it.time, state: 'pending', reactions: {},
          replyTo: it.reply || null, geo: it.geo || null, media: it.media || null, edited: false, retracted: false };
        c.byId.set(it.id, m);
        c.messages.push(m);
        c.messages.sort((a, b) => a.time - b.time);
        c.activity = Math.max(c.activity, it.time);
      }
    }
    if (fresh) {
      const stored = new Set();
      for (const peer of new Set(items.map((i) => i.to))) {
        try {
          if (this.chat(peer).group) await this.joinGroup(peer);
          const page = await this.mam(this.chat(peer).group ? { room: peer, max: 50 } : { with: peer, max: 50 });
          for (const r of page.items) {
            const ev = chat.read(r.el, this.me, { stamp: r.stamp, archiveId: r.archiveId, mine: this.mine })[0];
            if (ev?.outgoing && ev.id) stored.add(ev.id);
          }
          this.applyArchived(page.items);
        } catch (e) {
          // A server without a 1:1 archive ([archive] enabled = false) says so:
          // send anyway (it still drops a resend whose origin-id is in the log).
          if (e.condition === 'service-unavailable') break;
          return; // no archive answer: try again on the next session
        }
      }
      outbox.remove([...stored]);
      this.onAcked([...stored]);
      items = outbox.all();
    }
    for (const it of items) {
      if (!this.conn.pending(it.id)) this.conn.send(it.xml, it.id);
    }
  }

  edit(jid, m, body) {
    m.body = body;
    m.edited = true;
    this.conn.send(this.typed(jid, chat.correction(jid, m.id, uid(), body)));
    this.changed(jid);
  }

  retract(jid, m) {
    m.retracted = true;
    m.body = '';
    m.geo = null;
    this.conn.send(this.typed(jid, chat.retraction(jid, m.id, uid())));
    this.changed(jid);
  }

  react(jid, m, emoji) {
    const mine = new Set(m.reactions[this.me] || []);
    if (mine.has(emoji)) mine.delete(emoji); else mine.add(emoji);
    if (mine.size) m.reactions[this.me] = [...mine]; else delete m.reactions[this.me];
    this.conn.send(this.typed(jid, chat.reactions(jid, m.id, uid(), [...mine])));
    this.changed(jid);
  }

  /** XEP-0085: to the contact, or to the room for a group (§5.5, never stored). */
  typing(jid, state) {
    const g = this.chat(jid).group;
    if (this.conn.ready && (!g || g.joined)) this.conn.send(this.typed(jid, chat.chatState(jid, state)));
  }

  shareLocation(jid) {
    return new Promise((resolve, reject) => {
      if (!navigator.geolocation) { reject(new Error('This browser cannot tell its location.')); return; }
      navigator.geolocation.getCurrentPosition((pos) => {
        const geo = { lat: pos.coords.latitude, lon: pos.coords.longitude, accuracy: pos.coords.accuracy };
        resolve(this.send(jid, chat.geoUri(geo), { geo }));
      }, (err) => reject(new Error(err.message || 'Location unavailable')), { timeout: 15000 });
    });
  }

  /** Uploads a file (XEP-0363) and sends its link; the message joins the outbox once uploaded. */
  async sendFile(jid, file, caption = '') {
    if (!this.upload) throw new Error('This server does not accept files.');
    const url = await upload.upload(this.conn, this.upload, file);
    const m = this.send(jid, url, { media: { url, name: file.name, size: file.size, type: file.type } });
    if (caption) this.send(jid, caption); // a caption goes as the next message, as body-is-URL clients expect
    return m;
  }

  // ---- groups (XEP-0045 rooms, groups.js) ----------------------------------------------------
  /** Messages to a group are of type groupchat and go to the room (§7.4). */
  typed(jid, stanza) {
    if (this.chat(jid).group) stanza.attrs.type = 'groupchat';
    return stanza;
  }

  /** Whether a room/nick (with its XEP-0421 occupant id) is this account. */
  mine = (room, nick, occupantId) => {
    const g = this.chats.get(room)?.group;
    if (!g) return false;
    return g.occupantId && occupantId ? g.occupantId === occupantId : nick === g.nick;
  };

  saveGroups() {
    const all = {};
    for (const c of this.chats.values()) {
      if (c.group) all[c.jid] = { name: c.name || '', nick: c.group.nick, occupantId: c.group.occupantId || null };
    }
    groupList.set(all);
  }

  myNick() {
    return (this.profile.name || this.me.split('@')[0]).slice(0, 40);
  }

  /** Enters the room; resolves once our own presence (status 110) arrives. */
  joinGroup(room) {
    const c = this.chat(room);
    if (!c.group) c.group = { nick: this.myNick(), joined: false, role: 'none', affiliation: 'member' };
    const g = c.group;
    if (!g.nick) g.nick = this.myNick();
    if (g.joined) return Promise.resolve(g);
    if (!g.joining) {
      g.joining = new Promise((resolve, reject) => {
        g.settle = { resolve, reject };
        setTimeout(() => reject(new Error('The group did not answer.')), 15000);
      });
      g.joining.catch(() => {}).finally(() => { g.joining = null; });
      this.conn.send(groups.join(room, g.nick));
      this.refreshGroupInfo(room);
      this.loadGroupMembers(room);
    }
    return g.joining;
  }

  onGroupPresence(el) {
    const room = bare(el.getAttribute('from'));
    const c = this.chats.get(room);
    if (!c?.group) return;
    const g = c.group;
    const full = el.getAttribute('from') || '';
    const nick = full.slice(full.indexOf('/') + 1);
    if (el.getAttribute('type') === 'error') {
      const condition = child(el, 'error') ? [...child(el, 'error').children][0]?.localName : 'error';
      if (condition === 'conflict' && !g.retried) {
        // §7.2.9: the nick is in use by someone else: try again with a suffix.
        g.retried = true;
        g.nick = `${this.myNick()} ${this.me.split('@')[0].slice(-4)}`;
        this.conn.send(groups.join(room, g.nick));
        return;
      }
      g.settle?.reject(new Error(condition === 'registration-required' || condition === 'forbidden'
        ? 'You are not a member of this group.' : `Could not open the group (${condition}).`));
      if (condition === 'registration-required' || condition === 'forbidden') this.leftGroup(room);
      return;
    }
    const self = groups.readSelfPresence(el);
    if (!self || !(self.self || nick === g.nick)) return;
    if (el.getAttribute('type') === 'unavailable') {
      g.joined = false;
      // §9.4 / §9.7: removed from the group (321 / 301) or the group was destroyed.
      if (self.codes.has('321') || self.codes.has('301') || child(child(el, 'x', groups.MUC_USER), 'destroy')) this.leftGroup(room);
      this.changed(room);
      return;
    }
    Object.assign(g, { joined: true, nick, role: self.role, affiliation: self.affiliation });
    if (self.occupantId) g.occupantId = self.occupantId;
    g.settle?.resolve(g);
    this.saveGroups();
    if (this.openJid === room) this.markRead(room); // a displayed marker waits for the join
    // The photo as it is now; later changes come with status 104 while we are in.
    this.fetchGroupAvatar(room);
    this.changed(room);
  }

  leftGroup(room) {
    const c = this.chat(room);
    if (!c.group) return;
    c.group.removed = true;
    c.group.joined = false;
    c.group.role = 'none';
    c.group.affiliation = 'none';
    this.changed(room);
  }

  async refreshGroupInfo(room) {
    try {
      const info = groups.readInfo(await this.conn.iq(groups.infoQuery(room)));
      const c = this.chat(room);
      // An unnamed room is shown by its local part: keep the name we know then.
      if (info.name && info.name !== room.split('@')[0]) c.name = info.name;
      c.group.announcement = info.announcement;
      this.saveGroups();
      this.changed(room);
    } catch { /* not a member (any more) */ }
  }

  /** The group's photo: the PHOTO of the room's vCard (XEP-0054 on the room, as XEP-0486 uses it). */
  async fetchGroupAvatar(room) {
    try {
      const card = this.parseVcard(await this.conn.iq(x('iq', { type: 'get', to: room }, x('vCard', { xmlns: NS.VCARD }))));
      const c = this.chat(room);
      if (c.avatar !== card.avatar) { c.avatar = card.avatar; this.changed(room); }
    } catch { /* no photo, or not a member */ }
  }

  /** Sets the group's photo (admins; the room tells occupants with status 104). */
  async setGroupAvatar(room, dataUrl) {
    const m = /^data:(image\/[a-z]+);base64,(.*)$/.exec(dataUrl || '');
    if (!m) throw new Error('That file is not an image this browser can read.');
    await this.conn.iq(x('iq', { type: 'set', to: room }, x('vCard', { xmlns: NS.VCARD },
      x('PHOTO', {}, x('TYPE', {}, m[1]), x('BINVAL', {}, m[2])))));
    this.chat(room).avatar = dataUrl;
    this.changed(room);
  }

  /** Who is in the group (for the group's ticks); refreshed on joining and on changes. */
  async loadGroupMembers(room) {
    const c = this.chat(room);
    try {
      const members = await this.groupMembers(room);
      if (c.group && members.length) {
        c.group.members = members.map((m) => m.jid);
        this.groupTickStates(c);
        this.changed(room);
      }
    } catch { /* not a member (any more) */ }
  }

  /** What an invite link opens (GET /api/v1/join/{token}): {jid, name}. */
  async invitePreview(token) {
    let res;
    try {
      res = await fetch(`/api/v1/join/${encodeURIComponent(token)}`, { headers: { Accept: 'application/json' } });
    } catch {
      throw new Error('The server cannot be reached.');
    }
    if (res.status === 404) throw new Error('This invite link does not exist (any more).');
    if (res.status === 410) throw new Error('This invite link was revoked. Ask a group admin for a new one.');
    if (!res.ok) throw new Error(`The invite link cannot be opened (HTTP ${res.status}).`);
    return res.json();
  }

  /** Joins a group through an invite link (`<redeem/>`, urn:kith:group-invite:0), then enters it. */
  async joinByLink(token, name) {
    let res;
    try {
      res = await this.conn.iq(x('iq', { type: 'set', to: this.service }, x('redeem', { xmlns: groups.INVITE, token })));
    } catch (e) {
      throw new Error({ forbidden: 'You cannot join this group (the link was revoked, or an admin removed you).',
        'item-not-found': 'This invite link does not exist (any more).', 'not-allowed': 'This group is full.' }[e.condition]
        || `Could not join the group (${e.condition || e.message}).`);
    }
    const room = bare(child(res, 'joined', groups.INVITE)?.getAttribute('room') || '');
    if (!room.includes('@')) throw new Error('The server did not say which group was joined.');
    const c = this.chat(room);
    if (!c.group || c.group.removed) c.group = { nick: this.myNick(), joined: false, role: 'none', affiliation: 'member' };
    if (name && !c.name) c.name = name;
    c.activity = Math.max(c.activity, Date.now());
    this.saveGroups();
    await this.joinGroup(room);
    this.changed(room);
    return c;
  }

  onGroupMessage(el) {
    const room = bare(el.getAttribute('from'));
    const c = this.chat(room);
    if (!c.group) {
      // A message from a group this browser did not know yet: we are a member.
      c.group = { nick: this.myNick(), joined: false, role: 'none', affiliation: 'member' };
      this.saveGroups();
      this.joinGroup(room).catch(() => {});
    }
    const subject = childText(el, 'subject');
    if (subject !== null && childText(el, 'body') === null) return;
    // §10.2.1 status 104: the group's name, settings or photo changed.
    const status = children(child(el, 'x', groups.MUC_USER), 'status').map((st) => st.getAttribute('code'));
    if (status.includes('104') && childText(el, 'body') === null) {
      this.refreshGroupInfo(room);
      this.fetchGroupAvatar(room);
      return;
    }
    this.apply(chat.read(el, this.me, { mine: this.mine }), { live: true });
  }

  onAddedToGroup(room, text) {
    const c = this.chat(room);
    const fresh = !c.group || c.group.removed;
    if (fresh) c.group = { nick: this.myNick(), joined: false, role: 'none', affiliation: 'member' };
    if (text && !c.messages.some((m) => m.system && m.body === text)) {
      const m = { id: uid(), from: room, outgoing: false, body: text, time: Date.now(), system: true, reactions: {} };
      c.byId.set(m.id, m);
      c.messages.push(m);
      c.activity = m.time;
    }
    this.saveGroups();
    this.joinGroup(room).catch(() => {});
    this.changed(room);
  }

  /** Creates a group named `name` with these members (WhatsApp-like: members-only, persistent). */
  async createGroup(name, members) {
    const room = groups.newRoomJid(domainOf(this.me));
    const c = this.chat(room);
    c.name = name;
    c.group = { nick: this.myNick(), joined: false, role: 'none', affiliation: 'owner' };
    await this.joinGroup(room);
    await this.conn.iq(groups.configure(room, { roomname: name }));
    c.name = name;
    for (const jid of members) await this.conn.iq(groups.setAffiliation(room, jid, 'member'));
    c.group.members = [this.me, ...members];
    c.activity = Date.now();
    this.saveGroups();
    this.changed(room);
    return c;
  }

  async groupMembers(room) {
    const lists = await Promise.all(['owner', 'admin', 'member'].map((a) =>
      this.conn.iq(groups.affiliationList(room, a)).then(groups.readAffiliations, () => [])));
    return lists.flat();
  }

  async setAffiliation(room, jid, affiliation) {
    await this.conn.iq(groups.setAffiliation(room, jid, affiliation));
    this.loadGroupMembers(room);
  }

  async setAnnouncement(room, on) {
    await this.conn.iq(groups.configure(room, { moderatedroom: on ? 1 : 0 }));
    await this.refreshGroupInfo(room);
  }

  async renameGroup(room, name) {
    await this.conn.iq(groups.configure(room, { roomname: name }));
    this.chat(room).name = name;
    this.saveGroups();
    this.changed(room);
  }

  async inviteLinks(room) { return groups.readLinks(await this.conn.iq(groups.linkList(room))); }
  async createInviteLink(room) {
    const res = await this.conn.iq(groups.linkCreate(room));
    return groups.readLink(child(res, 'invite', groups.INVITE));
  }
  async revokeInviteLink(room, token) { await this.conn.iq(groups.linkRevoke(room, token)); }

  /** Whether this account may write in the group (announcement groups: admins only). */
  maySend(room) {
    const g = this.chats.get(room)?.group;
    if (!g) return true;
    if (g.removed) return false;
    return !(g.joined && g.role === 'visitor');
  }

  // ---- read state --------------------------------------------------------------------------
  open(jid) {
    this.openJid = jid;
    if (jid) this.markRead(jid);
  }

  unread(c) {
    if (!c.messages.length) return c.snapshotUnread || 0;
    const mark = readMarks.get(c.jid);
    return c.messages.filter((m) => !m.outgoing && m.time > mark && !m.retracted).length;
  }

  /** Sends a displayed marker (XEP-0333) for the newest message the user sees. */
  markRead(jid) {
    if (document.visibilityState !== 'visible' || this.openJid !== jid) return;
    const c = this.chat(jid);
    const last = [...c.messages].reverse().find((m) => !m.outgoing && !m.retracted);
    if (!last) return;
    const before = readMarks.get(jid);
    readMarks.set(jid, last.time);
    if (last.markable && !last.markedRead && this.conn.ready && !c.group) {
      last.markedRead = true;
      this.conn.send(chat.marker(jid, last.id, uid()));
    } else if (last.markable && !last.markedRead && this.conn.ready && c.group?.joined && last.stanzaId) {
      // In a group the marker names the room's stanza id; the room passes it to
      // the sender only, and holds it back when either has read receipts off.
      last.markedRead = true;
      this.conn.send(this.typed(jid, chat.marker(jid, last.stanzaId, uid())));
    }
    if (before < last.time) this.changed(jid);
  }

  onVisibility() {
    const visible = document.visibilityState === 'visible';
    this.conn.setActive(visible);
    if (visible && this.openJid) this.markRead(this.openJid);
  }

  notify(c, m) {
    if (document.visibilityState === 'visible' && this.openJid === c.jid) return;
    if (typeof Notification === 'undefined' || Notification.permission !== 'granted') return;
    if (!this.notificationsOn) return;
    try { new Notification(this.displayName(c.jid), { body: m.body.slice(0, 120), tag: c.jid }); } catch { /* needs the SW on mobile */ }
  }

  // ---- contacts ----------------------------------------------------------------------------
  /**
   * Last seen (XEP-0012 to the bare JID): the server answers per the contact's
   * privacy setting and refuses (forbidden) when it is not for us. `atLeast`:
   * when an unavailable presence just arrived, they were online until then
   * (the server records the logout just after telling contacts).
   */
  async lastSeen(jid, atLeast = 0) {
    const c = this.chat(jid);
    if (c.online || c.group) return;
    try {
      await this.conn.whenReady();
      const res = await this.conn.iq(x('iq', { type: 'get', to: jid }, x('query', { xmlns: NS.LAST })));
      const secs = +child(res, 'query', NS.LAST)?.getAttribute('seconds');
      if (Number.isFinite(secs) && !c.online) c.lastSeen = Math.max(Date.now() - secs * 1000, atLeast);
    } catch (e) {
      // Hidden by privacy or not subscribed: show nothing.
      c.lastSeen = e.condition === 'item-not-found' && atLeast ? atLeast : null;
    }
    if (!c.online) this.changed(jid);
  }

  startChat(jid) {
    jid = bare(jid.trim()).toLowerCase();
    if (!/^[^@\s/]+@[^@\s/]+$/.test(jid)) throw new Error('Enter an address like alice@example.org');
    const c = this.chat(jid);
    if (!this.roster.has(jid)) {
      this.conn.iq(x('iq', { type: 'set' }, x('query', { xmlns: NS.ROSTER }, x('item', { jid })))).catch(() => {});
      this.conn.send(x('presence', { to: jid, type: 'subscribe' }));
    }
    if (!c.vcard) this.fetchVcard(jid);
    this.changed(jid);
    return c;
  }

  async setBlocked(jid, block) {
    await this.conn.iq(x('iq', { type: 'set' }, x(block ? 'block' : 'unblock', { xmlns: NS.BLOCKING }, x('item', { jid }))));
    if (block) this.blocked.add(jid); else this.blocked.delete(jid);
    this.changed(jid);
  }

  // ---- profile (vCard-temp, XEP-0054) -----------------------------------------------------------
  parseVcard(res) {
    const v = child(res, 'vCard', NS.VCARD);
    const photo = child(v, 'PHOTO');
    const type = childText(photo, 'TYPE') || 'image/jpeg';
    // Only plain base64 goes into the data: URL (and from there into CSS url("")).
    const binval = childText(photo, 'BINVAL')?.replace(/\s+/g, '');
    const safeBinval = binval && /^[A-Za-z0-9+/]+={0,2}$/.test(binval) ? binval : null;
    const safeType = /^image\/(png|jpeg|webp|gif)$/.test(type) ? type : 'image/jpeg';
    return { name: childText(v, 'FN') || childText(v, 'NICKNAME') || '', avatar: safeBinval ? `data:${safeType};base64,${safeBinval}` : null };
  }

  async fetchVcard(jid) {
    const c = this.chat(jid);
    c.vcard = 'loading';
    try {
      const card = this.parseVcard(await this.conn.iq(x('iq', { type: 'get', to: jid }, x('vCard', { xmlns: NS.VCARD }))));
      c.vcard = card;
      c.vcardName = card.name || null;
      c.avatar = card.avatar;
      this.changed(jid);
    } catch {
      c.vcard = { name: '', avatar: null };
    }
  }

  async loadProfile() {
    try {
      this.profile = this.parseVcard(await this.conn.iq(x('iq', { type: 'get' }, x('vCard', { xmlns: NS.VCARD }))));
    } catch { /* no vCard yet */ }
    this.profile.about = await this.fetchAbout(this.me).catch(() => '');
  }

  /** The privacy settings (urn:kith:privacy:0 on our own account). */
  async loadPrivacy() {
    const res = await this.conn.iq(x('iq', { type: 'get' }, x('privacy', { xmlns: PRIVACY })));
    this.privacy = readPrivacy(child(res, 'privacy', PRIVACY));
  }

  /** Changes some settings ({'last-seen': 'nobody'}, {'read-receipts': false}); the server keeps the rest. */
  async savePrivacy(changes) {
    const attrs = { xmlns: PRIVACY };
    for (const [k, v] of Object.entries(changes)) attrs[k] = String(v);
    await this.conn.iq(x('iq', { type: 'set' }, x('privacy', attrs)));
    this.privacy = { ...this.privacy, ...changes };
  }

  /** "About": the NOTE of the XEP-0292 vCard4 in PEP (features/profile.rs). */
  async fetchAbout(jid) {
    const res = await this.conn.iq(x('iq', { type: 'get', to: jid },
      x('pubsub', { xmlns: NS.PUBSUB }, x('items', { node: NS.VCARD4_NODE, max_items: '1' }))));
    const item = child(child(child(res, 'pubsub', NS.PUBSUB), 'items', NS.PUBSUB), 'item', NS.PUBSUB);
    return childText(child(child(item, 'vcard', NS.VCARD4), 'note', NS.VCARD4), 'text', NS.VCARD4) || '';
  }

  /**
   * Name and photo in vCard-temp (the server mirrors the photo into the PEP
   * avatar, XEP-0398), the name also as the PEP nick (XEP-0172), the about
   * text as the vCard4 NOTE (XEP-0292).
   */
  async saveProfile({ name, avatar, about = '' }) {
    const m = avatar && /^data:(image\/[a-z]+);base64,(.*)$/.exec(avatar);
    await this.conn.iq(x('iq', { type: 'set' }, x('vCard', { xmlns: NS.VCARD },
      x('FN', {}, name), x('NICKNAME', {}, name),
      m ? x('PHOTO', {}, x('TYPE', {}, m[1]), x('BINVAL', {}, m[2])) : null)));
    const publish = (node, payload) => this.conn.iq(x('iq', { type: 'set' },
      x('pubsub', { xmlns: NS.PUBSUB }, x('publish', { node }, x('item', { id: 'current' }, payload)))));
    if (name) await publish(NS.NICK, x('nick', { xmlns: NS.NICK }, name));
    await publish(NS.VCARD4_NODE, x('vcard', { xmlns: NS.VCARD4 }, x('fn', {}, x('text', {}, name)),
      about ? x('note', {}, x('text', {}, about)) : null));
    this.profile = { name, avatar, about };
    this.changed();
  }

  /** A few chat-list rows for the next page load to paint before connecting. */
  saveSnapshot() {
    const rows = this.sortedChats().slice(0, 50).map((c) => {
      const last = c.messages[c.messages.length - 1];
      return { jid: c.jid, name: this.displayName(c.jid), activity: c.activity, unread: this.unread(c),
        preview: last ? preview(last) : c.preview || '' };
    });
    snapshot.set(rows);
  }

  sortedChats() {
    return [...this.chats.values()]
      .filter((c) => c.messages.length || c.group || this.roster.has(c.jid) || c.preview || c.jid === this.openJid)
      .sort((a, b) => b.activity - a.activity || this.displayName(a.jid).localeCompare(this.displayName(b.jid)));
  }
}

function readPrivacy(el) {
  const out = { ...PRIVACY_DEFAULTS };
  if (!el) return out;
  for (const k of ['last-seen', 'profile-photo', 'about']) {
    const v = el.getAttribute(k);
    if (['everyone', 'contacts', 'nobody'].includes(v)) out[k] = v;
  }
  out['read-receipts'] = el.getAttribute('read-receipts') !== 'false';
  return out;
}

export function preview(m) {
  if (m.retracted) return 'This message was deleted';
  if (m.geo) return '📍 Location';
  if (m.media) return { image: '📷 Photo', video: '🎥 Video', audio: '🎤 Audio' }[upload.kindOf(m.media.url)] || `📄 ${upload.fileName(m.media.url)}`;
  return m.body || '';
}
