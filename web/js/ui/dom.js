// Small DOM helpers: element creation (text is always set as text, never HTML),
// time formatting, avatars.
export const $ = (id) => document.getElementById(id);

export function h(tag, props = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) el.append(kid);
  return el;
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();
export const clock = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

export function dayLabel(t) {
  const d = new Date(t);
  const now = new Date();
  if (sameDay(d, now)) return 'Today';
  const y = new Date(now); y.setDate(now.getDate() - 1);
  if (sameDay(d, y)) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long', year: d.getFullYear() === now.getFullYear() ? undefined : 'numeric' });
}

export function listTime(t) {
  if (!t) return '';
  const d = new Date(t);
  return sameDay(d, new Date()) ? clock(t) : dayLabel(t) === 'Yesterday' ? 'Yesterday' : d.toLocaleDateString();
}

export function lastSeenText(t) {
  if (!t) return '';
  return `last seen ${dayLabel(t).toLowerCase().replace(/^(\w+day),.*/, '$1')} at ${clock(t)}`;
}

export function paintAvatar(el, name, url) {
  el.textContent = url ? '' : (name || '?').trim().charAt(0);
  el.style.backgroundImage = url ? `url("${url.replace(/"/g, '')}")` : '';
}

/** An image file scaled down to a square JPEG data: URL (profile and group photos). */
export async function shrink(file, size) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = size;
  const side = Math.min(bitmap.width, bitmap.height);
  canvas.getContext('2d').drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size);
  return canvas.toDataURL('image/jpeg', 0.85);
}
