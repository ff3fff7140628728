"""The whole Web Push path with a real headless Firefox, offline.

Firefox subscribes through our LocalPushService (WebSocket, Mozilla Push
protocol), pywebpush encrypts and POSTs to the endpoint Firefox got, Firefox
decrypts, the service worker shows a notification and posts the payload back
to a tiny site on loopback. Needs firefox-esr (apt-get install -y firefox-esr).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from py_vapid.utils import b64urlencode
from pywebpush import WebPushException, webpush

from flask_webpush_targeted.testing import LocalPushService

# Without firefox-esr, FirefoxSession fails with the command that installs it.
pytestmark = pytest.mark.browser

CLAIMS = {"sub": "mailto:tests@example.com"}

SW_JS = """
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));
self.addEventListener('push', (event) => {
  const text = event.data ? event.data.text() : null;
  event.waitUntil((async () => {
    let shown = 'yes';
    try {
      await self.registration.showNotification('Test push', {body: text || '', tag: 'test'});
    } catch (err) {
      shown = 'error: ' + err;
    }
    const notifications = await self.registration.getNotifications({tag: 'test'});
    await fetch('/beacon', {method: 'POST', body: JSON.stringify(
      {payload: text, shown, notifications: notifications.length})});
  })());
});
"""

INDEX_HTML = """<!doctype html>
<meta charset="utf-8"><title>push test</title>
<script>
async function subscribe(key) {
  const registration = await navigator.serviceWorker.register('/sw.js');
  await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.subscribe(
    {userVisibleOnly: true, applicationServerKey: key});
  return JSON.stringify(subscription.toJSON());
}
async function unsubscribe() {
  const registration = await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.getSubscription();
  return subscription ? await subscription.unsubscribe() : false;
}
</script>
"""

# Call an async page function from Marionette's sandbox; report errors as values.
CALL_PAGE = """
const [name, args, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
window.wrappedJSObject[name](...args).then(
  (value) => done({value}), (err) => done({error: String(err)}));
"""


class Site:
    """A tiny static site on loopback whose /beacon collects what the service worker posts."""

    def __init__(self, root: Path) -> None:
        self.beacons: queue.Queue[dict[str, Any]] = queue.Queue()
        beacons = self.beacons

        class Handler(SimpleHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                beacons.put(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def beacon(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next beacon, or fail after `timeout` seconds."""
        try:
            return self.beacons.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no beacon within {timeout}s") from None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def service() -> Iterator[LocalPushService]:
    with LocalPushService() as svc:
        yield svc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(INDEX_HTML)
    (root / "sw.js").write_text(SW_JS)
    site = Site(root)
    yield site
    site.stop()


@pytest.fixture(scope="module")
def firefox(service: LocalPushService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from flask_webpush_targeted.testing import FirefoxSession

    started = time.perf_counter()
    with FirefoxSession(service.websocket_url,
                        profile_dir=tmp_path_factory.mktemp("profile")) as browser:
        print(f"Firefox started in {time.perf_counter() - started:.2f}s")
        yield browser


@pytest.fixture(scope="module")
def vapid() -> Vapid:
    key = Vapid()
    key.generate_keys()
    return key


def public_key(vapid: Vapid) -> str:
    return b64urlencode(vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


@pytest.fixture(scope="module")
def subscription(firefox: Any, site: Site, vapid: Vapid) -> dict[str, Any]:
    started = time.perf_counter()
    firefox.navigate(site.url + "/index.html")
    result = firefox.execute_async_script(CALL_PAGE, ["subscribe", [public_key(vapid)]])
    assert "error" not in result, result
    print(f"subscribed in {time.perf_counter() - started:.2f}s")
    return json.loads(result["value"])


def send(subscription: dict[str, Any], data: str, vapid: Vapid, **kwargs: Any) -> Any:
    return webpush(subscription, data, vapid_private_key=vapid, vapid_claims=dict(CLAIMS),
                   **kwargs)


def test_subscription_points_at_local_service(
    service: LocalPushService, subscription: dict[str, Any], vapid: Vapid
) -> None:
    assert subscription["endpoint"].startswith(service.origin + "/push/")
    channel = service.subscription(subscription["endpoint"])
    assert channel.is_browser and channel.channel_id in service.channels
    assert channel.application_server_key == vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert set(subscription["keys"]) == {"p256dh", "auth"}


def test_push_is_decrypted_by_firefox_and_shown(
    service: LocalPushService, site: Site, subscription: dict[str, Any], vapid: Vapid
) -> None:
    payload = json.dumps({"title": "Gate 12", "body": "Boarding closes 10:40 – ünïcødé ✈"})
    started = time.perf_counter()
    response = send(subscription, payload, vapid, ttl=60)
    assert response.status_code == 201
    beacon = site.beacon()
    print(f"push -> beacon in {time.perf_counter() - started:.3f}s")
    assert beacon == {"payload": payload, "shown": "yes", "notifications": 1}
    version = service.received_for(subscription)[-1].message_id
    acks = [a for a in service.wait_for_acks(1) if a.version == version]
    assert [a.code for a in acks] == [100]


def test_push_for_wrong_keys_is_not_delivered(
    service: LocalPushService, site: Site, subscription: dict[str, Any], vapid: Vapid
) -> None:
    wrong = {"endpoint": subscription["endpoint"], "keys": service.new_subscription()["keys"]}
    before = len(service.acks)
    assert send(wrong, "for someone else", vapid, ttl=60).status_code == 201
    version = service.received_for(subscription)[-1].message_id
    ack = service.wait_for_acks(before + 1)[-1]
    assert (ack.version, ack.code) == (version, 101)
    with pytest.raises(queue.Empty):
        site.beacons.get(timeout=0.5)


def test_other_vapid_key_is_forbidden(subscription: dict[str, Any]) -> None:
    other = Vapid()
    other.generate_keys()
    with pytest.raises(WebPushException) as info:
        send(subscription, "x", other, ttl=60)
    assert info.value.response is not None and info.value.response.status_code == 403


def test_offline_browser_gets_held_messages_on_reconnect(
    service: LocalPushService, site: Site, subscription: dict[str, Any], vapid: Vapid
) -> None:
    uaid = service.subscription(subscription).uaid
    assert uaid is not None
    service.disconnect(uaid, refuse_reconnect=True)
    assert send(subscription, "kept for a minute", vapid, ttl=60).status_code == 201
    assert send(subscription, "now or never", vapid, ttl=0).status_code == 201
    assert [p.ttl for p in service.dropped] == [0]
    started = time.perf_counter()
    service.allow_reconnect(uaid)
    service.wait_for_connection(uaid, timeout=30)
    beacon = site.beacon(timeout=10)
    print(f"reconnect -> beacon in {time.perf_counter() - started:.2f}s")
    assert beacon["payload"] == "kept for a minute"
    with pytest.raises(queue.Empty):
        site.beacons.get(timeout=0.5)


def test_unsubscribe_makes_endpoint_gone(
    service: LocalPushService, firefox: Any, subscription: dict[str, Any], vapid: Vapid
) -> None:
    result = firefox.execute_async_script(CALL_PAGE, ["unsubscribe", []])
    assert result == {"value": True}
    deadline = time.monotonic() + 5
    while not service.subscription(subscription).gone and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(WebPushException) as info:
        send(subscription, "too late", vapid, ttl=60)
    assert info.value.response is not None and info.value.response.status_code == 410
