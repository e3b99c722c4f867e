// Stanza builder (to strings) and parser (DOMParser), with the namespaces kith
// speaks. Building never touches the DOM; parsing uses the browser's XML parser,
// which refuses malformed input instead of guessing.

export const NS = {
  CLIENT: 'jabber:client',
  FRAMING: 'urn:ietf:params:xml:ns:xmpp-framing',
  SASL: 'urn:ietf:params:xml:ns:xmpp-sasl',
  BIND: 'urn:ietf:params:xml:ns:xmpp-bind',
  STANZAS: 'urn:ietf:params:xml:ns:xmpp-stanzas',
  STREAMS: 'urn:ietf:params:xml:ns:xmpp-streams',
  SM: 'urn:xmpp:sm:3',
  ROSTER: 'jabber:iq:roster',
  LAST: 'jabber:iq:last',
  CARBONS: 'urn:xmpp:carbons:2',
  FORWARD: 'urn:xmpp:forward:0',
  DELAY: 'urn:xmpp:delay',
  SID: 'urn:xmpp:sid:0',
  RECEIPTS: 'urn:xmpp:receipts',
  MARKERS: 'urn:xmpp:chat-markers:0',
  CHATSTATES: 'http://jabber.org/protocol/chatstates',
  CORRECT: 'urn:xmpp:message-correct:0',
  RETRACT: 'urn:xmpp:message-retract:1',
  REACTIONS: 'urn:xmpp:reactions:0',
  REPLY: 'urn:xmpp:reply:0',
  FALLBACK: 'urn:xmpp:fallback:0',
  HINTS: 'urn:xmpp:hints',
  MAM: 'urn:xmpp:mam:2',
  RSM: 'http://jabber.org/protocol/rsm',
  DATA: 'jabber:x:data',
  GEOLOC: 'http://jabber.org/protocol/geoloc',
  VCARD: 'vcard-temp',
  BLOCKING: 'urn:xmpp:blocking',
  CSI: 'urn:xmpp:csi:0',
  PUSH: 'urn:xmpp:push:0',
  FULLTEXT: 'urn:xmpp:fulltext:0',
  OOB: 'jabber:x:oob',
  PUBSUB: 'http://jabber.org/protocol/pubsub',
  NICK: 'http://jabber.org/protocol/nick',
  VCARD4: 'urn:ietf:params:xml:ns:vcard-4.0',
  VCARD4_NODE: 'urn:xmpp:vcard4',
};

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
export const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

/** An element to serialise: x('message', {to, type: 'chat'}, x('body', {}, 'hi')). */
export class Builder {
  constructor(name, attrs = {}, children = []) {
    this.name = name;
    this.attrs = attrs;
    this.children = children;
  }
  c(child) { this.children.push(child); return this; }
  toString() {
    let out = '<' + this.name;
    for (const [k, v] of Object.entries(this.attrs)) {
      if (v !== undefined && v !== null) out += ` ${k}="${escape(v)}"`;
    }
    const kids = this.children.filter((c) => c !== undefined && c !== null && c !== false);
    if (!kids.length) return out + '/>';
    return out + '>' + kids.map((c) => (c instanceof Builder ? c.toString() : escape(c))).join('') + '</' + this.name + '>';
  }
}
const STANZAS = new Set(['message', 'presence', 'iq']);
/** Builds an element; stanzas get RFC 7395's explicit `jabber:client` namespace (§3.3.3). */
export const x = (name, attrs = {}, ...children) =>
  new Builder(name, STANZAS.has(name) && !attrs.xmlns ? { xmlns: NS.CLIENT, ...attrs } : attrs, children.flat());

/** A data form of type submit (XEP-0004) from {var: value} pairs. */
export function form(formType, fields) {
  return x('x', { xmlns: NS.DATA, type: 'submit' },
    x('field', { var: 'FORM_TYPE', type: 'hidden' }, x('value', {}, formType)),
    Object.entries(fields).filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => x('field', { var: k }, x('value', {}, v))));
}

const parser = new DOMParser();
/** One WebSocket frame (a single element) to a DOM Element, or null if malformed. */
export function parse(text) {
  const doc = parser.parseFromString(text, 'application/xml');
  if (doc.getElementsByTagName('parsererror').length) return null;
  return doc.documentElement;
}

/** The first child element with this local name (and namespace, if given). */
export function child(el, name, ns) {
  if (!el) return null;
  for (const c of el.children) {
    if (c.localName === name && (!ns || c.namespaceURI === ns)) return c;
  }
  return null;
}
export const children = (el, name, ns) =>
  el ? [...el.children].filter((c) => c.localName === name && (!ns || c.namespaceURI === ns)) : [];
export const childText = (el, name, ns) => child(el, name, ns)?.textContent ?? null;
export const bare = (jid) => (jid || '').split('/')[0];
export const domainOf = (jid) => bare(jid).split('@').pop();
export const localOf = (jid) => (bare(jid).includes('@') ? bare(jid).split('@')[0] : '');

/** A random id: UUID v4 where available. */
export const uid = () => (crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2) + Date.now().toString(36));

/** The stanza error condition of an <iq type='error'> etc. (RFC 6120 §8.3). */
export function errorCondition(el) {
  const err = child(el, 'error');
  if (!err) return null;
  for (const c of err.children) if (c.namespaceURI === NS.STANZAS && c.localName !== 'text') return c.localName;
  return 'undefined-condition';
}
