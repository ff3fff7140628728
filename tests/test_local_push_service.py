"""LocalPushService with real parts: pywebpush encrypts and signs; the service verifies, decrypts.

The WebSocket side is exercised here with a plain websockets client speaking
the Mozilla Push protocol; tests/test_firefox_push.py does it with Firefox.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import http_ece
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from py_vapid.jwt import sign as jwt_sign
from pywebpush import WebPusher, WebPushException, webpush
from websockets.exceptions import ConnectionClosed

from flask_webpush_targeted.testing import LocalPushService, ReceivedPush

SUB = "mailto:shop@example.com"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(key: Vapid) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@pytest.fixture(scope="module")
def vapid() -> Vapid:
    key = Vapid()
    key.generate_keys()
    return key


@pytest.fixture
def service() -> Iterator[LocalPushService]:
    with LocalPushService() as svc:
        yield svc


def push(sub: dict[str, Any], data: str | None, vapid: Vapid | None, **kwargs: Any) -> int:
    """Send with pywebpush; return the status code whether it succeeded or not."""
    claims = {"sub": SUB, **kwargs.pop("claims", {})} if vapid is not None else None
    kwargs.setdefault("ttl", 60)
    try:
        response = webpush(sub, data, vapid_private_key=vapid, vapid_claims=claims, **kwargs)
    except WebPushException as exc:
        assert exc.response is not None
        return int(exc.response.status_code)
    return int(response.status_code)


def post_with_token(svc: LocalPushService, sub: dict[str, Any], token: str, k: bytes) -> int:
    """POST an encrypted message with a hand-made VAPID header."""
    headers = {"Authorization": f"vapid t={token}, k={b64url(k)}"}
    response = WebPusher(sub).send(b"hello", headers, ttl=60)
    assert isinstance(response, requests.Response)
    return response.status_code


# -- the happy path ----------------------------------------------------------


def test_new_subscription_looks_like_a_browsers(service: LocalPushService) -> None:
    sub = service.new_subscription()
    assert sub["endpoint"].startswith(service.origin + "/push/")
    assert sub["expirationTime"] is None
    p256dh, auth = sub["keys"]["p256dh"], sub["keys"]["auth"]
    assert "=" not in p256dh + auth
    point = unb64url(p256dh)
    assert len(point) == 65 and point[0] == 4
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert len(unb64url(auth)) == 16
    assert service.new_subscription()["endpoint"] != sub["endpoint"]
    assert service.websocket_url.startswith("ws://127.0.0.1:")


def test_pywebpush_payload_is_decrypted_exactly(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    payload = {"title": "Flight LO123 boards at gate 12", "body": "Zażółć gęślą jaźń ✈",
               "url": "/trips/42", "token": "abc"}
    response = webpush(sub, json.dumps(payload), vapid_private_key=vapid,
                       vapid_claims={"sub": SUB}, ttl=3600,
                       headers={"Urgency": "high", "Topic": "trip-42"})
    assert isinstance(response, requests.Response)
    assert response.status_code == 201
    assert response.headers["Location"].startswith(service.origin + "/m/")
    [received] = service.wait_for(1)
    assert isinstance(received, ReceivedPush) and received.ok
    assert received.json() == payload
    assert received.payload == json.dumps(payload).encode()
    assert (received.ttl, received.urgency, received.topic) == (3600, "high", "trip-42")
    assert received.headers["content-encoding"] == "aes128gcm"
    assert received.endpoint == sub["endpoint"]
    assert service.received_for(sub) == [received] == service.received_for(sub["endpoint"])
    assert response.headers["Location"].endswith(received.message_id)


def test_absent_urgency_and_topic_are_recorded_as_none(
    service: LocalPushService, vapid: Vapid
) -> None:
    sub = service.new_subscription()
    assert push(sub, "x", vapid, ttl=0) == 201
    [received] = service.wait_for(1)
    assert (received.ttl, received.urgency, received.topic) == (0, None, None)


def test_push_without_payload(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    assert push(sub, None, vapid) == 201
    assert service.wait_for(1)[0].payload == b""


def test_concurrent_senders(service: LocalPushService, vapid: Vapid) -> None:
    subs = [service.new_subscription() for _ in range(10)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: push(subs[i % 10], f"m{i}", vapid), range(50)))
    assert codes == [201] * 50
    received = service.wait_for(50)
    assert sorted(r.payload or b"" for r in received) == sorted(f"m{i}".encode() for i in range(50))
    assert service.request_count(subs[3]) == 5


def test_wait_for_times_out_clearly(service: LocalPushService) -> None:
    with pytest.raises(TimeoutError, match="expected 1 accepted push"):
        service.wait_for(1, timeout=0.2)


def test_clear_forgets_records(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    assert push(sub, "x", vapid) == 201
    service.clear()
    assert service.received == [] and service.request_count(sub) == 0


# -- what the service refuses ------------------------------------------------


def test_missing_vapid_is_401(service: LocalPushService) -> None:
    sub = service.new_subscription()
    assert push(sub, "x", None) == 401
    assert service.received == [] and service.request_count(sub) == 1


def test_forged_vapid_is_401(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    claims = {"aud": service.origin, "exp": int(time.time()) + 3600, "sub": SUB}
    token = jwt_sign(claims, vapid.private_key)
    intruder = Vapid()
    intruder.generate_keys()
    assert post_with_token(service, sub, token, raw_public(vapid)) == 201  # the genuine one
    assert post_with_token(service, sub, token, raw_public(intruder)) == 401  # k of another key
    head, body, sig = token.split(".")
    tampered = json.dumps({**claims, "sub": "mailto:evil@example.com"}).encode()
    assert post_with_token(service, sub, f"{head}.{b64url(tampered)}.{sig}",
                           raw_public(vapid)) == 401
    assert post_with_token(service, sub, "not-a-jwt", raw_public(vapid)) == 401
    response = requests.post(sub["endpoint"], data=b"x", timeout=5, headers={
        "TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == 401 and "VAPID" in response.json()["message"]


def test_wrong_aud_is_401(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    assert push(sub, "x", vapid, claims={"aud": "https://updates.push.services.mozilla.com"}) == 401
    assert push(sub, "x", vapid) == 201  # pywebpush derives aud from the endpoint


@pytest.mark.parametrize("claims", [
    {"exp": "past"},
    {"exp": "25h"},
    {"sub": None},
    {"sub": "shop@example.com"},
])
def test_bad_claims_are_401(
    service: LocalPushService, vapid: Vapid, claims: dict[str, Any]
) -> None:
    sub = service.new_subscription()
    now = int(time.time())
    full: dict[str, Any] = {"aud": service.origin, "exp": now + 3600, "sub": SUB}
    exp = {"past": now - 10, "25h": now + 25 * 3600}
    full.update({k: exp.get(v, v) if k == "exp" else v for k, v in claims.items()})
    full = {k: v for k, v in full.items() if v is not None}
    assert post_with_token(service, sub, jwt_sign(full, vapid.private_key),
                           raw_public(vapid)) == 401


def test_other_key_than_application_server_key_is_403(
    service: LocalPushService, vapid: Vapid
) -> None:
    sub = service.new_subscription(application_server_key=b64url(raw_public(vapid)))
    other = Vapid()
    other.generate_keys()
    assert push(sub, "x", other) == 403
    assert push(sub, "x", vapid) == 201


def test_unknown_and_gone_subscriptions(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    unknown = {**sub, "endpoint": service.origin + "/push/doesnotexist"}
    assert push(unknown, "x", vapid) == 404
    service.mark_gone(sub["endpoint"])
    assert push(sub, "x", vapid) == 410


def test_headers_are_validated(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    assert push(sub, "x", vapid, headers={"Urgency": "urgent"}) == 400
    assert push(sub, "x", vapid, headers={"Topic": "has spaces"}) == 400
    assert push(sub, "x", vapid, headers={"Topic": "t" * 33}) == 400
    assert push(sub, "x", vapid, content_encoding="aesgcm") == 400
    auth = vapid.sign({"sub": SUB, "aud": service.origin})["Authorization"]
    encrypted = WebPusher(sub).encode(b"x")["body"]
    response = requests.post(sub["endpoint"], data=encrypted, timeout=5, headers={
        "Authorization": auth, "Content-Encoding": "aes128gcm"})  # no TTL
    assert response.status_code == 400 and "TTL" in response.json()["message"]
    assert service.received == []


def test_body_limit_is_4096_bytes(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    # aes128gcm adds 86 header bytes, a 1-byte delimiter and a 16-byte tag: 3993 -> 4096.
    assert push(sub, "a" * 3994, vapid) == 413
    assert push(sub, "a" * 3993, vapid) == 201
    assert service.wait_for(1)[0].payload == b"a" * 3993


def test_undecryptable_body_is_recorded_as_failure(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    wrong = {"endpoint": sub["endpoint"], "keys": service.new_subscription()["keys"]}
    assert push(wrong, "secret", vapid) == 400
    [failure] = service.received_for(sub)
    assert not failure.ok and failure.status == 400 and failure.payload is None
    assert failure.error and "decrypt" in failure.error
    with pytest.raises(TimeoutError):
        service.wait_for(1, timeout=0.1)


def test_decrypt_false_records_body_only(vapid: Vapid) -> None:
    with LocalPushService(decrypt=False) as svc:
        sub = svc.new_subscription()
        assert push(sub, "opaque", vapid) == 201
        [received] = svc.wait_for(1)
        assert received.payload is None and len(received.body) == 86 + 6 + 17
        with pytest.raises(ValueError):
            received.json()


# -- fault injection ---------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410, 413, 500, 503])
def test_injected_status_once(service: LocalPushService, vapid: Vapid, status: int) -> None:
    sub = service.new_subscription()
    service.respond(sub["endpoint"], status, times=1)
    assert push(sub, "x", vapid) == status
    assert push(sub, "x", vapid) == 201
    assert service.request_count(sub) == 2
    assert len(service.received_for(sub)) == 1


def test_429_with_retry_after(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    service.respond(sub, 429, retry_after=30, times=2)
    for _ in range(2):
        with pytest.raises(WebPushException) as info:
            webpush(sub, "x", vapid_private_key=vapid, vapid_claims={"sub": SUB}, ttl=60)
        assert info.value.response is not None
        assert info.value.response.status_code == 429
        assert info.value.response.headers["Retry-After"] == "30"
    assert push(sub, "x", vapid) == 201
    assert service.request_count(sub["endpoint"]) == 3


def test_faults_queue_up_and_always(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    service.respond(sub, 503, times=1)
    service.respond(sub, 500, times=1)
    service.respond(sub, 410)  # from then on, always
    assert [push(sub, "x", vapid) for _ in range(5)] == [503, 500, 410, 410, 410]
    service.clear_faults(sub)
    assert push(sub, "x", vapid) == 201
    other = service.new_subscription()
    assert push(other, "x", vapid) == 201  # faults are per subscription


def test_slow_service(service: LocalPushService, vapid: Vapid) -> None:
    sub = service.new_subscription()
    service.respond(sub, 201, delay=0.5, times=1)  # slow but working
    started = time.perf_counter()
    assert push(sub, "slow", vapid) == 201
    assert time.perf_counter() - started >= 0.5
    assert service.wait_for(1)[0].payload == b"slow"
    service.respond(sub, 503, delay=0.3, times=1)  # slow and failing
    started = time.perf_counter()
    assert push(sub, "x", vapid) == 503
    assert time.perf_counter() - started >= 0.3
    service.respond(sub, 201, delay=1.0, times=1)
    with pytest.raises(requests.Timeout):  # and slow enough for a sender's timeout
        webpush(sub, "x", vapid_private_key=vapid, vapid_claims={"sub": SUB}, ttl=60,
                timeout=0.2)


# -- the WebSocket side, with a protocol-level client ------------------------


class FakeBrowser:
    """Just enough of a browser's push client to speak the Mozilla Push protocol."""

    def __init__(self, url: str, uaid: str | None = None) -> None:
        from websockets.sync.client import connect

        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, subprotocols=["push-notification"])  # type: ignore[list-item]
        )
        hello: dict[str, Any] = {"messageType": "hello", "broadcasts": {}, "use_webpush": True}
        if uaid:
            hello["uaid"] = uaid
        reply = self.call(hello)
        assert reply["status"] == 200 and reply["use_webpush"] is True
        self.uaid: str = reply["uaid"]

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.ws.send(json.dumps(message))
        return self.receive()

    def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(self.ws.recv(timeout)))

    def subscribe(self, key: bytes) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
        """Register a channel and make the keys a browser would keep."""
        channel_id = os.urandom(16).hex()
        reply = self.call({"messageType": "register", "channelID": channel_id, "key": b64url(key)})
        assert reply["status"] == 200 and reply["channelID"] == channel_id
        private = ec.generate_private_key(ec.SECP256R1())
        public = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        auth = os.urandom(16)
        sub = {"endpoint": reply["pushEndpoint"], "channelID": channel_id, "auth": auth,
               "keys": {"p256dh": b64url(public), "auth": b64url(auth)}}
        return sub, private

    def close(self) -> None:
        self._stack.close()


def test_websocket_protocol(service: LocalPushService, vapid: Vapid) -> None:
    browser = FakeBrowser(service.websocket_url)
    assert service.wait_for_connection() == browser.uaid
    assert browser.call({}) == {}  # ping
    sub, private = browser.subscribe(raw_public(vapid))
    assert sub["endpoint"].startswith(service.origin + "/push/")
    assert service.channels[sub["channelID"]].uaid == browser.uaid

    assert push(sub, "to the browser", vapid) == 201
    note = browser.receive()
    assert note["messageType"] == "notification" and note["channelID"] == sub["channelID"]
    assert note["headers"] == {"encoding": "aes128gcm"} and "=" not in note["data"]
    plain = http_ece.decrypt(unb64url(note["data"]), private_key=private,
                             auth_secret=sub["auth"], version="aes128gcm")
    assert plain == b"to the browser"
    [received] = service.wait_for(1)
    assert received.payload is None and received.message_id == note["version"]
    browser.ws.send(json.dumps({"messageType": "ack", "updates": [
        {"channelID": note["channelID"], "version": note["version"], "code": 100}]}))
    [ack] = service.wait_for_acks(1)
    assert (ack.uaid, ack.channel_id, ack.version, ack.code) == (
        browser.uaid, sub["channelID"], note["version"], 100)

    other = Vapid()
    other.generate_keys()
    assert push(sub, "x", other) == 403  # not the key given at register

    reply = browser.call({"messageType": "unregister", "channelID": sub["channelID"]})
    assert reply["status"] == 200
    assert push(sub, "x", vapid) == 410
    browser.close()


def test_offline_browser_gets_messages_within_ttl(service: LocalPushService, vapid: Vapid) -> None:
    browser = FakeBrowser(service.websocket_url)
    sub, _ = browser.subscribe(raw_public(vapid))
    uaid = browser.uaid
    browser.close()
    deadline = time.monotonic() + 5
    while uaid in service.connected_uaids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert push(sub, "kept", vapid, ttl=60) == 201
    assert push(sub, "short", vapid, ttl=1) == 201
    assert push(sub, "now or never", vapid, ttl=0) == 201
    assert [p.ttl for p in service.dropped] == [0]
    time.sleep(1.1)  # "short" expires meanwhile

    browser = FakeBrowser(service.websocket_url, uaid=uaid)
    assert browser.uaid == uaid  # the uaid is echoed, so the browser keeps its channels
    note = browser.receive()
    assert note["version"] == service.received_for(sub)[0].message_id
    with pytest.raises(TimeoutError):
        browser.receive(timeout=0.3)
    assert sorted(p.ttl for p in service.dropped) == [0, 1]
    browser.close()


def test_unacked_messages_are_redelivered(service: LocalPushService, vapid: Vapid) -> None:
    browser = FakeBrowser(service.websocket_url)
    sub, _ = browser.subscribe(raw_public(vapid))
    assert push(sub, "x", vapid, ttl=60) == 201
    first = browser.receive()
    service.disconnect(browser.uaid)  # a network loss before the ack
    again = FakeBrowser(service.websocket_url, uaid=browser.uaid)
    assert again.receive()["version"] == first["version"]
    again.ws.send(json.dumps({"messageType": "ack", "updates": [
        {"channelID": first["channelID"], "version": first["version"], "code": 100}]}))
    service.wait_for_acks(1)
    again.close()
    third = FakeBrowser(service.websocket_url, uaid=browser.uaid)
    with pytest.raises(TimeoutError):
        third.receive(timeout=0.3)  # acked messages are not sent again
    third.close()


def test_refused_reconnect(service: LocalPushService) -> None:
    browser = FakeBrowser(service.websocket_url)
    service.disconnect(browser.uaid, refuse_reconnect=True)
    with pytest.raises(ConnectionClosed):
        FakeBrowser(service.websocket_url, uaid=browser.uaid)
    service.allow_reconnect(browser.uaid)
    FakeBrowser(service.websocket_url, uaid=browser.uaid).close()


def test_stop_releases_ports(vapid: Vapid) -> None:
    svc = LocalPushService().start()
    sub = svc.new_subscription()
    svc.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(sub["endpoint"], data=b"", timeout=2)
    with pytest.raises(RuntimeError):
        _ = svc.origin
