"""stats(), time_series(), `flask webpush stats` and prune, on a scripted mix of outcomes.

The mix is sent for real: `flask webpush worker --burst` processes, the local push
service answering 201, 410, 429-then-201 and 500, a notification left to expire,
and displayed / clicked / closed events posted with the tokens the pushes carried.
Every test runs on SQLite and on PostgreSQL (there in a session time zone other than
UTC, which the time buckets must not depend on) with the real Redis.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agents import AGENTS, subscribe_with_agent
from conftest import SendingHost

from flask_webpush_targeted.exceptions import NotificationNotFound
from flask_webpush_targeted.stats import time_series

#: user -> (the label the customer typed, their browser, what the push service answers);
#: user "7" has no device. Platforms come from the browsers' User-Agents, never the labels.
DEVICES = {
    "1": ("Anna's laptop", "firefox-linux", "201"),
    "2": ("Ben's phone", "chrome-android", "410"),
    "3": (None, "chrome-android", "429 then 201"),
    "4": ("=HYPERLINK(\"https://evil.example\")", "safari-macos", "500 always"),
    "5": ("Work PC", "firefox-linux", "201"),
    "6": ("Firefox on Linux", "edge-windows", "201"),
}
#: user -> events their device reports
EVENTS = {"1": ("displayed", "clicked"), "3": ("displayed",), "5": ("displayed", "closed")}

EXPECTED = {
    "targeted_users": 7, "users_without_devices": 1, "deliveries": 6, "pending": 0,
    "sent": 4, "failed": 1, "gone": 1, "expired": 0, "skipped": 0,
    "displayed": 3, "clicked": 1, "closed": 1,
    "display_rate": 0.75, "click_through_rate": 0.25, "click_rate": 0.3333,
}
EXPECTED_EXPIRED = {
    "targeted_users": 1, "users_without_devices": 0, "deliveries": 1, "pending": 0,
    "sent": 0, "failed": 0, "gone": 0, "expired": 1, "skipped": 0,
    "displayed": 0, "clicked": 0, "closed": 0,
    "display_rate": None, "click_through_rate": None, "click_rate": None,
}


@dataclass
class Mix:
    host: SendingHost
    nid: int  # the notification to users 1-7
    expired_nid: int  # to user "1" with ttl=1, sent only after it expired

    def stats(self, nid: int) -> dict[str, Any]:
        with self.host.app.app_context():
            return self.host.webpush.stats(nid)

    def cli(self, *args: str) -> str:
        result = self.host.app.test_cli_runner().invoke(args=["webpush", *args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


@pytest.fixture
def mix(db_url: str, push_service: Any, redis_conn: Any) -> Iterator[Mix]:
    if db_url.startswith("postgresql"):
        db_url += "%20-ctimezone%3DAsia%2FKolkata"  # UTC+05:30
    host = SendingHost(db_url, push_service, WEBPUSH_MAX_ATTEMPTS=2,
                       WEBPUSH_RETRY_BASE_DELAY=0.2)
    try:
        subs = {user: subscribe_with_agent(host, user, AGENTS[browser][0], label)[1]
                for user, (label, browser, _) in DEVICES.items()}
        push_service.respond(subs["2"], 410)
        push_service.respond(subs["3"], 429, retry_after=1, times=1)
        push_service.respond(subs["4"], 500)
        nid = notify(host, [*DEVICES, "7"], title="Winter sale: 20% off boots", url="/sale",
                     ttl=3600, category="promo")
        host.run_worker()
        expired_nid = notify(host, ["1"], title="Flash sale ends in a second", ttl=1)
        time.sleep(2)
        host.run_worker()  # the retries (429 after Retry-After, 500 again) and the expired one
        client = host.app.test_client(use_cookies=False)
        address = "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))
        for user, events in EVENTS.items():
            [push] = [p for p in push_service.received_for(subs[user]) if p.ok]
            for event in events:
                response = client.post("/webpush/events", environ_base={"REMOTE_ADDR": address},
                                       json={"token": push.notification()["token"], "event": event})
                assert response.get_json() == {"counted": True}
        yield Mix(host, nid, expired_nid)
    finally:
        host.close()


def test_stats_give_the_exact_funnel_rates_failure_reasons_and_platforms(mix: Mix) -> None:
    stats = mix.stats(mix.nid)
    assert {k: stats[k] for k in EXPECTED} == EXPECTED
    assert stats["status"] == "done" and stats["pruned"] is False
    assert {(r["status"], r["status_code"]): r["count"] for r in stats["failure_reasons"]} == {
        ("gone", 410): 1, ("failed", 500): 1}
    assert {p["platform"]: (p["deliveries"], p["sent"], p["displayed"], p["clicked"])
            for p in stats["by_platform"]} == {
        "Firefox desktop": (2, 2, 2, 1), "Chrome mobile": (2, 1, 1, 0),
        "Safari desktop": (1, 0, 0, 0), "Edge desktop": (1, 1, 0, 0)}
    by_status = {d.user_id: (d.status, d.status_code, d.attempts)
                 for d in mix.host.deliveries(mix.nid)}
    assert by_status == {"1": ("sent", 201, 1), "2": ("gone", 410, 1), "3": ("sent", 201, 2),
                         "4": ("failed", 500, 2), "5": ("sent", 201, 1), "6": ("sent", 201, 1)}

    expired = mix.stats(mix.expired_nid)
    assert {k: expired[k] for k in EXPECTED_EXPIRED} == EXPECTED_EXPIRED
    assert [(r["status"], r["count"]) for r in expired["failure_reasons"]] == [("expired", 1)]


def test_failure_reasons_come_from_counters_and_from_the_rows_for_older_notifications(
        mix: Mix) -> None:
    import sqlalchemy as sa

    counted = mix.stats(mix.nid)["failure_reasons"]
    reasons = {(r["status"], r["status_code"], r["reason"]) for r in counted}
    assert {(status, code) for status, code, _ in reasons} == {("gone", 410), ("failed", 500)}
    # What the rows say, as the delivery table holds it.
    assert reasons == {(d.status, d.status_code, d.reason) for d in mix.host.deliveries(mix.nid)
                       if d.status not in ("sent",)}
    # Notifications counted before reasons had counters fall back to grouping their rows.
    S = mix.host.webpush.models.Stat
    with mix.host.app.app_context():
        mix.host.db.session.execute(sa.delete(S).where(S.notification_id == mix.nid,
                                                       S.dimension == "reason"))
        mix.host.db.session.commit()
    assert sorted(mix.stats(mix.nid)["failure_reasons"], key=repr) == sorted(counted, key=repr)


def test_time_series_buckets_sent_displayed_and_clicked_per_utc_minute(mix: Mix) -> None:
    def minute(at: datetime) -> str:
        return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:00")

    expected: dict[str, Counter[str]] = {}
    for d in mix.host.deliveries(mix.nid):
        for event, at in (("sent", d.sent_at), ("displayed", d.displayed_at),
                          ("clicked", d.clicked_at)):
            if at is not None:
                expected.setdefault(minute(at), Counter())[event] += 1
    with mix.host.app.app_context():
        series = time_series(mix.host.db, mix.host.webpush.models, mix.nid)
        assert time_series(mix.host.db, mix.host.webpush.models, mix.expired_nid) == []
    assert all(point["unit"] == "minute" for point in series)  # all in the first hour
    assert {p["at"]: Counter({k: p[k] for k in ("sent", "displayed", "clicked") if p[k]})
            for p in series} == expected
    assert [sum(p[k] for p in series) for k in ("sent", "displayed", "clicked")] == [4, 3, 1]


def test_flask_webpush_stats_prints_one_notifications_figures_and_the_latest_list(
    mix: Mix,
) -> None:
    out = mix.cli("stats", str(mix.nid))
    printed = dict(re.findall(r"^(\w+) +(\S+)$", out, re.MULTILINE))
    assert {k: printed[k] for k in EXPECTED} == {k: str(v) for k, v in EXPECTED.items()}
    assert "status=gone, status_code=410" in out and "status=failed, status_code=500" in out
    assert "platform=Firefox desktop, deliveries=2, sent=2, displayed=2, clicked=1" in out

    rows = listed(mix.cli("stats"))
    # id: status, sent, shown, clicked, not sent (failed + gone + expired)
    assert rows == {str(mix.nid): ["done", "4", "3", "1", "2"],
                    str(mix.expired_nid): ["done", "0", "0", "0", "1"]}
    assert "2 of 2 notifications." in mix.cli("stats")


def listed(out: str) -> dict[str, list[str]]:
    """The rows of `flask webpush stats`: id -> status, sent, shown, clicked, failed."""
    return {m[0]: list(m[1:]) for m in re.findall(
        r"^ *(\d+)  (\w+) +(\d+) +(\d+) +(\d+) +(\d+)  ", out, re.MULTILINE)}


def _finished_days_ago(mix: Mix, nid: int, days: int) -> None:
    with mix.host.app.app_context():
        n = mix.host.db.session.get(mix.host.webpush.models.Notification, nid)
        n.finished_at = datetime.now(UTC) - timedelta(days=days)
        mix.host.db.session.commit()


def test_prune_removes_old_deliveries_and_keeps_the_same_figures(mix: Mix) -> None:
    before, before_recent = mix.stats(mix.nid), mix.stats(mix.expired_nid)
    _finished_days_ago(mix, mix.nid, 40)
    with mix.host.app.app_context():
        assert mix.host.webpush.prune(timedelta(days=30)) == {"notifications": 1,
                                                               "deliveries": 6, "events": 0}
    assert mix.host.deliveries(mix.nid) == []
    assert mix.stats(mix.nid) == {**before, "pruned": True}
    assert len(mix.host.deliveries(mix.expired_nid)) == 1  # finished recently: untouched
    assert mix.stats(mix.expired_nid) == before_recent

    _finished_days_ago(mix, mix.expired_nid, 40)
    assert "1 deliveries of 1 notifications removed" in mix.cli("prune", "--older-than", "30")
    assert mix.host.deliveries(mix.expired_nid) == []
    assert mix.stats(mix.expired_nid) == {**before_recent, "pruned": True}
    # the list keeps the pruned figures too
    rows = listed(mix.cli("stats"))
    assert rows[str(mix.nid)] == ["done", "4", "3", "1", "2"]


def test_stats_of_an_unknown_notification_raise_not_found(app: Any, webpush: Any) -> None:
    with app.app_context(), pytest.raises(NotificationNotFound):
        webpush.stats(424242)
    result = app.test_cli_runner().invoke(args=["webpush", "stats", "424242"])
    assert result.exit_code != 0 and "No notification has id 424242" in result.output


def test_a_device_whose_browser_sent_no_user_agent_counts_under_unknown_in_the_platforms(
    sending: SendingHost,
) -> None:
    subscribe_with_agent(sending, "1", AGENTS["firefox-linux"][0])
    subscribe_with_agent(sending, "2", None, "Kitchen tablet")  # the browser told nothing
    with sending.app.app_context():
        nid = sending.webpush.notify_users(["1", "2"], title="Parcel ready").id
    sending.run_worker()
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
    assert {p["platform"]: (p["deliveries"], p["sent"]) for p in stats["by_platform"]} == {
        "Firefox desktop": (1, 1), "unknown": (1, 1)}
    assert sum(p["deliveries"] for p in stats["by_platform"]) == stats["deliveries"]


def test_old_platform_rows_keyed_by_labels_fold_into_the_closed_set(app: Any, webpush: Any) -> None:
    """Installations that counted device labels: fold_old_platform_rows leaves only keys of
    the closed set, labels a customer typed under "unknown", and the same sums."""
    import sqlalchemy as sa

    from flask_webpush_targeted.counters import fold_old_platform_rows
    from flask_webpush_targeted.platforms import PLATFORMS

    m, db = webpush.models, webpush.db
    old = {  # key -> deliveries, sent, displayed, clicked
        "Firefox on Linux": (5, 4, 3, 1), "Firefox desktop": (2, 2, 1, 0),
        "Chrome on Android": (3, 3, 2, 2), "Chromium on Linux": (1, 1, 0, 0),
        "Safari on iPhone": (2, 2, 2, 1), "Browser": (1, 0, 0, 0),
        "Anna's phone": (1, 1, 1, 1), "=HYPERLINK(\"https://evil.example\")": (1, 1, 0, 0),
        "unknown": (2, 2, 0, 0),
    }
    with app.app_context():
        ids = []
        for _ in range(2):
            n = m.Notification(payload={"title": "t"}, targeting={"user_ids": [],
                               "devices": "all"}, ttl=60, status="done")
            db.session.add(n)
            db.session.flush()
            ids.append(n.id)
            for key, (deliveries, sent, displayed, clicked) in old.items():
                db.session.add(m.Stat(notification_id=n.id, dimension="platform", key=key,
                                      deliveries=deliveries, sent=sent, displayed=displayed,
                                      clicked=clicked, failed=0, gone=0, expired=0,
                                      skipped=0, closed=0))
        db.session.commit()
        assert fold_old_platform_rows(db, m, chunk=4) == 2 * (len(old) - 2)
        assert fold_old_platform_rows(db, m) == 0  # once is enough
        S = m.Stat
        for nid in ids:
            rows = {r.key: (r.deliveries, r.sent, r.displayed, r.clicked)
                    for r in db.session.scalars(sa.select(S).where(
                        S.notification_id == nid, S.dimension == "platform"))}
            assert rows == {"Firefox desktop": (7, 6, 4, 1), "Chrome mobile": (3, 3, 2, 2),
                            "Chrome desktop": (1, 1, 0, 0), "Safari mobile": (2, 2, 2, 1),
                            "other desktop": (1, 0, 0, 0), "unknown": (4, 4, 1, 1)}
            assert set(rows) <= set(PLATFORMS)
            assert [sum(column) for column in zip(*rows.values(), strict=True)] == [
                sum(column) for column in zip(*old.values(), strict=True)]
