// 1:1 messaging on the wire: what the client sends and how it reads what
// arrives. Pure functions over stanzas, no UI and no connection.
//   XEP-0359 origin-id/stanza-id, 0184 receipts, 0333 markers, 0085 chat states,
//   0308 corrections, 0424 retraction, 0444 reactions, 0461 replies (+0428
//   fallback), 0080 geolocation, 0334 hints, 0066 out-of-band links (media).
import { NS, x, child, children, childText, bare } from './xmpp/xml.js';

/** A chat message; the id is both the stanza id and the origin-id. */
export function message({ id, to, body, replyTo, geo, media }) {
  let text = body;
  const extra = [];
  if (replyTo) {
    // XEP-0461 §2 + XEP-0428: a quote for clients without replies, marked as fallback.
    const quote = (replyTo.body || '').split('\n').map((l) => `> ${l}`).join('\n') + '\n';
    text = quote + body;
    extra.push(x('reply', { xmlns: NS.REPLY, to: replyTo.from, id: replyTo.id }));
    extra.push(x('fallback', { xmlns: NS.FALLBACK, for: NS.REPLY }, x('body', { start: 0, end: [...quote].length })));
  }
  if (geo) {
    extra.push(x('geoloc', { xmlns: NS.GEOLOC },
      x('lat', {}, String(geo.lat)), x('lon', {}, String(geo.lon)),
      geo.accuracy ? x('accuracy', {}, String(Math.round(geo.accuracy))) : null));
  }
  if (media) extra.push(x('x', { xmlns: NS.OOB }, x('url', {}, media.url)));
  if (media?.name) {
    // XEP-0447 §3 stateless file sharing, with XEP-0446 metadata, the URL as its source.
    extra.push(x('file-sharing', { xmlns: 'urn:xmpp:sfs:0', disposition: 'inline' },
      x('file', { xmlns: 'urn:xmpp:file:metadata:0' },
        media.type ? x('media-type', {}, media.type) : null,
        x('name', {}, media.name),
        Number.isFinite(media.size) ? x('size', {}, String(media.size)) : null),
      x('sources', {}, x('url-data', { xmlns: 'http://jabber.org/protocol/url-data', target: media.url }))));
  }
  return x('message', { to, type: 'chat', id },
    x('body', {}, text),
    x('origin-id', { xmlns: NS.SID, id }),
    x('request', { xmlns: NS.RECEIPTS }),
    x('markable', { xmlns: NS.MARKERS }),
    x('active', { xmlns: NS.CHATSTATES }),
    extra);
}

export const receipt = (to, id, newId) =>
  x('message', { to, id: newId }, x('received', { xmlns: NS.RECEIPTS, id }), x('store', { xmlns: NS.HINTS }));
export const marker = (to, id, newId, kind = 'displayed') =>
  x('message', { to, type: 'chat', id: newId }, x(kind, { xmlns: NS.MARKERS, id }), x('store', { xmlns: NS.HINTS }));
export const chatState = (to, state) =>
  x('message', { to, type: 'chat' }, x(state, { xmlns: NS.CHATSTATES }), x('no-store', { xmlns: NS.HINTS }));
export const correction = (to, id, newId, body) =>
  x('message', { to, type: 'chat', id: newId }, x('body', {}, body),
    x('origin-id', { xmlns: NS.SID, id: newId }), x('replace', { xmlns: NS.CORRECT, id }));
export const retraction = (to, id, newId) =>
  x('message', { to, type: 'chat', id: newId },
    x('retract', { xmlns: NS.RETRACT, id }),
    x('fallback', { xmlns: NS.FALLBACK, for: NS.RETRACT }),
    x('body', {}, 'This person attempted to delete a message; your client does not support that.'),
    x('origin-id', { xmlns: NS.SID, id: newId }), x('store', { xmlns: NS.HINTS }));
// XEP-0444 §3.2: the full set of this user's reactions replaces the previous one.
export const reactions = (to, id, newId, emojis) =>
  x('message', { to, type: 'chat', id: newId },
    x('reactions', { xmlns: NS.REACTIONS, id }, emojis.map((e) => x('reaction', {}, e))),
    x('store', { xmlns: NS.HINTS }));

/** geo: URI (RFC 5870) of a location, as the readable body of a location message. */
export const geoUri = (geo) => `geo:${geo.lat.toFixed(6)},${geo.lon.toFixed(6)}${geo.accuracy ? `;u=${Math.round(geo.accuracy)}` : ''}`;

export function parseGeo(el, body) {
  const g = child(el, 'geoloc', NS.GEOLOC);
  let lat = g ? parseFloat(childText(g, 'lat')) : NaN;
  let lon = g ? parseFloat(childText(g, 'lon')) : NaN;
  if ((Number.isNaN(lat) || Number.isNaN(lon)) && body) {
    const m = /^geo:(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)/.exec(body.trim());
    if (m) { lat = parseFloat(m[1]); lon = parseFloat(m[2]); }
  }
  if (Number.isNaN(lat) || Number.isNaN(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
  return { lat, lon };
}

/**
 * Reads one message stanza into a list of events for the model:
 * {kind: 'message'|'receipt'|'marker'|'state'|'edit'|'retract'|'reactions', ...}.
 * `own` is our bare JID, `stamp` a delay/archive time if known.
 */
export function read(el, own, { stamp, archiveId, mine } = {}) {
  let from = bare(el.getAttribute('from')) || own;
  const to = bare(el.getAttribute('to')) || own;
  let outgoing = from === own;
  let peer = outgoing ? to : from;
  let nick = null;
  const full = el.getAttribute('from') || '';
  if (el.getAttribute('type') === 'groupchat' && full.includes('/')) {
    // A group message (XEP-0045 §7.4) comes from room/nick: the chat is the room;
    // ours when the occupant id (XEP-0421) or nick is ours, else the occupant's.
    peer = bare(full);
    nick = full.slice(full.indexOf('/') + 1);
    outgoing = !!mine?.(peer, nick, child(el, 'occupant-id', 'urn:xmpp:occupant-id:0')?.getAttribute('id'));
    from = outgoing ? own : full;
  }
  const delay = child(el, 'delay', NS.DELAY)?.getAttribute('stamp');
  const time = Date.parse(stamp || delay || '') || Date.now();
  const stanzaId = archiveId || children(el, 'stanza-id', NS.SID).find((s) => s.getAttribute('by') === (nick !== null ? peer : own))?.getAttribute('id') || null;
  const id = child(el, 'origin-id', NS.SID)?.getAttribute('id') || el.getAttribute('id') || stanzaId;
  const base = { peer, outgoing, time, from, nick, group: nick !== null };
  const events = [];
  if (el.getAttribute('type') === 'error') return [{ ...base, kind: 'error', id, condition: child(el, 'error') ? [...child(el, 'error').children][0]?.localName : 'undefined-condition' }];
  const received = child(el, 'received', NS.RECEIPTS);
  if (received?.getAttribute('id')) events.push({ ...base, kind: 'receipt', target: received.getAttribute('id'), level: 'delivered' });
  for (const level of ['received', 'displayed', 'acknowledged']) {
    const m = child(el, level, NS.MARKERS);
    if (m?.getAttribute('id')) events.push({ ...base, kind: 'receipt', target: m.getAttribute('id'), level: level === 'received' ? 'delivered' : 'read' });
  }
  for (const state of ['active', 'composing', 'paused', 'inactive', 'gone']) {
    if (child(el, state, NS.CHATSTATES)) events.push({ ...base, kind: 'state', state });
  }
  const retract = child(el, 'retract', NS.RETRACT);
  if (retract?.getAttribute('id')) {
    events.push({ ...base, kind: 'retract', target: retract.getAttribute('id') });
    return events;
  }
  if (child(el, 'retracted', NS.RETRACT)) {
    events.push({ ...base, kind: 'message', id, stanzaId, body: '', retracted: true });
    return events;
  }
  const react = child(el, 'reactions', NS.REACTIONS);
  if (react?.getAttribute('id')) {
    events.push({ ...base, kind: 'reactions', target: react.getAttribute('id'), emojis: children(react, 'reaction').map((r) => r.textContent).filter(Boolean) });
  }
  let body = childText(el, 'body');
  const replace = child(el, 'replace', NS.CORRECT);
  if (replace?.getAttribute('id') && body !== null) {
    events.push({ ...base, kind: 'edit', target: replace.getAttribute('id'), body });
    return events;
  }
  if (body !== null) {
    let replyTo = null;
    const reply = child(el, 'reply', NS.REPLY);
    if (reply?.getAttribute('id')) {
      replyTo = { id: reply.getAttribute('id') };
      // Strip the quote the fallback marks (XEP-0428 ranges count code points).
      const fb = children(el, 'fallback', NS.FALLBACK).find((f) => f.getAttribute('for') === NS.REPLY);
      const range = fb && child(fb, 'body');
      const chars = [...body];
      if (range) {
        const start = +range.getAttribute('start') || 0;
        const end = +range.getAttribute('end') || 0;
        if (end > start && end <= chars.length) {
          replyTo.quote = chars.slice(start, end).join('').split('\n').map((l) => l.replace(/^> ?/, '')).join('\n').trim();
          body = chars.slice(0, start).concat(chars.slice(end)).join('');
        }
      }
    }
    const oob = childText(child(el, 'x', NS.OOB), 'url')?.trim();
    events.push({
      ...base, kind: 'message', id, stanzaId, body, replyTo,
      geo: parseGeo(el, body),
      media: oob && /^https?:\/\//i.test(oob) ? { url: oob } : null,
      wantsReceipt: !!child(el, 'request', NS.RECEIPTS),
      markable: !!child(el, 'markable', NS.MARKERS),
    });
  }
  return events;
}
