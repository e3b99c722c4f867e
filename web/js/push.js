// Notifications through Web Push: a service worker subscribes with the server's
// VAPID key (GET /api/v1/push/vapid, RFC 8292) and the subscription is handed to
// the server with XEP-0357 <enable/> (jid = our domain, node = a per-browser
// id, endpoint/p256dh/auth in the publish-options form; features/push/).
import { NS, x, form, uid } from './xmpp/xml.js';
import { prefs } from './store.js';

const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const unb64url = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4)), (c) => c.charCodeAt(0));

export const supported = () => 'serviceWorker' in navigator && 'PushManager' in window && typeof Notification !== 'undefined';

export async function enable(conn) {
  if (!supported()) throw new Error('This browser cannot receive notifications.');
  if (await Notification.requestPermission() !== 'granted') throw new Error('Notifications are blocked for this site.');
  const vapid = await (await fetch('/api/v1/push/vapid')).json();
  if (!vapid.enabled || !vapid.publicKey) throw new Error('This server does not send push notifications.');
  const reg = await navigator.serviceWorker.register('/sw.js');
  await navigator.serviceWorker.ready;
  const sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: unb64url(vapid.publicKey) });
  const node = prefs.get('push-node', null) || uid();
  await conn.iq(x('iq', { type: 'set' }, x('enable', { xmlns: NS.PUSH, jid: conn.domain, node },
    form('http://jabber.org/protocol/pubsub#publish-options', {
      endpoint: sub.endpoint, p256dh: b64url(sub.getKey('p256dh')), auth: b64url(sub.getKey('auth')),
    }))));
  prefs.set('push-node', node);
  prefs.set('notify', true);
}

export async function disable(conn) {
  const node = prefs.get('push-node', null);
  prefs.set('notify', false);
  if (node) await conn.iq(x('iq', { type: 'set' }, x('disable', { xmlns: NS.PUSH, jid: conn.domain, node }))).catch(() => {});
  const reg = 'serviceWorker' in navigator ? await navigator.serviceWorker.getRegistration() : null;
  const sub = await reg?.pushManager.getSubscription();
  await sub?.unsubscribe();
}
