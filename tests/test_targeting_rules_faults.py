"""Faults of categories, preferences, quiet hours, local-time sends, frequency caps and
throttling that once broke them: each reproduces one with the real parts (SQLite and
PostgreSQL, Redis, the local push service) and states what must hold."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from conftest import LoggedInClient, SendingHost
from pipeline_driver import InProcessQueue

from flask_webpush_targeted import delivery
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.exceptions import ConfigurationError
from flask_webpush_targeted.local_time import next_local, quiet_until

NOON = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def _notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Hello")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def _fan_out_only(host: SendingHost, nid: int) -> tuple[int, int]:
    """Run the fan-out job alone; return the id range of the notification's deliveries."""
    queue = InProcessQueue(host.app, ManualClock())
    assert queue.run_one()
    assert queue.ran[-1][0] == "fan_out"
    ids = [d.id for d in host.deliveries(nid)]
    return min(ids), max(ids)


def _run_batch(host: SendingHost, nid: int, lo: int, hi: int, errors: list[BaseException]
               ) -> None:
    try:
        with host.app.app_context():
            delivery.send_batch(nid, lo, hi)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


# -- throttled claims -----------------------------------------------------------------------


def test_two_throttled_batches_over_one_range_never_send_a_delivery_twice(
        make_host: Any, push_service: Any) -> None:
    # A throttled batch claims with `UPDATE ... WHERE id IN (SELECT id ... WHERE pending
    # ... LIMIT n)`. On PostgreSQL a second batch over the same range (its continuation, a
    # held batch due at the same time, a recovered one) that ran its sub-select before the
    # first committed waits for the rows' locks, then re-checks only `id IN (...)`, which
    # still holds: it claims the rows the first batch is sending and sends them again.
    host = make_host(WEBPUSH_BATCH_SIZE=10)
    subs = [host.subscribe(str(i)) for i in range(3)]
    nid = _notify(host, [str(i) for i in range(3)], rate_per_minute=600_000)
    lo, hi = _fan_out_only(host, nid)
    with host.app.app_context():
        engine = host.db.engine
    errors: list[BaseException] = []
    second: list[threading.Thread] = []

    sessions = _Sessions(engine)
    first_read_its_rows = threading.Event()
    second_claimed = threading.Event()

    def second_batch_meanwhile(_conn: Any, _cursor: Any, statement: str, _params: Any,
                               _context: Any, _many: bool) -> None:
        claim = statement.startswith("UPDATE webpush_delivery SET status")
        if second and threading.current_thread() is second[0]:
            if claim:  # the second batch's claim is done, not committed yet
                second_claimed.set()
                first_read_its_rows.wait(10)
            return
        if claim and not second:
            other = threading.Thread(target=_run_batch, args=(host, nid, lo, hi, errors))
            second.append(other)
            other.start()
            # The second batch's claim has read the rows and waits for this one's locks.
            sessions.wait_blocked(other, threading.get_ident(), second_claimed)
        elif "LEFT OUTER JOIN webpush_subscription" in statement:
            first_read_its_rows.set()  # the first batch has read the rows it claimed

    sa.event.listen(engine, "after_cursor_execute", second_batch_meanwhile)
    try:
        with sessions:
            _run_batch(host, nid, lo, hi, errors)
            for other in second:
                other.join(60)
    finally:
        sa.event.remove(engine, "after_cursor_execute", second_batch_meanwhile)
    for other in second:
        other.join(60)
    assert errors == []
    sends = {s.id: push_service.request_count(s.endpoint) for s in subs}
    assert sends == {s.id: 1 for s in subs}, sends


# -- the consent ledger under concurrent choices -------------------------------------------------


def test_concurrent_opposite_choices_leave_the_ledger_agreeing_with_the_stored_choice(
        make_host: Any) -> None:
    # set_preferences reads the current choices, then locks the user's rows FOR UPDATE,
    # and decides "changed or not" from the first read. A second request that read before
    # a first one committed waits for the lock, then writes its value over the first's
    # without a ledger entry (it thinks nothing changed): marketing ends up on while the
    # ledger's last word on it is "withdrawn", so the shop sends offers with no record of
    # the consent.
    host = make_host(WEBPUSH_CATEGORIES={
        "orders": {"label": "Orders", "required": True},
        "marketing": {"label": "Offers"}})
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
        engine = host.db.engine
    errors: list[BaseException] = []
    second: list[threading.Thread] = []

    def choose(value: bool) -> None:
        try:
            with host.app.app_context():
                host.webpush.set_preferences("1", {"marketing": value}, source="devices_page")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    sessions = _Sessions(engine)
    other_done = threading.Event()

    def choose_in_other_tab() -> None:
        choose(True)
        other_done.set()

    def other_tab_meanwhile(_conn: Any, _cursor: Any, statement: str, _params: Any,
                            _context: Any, _many: bool) -> None:
        if threading.current_thread() in second:
            return
        if second or "FOR UPDATE" not in statement or "webpush_preference" not in statement:
            return
        other = threading.Thread(target=choose_in_other_tab)
        second.append(other)
        other.start()
        if engine.dialect.name == "postgresql":
            sessions.wait_blocked(other, threading.get_ident(), other_done)
        else:
            other.join(10)  # SQLite: the other request runs to its end first

    sa.event.listen(engine, "after_cursor_execute", other_tab_meanwhile)
    try:
        with sessions:
            choose(False)
            for other in second:
                other.join(60)
    finally:
        sa.event.remove(engine, "after_cursor_execute", other_tab_meanwhile)
    for other in second:
        other.join(60)
    assert errors == []
    with host.app.app_context():
        stored = host.webpush.preferences("1")["marketing"]
        C = host.webpush.models.Consent
        last = host.db.session.scalars(
            sa.select(C.action).where(C.scope == "category:marketing").order_by(C.id.desc())
        ).first()
    assert (stored, last) in ((True, "granted"), (False, "withdrawn")), (stored, last)


class _Sessions:
    """The PostgreSQL backend of each thread's connection, as its statements run: lets a
    test wait until one thread's statement waits for a lock another thread holds."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.pids: dict[int, int] = {}

    def seen(self, conn: Any, *_statement: Any) -> None:
        """Note the backend of the connection about to run a statement in this thread
        (a ``before_cursor_execute`` listener)."""
        if self.engine.dialect.name == "postgresql":
            self.pids[threading.get_ident()] = conn.connection.dbapi_connection.info.backend_pid

    def __enter__(self) -> _Sessions:
        sa.event.listen(self.engine, "before_cursor_execute", self.seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self.seen)

    def wait_blocked(self, waiter: threading.Thread, holder: int,
                     passed: threading.Event) -> None:
        """Wait (5 s at most) until ``waiter``'s statement waits for a lock ``holder``'s
        transaction holds (a thread ident), or it got past that statement without waiting
        (``passed``); at once on SQLite, which serialises writers."""
        if self.engine.dialect.name != "postgresql":
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not passed.is_set():
            pid = self.pids.get(waiter.ident or 0)
            if pid is not None:
                with self.engine.connect() as probe:
                    if probe.execute(sa.text("SELECT :holder = ANY(pg_blocking_pids(:pid))"),
                                     {"holder": self.pids[holder], "pid": pid}).scalar():
                        return
            time.sleep(0.02)
        assert passed.is_set(), "the second session neither waited nor went on"


# -- local time around a fall-back transition ---------------------------------------------------

#: 2026-11-01 in New York: 01:00-02:00 happens twice (EDT, then EST); 06:15 UTC is the
#: second 01:15 (EST)
_NEW_YORK = ZoneInfo("America/New_York")
_SECOND_0115 = datetime(2026, 11, 1, 6, 15, tzinfo=UTC)


def test_quiet_hours_ending_in_a_repeated_hour_end_at_their_next_end_not_a_day_later() -> None:
    # quiet_until tries only the first occurrence of the end time (01:30 EDT, 05:30 UTC),
    # which has passed, then the next day's: a device inside quiet hours at the second
    # 01:15 is held 24 h 15 min instead of 15 min.
    assert _SECOND_0115.astimezone(_NEW_YORK).fold == 1
    released = quiet_until(_SECOND_0115, _NEW_YORK, (dt_time(0, 0), dt_time(1, 30)))
    assert released == datetime(2026, 11, 1, 6, 30, tzinfo=UTC), released


def test_send_at_local_in_a_repeated_hour_is_the_next_such_time_not_the_next_day() -> None:
    # next_local's "first instant at or after `at` when the clocks show t": at the second
    # 01:15, the clocks show 01:30 again 15 minutes later.
    due = next_local(_SECOND_0115, _NEW_YORK, dt_time(1, 30))
    assert due == datetime(2026, 11, 1, 6, 30, tzinfo=UTC), due


# -- GDPR export --------------------------------------------------------------------------------


def test_export_holds_every_stored_choice_and_each_devices_time_zone(make_host: Any) -> None:
    # export_user builds "preferences" from the configured categories only: a choice
    # stored for a category the shop has since removed (or every choice, once
    # WEBPUSH_CATEGORIES is None) stays in webpush_preference, is erased by forget_user,
    # and is missing from the export. The device's time zone, stored since this change,
    # is not exported either.
    host = make_host(WEBPUSH_CATEGORIES={"orders": {"label": "Orders", "required": True},
                                         "marketing": {"label": "Offers"}})
    host.subscribe("1", timezone="Asia/Tokyo")
    with host.app.app_context():
        host.webpush.set_preferences("1", {"marketing": True})
        P = host.webpush.models.Preference
        host.db.session.add(P(user_id="1", category="old-newsletter", enabled=True,
                              updated_at=NOON))
        host.db.session.commit()
        export = host.webpush.export_user("1")
        stored = {(p.category, p.enabled) for p in host.db.session.scalars(
            sa.select(P).where(P.user_id == "1"))}
    exported = set(export["preferences"].items())
    assert stored <= exported, (stored, exported)
    assert [d.get("timezone") for d in export["devices"]] == ["Asia/Tokyo"], export["devices"]


# -- settings that pass init_app and break a page later -----------------------------------------


def test_a_category_label_the_response_cannot_encode_is_refused_at_init_or_rendered(
        make_app: Any) -> None:
    # parse_categories checks a label's type and length only: one holding a lone surrogate
    # (os.environ hands undecodable bytes over as such) passes init_app, and every page
    # with the opt-in widget, and the devices page, then ends in a UnicodeEncodeError (500).
    categories = {"orders": {"label": "Orders", "required": True},
                  "marketing": {"label": "Offres sp\udce9ciales", "description": "Soldes"}}
    try:
        app, _db, _webpush = make_app(WEBPUSH_CATEGORIES=categories)
    except ConfigurationError:
        return  # refused with the setting's name: what init_app is for
    client = LoggedInClient(app, "1")
    answers = {url: client.http.get(url).status_code for url in ("/widget", "/webpush/devices")}
    assert all(code < 500 for code in answers.values()), answers


# -- frequency caps and deliveries due later ---------------------------------------------------


def test_a_cap_counts_an_offer_when_it_was_sent_not_when_its_fan_out_ran(
        make_host: Any, push_service: Any) -> None:
    # capped_users counts deliveries created within the period. An offer sent at 09:00
    # local time was created at its fan-out, the afternoon before: a second offer five
    # hours after the first arrived finds it "older than a day" and is sent too, two offers
    # in five hours under a cap of one a day.
    host = make_host(WEBPUSH_CATEGORIES={
        "orders": {"label": "Orders", "required": True},
        "marketing": {"label": "Offers", "default": True, "cap": (1, timedelta(days=1))}})
    sub = host.subscribe("1", timezone="UTC")
    clock = ManualClock(NOON)  # Tuesday 13:00 UTC
    with use_clock(clock):
        queue = InProcessQueue(host.app, clock)
        first = _notify(host, ["1"], category="marketing", send_at_local="09:00")
        queue.run_all()
        clock.now = datetime(2026, 12, 2, 9, 0, 1, tzinfo=UTC)  # Wednesday 09:00
        queue.run_all()
        assert [d.status for d in host.deliveries(first)] == ["sent"]
        clock.now = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # five hours later
        second = _notify(host, ["1"], category="marketing")
        queue.run_all()
    [d] = host.deliveries(second)
    assert (d.status, d.reason) == ("skipped", "frequency cap"), (d.status, d.reason)
    assert push_service.request_count(sub.endpoint) == 1
