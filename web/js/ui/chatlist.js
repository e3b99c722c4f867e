// The left pane: chat rows sorted by activity, name filter, and full-text
// search through the archive (XEP-0431) for message text.
import { $, h, listTime, paintAvatar } from './dom.js';
import { preview } from '../app.js';

export function mountChatList(app, { onOpen }) {
  const list = $('chat-list');
  const input = $('search');
  const results = $('search-results');
  let searchTimer = null;
  let searchSeq = 0;

  function render() {
    const filter = input.value.trim().toLowerCase();
    const focusedJid = document.activeElement?.closest?.('#chat-list li')?.dataset.jid;
    list.replaceChildren();
    for (const c of app.sortedChats()) {
      const name = app.displayName(c.jid);
      if (filter && !name.toLowerCase().includes(filter) && !c.jid.includes(filter)) continue;
      const last = c.messages[c.messages.length - 1];
      const unread = app.openJid === c.jid ? 0 : app.unread(c);
      const avatar = h('span', { class: 'avatar', 'aria-hidden': 'true' });
      paintAvatar(avatar, name, c.avatar);
      const text = c.typing ? app.typingText(c) : last ? (last.outgoing ? (last.state === 'pending' ? '🕓 ' : '✓ ') : '') + preview(last) : c.preview || '';
      const li = h('li', { dataset: { jid: c.jid } },
        h('button', {
          type: 'button', 'aria-current': app.openJid === c.jid ? 'true' : 'false',
          'aria-label': `${name}${unread ? `, ${unread} unread` : ''}`,
          class: unread ? 'unread' : '', onclick: () => onOpen(c.jid),
        },
        avatar,
        h('span', { class: 'grow' },
          h('span', { class: 'row' }, h('span', { class: 'name', text: name }), h('span', { class: 'time', text: listTime(c.activity) })),
          h('span', { class: 'row' }, h('span', { class: `preview${c.typing ? ' typing' : ''}`, text }),
            unread ? h('span', { class: 'badge', text: String(unread), 'aria-hidden': 'true' }) : null))));
      list.append(li);
      if (focusedJid === c.jid) li.querySelector('button').focus();
    }
  }

  async function searchMessages() {
    const text = input.value.trim();
    const seq = ++searchSeq;
    if (text.length < 3) { results.hidden = true; return; }
    let found = [];
    try { found = await app.search(text); } catch { found = []; }
    if (seq !== searchSeq) return;
    const heading = found.length ? 'Messages'
      : app.archived ? 'No messages found' : 'Searching messages needs a message archive, which this server does not keep';
    results.replaceChildren(h('h3', { text: heading }),
      ...found.map((ev) => h('button', { type: 'button', onclick: () => onOpen(ev.peer) },
        h('strong', { text: app.displayName(ev.peer) }), h('p', { class: 'muted', text: ev.body }))));
    results.hidden = false;
  }

  input.addEventListener('input', () => {
    render();
    clearTimeout(searchTimer);
    searchTimer = setTimeout(searchMessages, 350);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { clearTimeout(searchTimer); searchMessages(); }
    if (e.key === 'Escape') { input.value = ''; results.hidden = true; render(); }
  });
  return { render };
}
