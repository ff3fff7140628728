"""notify_user / notify_users: arguments, validation, targeting and the result of each delivery.

Workers are real `flask webpush worker --burst` processes on the real Redis; the
push service is the project's local one, which checks VAPID and decrypts what it
receives. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost

from flask_webpush_targeted import signals
from flask_webpush_targeted.exceptions import InvalidNotification, PayloadTooLarge
from flask_webpush_targeted.tracking import read_token
from flask_webpush_targeted.worker import make_worker


def notify(host: SendingHost, users: Any, **kw: Any) -> int:
    kw.setdefault("title", "Your order shipped")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def count_rows(host: SendingHost) -> tuple[int, int]:
    m = host.webpush.models
    with host.app.app_context():
        return (host.db.session.scalar(sa.select(sa.func.count()).select_from(m.Notification)),
                host.db.session.scalar(sa.select(sa.func.count()).select_from(m.Delivery)))


def test_notify_user_delivers_the_payload_decrypted_with_ttl_urgency_and_topic(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    with sending.app.app_context():
        n = sending.webpush.notify_user(
            "1", title="Flight LO123 boards at gate 12", body="Boarding closes 10:40.",
            url="/trips/42", ttl=timedelta(hours=1), urgency="high", topic="trip-42",
            icon="/static/icon.png", image="https://shop.example/img.png", badge="/b.png",
            tag="trip", actions=[{"action": "open", "title": "Open"}], data={"trip": 42},
            require_interaction=True, silent=False, category="travel")
        assert n.status == "queued" and n.id
        nid = n.id
    sending.run_worker()
    [push] = sending.push_service.received_for(sub.endpoint)
    payload = push.notification()
    assert payload["title"] == "Flight LO123 boards at gate 12"
    assert payload["body"] == "Boarding closes 10:40." and payload["url"] == "/trips/42"
    # The declarative format (the default) makes the icon absolute: WebKit has no base URL.
    assert (payload["icon"], payload["image"], payload["badge"], payload["tag"]) == (
        "https://shop.example/static/icon.png", "https://shop.example/img.png", "/b.png", "trip")
    assert payload["actions"] == [{"action": "open", "title": "Open"}]
    assert payload["data"] == {"trip": 42} and payload["require_interaction"] is True
    assert 3590 <= push.ttl <= 3600 and push.urgency == "high" and push.topic == "trip-42"
    [delivery] = sending.deliveries(nid)
    assert delivery.status == "sent" and delivery.status_code == 201 and delivery.sent_at
    with sending.app.app_context():
        assert read_token(payload["token"]) == delivery.id
        stats = sending.webpush.stats(nid)
    assert stats["sent"] == 1 and stats["deliveries"] == 1 and stats["pending"] == 0
    assert sending.notification(nid).status == "done"


def test_notify_returns_at_once_without_contacting_push_services(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    nid = notify(sending, ["1"])
    assert sending.push_service.request_count(sub.endpoint) == 0
    assert sending.notification(nid).status == "queued"
    assert sending.deliveries(nid) == []  # fan-out is the worker's job


def test_default_ttl_comes_from_config_and_is_never_zero(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    nid = notify(sending, ["1"])
    assert sending.notification(nid).ttl == sending.app.config["WEBPUSH_DEFAULT_TTL"] > 0
    sending.run_worker()
    assert sending.push_service.received_for(sub.endpoint)[0].ttl > 0


def test_devices_all_latest_list_and_callable_choose_the_right_subscriptions(
    sending: SendingHost,
) -> None:
    phone = sending.subscribe("1", "Phone")
    laptop = sending.subscribe("1", "Laptop")
    other = sending.subscribe("2", "Other user's")
    plans = {
        "all": (["1"], "all"),
        "latest": (["1"], "latest"),
        "list": (["1"], [phone.id]),
        "callable": (["1", "2"], lambda sub: sub.label != "Laptop"),
    }
    ids = {name: notify(sending, users, devices=devices) for name, (users, devices)
           in plans.items()}
    sending.run_worker()
    chosen = {name: sorted(d.subscription_id for d in sending.deliveries(nid))
              for name, nid in ids.items()}
    assert chosen == {"all": sorted([phone.id, laptop.id]), "latest": [laptop.id],
                      "list": [phone.id], "callable": sorted([phone.id, other.id])}


def test_a_subscription_id_of_another_user_is_refused_and_nothing_is_stored(
    sending: SendingHost,
) -> None:
    sending.subscribe("1")
    theirs = sending.subscribe("2")
    with pytest.raises(InvalidNotification, match="do not belong"):
        notify(sending, ["1"], devices=[theirs.id])
    with pytest.raises(InvalidNotification, match="do not belong"):
        notify(sending, ["1"], devices=[999999])
    # Beyond the id column's range (found by the API's property test: PostgreSQL raised).
    for huge in (2**31, -(2**63), 10**30):
        with pytest.raises(InvalidNotification, match="do not belong"):
            notify(sending, ["1"], devices=[huge])
    assert count_rows(sending) == (0, 0)


@pytest.mark.parametrize(("change", "error"), [
    ({"body": "x" * 4000}, PayloadTooLarge),
    ({"data": {"blob": "y" * 3900}}, PayloadTooLarge),
    ({"ttl": -1}, InvalidNotification),
    ({"ttl": 28 * 86400 + 1}, InvalidNotification),
    ({"ttl": 1.5}, InvalidNotification),
    ({"urgency": "urgent"}, InvalidNotification),
    ({"topic": "x" * 33}, InvalidNotification),
    ({"topic": "has space"}, InvalidNotification),
    ({"topic": "a+b/c="}, InvalidNotification),
    ({"send_at": datetime(2030, 1, 1)}, InvalidNotification),  # naive
    ({"url": "https://evil.example/phish"}, InvalidNotification),
    ({"url": "//evil.example/phish"}, InvalidNotification),
    ({"url": "javascript:alert(1)"}, InvalidNotification),
    ({"url": "http://[::1"}, InvalidNotification),
    ({"send_at": datetime(9999, 1, 1, tzinfo=UTC)}, InvalidNotification),
    ({"icon": "http://evil.example/i.png"}, InvalidNotification),
    ({"title": ""}, InvalidNotification),
    ({"devices": "some"}, InvalidNotification),
    ({"devices": []}, InvalidNotification),
    ({"actions": [{"action": "a"}]}, InvalidNotification),
    ({"data": {"when": datetime.now()}}, InvalidNotification),
    ({"idempotency_key": ""}, InvalidNotification),
    # Text that cannot be stored or encoded: lone surrogates (not UTF-8), NUL (PostgreSQL)
    ({"title": "\ud800"}, InvalidNotification),
    ({"body": "ok \udfff"}, InvalidNotification),
    ({"title": "a\x00b"}, InvalidNotification),
    ({"tag": "\ud800"}, InvalidNotification),
    ({"category": "sale\x00"}, InvalidNotification),
    ({"category": "\ud800"}, InvalidNotification),
    ({"idempotency_key": "k\x00"}, InvalidNotification),
    ({"idempotency_key": "\ud800"}, InvalidNotification),
    ({"data": {"\ud800": 1}}, InvalidNotification),
    # Not JSON, though Python's json writes it: PostgreSQL and browsers refuse NaN/Infinity
    ({"data": float("nan")}, InvalidNotification),
    ({"data": {"x": [math.inf]}}, InvalidNotification),
    ({"data": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
     InvalidNotification),  # 34 deep; the limit is 32
    ({"ttl": math.inf}, InvalidNotification),
    ({"ttl": math.nan}, InvalidNotification),
    ({"ttl": 10**400}, InvalidNotification),
    ({"send_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, InvalidNotification),
    ({"send_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))},
     InvalidNotification),
    ({"icon": {"src": "/i.png"}}, InvalidNotification),
    # URLs a browser resolves off-site: "\" is "/" to it, tabs and newlines are dropped
    ({"icon": "/\\evil.example/p.png"}, InvalidNotification),
    ({"url": "/\\evil.example/"}, InvalidNotification),
    ({"url": "\\\\evil.example/"}, InvalidNotification),
    ({"url": "/\t/evil.example/"}, InvalidNotification),
    ({"url": "/\n/evil.example/"}, InvalidNotification),
    ({"badge": "/\x00/evil.example/b.png"}, InvalidNotification),
    ({"image": "https://shop.example@evil.example/i.png"}, InvalidNotification),
    ({"image": "JavaScript:alert(1)"}, InvalidNotification),
    ({"actions": [{"action": "a", "title": "A", "icon": "https://evil.example/i.png"}]},
     InvalidNotification),
    ({"actions": [{"action": "a", "title": "A", "icon": "/\\evil.example/i.png"}]},
     InvalidNotification),
    ({"actions": [{"action": "a", "title": "A", "icon": {"src": "/i.png"}}]},
     InvalidNotification),
    ({"actions": [{"action": "a", "title": "\ud800"}]}, InvalidNotification),
])
def test_invalid_arguments_raise_a_specific_error_and_store_nothing(
    sending: SendingHost, change: dict[str, Any], error: type[Exception],
) -> None:
    sending.subscribe("1")
    with pytest.raises(error) as caught:
        notify(sending, ["1"], **change)
    assert str(caught.value)
    assert count_rows(sending) == (0, 0)


def test_urls_and_icons_on_the_site_are_kept_as_given(sending: SendingHost) -> None:
    sending.subscribe("1")
    nid = notify(sending, ["1"], url="HTTPS://Shop.Example:443/orders/7", icon="/i.png",
                 actions=[{"action": "track", "title": "Track", "icon": "/a.png"}])
    payload = sending.notification(nid).payload
    assert payload["url"] == "HTTPS://Shop.Example:443/orders/7"  # the same origin
    assert payload["actions"] == [{"action": "track", "title": "Track", "icon": "/a.png"}]


@pytest.mark.parametrize("user_id", ["a\x00b", "\ud800", "x" * 256, 10**300])
def test_a_user_id_that_cannot_be_stored_is_refused_before_anything_is_stored(
    sending: SendingHost, user_id: Any,
) -> None:
    # One such id in a list stored the notification; on PostgreSQL every fan-out run then
    # failed on the NUL and no user of the list got it.
    sending.subscribe("1")
    with pytest.raises(InvalidNotification, match="Invalid user"):
        notify(sending, ["1", user_id])
    assert count_rows(sending) == (0, 0)


def test_payload_limit_counts_the_tracking_token(sending: SendingHost) -> None:
    from flask_webpush_targeted.payload import MAX_PLAINTEXT, message_format
    from flask_webpush_targeted.tracking import MAX_TOKEN_LENGTH

    sending.subscribe("1")
    base = {"title": "T", "body": "", "url": "/", "tag": "webpush-" + "9" * 20}
    with sending.app.app_context():  # the format sent: declarative, the default
        room = MAX_PLAINTEXT - len(message_format().encoder(base)("x" * MAX_TOKEN_LENGTH))
    # The body that fits exactly once the token is in, and one byte more that does not.
    with pytest.raises(PayloadTooLarge):
        notify(sending, ["1"], title="T", body="b" * (room + 1))
    nid = notify(sending, ["1"], title="T", body="b" * room)
    sending.run_worker()
    assert [d.status for d in sending.deliveries(nid)] == ["sent"]


def test_users_without_a_consented_active_device_are_named(sending: SendingHost) -> None:
    sending.subscribe("1")
    revoked = sending.subscribe("2")
    with sending.app.app_context():
        sending.webpush.store.revoke("2", revoked.id)
    nid = notify(sending, ["1", "2", "3"])
    sending.run_worker()
    n = sending.notification(nid)
    assert sorted(n.users_without_devices) == ["2", "3"]
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
    assert (stats["targeted_users"], stats["users_without_devices"], stats["sent"]) == (3, 2, 1)


def test_same_idempotency_key_returns_the_same_notification_and_sends_once(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    first = notify(sending, ["1"], idempotency_key="trip-42-gate")
    again = notify(sending, ["1"], idempotency_key="trip-42-gate", title="Something else")
    assert first == again
    sending.run_worker()
    assert sending.push_service.request_count(sub.endpoint) == 1
    assert count_rows(sending) == (1, 1)


def test_consent_withdrawn_between_call_and_send_means_not_sent(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    kept = sending.subscribe("2")
    with sending.app.app_context():
        n = sending.webpush.notify_users(["1", "2"], title="Hi")
        # Fan out first, so the delivery rows exist before consent goes.
        from flask_webpush_targeted.jobs import fan_out

        sending.webpush.db.session.expire_all()
        nid = n.id
    with sending.app.app_context():
        from flask_webpush_targeted.redis_queue import get_queue

        get_queue().empty()
        fan_out(nid)
        sending.webpush.store.withdraw_consent("1")
    sending.run_worker()
    assert sending.push_service.request_count(sub.endpoint) == 0
    assert sending.push_service.request_count(kept.endpoint) == 1
    statuses = {d.subscription_id: (d.status, d.reason) for d in sending.deliveries(nid)}
    assert statuses[sub.id][0] == "skipped" and "consent" in statuses[sub.id][1]
    assert statuses[kept.id][0] == "sent"


def test_a_user_erased_before_their_delivery_is_sent_counts_skipped_and_the_send_finishes(
        sending: SendingHost) -> None:
    sending.subscribe("1")
    kept = sending.subscribe("2")
    with sending.app.app_context():
        nid = sending.webpush.notify_users(["1", "2"], title="Hi").id
    with sending.app.app_context():
        from flask_webpush_targeted.jobs import fan_out
        from flask_webpush_targeted.redis_queue import get_queue

        get_queue().empty()
        fan_out(nid)  # the delivery rows exist, pending, when the user is erased
        assert sending.webpush.forget_user("1")["deliveries"] == 1
    sending.run_worker()
    assert sending.push_service.request_count(kept.endpoint) == 1
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
    # The counters still add up (they tell the worker when a notification is done).
    assert (stats["deliveries"], stats["sent"], stats["skipped"]) == (2, 1, 1)
    assert sending.notification(nid).status == "done"


@pytest.mark.parametrize(("code", "status", "active"), [
    (404, "gone", False), (410, "gone", False),
    (400, "failed", True), (401, "failed", True), (403, "failed", True), (413, "failed", True),
])
def test_push_service_answers_map_to_delivery_states(
    sending: SendingHost, code: int, status: str, active: bool,
) -> None:
    sub = sending.subscribe("1")
    sending.push_service.respond(sub.endpoint, code)
    nid = notify(sending, ["1"])
    sending.run_worker()
    [delivery] = sending.deliveries(nid)
    assert (delivery.status, delivery.status_code) == (status, code)
    assert delivery.attempts == 1  # final at once: never retried
    with sending.app.app_context():
        row = sending.db.session.get(sending.webpush.models.Subscription, sub.id)
        # A VAPID misconfiguration (400/401/403) must never wipe subscribers.
        assert (row.revoked_at is None) is active
        assert row.revoked_reason == (None if active else "gone")
    assert sending.notification(nid).status == "done"


def test_a_wrong_vapid_key_fails_every_delivery_and_keeps_every_subscription(
    sending: SendingHost, push_service: Any,
) -> None:
    from flask_webpush_targeted.transport.vapid import generate_vapid_keys

    subs = [sending.subscribe(uid) for uid in ("1", "2")]
    nid = notify(sending, ["1", "2"])
    private, public = generate_vapid_keys()
    # Browser-bound subscriptions remember their applicationServerKey; minted ones with one too.
    for sub in subs:
        push_service.subscription(sub.endpoint).application_server_key = (
            sending.config["WEBPUSH_VAPID_PUBLIC_KEY"])
    sending.run_worker(WEBPUSH_VAPID_PRIVATE_KEY=private, WEBPUSH_VAPID_PUBLIC_KEY=public)
    assert {d.status_code for d in sending.deliveries(nid)} == {403}
    with sending.app.app_context():
        Sub = sending.webpush.models.Subscription
        assert sending.db.session.scalar(
            sa.select(sa.func.count()).select_from(Sub).where(Sub.revoked_at.is_(None))) == 2


def test_in_process_worker_fires_queued_sent_and_failed_signals(sending: SendingHost) -> None:
    ok = sending.subscribe("1")
    gone = sending.subscribe("2")
    sending.push_service.respond(gone.endpoint, 410)
    seen: dict[str, list[dict[str, Any]]] = {"queued": [], "sent": [], "failed": []}

    def recorder(kind: str) -> Any:
        return lambda sender, **kw: seen[kind].append(kw)

    with signals.notification_queued.connected_to(recorder("queued"), sending.app), \
            signals.delivery_sent.connected_to(recorder("sent"), sending.app), \
            signals.delivery_failed.connected_to(recorder("failed"), sending.app):
        nid = notify(sending, ["1", "2"])
        make_worker(sending.app, simple=True).work(burst=True)
    assert [kw["notification"].id for kw in seen["queued"]] == [nid]
    assert [kw["subscription_id"] for kw in seen["sent"]] == [ok.id]
    [failed] = seen["failed"]
    assert failed["subscription_id"] == gone.id and failed["gone"] is True
    assert failed["status_code"] == 410


def test_an_endpoint_no_longer_allowed_at_send_time_is_not_contacted(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    nid = notify(sending, ["1"])
    # The worker runs without the local push service in its allowed origins.
    sending.run_worker(WEBPUSH_EXTRA_PUSH_SERVICES=[])
    [delivery] = sending.deliveries(nid)
    assert delivery.status == "failed" and "endpoint refused" in delivery.reason
    assert sending.push_service.request_count(sub.endpoint) == 0


def test_endpoint_guard_refuses_hosts_resolving_to_private_addresses(monkeypatch: Any) -> None:
    # A fake resolver: this machine has no DNS for public push-service names, and a real
    # name resolving to a private address cannot be set up without editing /etc/hosts.
    import socket

    from flask_webpush_targeted.transport.guard import EndpointGuard

    answers = {"fcm.googleapis.com": "10.0.0.7", "web.push.apple.com": "17.57.146.1"}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 443))])
    guard = EndpointGuard([])
    assert "private" in (guard.problem("https://fcm.googleapis.com/fcm/send/x") or "")
    assert guard.problem("https://web.push.apple.com/QGx") is None
    assert "not a known" in (guard.problem("https://evil.example/x") or "")


def test_endpoint_guard_checks_every_endpoint_of_an_origin_it_already_knows() -> None:
    from flask_webpush_targeted.transport.guard import EndpointGuard

    # The origin's verdict is computed once; each endpoint's own characters still count.
    guard = EndpointGuard(["http://127.0.0.1:9"])
    assert guard.problem("http://127.0.0.1:9/push/a") is None
    assert guard.problem("http://127.0.0.1:9/push/b") is None
    assert "fragment" in (guard.problem("http://127.0.0.1:9/push/a#x") or "")
    assert "characters" in (guard.problem("http://127.0.0.1:9/push/a\\b") or "")
    assert "longer" in (guard.problem("http://127.0.0.1:9/" + "a" * 3000) or "")
    assert "user name" in (guard.problem("http://u@127.0.0.1:9/push/a") or "")
    for _ in range(2):  # a refused origin stays refused, from its cached verdict too
        assert "https" in (guard.problem("http://fcm.googleapis.com/fcm/send/x") or "")
        assert "localhost" in (guard.problem("https://push.localhost/x") or "")


def test_send_at_must_be_aware_and_a_future_one_is_scheduled(sending: SendingHost) -> None:
    sending.subscribe("1")
    later = datetime.now(UTC) + timedelta(hours=1)
    nid = notify(sending, ["1"], send_at=later)
    n = sending.notification(nid)
    assert n.status == "scheduled" and abs((n.send_at - later).total_seconds()) < 1
    start = time.monotonic()
    sending.run_worker()
    assert time.monotonic() - start < 30
    assert sending.deliveries(nid) == []  # not due: the burst worker leaves it scheduled


def test_send_command_notifies_users_from_options_and_a_file(
    sending: SendingHost, tmp_path: Any,
) -> None:
    subs = [sending.subscribe(uid) for uid in ("1", "2", "3")]
    ids = tmp_path / "ids.txt"
    ids.write_text("2\n\n3\n")
    runner = sending.app.test_cli_runner()
    result = runner.invoke(args=["webpush", "send", "--user", "1", "--users-file", str(ids),
                                 "--title", "Shop closes early", "--ttl", "600",
                                 "--urgency", "high", "--devices", "latest"])
    assert result.exit_code == 0, result.output
    assert "for 3 user(s)" in result.output
    sending.run_worker()
    for sub in subs:
        [push] = sending.push_service.received_for(sub.endpoint)
        assert push.notification()["title"] == "Shop closes early" and push.urgency == "high"
    bad = runner.invoke(args=["webpush", "send", "--user", "1", "--title", "x",
                              "--url", "https://evil.example/"])
    assert bad.exit_code != 0 and "relative or on this site" in bad.output


def test_send_command_refuses_a_users_file_with_a_nul_and_stores_nothing(
    sending: SendingHost, tmp_path: Any,
) -> None:
    sending.subscribe("1")
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"1\nbad\x00id\n")
    runner = sending.app.test_cli_runner()
    result = runner.invoke(args=["webpush", "send", "--users-file", str(ids), "--title", "x"])
    assert result.exit_code == 1 and "NUL" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    not_utf8 = tmp_path / "latin1.txt"
    not_utf8.write_bytes(b"1\nb\xe9a\n")
    result = runner.invoke(args=["webpush", "send", "--users-file", str(not_utf8),
                                 "--title", "x"])
    assert result.exit_code == 2 and "UTF-8" in result.output, result.output
    assert count_rows(sending) == (0, 0)
    assert runner.invoke(args=["webpush", "send", "--title", "x"]).exit_code != 0


@pytest.mark.parametrize("payload", [
    {}, {"title": "Soldes d'été ✓", "body": 'say "hi"\n', "data": {"a": [1, None]}},
    {"title": "x", "token": "set by a caller"},
])
def test_the_per_batch_payload_encoder_writes_the_same_bytes(payload: dict[str, Any]) -> None:
    from flask_webpush_targeted.payload import encode_payload, payload_encoder
    from flask_webpush_targeted.tracking import make_token

    token = make_token(123456789, 2_000_000_000, b"k" * 32)
    assert payload_encoder(payload)(token) == encode_payload(payload, token)
