// Media in bubbles and around the composer: image bubbles that paint the
// server's BlurHash first (`?meta`), then its thumbnail (`?thumb`), and open the
// full image in a viewer; the preview shown before an image is sent; voice
// notes recorded with MediaRecorder.
import { $, h } from './dom.js';
import { fileName, size } from '../upload.js';

const metaCache = new Map(); // url -> Promise<meta | null>
const ownHosts = new Set([location.hostname]);

/** Hosts whose files are this server's uploads (the account's domain): they answer `?meta`. */
export function trustHost(host) { if (host) ownHosts.add(host); }

/** The server's metadata document of one of its uploads (null for other URLs). */
export function meta(url) {
  if (!metaCache.has(url)) {
    // kith's upload URLs are <public_url>/upload/<id>/<name> (upload/http.rs).
    const ours = (() => { try { const u = new URL(url); return ownHosts.has(u.hostname) && /\/upload\/[^/]+\/[^/]+$/.test(u.pathname); } catch { return false; } })();
    metaCache.set(url, ours
      ? fetch(`${url}?meta`).then((r) => (r.ok ? r.json() : null)).catch(() => null)
      : Promise.resolve(null));
  }
  return metaCache.get(url);
}

/** An image bubble: BlurHash placeholder, then the thumbnail; click opens the full view. */
export function imageBubble(url) {
  const name = fileName(url);
  const img = h('img', { alt: name, loading: 'lazy' });
  const button = h('button', { type: 'button', class: 'media image', 'aria-label': `Open image ${name}`, onclick: () => view(url, name) }, img);
  meta(url).then((m) => {
    if (m?.width && m?.height) button.style.aspectRatio = `${m.width} / ${m.height}`;
    if (m?.blurhash) {
      try { button.style.backgroundImage = `url("${blurhashDataUrl(m.blurhash, 32, 32)}")`; } catch { /* not a BlurHash */ }
    }
    img.src = m?.thumbnail ? `${url}?thumb` : url;
    if (m?.thumbnail) img.addEventListener('error', () => { img.src = url; }, { once: true });
  });
  return button;
}

/** A document bubble: name, size (from the server's metadata), download link. */
export function fileBubble(url) {
  const name = fileName(url);
  const sizeText = h('span', { class: 'muted file-size' });
  meta(url).then((m) => { if (m?.size) sizeText.textContent = ` ${size(m.size)}`; });
  return h('span', { class: 'file' }, '📄 ',
    h('a', { class: 'body', href: url, target: '_blank', rel: 'noopener noreferrer', download: name, text: name }), sizeText);
}

function view(url, name) {
  const dialog = $('viewer');
  $('viewer-image').src = url;
  $('viewer-image').alt = name;
  $('viewer-download').href = url;
  dialog.showModal();
}
$('viewer-close').addEventListener('click', () => $('viewer').close());
$('viewer').addEventListener('close', () => { $('viewer-image').removeAttribute('src'); });

/** Shows images before sending; resolves with {send: bool, caption}. */
export function preview(files) {
  const dialog = $('preview-dialog');
  const urls = files.map((f) => URL.createObjectURL(f));
  $('preview-images').replaceChildren(...files.map((f, i) => h('img', { src: urls[i], alt: `Preview of ${f.name}` })));
  $('preview-caption').value = '';
  dialog.showModal();
  $('preview-caption').focus();
  return new Promise((resolve) => {
    const done = (send) => {
      $('preview-send').removeEventListener('click', onSend);
      dialog.removeEventListener('close', onClose);
      if (dialog.open) dialog.close();
      urls.forEach((u) => URL.revokeObjectURL(u));
      resolve({ send, caption: $('preview-caption').value.trim() });
    };
    const onSend = (e) => { e.preventDefault(); done(true); };
    const onClose = () => done(false);
    $('preview-send').addEventListener('click', onSend);
    dialog.addEventListener('close', onClose);
  });
}
$('preview-cancel').addEventListener('click', () => $('preview-dialog').close());

/**
 * Voice notes: press to record, press again to send (MediaRecorder, Opus in
 * WebM where the browser has it). Resolves the File to upload.
 */
export class VoiceRecorder {
  constructor() { this.recorder = null; this.chunks = []; }
  get recording() { return !!this.recorder; }

  async start() {
    if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === 'undefined') throw new Error('This browser cannot record audio.');
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch {
      throw new Error('kith may not use the microphone. Allow it in the browser to record voice notes.');
    }
    const type = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4'].find((t) => MediaRecorder.isTypeSupported(t)) || '';
    this.recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    this.chunks = [];
    this.recorder.addEventListener('dataavailable', (e) => { if (e.data.size) this.chunks.push(e.data); });
    this.recorder.start(250);
    this.started = Date.now();
  }

  /** Stops; resolves with the recording as a File (or null if cancelled). */
  stop(keep = true) {
    const recorder = this.recorder;
    this.recorder = null;
    if (!recorder) return Promise.resolve(null);
    return new Promise((resolve) => {
      recorder.addEventListener('stop', () => {
        recorder.stream.getTracks().forEach((t) => t.stop());
        if (!keep || !this.chunks.length) { resolve(null); return; }
        const type = (recorder.mimeType || 'audio/webm').split(';')[0];
        const ext = { 'audio/webm': 'weba', 'audio/ogg': 'ogg', 'audio/mp4': 'm4a' }[type] || 'weba';
        const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, '');
        resolve(new File(this.chunks, `voice-${stamp}.${ext}`, { type }));
      }, { once: true });
      recorder.stop();
    });
  }
}

// ---- BlurHash (https://blurha.sh, the reference algorithm) -----------------------------------
const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~';
function decode83(s) {
  let v = 0;
  for (const ch of s) {
    const d = DIGITS.indexOf(ch);
    if (d < 0) throw new Error('bad BlurHash');
    v = v * 83 + d;
  }
  return v;
}
const toLinear = (v) => { const x = v / 255; return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; };
const toSrgb = (v) => { const x = Math.max(0, Math.min(1, v)); return Math.round((x <= 0.0031308 ? x * 12.92 : 1.055 * x ** (1 / 2.4) - 0.055) * 255); };
const signPow = (v, e) => Math.sign(v) * Math.abs(v) ** e;

/** Decodes a BlurHash into a small PNG data: URL (a placeholder behind the image). */
export function blurhashDataUrl(hash, width, height) {
  if (typeof hash !== 'string' || hash.length < 6) throw new Error('bad BlurHash');
  const sizeFlag = decode83(hash[0]);
  const nx = (sizeFlag % 9) + 1;
  const ny = Math.floor(sizeFlag / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error('bad BlurHash');
  const maxValue = (decode83(hash[1]) + 1) / 166;
  const colors = [];
  const dc = decode83(hash.slice(2, 6));
  colors.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const v = decode83(hash.slice(4 + i * 2, 6 + i * 2));
    colors.push([Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19].map((q) => signPow((q - 9) / 9, 2) * maxValue));
  }
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  const pixels = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0; let g = 0; let b = 0;
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / width) * Math.cos((Math.PI * y * j) / height);
          const c = colors[i + j * nx];
          r += c[0] * basis; g += c[1] * basis; b += c[2] * basis;
        }
      }
      const o = 4 * (x + y * width);
      pixels.data[o] = toSrgb(r); pixels.data[o + 1] = toSrgb(g); pixels.data[o + 2] = toSrgb(b); pixels.data[o + 3] = 255;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas.toDataURL('image/png');
}
