// Boot: theme, sign-in (or the stored session), then the two panes.
// Module map (see ARCHITECTURE.md): xmpp/ (wire: XML, SCRAM, WebSocket session
// with XEP-0198), chat.js (message stanzas), app.js (model), store.js (browser
// storage), push.js (Web Push), ui/ (panes and dialogs).
import { Connection } from './xmpp/connection.js';
import { domainOf } from './xmpp/xml.js';
import { App } from './app.js';
import { session, prefs, outbox, unsent } from './store.js';
import * as push from './push.js';
import * as accounts from './accounts.js';
import { $, h, paintAvatar, shrink } from './ui/dom.js';
import { mountChatList } from './ui/chatlist.js';
import { mountConversation } from './ui/conversation.js';
import { mountGroupDialogs } from './ui/group.js';

// An invite link (`/join/<token>` links to `/#join=<token>`): kept for this tab
// until the user is signed in, then offered in the join dialog.
const JOIN = 'kith.join';
function takeJoinHash() {
  const m = /^#join=([A-Za-z0-9_-]{1,200})$/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(JOIN, m[1]);
  history.replaceState(null, '', location.pathname);
}
takeJoinHash();

const wsUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/xmpp-websocket`;

function applyTheme(theme) {
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}
applyTheme(prefs.get('theme', 'system'));

/**
 * Sign-in methods: phone number + SMS code and linking to a signed-in device
 * (the accounts HTTP API), or address + password. Each ends in start().
 */
function showSignIn(message = '') {
  $('app').hidden = true;
  $('signin').hidden = false;
  selectMethod(prefs.get('signin-method', 'phone'));
  for (const id of ['phone-error', 'link-error', 'signin-error']) $(id).textContent = '';
  const panel = { phone: 'phone-error', link: 'link-error', password: 'signin-error' }[prefs.get('signin-method', 'phone')];
  $(panel).textContent = message;
}

function selectMethod(method) {
  for (const tab of document.querySelectorAll('[role=tab][data-method]')) {
    const on = tab.dataset.method === method;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute('aria-controls')).hidden = !on;
  }
  prefs.set('signin-method', method);
}
for (const tab of document.querySelectorAll('[role=tab][data-method]')) {
  tab.addEventListener('click', () => { selectMethod(tab.dataset.method); tab.focus(); });
  tab.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
    const tabs = [...document.querySelectorAll('[role=tab][data-method]')];
    const next = tabs[(tabs.indexOf(tab) + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
    selectMethod(next.dataset.method);
    next.focus();
  });
}

const newResource = () => `web-${crypto.randomUUID().slice(0, 8)}`;

/** A device credential from the API: the XMPP password and the API token. */
function startWithDevice(result) {
  start({ jid: result.jid, resource: newResource(), secret: { password: result.credential },
    token: result.credential, deviceId: result.device_id }, true);
}

let phoneE164 = null;
$('phone-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const error = $('phone-error');
  const button = $('phone-submit');
  error.textContent = '';
  button.disabled = true;
  try {
    if (!phoneE164) {
      const phone = $('phone-number').value.trim();
      if (!/^\+?[0-9 ().-]{6,20}$/.test(phone)) throw new Error('Enter your number with its country code, e.g. +44 20 7946 0958.');
      const res = await accounts.startPhone(phone);
      phoneE164 = res.phone || phone;
      $('phone-code-row').hidden = false;
      $('phone-number').readOnly = true;
      button.textContent = 'Verify';
      $('phone-code').focus();
    } else {
      const code = $('phone-code').value.trim();
      if (!/^[0-9]{6}$/.test(code)) throw new Error('The code has 6 digits.');
      startWithDevice(await accounts.verifyPhone(phoneE164, code));
    }
  } catch (err) {
    error.textContent = err.message;
  } finally {
    button.disabled = false;
  }
});

let linkTimer = null;
$('link-start').addEventListener('click', async () => {
  const error = $('link-error');
  error.textContent = '';
  clearTimeout(linkTimer);
  try {
    const link = await accounts.startLink();
    $('link-code').textContent = link.code;
    if (link.qr_svg) { $('link-qr').src = accounts.qrImage(link.qr_svg); $('link-qr').hidden = false; }
    const until = Date.now() + (link.expires_in || 300) * 1000;
    const poll = async () => {
      if (Date.now() > until) { error.textContent = 'The code expired. Show a new one.'; $('link-code').textContent = ''; return; }
      try {
        const res = await accounts.pollLink(link.link_id, link.poll_token);
        if (res.status === 'approved') { startWithDevice(res); return; }
      } catch (err) {
        if (err.status && err.status < 500) { error.textContent = err.message; return; }
      }
      linkTimer = setTimeout(poll, 2000);
    };
    linkTimer = setTimeout(poll, 2000);
  } catch (err) {
    error.textContent = err.message;
  }
});

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const raw = $('signin-user').value.trim().toLowerCase();
  const password = $('signin-password').value;
  if (!raw || !password) { $('signin-error').textContent = 'Enter your address and password.'; return; }
  const jid = raw.includes('@') ? raw : `${raw}@${location.hostname}`;
  if (!/^[^@\s/]+@[^@\s/]+$/.test(jid)) { $('signin-error').textContent = 'That address does not look right.'; return; }
  $('signin-submit').disabled = true;
  $('signin-error').textContent = '';
  start({ jid, resource: newResource(), secret: { password } }, true);
});

let current = null;
const SIGNED_OUT = 'This browser was signed out (its device was removed or the password changed). Please sign in again.';
const KEPT = ' What you typed and had not sent is kept for when you sign in again with this account.';

/** Before a signed-out session is forgotten: what was typed and not sent, for the same account's next sign-in. */
function keepUnsent(jid, app) {
  const drafts = Object.fromEntries(Object.entries(app.drafts || {}).filter(([, text]) => text && text.trim()));
  const items = outbox.all();
  if (!items.length && !Object.keys(drafts).length) return false;
  unsent.set({ jid, outbox: items, drafts });
  return true;
}

/** On signing in: the account's unsent messages and drafts come back; another account's are dropped. */
function restoreUnsent(jid, app) {
  const kept = unsent.get();
  if (!kept) return;
  unsent.clear();
  if (kept.jid !== jid) return;
  for (const item of kept.outbox || []) outbox.add(item);
  app.drafts = { ...(kept.drafts || {}), ...(app.drafts || {}) };
}

function start(creds, fresh) {
  const conn = new Connection({ url: wsUrl(), jid: creds.jid, resource: creds.resource, secret: creds.secret });
  const app = new App(conn);
  if (fresh) restoreUnsent(creds.jid, app);
  app.token = creds.token || null;
  app.deviceId = creds.deviceId || null;
  current = { conn, app };
  let shown = false;
  conn.addEventListener('credentials', (e) => {
    session.set({ jid: creds.jid, resource: creds.resource, keys: e.detail.keys, token: creds.token, deviceId: creds.deviceId });
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
      // A stored session, or one that was online in this page, was signed out
      // (its device revoked, the password changed): forget it and say so.
      const signedOut = !fresh || shown;
      const kept = signedOut && keepUnsent(creds.jid, app);
      if (signedOut) session.clear();
      conn.close();
      current = null;
      if (signedOut && shown) {
        // A clean page for the sign-in screen; the note survives the reload.
        sessionStorage.setItem('kith.signed-out', kept ? 'kept' : '1');
        location.hash = '';
        location.reload();
        return;
      }
      showSignIn(signedOut || error === 'credentials-expired'
        ? SIGNED_OUT + (kept ? KEPT : '')
        : error || 'Could not sign in.');
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
  mountGroupDialogs(app, { openChat, getJid: () => convo.jid });
  const offerJoin = mountJoinDialog(app, openChat);
  list.render();
  performance.mark('kith:chat-list'); // painted (from the snapshot after a reload)
  const target = decodeURIComponent(location.hash.slice(1));
  if (target.includes('@')) openChat(target);
  else $('search').focus();
  offerJoin();
  addEventListener('hashchange', () => {
    takeJoinHash();
    offerJoin();
    const j = decodeURIComponent(location.hash.slice(1));
    if (j.includes('@') && j !== convo.jid) openChat(j);
  });
}

/** The join dialog for an invite link: the group's name first, joining on "Join group". */
function mountJoinDialog(app, openChat) {
  const dialog = $('join-dialog');
  const error = $('join-error');
  let token = null;
  let name = '';
  // (Not on the dialog's `close` event: it comes a task later, maybe after the next link.)
  $('join-cancel').addEventListener('click', () => { token = null; dialog.close(); });
  dialog.addEventListener('cancel', () => { token = null; }); // Escape
  $('join-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!token) return;
    error.textContent = '';
    $('join-submit').disabled = true;
    try {
      await app.conn.whenReady();
      const c = await app.joinByLink(token, name);
      dialog.close();
      openChat(c.jid);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      $('join-submit').disabled = false;
    }
  });
  return async function offerJoin() {
    const next = sessionStorage.getItem(JOIN);
    if (!next) return;
    sessionStorage.removeItem(JOIN);
    token = next;
    name = '';
    error.textContent = '';
    $('join-name').textContent = 'Invite link';
    $('join-text').textContent = 'Checking the link…';
    paintAvatar($('join-avatar'), '?', null);
    $('join-submit').hidden = false;
    $('join-submit').disabled = true;
    if (!dialog.open) dialog.showModal();
    try {
      const preview = await app.invitePreview(next);
      if (token !== next) return;
      name = preview.name || '';
      $('join-name').textContent = name;
      paintAvatar($('join-avatar'), name, null);
      const known = app.chats.get(preview.jid)?.group;
      $('join-text').textContent = known && !known.removed ? 'You are already in this group.' : 'You were invited to join this group.';
      $('join-submit').textContent = known && !known.removed ? 'Open group' : 'Join group';
      $('join-submit').disabled = false;
    } catch (err) {
      if (token !== next) return;
      $('join-name').textContent = 'Invite link';
      $('join-text').textContent = '';
      error.textContent = err.message;
      $('join-submit').hidden = true;
    }
  };
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
    $('settings-about').value = app.profile.about || '';
    paintAvatar($('settings-avatar'), app.profile.name || app.me, avatar);
    for (const r of document.querySelectorAll('input[name=theme]')) r.checked = r.value === prefs.get('theme', 'system');
    $('settings-notify').checked = prefs.get('notify', false);
    $('settings-error').textContent = '';
    showPrivacy();
    $('devices-section').hidden = !app.token;
    if (app.token) renderDevices();
    sd.showModal();
  });

  // Privacy: each change is saved at once (urn:kith:privacy:0), as WhatsApp does.
  const privacyControls = [...document.querySelectorAll('#privacy-section select[data-setting]')];
  function showPrivacy() {
    for (const sel of privacyControls) sel.value = app.privacy[sel.dataset.setting];
    $('privacy-read-receipts').checked = app.privacy['read-receipts'];
    $('privacy-note').textContent = '';
  }
  async function changePrivacy(changes) {
    $('settings-error').textContent = '';
    $('privacy-note').textContent = '';
    try {
      await app.conn.whenReady();
      await app.savePrivacy(changes);
      $('privacy-note').textContent = 'Privacy settings saved.';
    } catch (err) {
      $('settings-error').textContent = `Could not save the privacy settings: ${err.text || err.condition || err.message}`;
      showPrivacy(); // back to what the server has
    }
  }
  for (const sel of privacyControls) sel.addEventListener('change', () => changePrivacy({ [sel.dataset.setting]: sel.value }));
  $('privacy-read-receipts').addEventListener('change', (e) => changePrivacy({ 'read-receipts': e.target.checked }));

  async function renderDevices() {
    const list = $('devices-list');
    try {
      const res = await accounts.devices(app.token);
      list.replaceChildren(...(res.devices || []).map((d) => h('li', {},
        h('span', { class: 'grow', text: `${d.name}${d.current ? ' (this browser)' : ''}` }),
        h('button', { type: 'button', 'aria-label': `Remove ${d.name}${d.current ? ' (this browser)' : ''}`, onclick: async () => {
          try {
            await accounts.revoke(app.token, d.id);
          } catch (err) {
            $('settings-error').textContent = err.message;
            return;
          }
          // Removing this browser's own device signs it out (the server ends the session).
          if (d.current) { await signOut(); return; }
          renderDevices();
        } }, 'Remove'))));
    } catch (err) {
      $('settings-error').textContent = err.message;
    }
  }
  $('link-approve').addEventListener('click', async () => {
    const code = $('link-approve-code').value.trim().toUpperCase();
    if (!code) return;
    try {
      await accounts.approveLink(app.token, code);
      $('link-approve-code').value = '';
      renderDevices();
    } catch (err) {
      $('settings-error').textContent = err.message;
    }
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
      await app.saveProfile({ name: $('settings-name').value.trim(), avatar, about: $('settings-about').value.trim() });
      sd.close();
    } catch (err) {
      $('settings-error').textContent = `Could not save: ${err.condition || err.message}`;
    }
  });
  async function signOut() {
    await push.disable(app.conn).catch(() => {});
    await app.conn.close();
    session.clear();
    location.hash = '';
    location.reload();
  }
  $('sign-out').addEventListener('click', signOut);
}

const saved = session.get();
if (saved?.jid && saved.keys) {
  start({ jid: saved.jid, resource: saved.resource, secret: { keys: saved.keys }, token: saved.token, deviceId: saved.deviceId }, false);
}
else {
  const note = sessionStorage.getItem('kith.signed-out');
  sessionStorage.removeItem('kith.signed-out');
  showSignIn(note ? SIGNED_OUT + (note === 'kept' ? KEPT : '') : '');
}
