/* flask-webpush-targeted service worker. Served by the webpush.service_worker view. */
'use strict';
const APP_SERVER_KEY = {{ vapid_public_key|tojson }};
const ROTATE_URL = {{ rotate_url|tojson }};
const EVENTS_URL = {{ events_url|tojson }};
// The click route, completed by a delivery's token: it counts the click and redirects.
const CLICK_URL = {{ click_url|tojson }};
const STATE_KEY = new URL('__webpush_state__', self.registration.scope).href;

function keyBytes(b64) {
  const s = (b64 + '='.repeat((4 - b64.length % 4) % 4)).replace(/-/g, '+').replace(/_/g, '/');
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

// The subscription is remembered so that pushsubscriptionchange can prove
// ownership of the old one even where the browser gives no oldSubscription.
async function remember(subscription) {
  const sub = subscription || await self.registration.pushManager.getSubscription();
  if (!sub) return;
  const json = sub.toJSON();
  const cache = await caches.open('webpush-state');
  await cache.put(STATE_KEY, new Response(JSON.stringify({ endpoint: json.endpoint, auth: json.keys.auth })));
}

async function recall() {
  const cache = await caches.open('webpush-state');
  const response = await cache.match(STATE_KEY);
  return response ? response.json() : null;
}

function report(token, event, action) {
  if (!token) return Promise.resolve();
  const body = { token: token, event: event };
  if (action) body.action = action;
  return fetch(EVENTS_URL, {
    method: 'POST', credentials: 'omit', keepalive: true,
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  }).catch(() => undefined);
}

function sameOriginUrl(url) {
  try {
    const target = new URL(url || '/', self.location.origin);
    return target.origin === self.location.origin ? target.href : self.location.origin + '/';
  } catch (e) {
    return self.location.origin + '/';
  }
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim().then(() => remember())));
self.addEventListener('message', (event) => {
  if (event.data && event.data.type === 'webpush:subscribed') event.waitUntil(remember());
});

// A Declarative Web Push message ({"web_push": 8030, "notification": {...}}, which Safari
// shows without this worker) carries the package's own fields in notification.data.
function fromDeclarative(n) {
  const own = (n.data && typeof n.data === 'object') ? n.data : {};
  const p = Object.assign({}, own, { title: n.title, body: n.body, navigate: n.navigate,
                                     declarative: true });
  for (const key of ['tag', 'icon', 'silent', 'lang', 'dir']) {
    if (n[key] !== undefined && n[key] !== null) p[key] = n[key];
  }
  return p;
}

self.addEventListener('push', (event) => {
  let p;
  try {
    p = event.data ? event.data.json() : {};
  } catch (e) {
    p = { title: '', body: event.data ? event.data.text() : '' };
  }
  if (p && p.web_push === 8030 && p.notification && typeof p.notification === 'object') {
    p = fromDeclarative(p.notification);
  }
  const options = {
    body: p.body || '',
    data: { url: p.url || '/', token: p.token || null, data: p.data || null,
            declarative: !!p.declarative, navigate: p.navigate || null },
  };
  for (const key of ['icon', 'image', 'badge', 'tag', 'actions', 'silent', 'timestamp', 'lang', 'dir']) {
    if (p[key] !== undefined && p[key] !== null) options[key] = p[key];
  }
  if (p.require_interaction) options.requireInteraction = true;
  if (p.tag) options.renotify = !!p.renotify;
  event.waitUntil(
    self.registration.showNotification(p.title || self.location.hostname, options)
      .then(() => report(p.token, 'displayed'))
  );
});

self.addEventListener('notificationclick', (event) => {
  const data = event.notification.data || {};
  event.notification.close();
  if (data.declarative && data.token) {
    // As Safari does without this worker: the click route counts the click, then
    // redirects to the notification's URL (always on this site).
    let target = CLICK_URL + encodeURIComponent(data.token);
    if (event.action) target += '?action=' + encodeURIComponent(event.action);
    event.waitUntil(self.clients.openWindow(target));
    return;
  }
  const url = sameOriginUrl(data.url);
  event.waitUntil(Promise.all([
    report(data.token, 'clicked', event.action || null),
    self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((clients) => {
      const open = clients.find((c) => c.url === url && 'focus' in c);
      return open ? open.focus() : self.clients.openWindow(url);
    }),
  ]));
});

self.addEventListener('notificationclose', (event) => {
  const data = event.notification.data || {};
  event.waitUntil(report(data.token, 'closed'));
});

self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil((async () => {
    const old = event.oldSubscription
      ? { endpoint: event.oldSubscription.endpoint, auth: event.oldSubscription.toJSON().keys.auth }
      : await recall();
    const fresh = event.newSubscription || await self.registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: keyBytes(APP_SERVER_KEY),
    });
    if (!old) return;
    const response = await fetch(ROTATE_URL, {
      method: 'POST', credentials: 'omit', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ old: old, subscription: fresh.toJSON() }),
    });
    if (response.ok) await remember(fresh);
  })());
});
