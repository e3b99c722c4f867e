// Service worker: shows Web Push notifications (RFC 8030) the server sends for
// messages that arrive while no tab is connected, and opens the client on click.
// The payload is JSON from kith (features/push/webpush.rs): {sender, count, body?}.
self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = {}; }
  const sender = typeof data.sender === 'string' ? data.sender : 'kith';
  const count = Number.isInteger(data.count) ? data.count : 1;
  const body = typeof data.body === 'string' ? data.body : count > 1 ? `${count} new messages` : 'New message';
  event.waitUntil(self.registration.showNotification(sender, { body, tag: sender, icon: 'icon.svg', data: { sender } }));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const target = '/#' + encodeURIComponent(event.notification.data?.sender || '');
  event.waitUntil((async () => {
    const tabs = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const tab of tabs) {
      if ('focus' in tab) { tab.navigate?.(target); return tab.focus(); }
    }
    return self.clients.openWindow(target);
  })());
});
