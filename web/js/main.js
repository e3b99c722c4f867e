// Boot: theme, sign-in (or the stored session), then the two panes.
// Module map (see ARCHITECTURE.md): xmpp/ (wire: XML, SCRAM, WebSocket session
// with XEP-0198), chat.js (message stanzas), app.js (model), store.js (browser
// storage), push.js (Web Push), ui/ (panes and dialogs).
import { Connection } from './xmpp/connection.js';
import { domainOf } from './xmpp/xml.js';
import { App } from './app.js';
import { session, prefs } from './store.js';
import * as push from './push.js';
import { $, paintAvatar } from './ui/dom.js';
import { mountChatList } from './ui/chatlist.js';
import { mountConversation } from './ui/conversation.js';

const wsUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/xmpp-websocket`;

function applyTheme(theme) {
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}
applyTheme(prefs.get('theme', 'system'));

/** Sign-in providers: username/password today; phone + code and device links plug in here. */
function showSignIn(message = '') {
  $('app').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('signin-user').focus();
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const raw = $('signin-user').value.trim().toLowerCase();
  const password = $('signin-password').value;
  if (!raw || !password) { $('signin-error').textContent = 'Enter your address and password.'; return; }
  const jid = raw.includes('@') ? raw : `${raw}@${location.hostname}`;
  if (!/^[^@\s/]+@[^@\s/]+$/.test(jid)) { $('signin-error').textContent = 'That address does not look right.'; return; }
  $('signin-submit').disabled = true;
  $('signin-error').textContent = '';
  start({ jid, resource: `web-${crypto.randomUUID().slice(0, 8)}`, secret: { password } }, true);
});

let current = null;

function start(creds, fresh) {
  const conn = new Connection({ url: wsUrl(), jid: creds.jid, resource: creds.resource, secret: creds.secret });
  const app = new App(conn);
  current = { conn, app };
  let shown = false;
  conn.addEventListener('credentials', (e) => {
    session.set({ jid: creds.jid, resource: creds.resource, keys: e.detail.keys });
  });
  conn.addEventListener('status', (e) => {
    const { state, error } = e.detail;
    const bar = $('status');
    if (state === 'failed' && error === 'conflict') {
      // Another tab signed in as this same device and took the session over.
      bar.textContent = 'kith is open in another window. Reload this page to use it here.';
      bar.hidden = false;
      return;
    }
    if (state === 'failed') {
      $('signin-submit').disabled = false;
      $('signin-password').value = '';
      if (!fresh) session.clear();
      conn.close();
      current = null;
      showSignIn(error === 'credentials-expired' ? 'Your session has expired. Please sign in again.' : error || 'Could not sign in.');
      return;
    }
    if (state === 'online') {
      bar.hidden = true;
      if (!shown) { shown = true; showApp(app); }
    } else if (shown || !fresh) {
      bar.textContent = state === 'connecting' ? 'Connecting…' : 'Offline: messages you send will go out when the connection is back';
      bar.hidden = false;
    }
  });
  if (!fresh) { shown = true; showApp(app); }
  conn.connect();
}

function showApp(app) {
  $('signin').hidden = true;
  $('app').hidden = false;
  const list = mountChatList(app, { onOpen: openChat });
  const convo = mountConversation(app, { onBack: () => openChat(null) });
  let snapshotTimer = null;
  app.addEventListener('change', (e) => {
    list.render();
    if (!e.detail.jid || e.detail.jid === convo.jid) convo.render();
    paintAvatar($('me-avatar'), app.profile.name || app.me, app.profile.avatar);
    clearTimeout(snapshotTimer);
    snapshotTimer = setTimeout(() => app.saveSnapshot(), 1000);
  });
  app.addEventListener('notice', (e) => { const bar = $('status'); bar.textContent = e.detail.text; bar.hidden = false; setTimeout(() => { bar.hidden = true; }, 5000); });
  app.notificationsOn = prefs.get('notify', false);

  function openChat(jid) {
    document.body.classList.toggle('in-chat', !!jid);
    if (jid) {
      convo.open(jid); // first: it notes the unread messages for the divider
      app.open(jid);
      if (location.hash !== `#${jid}`) history.replaceState(null, '', `#${jid}`);
    } else {
      app.open(null);
      convo.close();
      history.replaceState(null, '', location.pathname);
      document.querySelector(`#chat-list li[data-jid="${CSS.escape(convo.jid || '')}"] button`)?.focus();
    }
    list.render();
  }

  mountDialogs(app, openChat);
  list.render();
  performance.mark('kith:chat-list'); // painted (from the snapshot after a reload)
  const target = decodeURIComponent(location.hash.slice(1));
  if (target.includes('@')) openChat(target);
  else $('search').focus();
  addEventListener('hashchange', () => {
    const j = decodeURIComponent(location.hash.slice(1));
    if (j.includes('@') && j !== convo.jid) openChat(j);
  });
}

function mountDialogs(app, openChat) {
  const nc = $('new-chat-dialog');
  $('new-chat').addEventListener('click', () => { $('new-chat-error').textContent = ''; $('new-chat-jid').value = ''; nc.showModal(); });
  $('new-chat-cancel').addEventListener('click', () => nc.close());
  $('new-chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    let value = $('new-chat-jid').value.trim();
    if (value && !value.includes('@')) value += `@${domainOf(app.me)}`;
    try {
      const c = app.startChat(value);
      nc.close();
      openChat(c.jid);
    } catch (err) {
      $('new-chat-error').textContent = err.message;
    }
  });

  const sd = $('settings-dialog');
  let avatar = null;
  $('me-button').addEventListener('click', () => {
    avatar = app.profile.avatar;
    $('settings-jid').textContent = app.me;
    $('settings-name').value = app.profile.name || '';
    paintAvatar($('settings-avatar'), app.profile.name || app.me, avatar);
    for (const r of document.querySelectorAll('input[name=theme]')) r.checked = r.value === prefs.get('theme', 'system');
    $('settings-notify').checked = prefs.get('notify', false);
    $('settings-error').textContent = '';
    sd.showModal();
  });
  for (const r of document.querySelectorAll('input[name=theme]')) {
    r.addEventListener('change', () => { prefs.set('theme', r.value); applyTheme(r.value); });
  }
  $('settings-avatar-file').addEventListener('change', async (e) => {
    const file = e.target.files?.[0];
    if (!file) return;
    try {
      avatar = await shrink(file, 192);
      paintAvatar($('settings-avatar'), '', avatar);
    } catch {
      $('settings-error').textContent = 'That file is not an image this browser can read.';
    }
  });
  $('settings-notify').addEventListener('change', async (e) => {
    $('settings-error').textContent = '';
    try {
      if (e.target.checked) await push.enable(app.conn); else await push.disable(app.conn);
      app.notificationsOn = e.target.checked;
    } catch (err) {
      e.target.checked = false;
      $('settings-error').textContent = err.message;
    }
  });
  $('settings-cancel').addEventListener('click', () => sd.close());
  $('settings-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await app.saveProfile({ name: $('settings-name').value.trim(), avatar });
      sd.close();
    } catch (err) {
      $('settings-error').textContent = `Could not save: ${err.condition || err.message}`;
    }
  });
  $('sign-out').addEventListener('click', async () => {
    await push.disable(app.conn).catch(() => {});
    await app.conn.close();
    session.clear();
    location.hash = '';
    location.reload();
  });
}

/** An image file scaled down to a square JPEG data: URL for the vCard photo. */
async function shrink(file, size) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = size;
  const side = Math.min(bitmap.width, bitmap.height);
  canvas.getContext('2d').drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size);
  return canvas.toDataURL('image/jpeg', 0.85);
}

const saved = session.get();
if (saved?.jid && saved.keys) start({ jid: saved.jid, resource: saved.resource, secret: { keys: saved.keys } }, false);
else showSignIn();
