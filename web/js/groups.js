// Groups on the wire: XEP-0045 rooms at conference.<domain> (kith creates a
// room a client enters as a members-only, persistent group, unlocked), plus
// kith's invite links (`urn:kith:group-invite:0`, features/muc/invite.rs).
// Pure stanza builders and readers; the model lives in app.js.
import { NS, x, child, children, childText, uid } from './xmpp/xml.js';

export const MUC = 'http://jabber.org/protocol/muc';
export const MUC_USER = 'http://jabber.org/protocol/muc#user';
export const MUC_ADMIN = 'http://jabber.org/protocol/muc#admin';
export const MUC_OWNER = 'http://jabber.org/protocol/muc#owner';
export const OCCUPANT_ID = 'urn:xmpp:occupant-id:0';
export const INVITE = 'urn:kith:group-invite:0';
export const CONFERENCE = 'jabber:x:conference';

/** The group service of this account's server (kith's `[muc] subdomain` default). */
export const serviceOf = (domain) => `conference.${domain}`;

/** A new group's address: a random local part on the service. */
export const newRoomJid = (domain) => `g${uid().replace(/-/g, '').slice(0, 16)}@${serviceOf(domain)}`;

/**
 * Entering a room (§7.2). Messages missed while away come from the inbox log,
 * so no discussion history is asked for (§7.2.15, maxstanzas='0').
 */
export const join = (room, nick) =>
  x('presence', { to: `${room}/${nick}` }, x('x', { xmlns: MUC }, x('history', { maxstanzas: '0' })));

/** §10.2: the owner's configuration form, only the given fields (kith keeps the rest). */
export function configure(room, fields) {
  return x('iq', { type: 'set', to: room }, x('query', { xmlns: MUC_OWNER },
    x('x', { xmlns: NS.DATA, type: 'submit' },
      x('field', { var: 'FORM_TYPE', type: 'hidden' }, x('value', {}, 'http://jabber.org/protocol/muc#roomconfig')),
      Object.entries(fields).map(([k, v]) => x('field', { var: `muc#roomconfig_${k}` }, x('value', {}, String(v)))))));
}

/** §9.3 / §10.3: sets a user's affiliation (member, admin, owner, none). */
export const setAffiliation = (room, jid, affiliation) =>
  x('iq', { type: 'set', to: room }, x('query', { xmlns: MUC_ADMIN }, x('item', { jid, affiliation })));

/** §9.5 / §10.5: the list of users with this affiliation. */
export const affiliationList = (room, affiliation) =>
  x('iq', { type: 'get', to: room }, x('query', { xmlns: MUC_ADMIN }, x('item', { affiliation })));

export const readAffiliations = (res) =>
  children(child(res, 'query', MUC_ADMIN), 'item').map((i) => ({
    jid: i.getAttribute('jid'), affiliation: i.getAttribute('affiliation'), nick: i.getAttribute('nick'),
  })).filter((i) => i.jid);

/** The room's name and whether it is an announcement group (moderated), from disco#info (§6.4, XEP-0128). */
export function readInfo(res) {
  const q = child(res, 'query', 'http://jabber.org/protocol/disco#info');
  const identity = child(q, 'identity');
  const fields = {};
  for (const f of children(child(q, 'x', NS.DATA), 'field')) fields[f.getAttribute('var')] = childText(f, 'value');
  const features = new Set(children(q, 'feature').map((f) => f.getAttribute('var')));
  return {
    name: fields['muc#roominfo_name'] || identity?.getAttribute('name') || '',
    announcement: features.has('muc_moderated'),
  };
}

export const infoQuery = (room) => x('iq', { type: 'get', to: room }, x('query', { xmlns: 'http://jabber.org/protocol/disco#info' }));

/** Our own presence in a room (status 110, §7.2.3): role, affiliation, occupant id. */
export function readSelfPresence(el) {
  const xu = child(el, 'x', MUC_USER);
  if (!xu) return null;
  const codes = new Set(children(xu, 'status').map((s) => s.getAttribute('code')));
  const item = child(xu, 'item');
  return {
    self: codes.has('110'),
    codes,
    role: item?.getAttribute('role') || 'none',
    affiliation: item?.getAttribute('affiliation') || 'none',
    jid: item?.getAttribute('jid') || null,
    occupantId: child(el, 'occupant-id', OCCUPANT_ID)?.getAttribute('id') || null,
  };
}

/** A mediated invitation (§7.8.2) or direct one (XEP-0249) in a message: the room's JID. */
export function invitedTo(el) {
  const xu = child(el, 'x', MUC_USER);
  if (xu && child(xu, 'invite')) return el.getAttribute('from')?.split('/')[0] || null;
  return child(el, 'x', CONFERENCE)?.getAttribute('jid') || null;
}

// ---- invite links (urn:kith:group-invite:0) ------------------------------------------------
export const linkCreate = (room) => x('iq', { type: 'set', to: room }, x('create', { xmlns: INVITE }));
export const linkList = (room) => x('iq', { type: 'get', to: room }, x('list', { xmlns: INVITE }));
export const linkRevoke = (room, token) => x('iq', { type: 'set', to: room }, x('revoke', { xmlns: INVITE, token }));
export const readLink = (inv) => inv && { token: inv.getAttribute('token'), url: inv.getAttribute('url'), revoked: inv.getAttribute('revoked') === 'true' };
export const readLinks = (res) => children(child(res, 'invites', INVITE), 'invite').map(readLink);
