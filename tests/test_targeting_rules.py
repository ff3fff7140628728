"""Respectful targeting end to end: preferences, quiet hours, local time, frequency caps and
throttling, on SQLite and PostgreSQL with the real Redis and the local push service.

Tests of what happens *when* run the jobs in this process on an injected clock
(pipeline_driver); the others run real `flask webpush worker` processes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from pipeline_driver import InProcessQueue

from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.exceptions import InvalidNotification, InvalidPreferences

CATEGORIES = {
    "orders": {"label": "Order updates", "required": True, "quiet_hours": None},
    "marketing": {"label": "Offers", "description": "Discounts and sales",
                  "cap": (1, timedelta(days=1))},
    "news": {"label": "News", "default": True},
}
QUIET = ("21:00", "08:00")
#: 13:00 UTC: night in Tokyo (22:00), day in Warsaw (14:00), morning in New York (08:00)
NOON = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def rules_host(make_host: Any, **config: Any) -> SendingHost:
    settings = {"WEBPUSH_CATEGORIES": CATEGORIES, "WEBPUSH_QUIET_HOURS": QUIET, **config}
    host: SendingHost = make_host(**settings)
    return host


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Hello")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def stats(host: SendingHost, nid: int) -> dict[str, Any]:
    with host.app.app_context():
        return host.webpush.stats(nid)


def statuses(host: SendingHost, nid: int) -> dict[int, str]:
    return {d.subscription_id: d.status for d in host.deliveries(nid)}


# -- preferences --------------------------------------------------------------------------------


def test_a_customer_who_turned_marketing_off_gets_the_order_update_and_not_the_offer(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host, WEBPUSH_QUIET_HOURS=None)
    keen, refuser, silent = host.subscribe("1"), host.subscribe("2"), host.subscribe("3")
    with host.app.app_context():
        assert host.webpush.set_preferences("1", {"marketing": True}) == {
            "orders": True, "marketing": True, "news": True}
        host.webpush.set_preferences("2", {"marketing": True})
        host.webpush.set_preferences("2", {"marketing": False}, source="devices_page")
    order = notify(host, ["1", "2", "3"], category="orders", title="Your parcel is on its way")
    offer = notify(host, ["1", "2", "3"], category="marketing", title="20% off")
    host.run_worker()
    assert statuses(host, order) == {keen.id: "sent", refuser.id: "sent", silent.id: "sent"}
    assert statuses(host, offer) == {keen.id: "sent"}
    figures = stats(host, offer)
    assert (figures["opted_out"], figures["sent"], figures["targeted_users"]) == (2, 1, 3)
    assert stats(host, order)["opted_out"] == 0
    assert host.notification(offer).users_opted_out == ["2", "3"]
    with host.app.app_context():
        export = host.webpush.export_user("2")
    assert export["preferences"] == {"orders": True, "marketing": False, "news": True}
    choices = [(c["scope"], c["action"], c["source"]) for c in export["consents"]
               if c["scope"]]
    assert choices == [("category:marketing", "granted", "host"),
                       ("category:marketing", "withdrawn", "devices_page")]


def test_no_category_means_the_first_required_one_and_an_unknown_one_is_refused(
        make_host: Any) -> None:
    host = rules_host(make_host)
    with host.app.app_context():
        assert host.webpush.notify_users(["1"], title="t").category == "orders"
        with pytest.raises(InvalidNotification, match="not one of WEBPUSH_CATEGORIES"):
            host.webpush.notify_users(["1"], title="t", category="promo")
        with pytest.raises(InvalidPreferences, match="required"):
            host.webpush.set_preferences("1", {"orders": False})
        with pytest.raises(InvalidPreferences, match="not a category"):
            host.webpush.set_preferences("1", {"promo": True})
        with pytest.raises(InvalidPreferences, match="true or false"):
            host.webpush.set_preferences("1", {"marketing": "yes"})
        assert host.webpush.preferences("1") == {"orders": True, "marketing": False,
                                                 "news": True}
        consent = host.webpush.models.Consent
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(consent)) == 0


def test_a_choice_made_while_a_delivery_is_held_stops_it(make_host: Any,
                                                        push_service: Any) -> None:
    host = rules_host(make_host)
    night = host.subscribe("1", timezone="Asia/Tokyo")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
    clock = ManualClock(NOON)
    with use_clock(clock):
        nid = notify(host, ["1"], category="marketing")
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        assert statuses(host, nid) == {night.id: "pending"}
        with host.app.app_context():
            host.webpush.set_preferences("1", {"marketing": False}, source="devices_page")
        clock.now = datetime(2026, 12, 1, 23, 0, 1, tzinfo=UTC)  # 08:00 in Tokyo
        queue.run_all()
    [d] = host.deliveries(nid)
    assert (d.status, d.reason) == ("skipped", "category turned off")
    assert push_service.request_count(night.endpoint) == 0
    assert host.notification(nid).status == "done"


# -- quiet hours and local time -------------------------------------------------------------


def test_quiet_hours_hold_a_device_at_night_send_one_at_day_and_release_the_held_one(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host)
    night = host.subscribe("1", timezone="Asia/Tokyo")
    day = host.subscribe("2", timezone="Europe/Warsaw")
    with host.app.app_context():
        for user in ("1", "2"):
            host.webpush.set_preferences(user, {"marketing": True})
    clock = ManualClock(NOON)
    with use_clock(clock):
        nid = notify(host, ["1", "2"], category="marketing", ttl=3600)
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        assert statuses(host, nid) == {night.id: "pending", day.id: "sent"}
        assert stats(host, nid)["held"] == 1
        held = next(d for d in host.deliveries(nid) if d.subscription_id == night.id)
        release = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
        assert held.due_at == release == held.next_attempt_at
        assert any(at == release.timestamp() for at, name, _args in queue.scheduled()
                   if name == "send_batch")
        clock.now = release - timedelta(seconds=5)
        queue.run_all()
        assert statuses(host, nid)[night.id] == "pending"
        # Ten hours after the call, a one-hour validity still has all of its hour: it starts
        # when the hold ends.
        clock.now = release + timedelta(seconds=1)
        queue.run_all()
        assert statuses(host, nid) == {night.id: "sent", day.id: "sent"}
        assert stats(host, nid)["held"] == 0
    [push] = push_service.received_for(night.endpoint)
    assert 3590 <= push.ttl <= 3600
    assert host.notification(nid).status == "done"


def test_quiet_hours_false_and_a_category_without_them_send_at_night(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host)
    night = host.subscribe("1", timezone="Asia/Tokyo")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
    clock = ManualClock(NOON)
    with use_clock(clock):
        order = notify(host, ["1"], category="orders")
        urgent = notify(host, ["1"], category="marketing", quiet_hours=False)
        InProcessQueue(host.app, clock).run_all()
    assert statuses(host, order) == statuses(host, urgent) == {night.id: "sent"}


def test_a_device_without_a_time_zone_counts_in_the_default_one(make_host: Any) -> None:
    host = rules_host(make_host, WEBPUSH_DEFAULT_TIMEZONE="Asia/Tokyo")
    unknown = host.subscribe("1")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
    clock = ManualClock(NOON)
    with use_clock(clock):
        nid = notify(host, ["1"], category="marketing")
        InProcessQueue(host.app, clock).run_all()
    assert statuses(host, nid) == {unknown.id: "pending"}


def test_local_time_delivery_lands_at_nine_in_three_time_zones(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host, WEBPUSH_QUIET_HOURS=None)
    zones = {"1": "America/New_York", "2": "Europe/Warsaw", "3": "Asia/Tokyo"}
    subs = {user: host.subscribe(user, timezone=zone) for user, zone in zones.items()}
    clock = ManualClock(NOON)
    with use_clock(clock):
        nid = notify(host, list(zones), category="orders", send_at_local="09:00")
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        assert set(statuses(host, nid).values()) == {"pending"}
        while any(s != "sent" for s in statuses(host, nid).values()):
            upcoming = [at for at, name, _ in queue.scheduled() if name == "send_batch"]
            assert upcoming, statuses(host, nid)
            clock.now = datetime.fromtimestamp(min(upcoming), UTC)
            queue.run_all()
            assert clock.now - NOON < timedelta(hours=24)
    for d in host.deliveries(nid):
        local = d.sent_at.astimezone(ZoneInfo(zones[d.user_id]))
        assert (local.hour, local.minute) == (9, 0), (d.user_id, local)
        assert d.due_at is not None and d.sent_at >= d.due_at
    assert {push_service.request_count(s.endpoint) for s in subs.values()} == {1}


def test_the_rules_options_are_checked_before_anything_is_stored(make_host: Any) -> None:
    host = make_host()  # no categories, no quiet hours
    bad: list[tuple[dict[str, Any], str]] = [
        ({"quiet_hours": True}, "needs quiet hours"),
        ({"quiet_hours": "yes"}, "None, True or False"),
        ({"send_at_local": "9:00"}, "HH:MM"),
        ({"send_at_local": "24:00"}, "HH:MM"),
        ({"send_at_local": "09:00", "send_at": NOON}, "exclude each other"),
        ({"rate_per_minute": 0}, "rate_per_minute"),
        ({"rate_per_minute": True}, "rate_per_minute"),
        ({"rate_per_minute": 10**30}, "rate_per_minute"),
        ({"rate_per_minute": 1.5}, "rate_per_minute"),
    ]
    with host.app.app_context():
        for options, message in bad:
            with pytest.raises(InvalidNotification, match=message):
                host.webpush.notify_users(["1"], title="t", **options)
        N = host.webpush.models.Notification
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(N)) == 0
        with pytest.raises(InvalidPreferences, match="Categories are off"):
            host.webpush.set_preferences("1", {"marketing": True})
        assert host.webpush.preferences("1") == {}


# -- frequency caps -----------------------------------------------------------------------------


def test_a_cap_of_one_a_day_skips_the_second_offer_but_not_an_order_update(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host, WEBPUSH_QUIET_HOURS=None)
    sub = host.subscribe("1")
    other = host.subscribe("2")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
        host.webpush.set_preferences("2", {"marketing": True})
    first = notify(host, ["1"], category="marketing", title="Offer one")
    host.run_worker()
    second = notify(host, ["1", "2"], category="marketing", title="Offer two")
    order = notify(host, ["1"], category="orders", title="Shipped")
    host.run_worker()
    assert statuses(host, first) == {sub.id: "sent"}
    assert statuses(host, second) == {sub.id: "skipped", other.id: "sent"}
    [capped] = [d for d in host.deliveries(second) if d.subscription_id == sub.id]
    assert capped.reason == "frequency cap"
    figures = stats(host, second)
    assert (figures["capped"], figures["skipped"], figures["sent"]) == (1, 1, 1)
    assert statuses(host, order) == {sub.id: "sent"}
    assert push_service.request_count(sub.endpoint) == 2  # offer one and the order update


# -- throttling ---------------------------------------------------------------------------------


def test_rate_per_minute_keeps_every_minute_within_the_rate_on_an_injected_clock(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_BATCH_SIZE=100)
    for i in range(12):
        host.subscribe(str(i))
    clock = ManualClock(NOON)
    with use_clock(clock):
        nid = notify(host, [str(i) for i in range(12)], rate_per_minute=6)
        queue = InProcessQueue(host.app, clock)
        for _ in range(200):
            queue.run_all()
            upcoming = [at for at, _name, _args in queue.scheduled()]
            if not upcoming:
                break
            clock.now = max(clock.now, datetime.fromtimestamp(min(upcoming), UTC))
        figures = stats(host, nid)
    assert figures["sent"] == 12
    sent = sorted(d.sent_at for d in host.deliveries(nid))
    for first in sent:  # any window of a minute holds at most 6
        assert sum(first <= s < first + timedelta(minutes=1) for s in sent) <= 6
    assert sent[-1] - sent[0] >= timedelta(seconds=100)  # 12 at 6 a minute: 110 s of slots


def test_rate_per_minute_spreads_sends_across_two_real_workers(
        make_host: Any, push_service: Any) -> None:
    """600 a minute: 40 deliveries take about 4 seconds, whichever worker sends them."""
    host = make_host(WEBPUSH_BATCH_SIZE=10)
    subs = [host.subscribe(str(i)) for i in range(40)]
    workers = [host.start_worker(), host.start_worker()]
    try:
        started = time.time()
        nid = notify(host, [str(i) for i in range(40)], rate_per_minute=600)
        deadline = started + 60
        while time.time() < deadline and stats(host, nid)["sent"] < 40:
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=20)
    assert stats(host, nid)["sent"] == 40
    times = sorted(p.received_at for s in subs for p in push_service.received_for(s.endpoint))
    assert len(times) == 40
    spread = times[-1] - times[0]
    assert spread >= 3.5, spread  # 40 slots 0.1 s apart: 3.9 s from the first to the last
    # 10 slots a second; a message goes out at its slot or later, so a worker the machine
    # slowed can bunch a few late ones: half a second's worth of slack
    for first in times:
        assert sum(first <= t < first + 1.0 for t in times) <= 15


def test_forget_user_erases_their_choices_and_their_id_from_the_opted_out_lists(
        make_host: Any) -> None:
    host = rules_host(make_host, WEBPUSH_QUIET_HOURS=None)
    host.subscribe("1")
    host.subscribe("2")
    with host.app.app_context():
        host.webpush.set_preferences("2", {"news": False})
    nid = notify(host, ["1", "2"], category="news")
    host.run_worker()
    assert host.notification(nid).users_opted_out == ["2"]
    with host.app.app_context():
        counts = host.webpush.forget_user("2")
        P = host.webpush.models.Preference
        left = host.db.session.scalar(sa.select(sa.func.count()).select_from(P))
    assert counts["preferences"] == 1 and left == 0
    n = host.notification(nid)
    assert n.users_opted_out == [] and n.opted_out_count == 1  # the figure stays, anonymous


def test_a_retry_that_falls_inside_quiet_hours_is_held_until_they_end(
        make_host: Any, push_service: Any) -> None:
    host = rules_host(make_host, WEBPUSH_RETRY_BASE_DELAY=600)
    sub = host.subscribe("1", timezone="Europe/Warsaw")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
    push_service.respond(sub.endpoint, 503, times=1)
    clock = ManualClock(datetime(2026, 12, 1, 19, 55, tzinfo=UTC))  # 20:55 in Warsaw
    with use_clock(clock):
        nid = notify(host, ["1"], category="marketing", ttl=86400)
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        [d] = host.deliveries(nid)
        assert (d.status, d.attempts) == ("pending", 1)  # 503: retry in 10 minutes, at 21:05
        clock.advance(11 * 60)
        queue.run_all()
        [d] = host.deliveries(nid)
        release = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)  # 08:00 in Warsaw
        assert (d.status, d.next_attempt_at, d.attempts) == ("pending", release, 1)
        assert stats(host, nid)["held"] == 1
        clock.now = release
        queue.run_all()
    [d] = host.deliveries(nid)
    assert (d.status, d.attempts) == ("sent", 2)
    assert push_service.request_count(sub.endpoint) == 2


def test_cancel_while_a_throttled_batch_waits_for_a_slot_sends_nothing_more(
        make_host: Any, push_service: Any) -> None:
    from unittest import mock

    from flask_webpush_targeted import delivery

    host = make_host(WEBPUSH_BATCH_SIZE=100)
    subs = [host.subscribe(str(i)) for i in range(5)]
    clock = ManualClock(NOON)
    real_sleep = delivery.sleep
    with use_clock(clock):
        nid = notify(host, [str(i) for i in range(5)], rate_per_minute=60)

        def cancelling(seconds: float) -> None:
            if seconds > 0 and host.notification(nid).status != "cancelled":
                with host.app.app_context():
                    assert host.webpush.cancel(nid)
            real_sleep(seconds)

        with mock.patch.object(delivery, "sleep", cancelling):
            InProcessQueue(host.app, clock).run_all()
    sent = sum(push_service.request_count(s.endpoint) for s in subs)
    assert sent == 1  # the first slot's message went before the cancel; none after it
    assert sorted(statuses(host, nid).values()) == ["sent"] + ["skipped"] * 4
    assert stats(host, nid)["skipped"] == 4


def test_a_throttled_batch_with_redis_down_sends_nothing_and_loses_nothing(
        make_host: Any, push_service: Any) -> None:
    from unittest import mock

    import redis

    from flask_webpush_targeted import delivery

    host = make_host(WEBPUSH_BATCH_SIZE=100)
    subs = [host.subscribe(str(i)) for i in range(3)]
    clock = ManualClock(NOON)

    def down(*_args: Any) -> Any:
        raise redis.exceptions.ConnectionError("Redis is down")

    with use_clock(clock):
        nid = notify(host, ["0", "1", "2"], rate_per_minute=600)
        queue = InProcessQueue(host.app, clock)
        with mock.patch.object(delivery, "reserve", down):
            queue.run_all()
        assert set(statuses(host, nid).values()) == {"pending"}
        assert sum(push_service.request_count(s.endpoint) for s in subs) == 0
        for _ in range(20):
            queue.run_all()
            if set(statuses(host, nid).values()) == {"sent"}:
                break
            clock.advance(5)
    assert set(statuses(host, nid).values()) == {"sent"}
    assert [push_service.request_count(s.endpoint) for s in subs] == [1, 1, 1]
