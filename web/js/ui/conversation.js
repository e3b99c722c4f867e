// The right pane: one conversation. Day separators, grouped bubbles, ticks,
// typing / online / last seen, reply, edit, delete for everyone, reactions,
// copy, location, infinite scroll back through the archive, new-messages divider.
import { $, h, clock, dayLabel, lastSeenText, paintAvatar } from './dom.js';
import { readMarks } from '../store.js';
import { kindOf, fileName } from '../upload.js';
import { imageBubble, fileBubble, preview, trustHost, VoiceRecorder } from './media.js';

const EMOJIS = ['👍', '❤️', '😂', '😮', '😢', '🙏'];
const TICK_TEXT = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓' };
const TICK_LABEL = { pending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read' };
const GROUP_MS = 5 * 60 * 1000;

export function mountConversation(app, { onBack }) {
  const box = $('messages');
  const input = $('input');
  const menu = $('menu');
  let jid = null;
  let context = null; // {kind: 'reply'|'edit', m}
  let dividerAt = 0; // read mark when the chat was opened
  let unreadAtOpen = 0;
  let typingSent = null;
  let pausedTimer = null;

  let olderRetry = null; // the next look for older pages (olderIfAtTop)

  function open(next) {
    clearTimeout(olderRetry);
    jid = next;
    context = null;
    dividerAt = readMarks.get(jid);
    unreadAtOpen = app.unread(app.chat(jid));
    $('composer-context').hidden = true;
    $('empty').hidden = true;
    $('chat').hidden = false;
    input.value = app.drafts?.[jid] || '';
    render(true);
    const c = app.chat(jid);
    if (!c.loadedHistory) {
      const at = jid;
      app.loadOlder(at).then(() => {
        if (jid !== at) return;
        scrollToEnd();
        olderIfAtTop(); // a first page shorter than the view
      });
    }
    app.lastSeen(jid);
    input.focus();
  }

  function close() {
    clearTimeout(olderRetry);
    jid = null;
    $('chat').hidden = true;
    $('empty').hidden = false;
  }

  function status(c) {
    if (c.group?.removed) return 'You are no longer a member';
    if (c.typing) return app.typingText(c);
    if (c.group) return c.group.announcement ? 'Only admins can send messages' : 'Group';
    if (c.online) return 'online';
    return c.lastSeen ? lastSeenText(c.lastSeen) : '';
  }

  function atEnd() { return box.scrollHeight - box.scrollTop - box.clientHeight < 40; }
  function scrollToEnd() { box.scrollTop = box.scrollHeight; }

  function render(forceEnd = false) {
    if (!jid) return;
    const c = app.chat(jid);
    const name = app.displayName(jid);
    $('chat-name').textContent = name;
    paintAvatar($('chat-avatar'), name, c.avatar);
    const st = $('chat-status');
    st.textContent = status(c);
    st.className = c.typing ? 'muted typing' : 'muted';
    const blocked = !c.group && app.blocked.has(jid);
    $('block').hidden = !!c.group;
    $('group-info').hidden = !c.group;
    $('block').setAttribute('aria-label', blocked ? 'Unblock contact' : 'Block contact');
    $('blocked-note').hidden = !blocked;
    const maySend = app.maySend(jid);
    $('group-note').hidden = maySend;
    $('group-note').textContent = c.group?.removed ? 'You can no longer send messages to this group.' : 'Only admins can send messages to this group.';
    $('composer').hidden = blocked || !maySend;
    $('attach').hidden = !app.upload;
    $('record').hidden = !app.upload;

    const stick = forceEnd || atEnd();
    const focusedId = document.activeElement?.closest?.('.msg')?.dataset.id;
    const frag = document.createDocumentFragment();
    if (c.loading) frag.append(h('p', { class: 'day', text: 'Loading…' }));
    else if (!c.group && !app.archived) {
      frag.append(h('p', { class: 'day system', text: 'This server keeps no message history: you see the messages that reached this browser.' }));
    } else if (c.complete && c.messages.length) frag.append(h('p', { class: 'day', text: 'Beginning of the conversation' }));
    let prev = null;
    let dividerDone = false;
    for (const m of c.messages) {
      if (!prev || dayLabel(prev.time) !== dayLabel(m.time)) {
        frag.append(h('p', { class: 'day', role: 'separator', text: dayLabel(m.time) }));
        prev = null;
      }
      if (!dividerDone && unreadAtOpen && !m.outgoing && m.time > dividerAt) {
        frag.append(h('p', { class: 'divider', role: 'separator', text: `New messages (${unreadAtOpen})` }));
        dividerDone = true;
        prev = null;
      }
      if (m.system) {
        frag.append(h('p', { class: 'day system', text: m.body }));
        prev = null;
        continue;
      }
      const cont = prev && prev.outgoing === m.outgoing && prev.nick === m.nick && m.time - prev.time < GROUP_MS;
      frag.append(bubble(c, m, cont));
      prev = m;
    }
    box.replaceChildren(frag);
    if (stick) scrollToEnd();
    if (focusedId) box.querySelector(`.msg[data-id="${CSS.escape(focusedId)}"] .actions-button`)?.focus();
  }

  function bubble(c, m, cont) {
    const kids = [];
    // Groups: the sender's name on the first bubble of a run (their nick in the room).
    if (c.group && !m.outgoing && m.nick && !cont) kids.push(h('span', { class: 'sender', text: m.nick }));
    if (m.replyTo) {
      const orig = c.byId.get(m.replyTo.id);
      const who = orig ? (orig.outgoing ? 'You' : orig.nick || app.displayName(jid)) : '';
      kids.push(h('div', { class: 'quote' }, who ? h('strong', { text: who + ' ' }) : null,
        h('span', { text: orig ? (orig.retracted ? 'Deleted message' : orig.body) : m.replyTo.quote || '' })));
    }
    if (m.retracted) {
      kids.push(h('span', { class: 'deleted', text: m.outgoing ? '🚫 You deleted this message' : '🚫 This message was deleted' }));
    } else if (m.geo) {
      const { lat, lon } = m.geo;
      const url = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=16/${lat}/${lon}`;
      kids.push(h('span', { class: 'location' }, '📍 Location ', h('span', { class: 'coords', text: `${lat.toFixed(5)}, ${lon.toFixed(5)}` }), ' ',
        h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', text: 'Open map' })));
    } else if (m.media) {
      kids.push(media(m));
      if (m.body && m.body.trim() !== m.media.url) kids.push(h('span', { class: 'body', text: m.body }));
    } else {
      kids.push(h('span', { class: 'body', text: m.body }));
    }
    const meta = h('span', { class: 'meta' }, m.edited && !m.retracted ? 'edited ' : '', clock(m.time),
      m.outgoing ? h('span', { class: 'tick', role: 'img', 'aria-label': tickLabel(c, m), text: TICK_TEXT[m.state] || '✓' }) : null);
    kids.push(meta);
    if (m.error) kids.push(h('div', { class: 'error-text', text: `Not delivered (${m.error})` }));
    const reactions = Object.values(m.reactions || {}).flat();
    if (reactions.length && !m.retracted) {
      const counts = {};
      for (const r of reactions) counts[r] = (counts[r] || 0) + 1;
      kids.push(h('div', { class: 'reactions', 'aria-label': 'Reactions' },
        Object.entries(counts).map(([e, n]) => h('span', { text: n > 1 ? `${e} ${n}` : e }))));
    }
    if (!m.retracted) {
      kids.push(h('button', { type: 'button', class: 'actions-button', 'aria-label': 'Message actions', 'aria-haspopup': 'menu',
        onclick: (e) => showMenu(e.currentTarget, c, m) }, '▾'));
    }
    return h('div', {
      class: `msg ${m.outgoing ? 'out' : 'in'}${cont ? ' cont' : ''}`,
      dataset: { id: m.id, state: m.state || '' },
    }, kids);
  }

  /** The tick's label; in a group, how many have read it so far (as WhatsApp's message info). */
  function tickLabel(c, m) {
    const label = TICK_LABEL[m.state] || 'Sent';
    if (!c.group || m.state === 'read' || !m.readCount) return label;
    return `${label}, read by ${m.readCount}`;
  }

  function media(m) {
    const { url } = m.media;
    const name = fileName(url);
    switch (kindOf(url)) {
      case 'image': return imageBubble(url);
      case 'video': return h('video', { class: 'media', src: url, controls: true, preload: 'metadata', 'aria-label': name });
      case 'audio': return h('audio', { class: 'media', src: url, controls: true, preload: 'metadata', 'aria-label': /^voice-/.test(name) ? 'Voice note' : name });
      default: return fileBubble(url);
    }
  }

  async function sendFiles(files) {
    const images = files.filter((f) => /^image\//.test(f.type));
    let caption = '';
    if (images.length) {
      // Images are shown before they go (WhatsApp-like), with an optional caption.
      const answer = await preview(images);
      if (!answer.send) files = files.filter((f) => !images.includes(f));
      caption = answer.caption;
    }
    for (const file of files) {
      try {
        await app.sendFile(jid, file, images.includes(file) ? caption : '');
      } catch (err) {
        app.dispatchEvent(new CustomEvent('notice', { detail: { text: err.message } }));
      }
    }
    render(true);
  }

  function showMenu(anchor, c, m) {
    const item = (label, fn) => h('button', { type: 'button', role: 'menuitem', onclick: () => { hideMenu(); fn(); } }, label);
    menu.replaceChildren(
      h('div', { class: 'emoji-row', role: 'group', 'aria-label': 'React' },
        EMOJIS.map((e) => h('button', { type: 'button', role: 'menuitem', 'aria-label': `React ${e}`, onclick: () => { hideMenu(); app.react(jid, m, e); } }, e))),
      item('Reply', () => setContext('reply', m)),
      m.body && !m.geo ? item('Copy', () => navigator.clipboard?.writeText(m.body).catch(() => {})) : null,
      m.outgoing && !m.geo ? item('Edit', () => setContext('edit', m)) : null,
      m.outgoing ? item('Delete for everyone', () => app.retract(jid, m)) : null,
    );
    menu.hidden = false;
    const r = anchor.getBoundingClientRect();
    const mw = menu.offsetWidth;
    const mh = menu.offsetHeight;
    menu.style.left = `${Math.max(8, Math.min(r.right - mw, innerWidth - mw - 8))}px`;
    menu.style.top = `${r.bottom + mh > innerHeight ? Math.max(8, r.top - mh) : r.bottom}px`;
    menu.returnFocus = anchor;
    menu.querySelector('button')?.focus();
  }

  function hideMenu() {
    if (menu.hidden) return;
    menu.hidden = true;
    menu.returnFocus?.focus?.();
  }

  function setContext(kind, m) {
    context = { kind, m };
    $('composer-context').hidden = false;
    $('context-title').textContent = kind === 'edit' ? 'Edit message' : `Reply to ${m.outgoing ? 'yourself' : app.displayName(jid)}`;
    $('context-text').textContent = m.body;
    if (kind === 'edit') input.value = m.body;
    input.focus();
  }

  function clearContext() {
    const wasEdit = context?.kind === 'edit';
    context = null;
    $('composer-context').hidden = true;
    if (wasEdit) input.value = '';
  }

  function submit() {
    const text = input.value.replace(/\s+$/, '');
    if (!jid || !text.trim()) return;
    if (context?.kind === 'edit') {
      if (text !== context.m.body) app.edit(jid, context.m, text);
    } else {
      app.send(jid, text, { replyTo: context?.kind === 'reply' ? context.m : null });
    }
    input.value = '';
    if (app.drafts) delete app.drafts[jid];
    clearContext();
    typingSent = 'active';
    clearTimeout(pausedTimer);
    render(true);
  }

  // XEP-0085 §5.1: composing while typing, paused after a few idle seconds.
  input.addEventListener('input', () => {
    if (!jid) return;
    app.drafts = app.drafts || {};
    app.drafts[jid] = input.value;
    if (typingSent !== 'composing' && input.value) { app.typing(jid, 'composing'); typingSent = 'composing'; }
    clearTimeout(pausedTimer);
    pausedTimer = setTimeout(() => { if (typingSent === 'composing') { app.typing(jid, 'paused'); typingSent = 'paused'; } }, 5000);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    if (e.key === 'Escape' && context) { e.preventDefault(); clearContext(); }
  });
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  $('context-cancel').addEventListener('click', clearContext);
  $('back').addEventListener('click', onBack);
  $('block').addEventListener('click', () => app.setBlocked(jid, !app.blocked.has(jid)).catch(() => {}));
  $('unblock').addEventListener('click', () => app.setBlocked(jid, false).catch(() => {}));
  $('share-location').addEventListener('click', () => {
    app.shareLocation(jid).then(() => render(true)).catch((err) => app.dispatchEvent(new CustomEvent('notice', { detail: { text: err.message } })));
  });
  // Files: the attach button, drag and drop onto the conversation, paste.
  $('attach').addEventListener('click', () => $('attach-file').click());
  $('attach-file').addEventListener('change', (e) => { sendFiles([...e.target.files]); e.target.value = ''; });
  $('chat').addEventListener('dragover', (e) => { if (app.upload && e.dataTransfer?.types.includes('Files')) e.preventDefault(); });
  $('chat').addEventListener('drop', (e) => {
    if (!app.upload || !e.dataTransfer?.files.length) return;
    e.preventDefault();
    sendFiles([...e.dataTransfer.files]);
  });
  input.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (app.upload && files.length) { e.preventDefault(); sendFiles(files); }
  });
  trustHost(app.me.split('@').pop());
  const recorder = new VoiceRecorder();
  $('record').addEventListener('click', async () => {
    const button = $('record');
    try {
      if (!recorder.recording) {
        await recorder.start();
        button.setAttribute('aria-label', 'Stop and send the voice note');
        button.classList.add('recording');
        return;
      }
      button.setAttribute('aria-label', 'Record a voice note');
      button.classList.remove('recording');
      const file = await recorder.stop();
      if (file) await sendFiles([file]);
    } catch (err) {
      app.dispatchEvent(new CustomEvent('notice', { detail: { text: err.message } }));
    }
  });
  // Older pages load while the view is at (or near) its top. Looked at on every
  // scroll, and again after each page: a page too short to move the view off the
  // top, or a scroll to the top while a page was loading, fires no further scroll
  // event. A page that failed (offline, refused) is tried again after a while.
  function olderIfAtTop() {
    clearTimeout(olderRetry);
    if (!jid || box.scrollTop > 80) return;
    const c = app.chat(jid);
    if (c.complete || c.loading) return;
    const at = jid;
    const fromBottom = box.scrollHeight - box.scrollTop;
    app.loadOlder(at).then((more) => {
      if (jid !== at) return; // another chat is open now: its view is not this one's
      box.scrollTop = box.scrollHeight - fromBottom; // the same messages stay in view
      olderRetry = setTimeout(olderIfAtTop, more ? 0 : 2000);
    });
  }
  box.addEventListener('scroll', olderIfAtTop);
  document.addEventListener('click', (e) => { if (!menu.contains(e.target) && !e.target.closest('.actions-button')) hideMenu(); });
  document.addEventListener('keydown', (e) => {
    if (menu.hidden) return;
    if (e.key === 'Escape') { e.preventDefault(); hideMenu(); }
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      const items = [...menu.querySelectorAll('button')];
      const i = items.indexOf(document.activeElement);
      items[(i + (e.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length]?.focus();
      e.preventDefault();
    }
  });

  return { open, close, render, get jid() { return jid; } };
}
