// Media over HTTP File Upload (XEP-0363): find the upload service in the
// server's disco items, ask it for a slot, PUT the file, and send the GET URL as
// an out-of-band link (XEP-0066) whose body is the URL itself, which every
// client (Conversations, Gajim, Dino, Monal) shows as a file or picture.
import { NS, x, child, children, childText } from './xmpp/xml.js';

const UPLOAD = 'urn:xmpp:http:upload:0';
const DISCO_ITEMS = 'http://jabber.org/protocol/disco#items';
const DISCO_INFO = 'http://jabber.org/protocol/disco#info';
// §5: the only headers a client may copy from the slot to its PUT.
const PUT_HEADERS = new Set(['authorization', 'cookie', 'expires']);

/** {jid, maxSize} of the upload service, or null when the server has none. */
export async function discover(conn) {
  const items = await conn.iq(x('iq', { type: 'get', to: conn.domain }, x('query', { xmlns: DISCO_ITEMS })));
  const jids = [conn.domain, ...children(child(items, 'query', DISCO_ITEMS), 'item').map((i) => i.getAttribute('jid'))];
  for (const jid of jids) {
    let info;
    try {
      info = await conn.iq(x('iq', { type: 'get', to: jid }, x('query', { xmlns: DISCO_INFO })));
    } catch {
      continue;
    }
    const query = child(info, 'query', DISCO_INFO);
    if (!children(query, 'feature').some((f) => f.getAttribute('var') === UPLOAD)) continue;
    let maxSize = Infinity;
    for (const form of children(query, 'x', NS.DATA)) {
      const fields = children(form, 'field');
      if (fields.find((f) => f.getAttribute('var') === 'FORM_TYPE')?.textContent.trim() !== UPLOAD) continue;
      const max = +childText(fields.find((f) => f.getAttribute('var') === 'max-file-size'), 'value');
      if (max > 0) maxSize = max;
    }
    return { jid, maxSize };
  }
  return null;
}

/** Uploads a File; resolves with the URL to share. Errors carry a user-facing message. */
export async function upload(conn, service, file) {
  if (file.size > service.maxSize) {
    throw new Error(`${file.name} is too large (${size(file.size)}; at most ${size(service.maxSize)}).`);
  }
  let slot;
  try {
    slot = await conn.iq(x('iq', { type: 'get', to: service.jid },
      x('request', { xmlns: UPLOAD, filename: file.name, size: file.size, 'content-type': file.type || 'application/octet-stream' })));
  } catch (e) {
    throw new Error(e.condition === 'not-acceptable' ? `${file.name} is too large for this server.` : `The server refused the upload (${e.condition}).`);
  }
  const s = child(slot, 'slot', UPLOAD);
  const put = child(s, 'put', UPLOAD);
  const get = child(s, 'get', UPLOAD)?.getAttribute('url');
  if (!put?.getAttribute('url') || !get) throw new Error('The server sent an unusable upload slot.');
  const headers = { 'Content-Type': file.type || 'application/octet-stream' };
  for (const h of children(put, 'header', UPLOAD)) {
    const name = h.getAttribute('name') || '';
    if (PUT_HEADERS.has(name.toLowerCase())) headers[name] = h.textContent.replace(/[\r\n]/g, '');
  }
  const res = await fetch(put.getAttribute('url'), { method: 'PUT', body: file, headers });
  if (!res.ok) throw new Error(`Uploading ${file.name} failed (HTTP ${res.status}).`);
  return get;
}

export function size(bytes) {
  if (!Number.isFinite(bytes)) return 'any size';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** What a shared URL points at, for the bubble: image, video, audio or file. */
export function kindOf(url) {
  const path = (() => { try { return new URL(url).pathname.toLowerCase(); } catch { return ''; } })();
  if (/\.(jpe?g|png|gif|webp|avif)$/.test(path)) return 'image';
  if (/\.(mp4|webm|mov|m4v)$/.test(path)) return 'video';
  if (/\.(mp3|m4a|ogg|oga|opus|wav|aac|weba)$/.test(path)) return 'audio';
  return 'file';
}

export function fileName(url) {
  try { return decodeURIComponent(new URL(url).pathname.split('/').pop()) || url; } catch { return url; }
}
