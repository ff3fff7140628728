"""The event log and its export: every delivery outcome, event, conversion and finished
notification is logged once, in order, with the change that made it; ``GET events`` and
``flask webpush export-events`` stream it as NDJSON with a cursor.

Pushes are sent for real (RQ jobs run in this process, the local push service decrypts);
every answer of the API is checked against the OpenAPI document. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from openapi_check import BASE, check_answer
from pipeline_driver import InProcessQueue

from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.push_api.keys import create_key

EVENTS_API = f"{BASE}/events"


class Log:
    """A sending host on a manual clock, its jobs run here, and an API key with stats."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
        self.queue = InProcessQueue(host.app, self.clock)
        with host.app.app_context():
            self.key = create_key(host.db, host.webpush.models, "crm", ("stats",))[1]

    def export(self, **args: Any) -> Any:
        answer = self.host.app.test_client().get(
            EVENTS_API, query_string=args, headers={"Authorization": f"Bearer {self.key}"})
        answer.body = check_answer("GET", EVENTS_API, answer)
        return answer

    def token_of(self, sub: Any) -> str:
        [push] = [p for p in self.host.push_service.received_for(sub.endpoint) if p.ok]
        return str(push.notification()["token"])

    def beacon(self, sub: Any, event: str) -> None:
        answer = self.host.app.test_client(use_cookies=False).post(
            "/webpush/events", json={"token": self.token_of(sub), "event": event},
            environ_base={"REMOTE_ADDR": "10.6.6.6"})
        assert answer.status_code == 200


@pytest.fixture
def log(sending: SendingHost) -> Any:
    log = Log(sending)
    with use_clock(log.clock):
        yield log


def test_a_send_its_events_and_an_order_are_logged_once_each_in_order(log: Log) -> None:
    host = log.host
    good, gone, other = host.subscribe("ann"), host.subscribe("ben"), host.subscribe("cy")
    host.push_service.respond(gone.endpoint, 410)
    with host.app.app_context():
        nid = int(host.webpush.notify_users(["ann", "ben", "cy"], title="Sale").id)
    log.queue.run_all()
    log.clock.advance(5)
    log.beacon(good, "clicked")
    log.beacon(good, "clicked")  # a replay: counted once, logged once
    log.beacon(other, "displayed")
    log.beacon(other, "closed")
    with host.app.app_context():
        host.webpush.record_conversion("ann", value="12.50", currency="EUR", order_id="A-1")
        host.webpush.record_conversion("ann", value="12.50", currency="EUR", order_id="A-1")

    lines = log.export().body["lines"]
    kinds = Counter(line["type"] for line in lines)
    assert kinds == Counter({"delivery.sent": 2, "delivery.gone": 1, "notification.done": 1,
                             "delivery.displayed": 2, "delivery.clicked": 1,
                             "delivery.closed": 1, "conversion": 1})
    ids = [int(line["id"]) for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    by_type = {line["type"]: line for line in lines}
    assert by_type["delivery.gone"]["data"]["status_code"] == 410
    assert by_type["delivery.gone"]["data"]["user_id"] == "ben"
    assert by_type["conversion"]["data"] == {
        "notification_id": nid, "user_id": "ann", "kind": "direct", "order_id": "A-1",
        "value": "12.50", "currency": "EUR",
        "converted_at": by_type["conversion"]["created_at"],
        "delivery_id": by_type["delivery.clicked"]["data"]["delivery_id"],
        "conversion_id": by_type["conversion"]["data"]["conversion_id"]}
    assert by_type["notification.done"]["data"] == {"notification_id": nid}
    # the outcomes come before the notification is done
    assert ids.index(int(by_type["notification.done"]["id"])) >= 2


def test_pages_follow_their_cursor_and_since_filters(log: Log) -> None:
    host = log.host
    subs = [host.subscribe(f"u{i}") for i in range(5)]
    with host.app.app_context():
        host.webpush.notify_users([f"u{i}" for i in range(5)], title="First")
    log.queue.run_all()
    log.clock.advance(3600)
    later = log.clock.now
    for sub in subs[:2]:
        log.beacon(sub, "displayed")
    everything = log.export().body["lines"]
    assert len(everything) == 5 + 1 + 2
    seen, cursor, pages = [], None, 0
    while True:
        answer = log.export(limit=3, **({"cursor": cursor} if cursor else {}))
        seen.extend(answer.body["lines"])
        pages += 1
        cursor = answer.headers.get("Webpush-Next-Cursor")
        if cursor is None:
            break
        assert answer.headers["Link"].endswith('>; rel="next"')
        assert cursor == answer.body["lines"][-1]["id"]
    assert seen == everything and pages == 3  # 3 + 3 + 2: the last page is not full
    recent = log.export(since=later.isoformat()).body["lines"]
    assert [line["type"] for line in recent] == ["delivery.displayed"] * 2


@pytest.mark.parametrize("args", [{"cursor": "abc"}, {"cursor": "-1"}, {"cursor": "9" * 30},
                                  {"limit": "0"}, {"limit": "1000001"}, {"limit": "x"},
                                  {"since": "2026-12-01T09:00:00"}, {"since": "yesterday"}])
def test_a_bad_query_is_a_400_with_its_reason(log: Log, args: dict[str, str]) -> None:
    answer = log.export(**args)
    assert answer.status_code == 400 and answer.body["error"] == "bad_request"


def test_the_export_needs_the_stats_scope(log: Log) -> None:
    with log.host.app.app_context():
        key = create_key(log.host.db, log.host.webpush.models, "shop", ("conversions",))[1]
    answer = log.host.app.test_client().get(EVENTS_API,
                                            headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 403


def test_erasing_a_user_erases_their_events(log: Log) -> None:
    host = log.host
    ann, ben = host.subscribe("ann"), host.subscribe("ben")
    with host.app.app_context():
        host.webpush.notify_users(["ann", "ben"], title="Sale")
    log.queue.run_all()
    log.beacon(ann, "clicked")
    log.beacon(ben, "clicked")
    with host.app.app_context():
        assert host.webpush.forget_user("ann")["events"] == 3  # sent, displayed, clicked
    lines = log.export().body["lines"]
    assert "ann" not in json.dumps(lines)
    assert {line["data"].get("user_id") for line in lines} == {"ben", None}


def test_the_cli_writes_the_whole_log_as_ndjson(log: Log) -> None:
    host = log.host
    host.subscribe("ann")
    with host.app.app_context():
        host.webpush.notify_users(["ann"], title="Sale")
    log.queue.run_all()
    runner = host.app.test_cli_runner(mix_stderr=False) if _mixes() else host.app.test_cli_runner()
    done = runner.invoke(args=["webpush", "export-events"])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["type"] for line in lines] == ["delivery.sent", "notification.done"]
    assert lines == log.export().body["lines"]
    after = runner.invoke(args=["webpush", "export-events", "--cursor", lines[0]["id"]])
    assert [json.loads(x)["type"] for x in after.stdout.splitlines()] == ["notification.done"]
    bad = runner.invoke(args=["webpush", "export-events", "--since", "soon"])
    assert bad.exit_code == 2 and "RFC 3339" in bad.output


def _mixes() -> bool:
    import inspect

    from click.testing import CliRunner

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def test_pruning_drops_the_events_older_than_the_cutoff(log: Log) -> None:
    host = log.host
    host.subscribe("ann")
    with host.app.app_context():
        host.webpush.notify_users(["ann"], title="Old")
    log.queue.run_all()
    log.clock.advance(timedelta(days=40).total_seconds())
    with host.app.app_context():
        assert host.webpush.prune(timedelta(days=30))["events"] == 2
    assert log.export().body["lines"] == []
    E = host.webpush.models.Event
    with host.app.app_context():
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(E)) == 0


def test_ids_become_visible_in_the_order_they_were_taken(log: Log) -> None:
    """A transaction that logs events holds the log's order until it commits: one that
    logs after it waits, so its ids come after and no reader sees id 10 before id 9."""
    import threading

    from flask_webpush_targeted import event_log

    host = log.host  # SQLite: its one writer at a time makes the second wait as well
    m = host.webpush.models
    first_done = threading.Event()
    second: list[str] = []

    def later_writer() -> None:
        with host.app.app_context():
            event_log.write(host.db, m, [event_log.event("notification.done",
                                                         notification_id=2)])
            host.db.session.commit()
            second.append("committed")

    with host.app.app_context():
        event_log.write(host.db, m, [event_log.event("notification.done", notification_id=1)])
        writer = threading.Thread(target=later_writer)
        writer.start()
        writer.join(1.0)
        assert second == []  # waiting for the first transaction's commit
        host.db.session.commit()
        first_done.set()
    writer.join(10)
    assert second == ["committed"]
    lines = log.export().body["lines"]
    assert [line["data"]["notification_id"] for line in lines] == [1, 2]


def test_a_page_stops_at_its_cursor_even_if_events_before_it_go_while_it_streams(
        log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_webpush_targeted import event_log

    host = log.host
    for user in ("ann", "ben", "cy", "dan"):
        host.subscribe(user)
    with host.app.app_context():
        host.webpush.notify_users(["ann", "ben", "cy", "dan"], title="Sale")
    log.queue.run_all()
    before = log.export(limit=3)
    cursor = int(before.headers["Webpush-Next-Cursor"])
    victim = before.body["lines"][0]["data"]["user_id"]  # the answers came in any order
    reading = event_log.read

    def erasing_first(*args: Any, **kwargs: Any) -> Any:
        # The cursor is in the headers already; then one event of the page goes.
        host.webpush.forget_user(victim)
        return reading(*args, **kwargs)

    monkeypatch.setattr(event_log, "read", erasing_first)
    page = log.export(limit=3)
    assert int(page.headers["Webpush-Next-Cursor"]) == cursor
    ids = [int(line["id"]) for line in page.body["lines"]]
    # not past the cursor: the next page repeats none
    assert ids == [int(line["id"]) for line in before.body["lines"][1:]]
    monkeypatch.setattr(event_log, "read", reading)
    rest = [int(line["id"]) for line in log.export(cursor=str(cursor)).body["lines"]]
    assert rest and min(rest) > cursor


def test_the_next_link_keeps_only_the_routes_own_parameters(log: Log) -> None:
    host = log.host
    for user in ("ann", "ben"):
        host.subscribe(user)
    with host.app.app_context():
        host.webpush.notify_users(["ann", "ben"], title="Sale")
    log.queue.run_all()
    answer = log.export(limit=1, _external="0", endpoint="x", _method="POST",
                        _anchor='x"><evil', a="\x00")
    assert answer.status_code == 200
    link = answer.headers["Link"]
    assert "evil" not in link and "endpoint" not in link and "_method" not in link
    assert "limit=1" in link and "cursor=" in link
