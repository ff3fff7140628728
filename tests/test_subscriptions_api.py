"""The subscription JSON API: store, refresh, move, rotate, list, revoke; every bad input.

Every test taking ``app`` (or ``make_app``) runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import copy
import io
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import (
    FCM,
    VAPID_PUBLIC,
    LoggedInClient,
    assert_no_secrets,
    browser_keys,
    make_subscription,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask_login import logout_user
from flask_sqlalchemy import SQLAlchemy

from flask_webpush_targeted import WebPush, signals
from flask_webpush_targeted.models import utcnow
from flask_webpush_targeted.transport.b64url import b64url_decode, b64url_encode

TABLES = ("webpush_subscription", "webpush_consent", "webpush_notification", "webpush_delivery")
URL = "/webpush/subscriptions"

# P-256 (secp256r1) curve parameters, to prove a test point really is off the curve.
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


# -- helpers -------------------------------------------------------------------------------


def snapshot(app: Flask, db: SQLAlchemy) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the four tables, read in a fresh session."""
    with app.app_context():
        result = {}
        for name in TABLES:
            table = db.metadata.tables[name]
            rows = db.session.execute(sa.select(table).order_by(table.c.id)).all()
            result[name] = [tuple(row) for row in rows]
        return result


def subs_of(app: Flask, webpush: WebPush, **where: Any) -> list[dict[str, Any]]:
    """Subscription rows as dicts, read in a fresh session."""
    Sub = webpush.models.Subscription
    with app.app_context():
        query = sa.select(Sub).filter_by(**where).order_by(Sub.id)
        return [
            {c.name: getattr(s, c.key) for c in Sub.__table__.columns}
            for s in webpush.db.session.scalars(query)
        ]


def ledger(app: Flask, webpush: WebPush) -> list[tuple[Any, ...]]:
    """(user_id, action, reason, subscription_id) of every consent row, in order."""
    C = webpush.models.Consent
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(
            sa.select(C.user_id, C.action, C.reason, C.subscription_id).order_by(C.id))]


def assert_error(resp: Any, status: int, code: str) -> None:
    """The response is the API's error shape, exactly, with this status and code."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"].strip()


def valid_body(subscription: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"subscription": subscription or make_subscription(),
            "consent": {"notifications": True, "link_to_account": True, "text_version": "1"},
            "device_label": "Firefox on Linux"}


@pytest.fixture
def seeded(app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient) -> int:
    """User 1 has a device with one delivered notification: the tables are not empty."""
    resp = client.subscribe(make_subscription())
    assert resp.status_code == 201
    m = webpush.models
    with app.app_context():
        n = m.Notification(payload={"title": "t", "body": "b", "url": "/"},
                           targeting={"user_ids": ["1"], "devices": "all"}, ttl=60)
        db.session.add(n)
        db.session.flush()
        db.session.add(m.Delivery(notification_id=n.id, subscription_id=resp.get_json()["id"],
                                  user_id="1", status="sent", sent_at=utcnow()))
        db.session.commit()
    return resp.get_json()["id"]


def off_curve_point() -> bytes:
    """0x04 || x=1 || y=1: y^2 != x^3 - 3x + b (mod p), checked here."""
    x = y = 1
    assert (y * y - (x**3 - 3 * x + P256_B)) % P256_P != 0
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def compressed_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.CompressedPoint)


# -- storing a subscription ----------------------------------------------------------------


def test_new_subscription_is_201_and_stored_for_the_session_user(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sub = make_subscription()
    resp = client.subscribe(sub, device_label="  Firefox   on\nLinux ")
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["active"] is True and body["label"] == "Firefox on Linux"
    assert body["push_service"] == "fcm.googleapis.com"
    assert_no_secrets(resp.get_data(as_text=True), sub)
    [row] = subs_of(app, webpush)
    assert row["id"] == body["id"] and row["user_id"] == "1"
    assert row["endpoint"] == sub["endpoint"]
    assert (row["p256dh"], row["auth"]) == (sub["keys"]["p256dh"], sub["keys"]["auth"])
    assert row["consent_version"] == "1" and row["revoked_at"] is None
    assert ledger(app, webpush) == [("1", "granted", None, row["id"])]


def test_same_endpoint_same_user_is_200_refreshes_keys_and_keeps_one_row(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    first = make_subscription()
    sid = client.subscribe(first).get_json()["id"]
    again = {**first, "keys": browser_keys()}
    resp = client.subscribe(again)
    assert resp.status_code == 200
    assert resp.get_json()["id"] == sid
    assert_no_secrets(resp.get_data(as_text=True), first, again)
    [row] = subs_of(app, webpush)
    assert row["id"] == sid and row["user_id"] == "1"
    assert (row["p256dh"], row["auth"]) == (again["keys"]["p256dh"], again["keys"]["auth"])


def test_resubscribing_a_revoked_device_reactivates_the_same_row_with_201(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sub = make_subscription()
    sid = client.subscribe(sub).get_json()["id"]
    assert client.delete(f"{URL}/{sid}").status_code == 200
    resp = client.subscribe(sub)
    assert resp.status_code == 201 and resp.get_json()["id"] == sid
    [row] = subs_of(app, webpush)
    assert row["revoked_at"] is None and row["revoked_reason"] is None


def test_a_user_id_sent_by_the_client_is_ignored(
        app: Flask, webpush: WebPush, client: LoggedInClient, other_client: LoggedInClient
) -> None:
    resp = client.subscribe(make_subscription(), user_id="2")
    assert resp.status_code == 201
    assert [r["user_id"] for r in subs_of(app, webpush)] == ["1"]
    assert other_client.http.get(URL).get_json() == {"subscriptions": []}


def test_a_body_just_under_the_size_limit_is_accepted_and_the_label_is_cut(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    resp = client.subscribe(make_subscription(), device_label="x" * 3000)
    assert resp.status_code == 201
    assert resp.get_json()["label"] == "x" * 200


# -- text a browser sends that cannot be stored as it is --------------------------------------


def raw_post(client: LoggedInClient, url: str, text: str, **headers: str) -> Any:
    """POST a JSON text as written (json= would refuse or re-escape what is tested here)."""
    return client.http.post(url, data=text.encode(), headers={
        "X-CSRF-Token": client.csrf, "Content-Type": "application/json", **headers})


def subscribe_body(subscription: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"subscription": subscription, "consent": {
        "notifications": True, "link_to_account": True, "text_version": "1"}, **extra}


def test_a_lone_surrogate_in_a_label_is_a_400_and_stores_nothing(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient) -> None:
    before = snapshot(app, db)
    body = json.dumps(subscribe_body(make_subscription()))[:-1] + ', "device_label": "\\ud800"}'
    resp = raw_post(client, URL, body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "bad_request"
    assert "Unicode" in resp.get_json()["message"]
    assert snapshot(app, db) == before


def test_nul_and_control_characters_in_a_label_and_user_agent_are_cleaned(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    # Kept as typed, PostgreSQL refused the NUL (a 500); cleaned, the device is stored.
    resp = client.post_json(URL, subscribe_body(make_subscription(),
                                                device_label="Kitchen\x00 tablet\x07"),
                            headers={"User-Agent": "Mozilla/5.0\x00(X11; Linux)\x1b"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["label"] == "Kitchen tablet"
    [row] = subs_of(app, webpush)
    assert row["label"] == "Kitchen tablet" and row["user_agent"] == "Mozilla/5.0 (X11; Linux)"
    C = webpush.models.Consent
    with app.app_context():
        agents = webpush.db.session.scalars(sa.select(C.user_agent)).all()
    assert agents == ["Mozilla/5.0 (X11; Linux)"]


def test_a_label_of_control_characters_only_falls_back_to_the_user_agents_label(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    resp = client.post_json(URL, subscribe_body(make_subscription(), device_label="\x00\x01"),
                            headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/120.0"})
    assert resp.status_code == 201 and resp.get_json()["label"] == "Firefox on Linux"


def test_a_lone_surrogate_in_a_rotation_is_a_400_and_changes_nothing(
        app: Flask, db: SQLAlchemy, client: LoggedInClient) -> None:
    client.subscribe(make_subscription())
    before = snapshot(app, db)
    new = json.dumps(make_subscription())
    for old in ('{"endpoint": "\\ud800", "auth": "x"}',
                '{"endpoint": "https://fcm.googleapis.com/fcm/send/a", "auth": "\\udfff"}'):
        resp = raw_post(client, URL + "/rotate", f'{{"old": {old}, "subscription": {new}}}')
        assert resp.status_code == 400, resp.get_data(as_text=True)
        assert resp.get_json()["error"] == "bad_request"
    assert snapshot(app, db) == before


@pytest.mark.parametrize("url", [URL, URL + "/rotate", "/webpush/events"])
def test_json_nested_thousands_deep_within_the_size_limit_is_a_400(
        client: LoggedInClient, url: str) -> None:
    resp = raw_post(client, url, "[" * 2000 + "]" * 2000)  # 4,000 bytes: under the limit
    assert resp.status_code == 400, resp.get_data(as_text=True)[:200]
    assert resp.get_json()["error"] == "bad_request"


@pytest.mark.parametrize("sid", [2**31, 2**63, 10**30])
def test_delete_of_an_id_beyond_the_column_is_404(
        app: Flask, db: SQLAlchemy, client: LoggedInClient, sid: int) -> None:
    client.subscribe(make_subscription())
    before = snapshot(app, db)
    resp = client.delete(f"{URL}/{sid}")
    assert resp.status_code == 404 and resp.get_json()["error"] == "not_found"
    assert snapshot(app, db) == before


@pytest.mark.parametrize(("endpoint", "stored"), [
    (FCM + "abc", FCM + "abc"),
    # stored with its origin normalised (RFC 6454): no default port, lower-case host
    ("https://fcm.googleapis.com:443/fcm/send/abc", FCM + "abc"),
    ("HTTPS://FCM.googleapis.com:443/fcm/send/AbC", FCM + "AbC"),
    ("https://web.push.apple.com/QGx3aWNrZXQ", "https://web.push.apple.com/QGx3aWNrZXQ"),
    ("https://wns2-by3p.notify.windows.com/w/?token=BQYAAAB",
     "https://wns2-by3p.notify.windows.com/w/?token=BQYAAAB"),
    ("https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
     "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk"),
])
def test_endpoints_of_the_browsers_push_services_are_accepted(
        app: Flask, webpush: WebPush, client: LoggedInClient, endpoint: str, stored: str) -> None:
    resp = client.subscribe(make_subscription(endpoint))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert [r["endpoint"] for r in subs_of(app, webpush)] == [stored]


def test_one_subscription_in_two_spellings_is_one_row(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sub = make_subscription(FCM + "same-browser")
    assert client.subscribe(sub).status_code == 201
    respelled = {**sub, "endpoint": "https://FCM.GoogleAPIs.com:443/fcm/send/same-browser"}
    resp = client.subscribe(respelled)
    assert resp.status_code == 200, resp.get_data(as_text=True)  # the same device again
    assert [r["endpoint"] for r in subs_of(app, webpush)] == [FCM + "same-browser"]


def test_an_extra_push_service_keeps_its_own_port_and_loses_the_default_one(
        make_app: Any) -> None:
    app, _db, webpush = make_app(WEBPUSH_EXTRA_PUSH_SERVICES=["http://Push.Test:8080",
                                                              "https://push.test"])
    client = LoggedInClient(app, "1")
    for endpoint in ("HTTP://PUSH.TEST:8080/a", "https://push.test:443/b"):
        assert client.subscribe(make_subscription(endpoint)).status_code == 201
    assert sorted(r["endpoint"] for r in subs_of(app, webpush)) == [
        "http://push.test:8080/a", "https://push.test/b"]


def test_a_rotation_finds_the_old_subscription_in_another_spelling(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    old = make_subscription(FCM + "old-one")
    assert client.subscribe(old).status_code == 201
    new = make_subscription(FCM + "new-one")
    resp = client.http.post("/webpush/subscriptions/rotate", json={
        "old": {"endpoint": "https://fcm.googleapis.com:443/fcm/send/old-one",
                "auth": old["keys"]["auth"]},
        "subscription": new})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [r["endpoint"] for r in subs_of(app, webpush)] == [FCM + "new-one"]


# -- authentication and CSRF ---------------------------------------------------------------


def test_not_logged_in_is_401_and_stores_nothing(
        app: Flask, db: SQLAlchemy, seeded: int) -> None:
    before = snapshot(app, db)
    anonymous = app.test_client()
    assert_error(anonymous.post(URL, json=valid_body()), 401, "login_required")
    assert_error(anonymous.get(URL), 401, "login_required")
    assert_error(anonymous.delete(f"{URL}/{seeded}"), 401, "login_required")
    assert snapshot(app, db) == before


@pytest.mark.parametrize("token", [None, "", "wrong-token", "other-session"])
def test_subscribe_without_the_sessions_csrf_token_is_400(
        app: Flask, db: SQLAlchemy, seeded: int, client: LoggedInClient,
        other_client: LoggedInClient, token: str | None) -> None:
    before = snapshot(app, db)
    headers = {} if token is None else {
        "X-CSRF-Token": other_client.csrf if token == "other-session" else token}
    assert other_client.csrf != client.csrf
    resp = client.http.post(URL, json=valid_body(), headers=headers)
    assert_error(resp, 400, "csrf_failed")
    assert snapshot(app, db) == before


def test_with_csrf_disabled_by_the_host_a_subscribe_without_token_passes(
        make_app: Callable[..., Any]) -> None:
    app, _, webpush = make_app(WEBPUSH_CSRF_ENABLED=False)
    http = LoggedInClient(app, "1").http
    resp = http.post(URL, json=valid_body())
    assert resp.status_code == 201
    assert len(subs_of(app, webpush)) == 1


# -- bad input: 400 / 403 / 413 / 422, exact error shape, nothing written ------------------


class Raw:
    """A raw request body instead of JSON."""

    def __init__(self, data: bytes, content_type: str = "application/json") -> None:
        self.data, self.content_type = data, content_type


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Set (or with value=DELETE remove) body[path...] on a copy of the body."""
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return body
    return mutate


DELETE = object()

BAD_BODIES: list[Any] = [
    # malformed: 400
    pytest.param(lambda b: Raw(b'{"subscription": '), 400, "bad_request", id="truncated-json"),
    pytest.param(lambda b: Raw(b"\xff\xfe{}"), 400, "bad_request", id="not-utf8"),
    pytest.param(lambda b: Raw(b"[1, 2]"), 400, "bad_request", id="array-not-object"),
    pytest.param(lambda b: Raw(b'"text"'), 400, "bad_request", id="string-not-object"),
    pytest.param(lambda b: Raw(b"null"), 400, "bad_request", id="null-body"),
    pytest.param(lambda b: Raw(b""), 400, "bad_request", id="empty-body"),
    pytest.param(lambda b: Raw(b'{"subscription": {}}', "text/plain"), 400, "bad_request",
                 id="not-json-content-type"),
    pytest.param(_set("subscription", DELETE), 400, "bad_request", id="no-subscription"),
    pytest.param(_set("subscription", []), 400, "bad_request", id="subscription-list"),
    pytest.param(_set("subscription", "https://fcm.googleapis.com/x"), 400, "bad_request",
                 id="subscription-string"),
    pytest.param(_set("subscription.endpoint", DELETE), 400, "bad_request", id="no-endpoint"),
    pytest.param(_set("subscription.endpoint", 42), 400, "bad_request", id="endpoint-int"),
    pytest.param(_set("subscription.endpoint", ""), 400, "bad_request", id="endpoint-empty"),
    pytest.param(_set("subscription.keys", DELETE), 400, "bad_request", id="no-keys"),
    pytest.param(_set("subscription.keys", "p256dh"), 400, "bad_request", id="keys-string"),
    pytest.param(_set("subscription.keys.auth", DELETE), 400, "bad_request", id="no-auth"),
    pytest.param(_set("subscription.keys.p256dh", DELETE), 400, "bad_request", id="no-p256dh"),
    pytest.param(_set("subscription.keys.p256dh", 4), 400, "bad_request", id="p256dh-int"),
    pytest.param(_set("subscription.keys.auth", None), 400, "bad_request", id="auth-null"),
    pytest.param(_set("subscription.expirationTime", "soon"), 400, "bad_request",
                 id="expiration-string"),
    pytest.param(_set("subscription.expirationTime", True), 400, "bad_request",
                 id="expiration-bool"),
    pytest.param(_set("device_label", 7), 400, "bad_request", id="label-int"),
    pytest.param(_set("consent", "yes"), 400, "bad_request", id="consent-string"),
    pytest.param(_set("consent.notifications", "true"), 400, "bad_request",
                 id="consent-notifications-string"),
    pytest.param(_set("consent.link_to_account", 1), 400, "bad_request",
                 id="consent-link-int"),
    pytest.param(_set("consent.text_version", 1), 400, "bad_request", id="text-version-int"),
    pytest.param(_set("is_admin", True), 400, "bad_request", id="unknown-field"),
    # consent: 403
    pytest.param(_set("consent", DELETE), 403, "consent_required", id="consent-absent"),
    pytest.param(_set("consent", {}), 403, "consent_required", id="consent-empty"),
    pytest.param(_set("consent", {"notifications": False, "link_to_account": False,
                                  "text_version": "1"}), 403, "consent_required",
                 id="both-false"),
    pytest.param(_set("consent.notifications", False), 403, "consent_required",
                 id="notifications-false"),
    pytest.param(_set("consent.link_to_account", False), 403, "consent_required",
                 id="link-false"),
    pytest.param(_set("consent.link_to_account", DELETE), 403, "consent_required",
                 id="link-missing"),
    pytest.param(_set("consent.text_version", "0"), 403, "consent_required",
                 id="other-text-version"),
    pytest.param(_set("consent.text_version", DELETE), 403, "consent_required",
                 id="no-text-version"),
    # too large: 413
    pytest.param(_set("device_label", "x" * 5000), 413, "too_large", id="body-over-limit"),
    # endpoint: 422
    *[pytest.param(_set("subscription.endpoint", endpoint), 422, "invalid_subscription", id=name)
      for name, endpoint in [
          ("http", "http://fcm.googleapis.com/fcm/send/abc"),
          ("ftp", "ftp://fcm.googleapis.com/fcm/send/abc"),
          ("port-8443", "https://fcm.googleapis.com:8443/fcm/send/abc"),
          ("port-invalid", "https://fcm.googleapis.com:99999/fcm/send/abc"),
          ("userinfo", "https://user@fcm.googleapis.com/fcm/send/abc"),
          ("userinfo-password", "https://user:pw@fcm.googleapis.com/fcm/send/abc"),
          ("userinfo-other-host", "https://fcm.googleapis.com@evil.example/fcm/send/abc"),
          ("fragment", "https://fcm.googleapis.com/fcm/send/abc#frag"),
          ("too-long", FCM + "a" * 2048),
          ("ipv4", "https://192.0.2.10/fcm/send/abc"),
          ("ipv4-loopback", "https://127.0.0.1/fcm/send/abc"),
          ("ipv6", "https://[2001:db8::1]/fcm/send/abc"),
          ("ipv6-loopback", "https://[::1]/fcm/send/abc"),
          ("localhost", "https://localhost/fcm/send/abc"),
          ("sub-localhost", "https://push.localhost/fcm/send/abc"),
          ("unknown-host", "https://push.example.com/fcm/send/abc"),
          ("no-host", "https:///fcm/send/abc"),
          ("host-in-path", "https://evil.example/fcm.googleapis.com/"),
          ("host-as-prefix", "https://fcm.googleapis.com.evil.example/"),
          ("suffix-without-dot", "https://evilpush.apple.com/"),
          ("wildcard-suffix-without-dot", "https://evilnotify.windows.com/w/"),
          # a backslash ends the host for requests/urllib3 (and browsers): this one is
          # POSTed to evil.example although urlsplit sees a host under .push.apple.com
          ("backslash-in-host", "https://evil.example\\.push.apple.com/x"),
          ("crlf", "https://fcm.googleapis.com/fcm/send/a\r\nX-Evil: 1"),
          ("tab", "https://fcm.googleapis.com/fcm/send/a\tb"),
          ("space", "https://fcm.googleapis.com/fcm/send/a b"),
          ("local-push-service-not-configured", "http://127.0.0.1:8765/push/abc"),
      ]],
    # keys: 422
    *[pytest.param(_set(f"subscription.keys.{key}", value), 422, "invalid_subscription",
                   id=name)
      for name, key, value in [
          ("p256dh-off-curve", "p256dh", b64url_encode(off_curve_point())),
          ("p256dh-zero-point", "p256dh", b64url_encode(b"\x04" + bytes(64))),
          ("p256dh-x-above-p", "p256dh",
           b64url_encode(b"\x04" + (P256_P + 1).to_bytes(32, "big") + (1).to_bytes(32, "big"))),
          ("p256dh-compressed", "p256dh", b64url_encode(compressed_point())),
          ("p256dh-64-bytes", "p256dh", b64url_encode(secrets.token_bytes(64))),
          ("p256dh-66-bytes", "p256dh", b64url_encode(b"\x04" + secrets.token_bytes(65))),
          ("p256dh-not-base64url", "p256dh", "not base64url!"),
          ("p256dh-empty", "p256dh", ""),
          ("auth-15-bytes", "auth", b64url_encode(secrets.token_bytes(15))),
          ("auth-17-bytes", "auth", b64url_encode(secrets.token_bytes(17))),
          ("auth-32-bytes", "auth", b64url_encode(secrets.token_bytes(32))),
          ("auth-not-base64url", "auth", "****"),
          ("auth-empty", "auth", ""),
      ]],
]


@pytest.mark.parametrize(("mutate", "status", "code"), BAD_BODIES)
def test_bad_subscribe_request_gets_exact_error_body_and_changes_nothing(
        app: Flask, db: SQLAlchemy, seeded: int, client: LoggedInClient,
        mutate: Callable[[dict[str, Any]], Any], status: int, code: str) -> None:
    before = snapshot(app, db)
    body = mutate(copy.deepcopy(valid_body()))
    if isinstance(body, Raw):
        resp = client.http.post(URL, data=body.data, content_type=body.content_type,
                                headers={"X-CSRF-Token": client.csrf})
    else:
        resp = client.post_json(URL, body)
    assert_error(resp, status, code)
    assert snapshot(app, db) == before


@pytest.mark.parametrize("size", [4097, 100_000])
def test_chunked_body_without_content_length_over_the_limit_is_413(
        app: Flask, db: SQLAlchemy, seeded: int, client: LoggedInClient, size: int) -> None:
    """A server passes a chunked body on with no Content-Length: the limit still holds."""
    body = json.dumps(valid_body()).encode()
    body += b" " * (size - len(body))
    before = snapshot(app, db)
    resp = client.http.post(
        URL, input_stream=io.BytesIO(body), content_type="application/json",
        headers={"X-CSRF-Token": client.csrf, "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True})
    assert_error(resp, 413, "too_large")
    assert snapshot(app, db) == before


def test_chunked_body_within_the_limit_is_accepted(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    resp = client.http.post(
        URL, input_stream=io.BytesIO(json.dumps(valid_body()).encode()),
        content_type="application/json",
        headers={"X-CSRF-Token": client.csrf, "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert len(subs_of(app, webpush)) == 1


def test_off_curve_test_point_is_rejected_by_cryptography_too() -> None:
    with pytest.raises(ValueError):
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), off_curve_point())


def test_extra_push_service_admits_exactly_that_origin(make_app: Callable[..., Any]) -> None:
    app, db, webpush = make_app(WEBPUSH_EXTRA_PUSH_SERVICES=["http://127.0.0.1:8765"])
    client = LoggedInClient(app, "1")
    ok = make_subscription("http://127.0.0.1:8765/push/abc")
    assert client.subscribe(ok).status_code == 201
    before = snapshot(app, db)
    for endpoint in ("http://127.0.0.1:8766/push/abc", "https://127.0.0.1:8765/push/abc",
                     "http://localhost:8765/push/abc", "http://127.0.0.1/push/abc",
                     "http://user@127.0.0.1:8765/push/abc"):
        assert_error(client.subscribe(make_subscription(endpoint)), 422,
                     "invalid_subscription")
    assert snapshot(app, db) == before
    assert [r["endpoint"] for r in subs_of(app, webpush)] == [ok["endpoint"]]


# -- listing and revoking ------------------------------------------------------------------


def test_list_shows_only_the_users_own_devices_without_endpoints_or_keys(
        app: Flask, client: LoggedInClient, other_client: LoggedInClient) -> None:
    mine = [make_subscription(), make_subscription()]
    theirs = make_subscription()
    my_ids = {client.subscribe(s).get_json()["id"] for s in mine}
    their_id = other_client.subscribe(theirs).get_json()["id"]
    resp = client.http.get(URL)
    assert resp.status_code == 200
    assert {s["id"] for s in resp.get_json()["subscriptions"]} == my_ids
    assert_no_secrets(resp.get_data(as_text=True), *mine, theirs)
    assert [s["id"] for s in other_client.http.get(URL).get_json()["subscriptions"]] == [their_id]


def test_delete_own_device_revokes_it_records_withdrawal_and_signals(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sub = make_subscription()
    sid = client.subscribe(sub).get_json()["id"]
    revoked: list[dict[str, Any]] = []

    def receiver(sender: Flask, **kw: Any) -> None:
        revoked.append({"sender": sender, "id": kw["subscription"].id, "reason": kw["reason"]})

    with signals.subscription_revoked.connected_to(receiver, app):
        resp = client.delete(f"{URL}/{sid}")
    assert resp.status_code == 200
    assert resp.get_json()["active"] is False and resp.get_json()["revoked_at"]
    assert_no_secrets(resp.get_data(as_text=True), sub)
    [row] = subs_of(app, webpush)
    assert row["revoked_at"] is not None and row["revoked_reason"] == "device_revoked"
    assert ledger(app, webpush) == [("1", "granted", None, sid),
                                    ("1", "withdrawn", "device_revoked", sid)]
    assert revoked == [{"sender": app, "id": sid, "reason": "device_revoked"}]
    # the device list still shows it, inactive
    [listed] = client.http.get(URL).get_json()["subscriptions"]
    assert listed["id"] == sid and listed["active"] is False


def test_delete_of_another_users_device_is_404_and_changes_nothing(
        app: Flask, db: SQLAlchemy, seeded: int, other_client: LoggedInClient) -> None:
    before = snapshot(app, db)
    assert_error(other_client.delete(f"{URL}/{seeded}"), 404, "not_found")
    assert_error(other_client.delete(f"{URL}/{seeded + 1000}"), 404, "not_found")
    assert snapshot(app, db) == before


def test_delete_without_csrf_token_is_400_and_changes_nothing(
        app: Flask, db: SQLAlchemy, seeded: int, client: LoggedInClient) -> None:
    before = snapshot(app, db)
    assert_error(client.http.delete(f"{URL}/{seeded}"), 400, "csrf_failed")
    assert_error(client.http.delete(f"{URL}/{seeded}", headers={"X-CSRF-Token": "x"}),
                 400, "csrf_failed")
    assert snapshot(app, db) == before


# -- one browser, one account: the device moves ---------------------------------------------


def test_same_endpoint_posted_by_another_user_moves_the_device(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    sub = make_subscription()
    sid = client.subscribe(sub).get_json()["id"]
    moved: list[dict[str, Any]] = []
    created: list[int] = []

    def on_moved(sender: Flask, **kw: Any) -> None:
        moved.append({"id": kw["subscription"].id, "from": kw["from_user_id"],
                      "to": kw["to_user_id"]})

    with signals.subscription_moved.connected_to(on_moved, app), \
            signals.subscription_created.connected_to(
                lambda sender, **kw: created.append(kw["subscription"].id), app):
        resp = other_client.subscribe({**sub, "keys": browser_keys()})
    assert resp.status_code == 201 and resp.get_json()["id"] == sid
    [row] = subs_of(app, webpush)
    assert row["user_id"] == "2" and row["revoked_at"] is None
    assert ledger(app, webpush) == [("1", "granted", None, sid), ("1", "withdrawn", "moved", sid),
                                    ("2", "granted", None, sid)]
    assert moved == [{"id": sid, "from": "1", "to": "2"}]
    assert created == [sid]
    assert client.http.get(URL).get_json() == {"subscriptions": []}
    assert_error(client.delete(f"{URL}/{sid}"), 404, "not_found")


def test_subscription_created_fires_for_new_rows_only(
        app: Flask, client: LoggedInClient) -> None:
    created: list[tuple[Flask, int]] = []
    sub = make_subscription()
    with signals.subscription_created.connected_to(
            lambda sender, **kw: created.append((sender, kw["subscription"].id)), app):
        sid = client.subscribe(sub).get_json()["id"]
        assert client.subscribe(sub).status_code == 200
    assert created == [(app, sid)]


# -- rotation (pushsubscriptionchange) -----------------------------------------------------

ROTATE = URL + "/rotate"


def test_rotation_with_old_endpoint_and_auth_replaces_endpoint_and_keys_in_place(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    old = make_subscription()
    sid = client.subscribe(old).get_json()["id"]
    new = make_subscription()
    resp = app.test_client().post(ROTATE, json={
        "old": {"endpoint": old["endpoint"], "auth": old["keys"]["auth"]}, "subscription": new})
    assert resp.status_code == 200
    assert resp.get_json()["id"] == sid
    assert_no_secrets(resp.get_data(as_text=True), old, new)
    [row] = subs_of(app, webpush)
    assert row["id"] == sid and row["user_id"] == "1" and row["revoked_at"] is None
    assert row["endpoint"] == new["endpoint"]
    assert (row["p256dh"], row["auth"]) == (new["keys"]["p256dh"], new["keys"]["auth"])


@pytest.mark.parametrize("case", ["wrong-auth", "unknown-endpoint", "revoked"])
def test_rotation_with_wrong_proof_is_404_and_changes_nothing(
        app: Flask, db: SQLAlchemy, client: LoggedInClient, case: str) -> None:
    old = make_subscription()
    sid = client.subscribe(old).get_json()["id"]
    if case == "revoked":
        client.delete(f"{URL}/{sid}")
    proof = {"endpoint": old["endpoint"], "auth": old["keys"]["auth"]}
    if case == "wrong-auth":
        proof["auth"] = browser_keys()["auth"]
    elif case == "unknown-endpoint":
        proof["endpoint"] = FCM + "never-stored"
    before = snapshot(app, db)
    resp = app.test_client().post(ROTATE, json={"old": proof, "subscription": make_subscription()})
    assert_error(resp, 404, "not_found")
    assert snapshot(app, db) == before


@pytest.mark.parametrize("new_endpoint", [
    "https://evil.example/push", "http://fcm.googleapis.com/fcm/send/x",
    "https://127.0.0.1/push",
])
def test_rotation_to_an_invalid_endpoint_is_422_and_changes_nothing(
        app: Flask, db: SQLAlchemy, client: LoggedInClient, new_endpoint: str) -> None:
    old = make_subscription()
    client.subscribe(old)
    before = snapshot(app, db)
    resp = app.test_client().post(ROTATE, json={
        "old": {"endpoint": old["endpoint"], "auth": old["keys"]["auth"]},
        "subscription": make_subscription(new_endpoint)})
    assert_error(resp, 422, "invalid_subscription")
    assert snapshot(app, db) == before


@pytest.mark.parametrize("body", [
    {}, {"subscription": {}}, {"old": "x", "subscription": {}},
    {"old": {"endpoint": FCM + "x"}, "subscription": None},
])
def test_rotation_with_malformed_body_is_400(
        app: Flask, db: SQLAlchemy, seeded: int, body: dict[str, Any]) -> None:
    before = snapshot(app, db)
    assert_error(app.test_client().post(ROTATE, json=body), 400, "bad_request")
    assert snapshot(app, db) == before


# -- unbinding at logout -------------------------------------------------------------------


def _add_logout_route(app: Flask) -> None:
    @app.route("/logout")
    def logout() -> str:
        logout_user()
        return "bye"


def test_unbind_on_logout_revokes_the_subscriptions_made_in_that_session(
        make_app: Callable[..., Any]) -> None:
    app, _, webpush = make_app(WEBPUSH_UNBIND_ON_LOGOUT=True)
    _add_logout_route(app)
    here, elsewhere = LoggedInClient(app, "1"), LoggedInClient(app, "1")
    here_id = here.subscribe(make_subscription()).get_json()["id"]
    elsewhere_id = elsewhere.subscribe(make_subscription()).get_json()["id"]
    revoked: list[tuple[int, str]] = []
    with signals.subscription_revoked.connected_to(
            lambda sender, **kw: revoked.append((kw["subscription"].id, kw["reason"])), app):
        assert here.http.get("/logout").status_code == 200
    rows = {r["id"]: r for r in subs_of(app, webpush)}
    assert rows[here_id]["revoked_reason"] == "logout" and rows[here_id]["revoked_at"]
    assert rows[elsewhere_id]["revoked_at"] is None
    assert revoked == [(here_id, "logout")]
    assert ("1", "withdrawn", "logout", here_id) in ledger(app, webpush)


def test_unbind_on_logout_leaves_a_device_that_moved_to_another_user(
        make_app: Callable[..., Any]) -> None:
    app, _, webpush = make_app(WEBPUSH_UNBIND_ON_LOGOUT=True)
    _add_logout_route(app)
    one, two = LoggedInClient(app, "1"), LoggedInClient(app, "2")
    sub = make_subscription()
    sid = one.subscribe(sub).get_json()["id"]
    two.subscribe(sub)
    one.http.get("/logout")
    [row] = subs_of(app, webpush)
    assert row["id"] == sid and row["user_id"] == "2" and row["revoked_at"] is None


def test_without_unbind_on_logout_subscriptions_stay_active(
        make_app: Callable[..., Any]) -> None:
    app, _, webpush = make_app()
    assert app.config["WEBPUSH_UNBIND_ON_LOGOUT"] is False
    _add_logout_route(app)
    client = LoggedInClient(app, "1")
    client.subscribe(make_subscription())
    assert client.http.get("/logout").status_code == 200
    assert_error(client.http.get(URL), 401, "login_required")  # really logged out
    [row] = subs_of(app, webpush)
    assert row["revoked_at"] is None


def test_vapid_public_key_endpoint_is_the_configured_key(app: Flask) -> None:
    resp = app.test_client().get("/webpush/vapid-public-key")
    assert resp.status_code == 200
    assert resp.get_json() == {"public_key": VAPID_PUBLIC}
    assert len(b64url_decode(resp.get_json()["public_key"])) == 65
