"""The delivery pipeline as a state machine (hypothesis ``RuleBasedStateMachine``).

Rules interleave notify (in a required or a capped category, keeping or ignoring quiet
hours, throttled or not), customers changing their choice of category, cancel (between
jobs and in the middle of a batch), A/B tests (with and without a test share), jobs run,
clicks and displays, orders (an order id reported more than once),
workers killed mid-batch, time passing in the middle of a batch, jobs run while Redis is
down or with receivers that raise, recover, scripted
push-service faults per subscription (429 with any Retry-After, WNS's 406, 5xx, 404/410,
timeouts) and time passing. Time is a ManualClock;
jobs run in this process (pipeline_driver) on the real Redis, on SQLite and PostgreSQL,
against the local push service, which decrypts what it receives. It poses as WNS, and
WEBPUSH_EXTRA_PUSH_SERVICE_KINDS says so: its 406 is a throttle, retried as a 429 is.

A worker killed mid-batch is emulated: an exception no code catches (a BaseException)
raised when a flush of answers is about to be written, so the answers in that flush are
sent but never recorded, and the rest of the claim is never sent: what SIGKILL leaves
(benchmarks/fault_soak.py kills real workers).

Invariants, after every step:
- the counters equal the rows (each status, and deliveries);
- every delivery recorded sent was received by the push service; a delivery received
  more than once, or received and not recorded sent, is one whose outcome was unknown
  (in a killed batch, or timed out), and the extra copies are at most
  kills x WEBPUSH_SEND_CONCURRENCY + timeouts;
- nothing is received for a notification after cancel() returned, beyond what was in
  flight (WEBPUSH_SEND_CONCURRENCY, for a cancel in the middle of a batch);
- a delivery becomes sent only while its user has the category on;
- no delivery of a notification that keeps quiet hours is sent inside its device's quiet
  hours, in the device's time zone;
- no user gets more notifications of the capped category than its cap in any period;
- a throttled notification's messages each wait for a slot of its budget, and the slots
  are at least 60 / rate seconds apart;
- a notification written in English and Polish reaches each device in its own language
  (pl-PL and pl: Polish; en-GB, de-DE and none: English), and its ``languages`` figure
  counts exactly its sent deliveries by language (one text for everyone: empty);
- a click through the click route (once or twice, any received notification) lands on
  the notification's URL and counts once: clicked equals the rows clicked;
- an order counts once whatever times it is reported (the same attribution each time);
  each attributed conversion points at a delivery of its own customer clicked (direct) or
  displayed (influenced) within the day before it, and each notification's conversions,
  influenced conversions and revenue per currency equal its conversion rows;
- the event log holds each delivery outcome and first event, each order and each
  finished notification once: its counts equal the counters and the conversion rows;
- in an A/B test each device of a user in the test gets that user's variant (by the hash),
  each user outside it only the winner stored on the notification, and never before the
  wait is over; each variant's sent figure equals its rows.
At the end, time runs on (recover every minute, jobs as they come due) for the longest
validity plus 2 x WEBPUSH_CLAIM_TIMEOUT plus WEBPUSH_RETRY_MAX_DELAY: by then every
delivery is final and every notification done or cancelled.

Profiles: HYPOTHESIS_PROFILE=ci (default, a few examples) or =long (on demand):
``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_pipeline_states.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pipeline_driver import InProcessQueue

from flask_webpush_targeted import delivery
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.conversions import format_amount
from flask_webpush_targeted.local_time import in_window, parse_window
from flask_webpush_targeted.payload import default_tag
from flask_webpush_targeted.testing import LocalPushService
from flask_webpush_targeted.tracking import read_token
from flask_webpush_targeted.variants import WINNER_BY, Split, assigned, in_test

FINAL = ("sent", "failed", "gone", "expired", "skipped")
CONCURRENCY = 4
CLAIM_TIMEOUT = 120
RETRY_MAX = 60
READ_TIMEOUT = 0.3
USERS = ["1", "2", "3"]
#: two devices on UTC, whose quiet hours start half a minute after the run starts, three on
#: Tokyo's time (the same window is at midday UTC there: never reached)
ZONES = ["UTC", "Asia/Tokyo", "Europe/London", "Asia/Tokyo", "Asia/Tokyo"]
#: what each device's browser said of its language (None: nothing)
LANGUAGES = ["pl-PL", "en-GB", None, "pl", "de-DE"]
#: a notification's texts in two languages, and the one each device language gets
TEXTS = {"en": "Sale", "pl": "Wyprzedaż"}
EXPECTED_LANGUAGE = {"pl-PL": "pl", "pl": "pl", "en-GB": "en", "de-DE": "en", None: "en"}
#: how long an A/B test with a test share runs before the winner goes to the rest
WINNER_AFTER = 120
START = datetime(2026, 12, 1, 20, 59, 30, tzinfo=UTC)
QUIET = ("21:00", "21:20")
CAP = (1, timedelta(minutes=30))
CATEGORIES = {
    "orders": {"label": "Order updates", "required": True, "quiet_hours": None},
    "offers": {"label": "Offers", "cap": CAP, "default": True},
}

PROFILES = {
    "ci": dict(max_examples=25, stateful_step_count=30),
    "long": dict(max_examples=200, stateful_step_count=60),
}


class Killed(BaseException):
    """The emulated SIGKILL of the worker running a batch."""


def _profile() -> settings:
    chosen = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "ci")]
    return settings(deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci",
                    **chosen)


def make_machine(db_url: str, push_service: Any) -> type[RuleBasedStateMachine]:
    class Pipeline(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = ManualClock(START)
            self._clock_cm = use_clock(self.clock)
            self._clock_cm.__enter__()
            self.host = SendingHost(
                db_url, push_service, WEBPUSH_SEND_CONCURRENCY=CONCURRENCY,
                WEBPUSH_BATCH_SIZE=3, WEBPUSH_MAX_ATTEMPTS=3, WEBPUSH_RETRY_BASE_DELAY=5,
                WEBPUSH_RETRY_MAX_DELAY=RETRY_MAX, WEBPUSH_CLAIM_TIMEOUT=CLAIM_TIMEOUT,
                WEBPUSH_READ_TIMEOUT=READ_TIMEOUT, WEBPUSH_CONNECT_TIMEOUT=1,
                WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_QUIET_HOURS=QUIET,
                WEBPUSH_EXTRA_PUSH_SERVICE_KINDS={push_service.origin: "wns"})
            self.queue = InProcessQueue(self.host.app, self.clock)
            self.subs = [self.host.subscribe(USERS[i % 3], timezone=ZONES[i]) for i in range(5)]
            S = self.host.webpush.models.Subscription
            with self.host.app.app_context():
                for sub, language in zip(self.subs, LANGUAGES, strict=True):
                    self.host.db.session.execute(
                        sa.update(S).where(S.id == sub.id).values(language=language))
                self.host.db.session.commit()
            self.language_of = {s.id: LANGUAGES[i] for i, s in enumerate(self.subs)}
            self.multilingual: set[int] = set()
            self.zone_of = {s.id: ZoneInfo(ZONES[i]) for i, s in enumerate(self.subs)}
            self.offers_on = {user: True for user in USERS}
            self.seen_sent: set[tuple[int, int]] = set()
            self.quiet_kept: set[int] = set()  # notifications that keep quiet hours
            self.category_of: dict[int, str] = {}
            self.rate_of: dict[int, int] = {}
            self.slots: dict[int, list[float]] = {}  # throttled nid -> slot times handed out
            self.handed: dict[int, list[float]] = {}  # nid -> times messages were made
            self.by_endpoint = {s.endpoint: s for s in self.subs}
            self.notifications: list[int] = []
            self.max_ttl = 0
            self.kills = 0
            self.timeouts = 0
            self.uncertain: set[tuple[int, int]] = set()  # (notification, subscription)
            self.timing_out: set[int] = set()  # subscriptions whose next answer is late
            self.cancelled_at: dict[int, tuple[int, int]] = {}  # nid -> received, allowance
            self.title_for: dict[tuple[int, str], str] = {}  # (nid, user) -> the filled title
            self.orders: dict[str, Any] = {}  # order id -> its first attribution
            #: A/B tests: nid -> (titles, split, when notify_users was called)
            self.tests: dict[int, tuple[list[str], Split, datetime]] = {}

        def teardown(self) -> None:
            try:
                for sub in self.subs:
                    push_service.clear_faults(sub.endpoint)
                self.host.close()
            finally:
                self._clock_cm.__exit__(None, None, None)

        # -- what the push service saw --------------------------------------------------

        def received(self) -> Counter[tuple[int, int]]:
            """(notification id, subscription id) -> copies accepted by the push service."""
            tags = {default_tag(nid): nid for nid in self.notifications}
            seen: Counter[tuple[int, int]] = Counter()
            for push in push_service.received:
                sub = self.by_endpoint.get(push.endpoint)
                if sub is None or not push.ok or push.payload is None:
                    continue
                nid = tags.get(push.notification().get("tag"))
                if nid is not None:
                    seen[(nid, sub.id)] += 1
            return seen

        def rows(self) -> list[Any]:
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():
                got = self.host.db.session.execute(
                    sa.select(D.notification_id, D.subscription_id, D.status, D.user_id,
                              D.sent_at, D.created_at)
                    .where(D.notification_id.in_(self.notifications))).all()
                self.host.db.session.commit()
            return list(got)

        # -- rules ----------------------------------------------------------------------

        @initialize(offset=st.sampled_from([0, 60, 600]),
                    kind=st.sampled_from(["orders", "offers", "offers-rate", "orders-rate",
                                          "offers-twice"]),
                    refuser=st.sampled_from([None, "2"]))
        def a_first_notification(self, offset: int, kind: str, refuser: str | None) -> None:
            """Every run has something to deliver, whatever rules it draws: sometimes in
            the quiet hours of the UTC devices (from 21:00), sometimes throttled, sometimes
            two offers (the second meets the cap), sometimes with a customer who turned
            offers off."""
            if refuser is not None:
                self.choose_offers(refuser, False)
            self.clock.advance(offset)
            category, _, extra = kind.partition("-")
            self.notify(USERS, 300, None, category, None, 30 if extra == "rate" else None)
            if extra == "twice":
                self.notify(USERS, 300, None, category, None, None)

        @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
              ttl=st.sampled_from([0, 30, 300, 3600]),
              later=st.sampled_from([None, 10, 200]),
              category=st.sampled_from(["orders", "offers"]),
              quiet=st.sampled_from([None, None, False]),
              rate=st.sampled_from([None, None, 12, 600]))
        def notify(self, users: list[str], ttl: int, later: int | None, category: str,
                   quiet: bool | None, rate: int | None) -> None:
            send_at = None if later is None else self.clock.now + timedelta(seconds=later)
            with self.host.app.app_context():
                n = self.host.webpush.notify_users(users, title="Sale", ttl=ttl,
                                                   send_at=send_at, category=category,
                                                   quiet_hours=quiet, rate_per_minute=rate)
                nid = int(n.id)
            self.notifications.append(nid)
            self.category_of[nid] = category
            if category == "offers" and quiet is None:
                self.quiet_kept.add(nid)
            if rate is not None:
                self.rate_of[nid] = rate
            # A hold lasts until the quiet hours end; a throttled one takes its slots.
            self.max_ttl = max(self.max_ttl, ttl + (later or 0) + 25 * 60
                               + (5 * 60 // rate if rate else 0))

        @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
              gates=st.lists(st.sampled_from(["1", "B7", "{x}", "é" * 3]), min_size=3,
                             max_size=3),
              through=st.sampled_from(["recipients", "audience"]),
              category=st.sampled_from(["orders", "offers"]))
        def notify_with_vars(self, users: list[str], gates: list[str], through: str,
                             category: str) -> None:
            """Per-recipient vars, given as recipients or as an audience's members."""
            people = [{"user": u, "vars": {"gate": g}} for u, g in zip(users, gates, strict=False)]
            with self.host.app.app_context():
                if through == "audience":
                    audience = self.host.webpush.create_audience(people, name="gates")
                    n = self.host.webpush.notify_users(
                        audience=audience.id, title="{{Flight}} {flight} gate {gate}",
                        vars={"flight": "LO1"}, ttl=300, category=category)
                else:
                    n = self.host.webpush.notify_users(
                        recipients=people, title="{{Flight}} {flight} gate {gate}",
                        vars={"flight": "LO1"}, ttl=300, category=category)
                nid = int(n.id)
            self.notifications.append(nid)
            self.category_of[nid] = category
            if category == "offers":
                self.quiet_kept.add(nid)
            for person in people:
                self.title_for[(nid, person["user"])] = (
                    "{Flight} LO1 gate " + person["vars"]["gate"])
            self.max_ttl = max(self.max_ttl, 300 + 25 * 60)

        @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
              category=st.sampled_from(["orders", "offers"]))
        def notify_in_languages(self, users: list[str], category: str) -> None:
            """A title in English and Polish: each device gets its own language's."""
            with self.host.app.app_context():
                nid = int(self.host.webpush.notify_users(users, title=TEXTS, ttl=300,
                                                         url="/sale", category=category).id)
            self.notifications.append(nid)
            self.multilingual.add(nid)
            self.category_of[nid] = category
            if category == "offers":
                self.quiet_kept.add(nid)
            self.max_ttl = max(self.max_ttl, 300 + 25 * 60)

        @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
              share=st.sampled_from([None, 0.5]), winner_by=st.sampled_from(WINNER_BY),
              category=st.sampled_from(["orders", "offers"]))
        def notify_with_variants(self, users: list[str], share: float | None, winner_by: str,
                                 category: str) -> None:
            """An A/B test of two or three titles; with a test share, the others wait
            WINNER_AFTER for the winner."""
            titles = ["Sale A", "Sale B", "Sale C"][:2 + len(users) % 2]
            with self.host.app.app_context():
                n = self.host.webpush.notify_users(
                    users, title="Sale", ttl=300, category=category,
                    variants=[{"title": t, "weight": 1 + i} for i, t in enumerate(titles)],
                    test_share=share, winner_after=None if share is None else WINNER_AFTER,
                    winner_by=winner_by)
                nid = int(n.id)
            self.notifications.append(nid)
            self.category_of[nid] = category
            if category == "offers":
                self.quiet_kept.add(nid)
            self.tests[nid] = (titles, Split(tuple(1 + i for i in range(len(titles))), share,
                                             None if share is None else WINNER_AFTER,
                                             winner_by), self.clock.now)
            self.max_ttl = max(self.max_ttl, 300 + 25 * 60 + (WINNER_AFTER if share else 0))

        @precondition(lambda self: self.notifications)
        @rule(pick=st.integers(0, 1000), twice=st.booleans())
        def click_through_the_route(self, pick: int, twice: bool) -> None:
            """A customer clicks a received notification (its navigate URL, the click
            route), once or twice: it lands on the notification's URL, counted once."""
            pushes = [p for p in push_service.received if p.ok and p.payload is not None
                      and p.endpoint in self.by_endpoint]
            if not pushes:
                return
            # An index, not sampled_from(pushes): what was received is not the strategy's.
            message = pushes[pick % len(pushes)].notification()
            path = urlsplit(message["navigate"]).path
            http = self.host.app.test_client()
            for _ in range(2 if twice else 1):
                answer = http.get(path)
                assert answer.status_code == 302, answer.status_code
                assert answer.headers["Location"] == "https://shop.example" + message["url"]
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():
                clicked = self.host.db.session.scalar(
                    sa.select(D.clicked_at).where(D.id == read_token(message["token"])))
                self.host.db.session.commit()
            assert clicked is not None, message

        @precondition(lambda self: self.notifications)
        @rule(pick=st.integers(0, 1000))
        def displayed_beacon(self, pick: int) -> None:
            """A browser shows a received notification and says so (not clicked)."""
            pushes = [p for p in push_service.received if p.ok and p.payload is not None
                      and p.endpoint in self.by_endpoint]
            if not pushes:
                return
            token = pushes[pick % len(pushes)].notification()["token"]
            answer = self.host.app.test_client(use_cookies=False).post(
                "/webpush/events", json={"token": token, "event": "displayed"},
                environ_base={"REMOTE_ADDR": "10.77.0.1"})
            assert answer.status_code == 200, answer.get_json()

        @rule(user=st.sampled_from(USERS), order=st.sampled_from(["o1", "o2", "o3", None]),
              cents=st.integers(0, 10**9), currency=st.sampled_from(["EUR", "PLN"]))
        def an_order(self, user: str, order: str | None, cents: int, currency: str) -> None:
            """A customer orders (an order id the shop may report twice): the conversion
            goes to their latest click, else their latest display, in the window."""
            with self.host.app.app_context():
                got = self.host.webpush.record_conversion(
                    user, value=Decimal(cents).scaleb(-2), currency=currency, order_id=order)
            if order in self.orders:
                assert got == self.orders[order], (order, got, self.orders[order])
            elif order is not None:
                self.orders[order] = got

        @rule(user=st.sampled_from(USERS), on=st.booleans())
        def choose_offers(self, user: str, on: bool) -> None:
            with self.host.app.app_context():
                self.host.webpush.set_preferences(user, {"offers": on}, source="devices_page")
            self.offers_on[user] = on

        @precondition(lambda self: self.notifications)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            nid = data.draw(st.sampled_from(self.notifications))
            with self.host.app.app_context():
                done = self.host.webpush.cancel(nid)
            if done:
                self.cancelled_at[nid] = (self._received_of(nid), 0)

        @rule(index=st.integers(0, 4),
              fault=st.sampled_from(["429", "429-huge", "406-wns", "500", "503", "404",
                                     "410", "timeout", "clear"]),
              retry_after=st.sampled_from([0, 1, 7, 45]))
        def push_service_fault(self, index: int, fault: str, retry_after: int) -> None:
            sub = self.subs[index]
            push_service.clear_faults(sub.endpoint)
            self.timing_out.discard(sub.id)
            if fault == "429":
                push_service.respond(sub.endpoint, 429, retry_after=retry_after, times=2)
            elif fault == "406-wns":  # WNS throttling: retried with backoff, never final
                push_service.throttle(sub.endpoint, times=2)
            elif fault == "429-huge":
                push_service.respond(sub.endpoint, 429, retry_after=99999999999, times=1)
            elif fault in ("500", "503"):
                push_service.respond(sub.endpoint, int(fault), times=2)
            elif fault in ("404", "410"):
                push_service.respond(sub.endpoint, int(fault))
            elif fault == "timeout":
                # Answered (and recorded as received) after the worker gave up waiting.
                push_service.respond(sub.endpoint, 201, delay=READ_TIMEOUT + 0.2, times=1)
                self.timing_out.add(sub.id)

        @rule()
        def run_job(self) -> None:
            self._run_one(None)

        @rule(flush=st.integers(1, 3))
        def kill_worker_mid_batch(self, flush: int) -> None:
            real = delivery._record
            calls = [0]

            def dying(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] >= flush:
                    raise Killed()
                return real(*args, **kwargs)

            def around(run: Any) -> None:
                with mock.patch.object(delivery, "_record", dying):
                    try:
                        run()
                    except Killed:
                        self.kills += 1

            self._run_one(around)
            # Whatever that batch left claimed may or may not have reached the service.
            for nid, sid, status, *_ in self.rows():
                if status == "sending":
                    self.uncertain.add((nid, sid))

        @rule(flush=st.integers(1, 2))
        def cancel_mid_batch(self, flush: int) -> None:
            real = delivery._record
            calls = [0]

            def cancelling(nid: int, *args: Any, **kwargs: Any) -> Any:
                result = real(nid, *args, **kwargs)
                calls[0] += 1
                if calls[0] == flush and nid not in self.cancelled_at:
                    with self.host.app.app_context():
                        if self.host.webpush.cancel(nid):
                            self.cancelled_at[nid] = (self._received_of(nid), CONCURRENCY)
                return result

            with mock.patch.object(delivery, "_record", cancelling):
                self._run_one(None)

        @rule(flush=st.integers(1, 3), seconds=st.sampled_from([40, CLAIM_TIMEOUT + 1]))
        def slow_batch(self, flush: int, seconds: int) -> None:
            """Time passes in the middle of a batch (a slow push service, a frozen worker):
            validity may end, the claim may grow too old to go on."""
            real = delivery._record
            calls = [0]

            def slow(*args: Any, **kwargs: Any) -> Any:
                result = real(*args, **kwargs)
                calls[0] += 1
                if calls[0] == flush:
                    self.clock.advance(seconds)
                return result

            with mock.patch.object(delivery, "_record", slow):
                self._run_one(None)

        @rule()
        def run_job_with_redis_down(self) -> None:
            """A job runs while Redis does not answer: the retries and batches it would
            enqueue are lost (a fan-out fails as a job), and recover must find what is left."""
            import redis as redis_module
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            app = self.host.app
            real = app.extensions["webpush.state"].redis

            def around(run: Any) -> None:
                # A port nothing listens on: every Redis call the job makes fails.
                app.extensions["webpush.state"].redis = redis_module.Redis(
                    port=1, socket_connect_timeout=0.05, retry=Retry(NoBackoff(), 0))
                try:
                    run()
                except redis_module.exceptions.RedisError:
                    pass  # the job failed, as RQ would record it
                finally:
                    app.extensions["webpush.state"].redis = real

            self._run_one(around)

        @rule()
        def run_job_with_a_broken_receiver(self) -> None:
            """The host's receivers raise: nothing of the batch may change."""
            from flask_webpush_targeted import signals

            def broken(_app: Any, **_kw: Any) -> None:
                raise RuntimeError("the host's receiver is broken")

            with signals.delivery_sent.connected_to(broken), \
                    signals.delivery_failed.connected_to(broken):
                self._run_one(None)

        @rule()
        def recover(self) -> None:
            with self.host.app.app_context():
                self.host.webpush.recover()

        @rule(seconds=st.sampled_from([1, 5, 30, CLAIM_TIMEOUT + 1, 400]))
        def time_passes(self, seconds: int) -> None:
            self.clock.advance(seconds)

        def _run_one(self, around: Any) -> None:
            counts = {sid: push_service.request_count(self._sub(sid).endpoint)
                      for sid in self.timing_out}
            ran = len(self.queue.ran)
            real_reserve, real_message = delivery.reserve, delivery.Message
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():  # read now: the batch's session is its own
                nid_of = {row.id: row.notification_id for row in self.host.db.session.execute(
                    sa.select(D.id, D.notification_id)
                    .where(D.notification_id.in_(list(self.rate_of))))}
                self.host.db.session.commit()

            def reserving(connection: Any, key: str, rate: int, wanted: int) -> Any:
                slots = real_reserve(connection, key, rate, wanted)
                nid = int(key.rsplit(":", 1)[1])
                self.slots.setdefault(nid, []).extend(slots.at(i) for i in range(slots.count))
                return slots

            def message(delivery_id: int, *args: Any) -> Any:
                nid = nid_of.get(delivery_id)
                if nid is not None:
                    self.handed.setdefault(nid, []).append(self.clock.now.timestamp())
                return real_message(delivery_id, *args)

            with mock.patch.object(delivery, "reserve", reserving), \
                    mock.patch.object(delivery, "Message", message):
                self.queue.run_one(around)
            if len(self.queue.ran) == ran or self.queue.ran[-1][0] != "send_batch":
                return
            nid = self.queue.ran[-1][1][0]
            # A late answer is a retry to the worker and a delivery to the service: which
            # one it was is not known, so that delivery may be received twice.
            for sid, before in counts.items():
                if push_service.request_count(self._sub(sid).endpoint) > before:
                    self.uncertain.add((nid, sid))
                    self.timeouts += 1
                    self.timing_out.discard(sid)

        def _sub(self, sid: int) -> Any:
            return next(s for s in self.subs if s.id == sid)

        def _received_of(self, nid: int) -> int:
            """Copies received for ``nid``, but for deliveries whose answer came late: the
            service records those when its scripted delay ends, whenever that is."""
            return sum(c for (n, sid), c in self.received().items()
                       if n == nid and (n, sid) not in self.uncertain)

        # -- invariants -----------------------------------------------------------------

        @invariant()
        def each_recipient_gets_its_own_text(self) -> None:
            tags = {default_tag(nid): nid for nid in self.notifications}
            for push in push_service.received:
                sub = self.by_endpoint.get(push.endpoint)
                if sub is None or not push.ok or push.payload is None:
                    continue
                payload = push.notification()
                nid = tags.get(payload.get("tag"))
                if nid is not None and (nid, sub.user_id) in self.title_for:
                    assert payload["title"] == self.title_for[(nid, sub.user_id)], (
                        nid, sub.user_id, payload["title"])

        @invariant()
        def each_device_gets_its_own_language(self) -> None:
            tags = {default_tag(nid): nid for nid in self.multilingual}
            for push in push_service.received:
                sub = self.by_endpoint.get(push.endpoint)
                if sub is None or not push.ok or push.payload is None:
                    continue
                message = push.notification()
                if message.get("tag") in tags:
                    wanted = EXPECTED_LANGUAGE[self.language_of[sub.id]]
                    assert (message["title"], message["lang"]) == (TEXTS[wanted], wanted), (
                        sub.id, message)

        @invariant()
        def each_user_gets_its_own_variant_and_the_rest_only_the_winner_after_the_wait(
                self) -> None:
            N = self.host.webpush.models.Notification
            tags = {default_tag(nid): nid for nid in self.tests}
            for push in push_service.received:
                sub = self.by_endpoint.get(push.endpoint)
                if sub is None or not push.ok or push.payload is None:
                    continue
                message = push.notification()
                nid = tags.get(message.get("tag"))
                if nid is None:
                    continue
                titles, split, called = self.tests[nid]
                if in_test(split, nid, sub.user_id):
                    assert message["title"] == titles[assigned(split, nid, sub.user_id)], (
                        nid, sub.user_id, message["title"])
                else:
                    with self.host.app.app_context():
                        winner = self.host.db.session.scalar(
                            sa.select(N.winner).where(N.id == nid))
                        self.host.db.session.commit()
                    assert winner is not None and message["title"] == titles[winner], (
                        nid, winner, message["title"])
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():
                for nid, (titles, split, called) in self.tests.items():
                    rows = self.host.db.session.execute(
                        sa.select(D.user_id, D.sent_at, D.variant, D.status)
                        .where(D.notification_id == nid)).all()
                    per_variant: Counter[int] = Counter()
                    for row in rows:
                        if row.status == "sent":
                            per_variant[row.variant] += 1
                        if row.sent_at is not None and not in_test(split, nid, row.user_id):
                            assert row.sent_at >= called + timedelta(seconds=WINNER_AFTER), (
                                nid, row.user_id, row.sent_at, called)
                    figures = self.host.webpush.stats(nid)["variants"]
                    assert [f["sent"] for f in figures] == [
                        per_variant[i] for i in range(len(titles))], (nid, figures, per_variant)
                self.host.db.session.commit()

        @invariant()
        def languages_count_what_was_sent(self) -> None:
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():
                for nid in self.notifications:
                    sent = Counter(self.host.db.session.scalars(sa.select(D.language).where(
                        D.notification_id == nid, D.status == "sent")))
                    languages = self.host.webpush.stats(nid)["languages"]
                    if nid in self.multilingual:
                        assert languages == {k: v for k, v in sent.items() if k}, (nid, sent)
                        assert None not in sent, (nid, sent)
                    else:
                        assert languages == {} and set(sent) <= {None}, (nid, languages)
                self.host.db.session.commit()

        @invariant()
        def a_click_counts_once(self) -> None:
            D = self.host.webpush.models.Delivery
            with self.host.app.app_context():
                for nid in self.notifications:
                    clicked = self.host.db.session.scalar(sa.select(sa.func.count()).where(
                        D.notification_id == nid, D.clicked_at.is_not(None)))
                    stats = self.host.webpush.stats(nid)
                    assert stats["clicked"] == clicked, (nid, stats["clicked"], clicked)
                    assert stats["displayed"] >= clicked, (nid, stats)
                self.host.db.session.commit()

        @invariant()
        def conversions_count_once_each_where_they_are_attributed(self) -> None:
            C, D = self.host.webpush.models.Conversion, self.host.webpush.models.Delivery
            with self.host.app.app_context():
                rows = self.host.db.session.execute(
                    sa.select(C, D.user_id, D.clicked_at, D.displayed_at)
                    .outerjoin(D, D.id == C.delivery_id)).all()
                direct: Counter[int] = Counter()
                influenced: Counter[int] = Counter()
                revenue: dict[int, Counter[str]] = {}
                for c, owner, clicked_at, displayed_at in rows:
                    if c.kind == "none":
                        assert c.notification_id is None and c.delivery_id is None, c
                        continue
                    assert owner == c.user_id, (c.id, owner, c.user_id)
                    seen = clicked_at if c.kind == "direct" else displayed_at
                    assert seen is not None and timedelta(0) <= c.converted_at - seen <= \
                        timedelta(days=1), (c.id, c.kind, seen, c.converted_at)
                    if c.kind == "direct":
                        direct[c.notification_id] += 1
                        revenue.setdefault(c.notification_id, Counter())[c.currency] += c.amount
                    else:
                        influenced[c.notification_id] += 1
                for nid in self.notifications:
                    stats = self.host.webpush.stats(nid)
                    assert stats["conversions"] == direct[nid], (nid, stats, direct)
                    assert stats["influenced_conversions"] == influenced[nid], (nid, stats)
                    assert stats["revenue"] == {
                        cur: format_amount(amount)
                        for cur, amount in sorted(revenue.get(nid, Counter()).items())}
                self.host.db.session.commit()

        @invariant()
        def the_event_log_has_each_outcome_event_and_order_once(self) -> None:
            """Written with the change it records: a killed batch, a retry, a replayed beacon
            or a repeated order adds no second event and loses none."""
            E, C = self.host.webpush.models.Event, self.host.webpush.models.Conversion
            with self.host.app.app_context():
                logged = Counter(self.host.db.session.execute(
                    sa.select(E.notification_id, E.type).where(
                        E.notification_id.in_(self.notifications))).all())
                orders = self.host.db.session.scalar(
                    sa.select(sa.func.count()).select_from(C))
                order_events = self.host.db.session.scalar(
                    sa.select(sa.func.count()).select_from(E).where(E.type == "conversion"))
                for nid in self.notifications:
                    stats = self.host.webpush.stats(nid)
                    for counter in ("sent", "failed", "gone", "expired", "displayed",
                                    "clicked", "closed"):
                        assert logged[(nid, f"delivery.{counter}")] == stats[counter], (
                            nid, counter, logged, stats[counter])
                    done = int(stats["status"] == "done")
                    assert logged[(nid, "notification.done")] == done, (nid, logged)
                self.host.db.session.commit()
            assert order_events == orders, (order_events, orders)

        @invariant()
        def counters_equal_rows(self) -> None:
            rows = self.rows()
            with self.host.app.app_context():
                for nid in self.notifications:
                    stats = self.host.webpush.stats(nid)
                    mine = Counter(row.status for row in rows if row.notification_id == nid)
                    assert stats["deliveries"] == sum(mine.values()), (nid, stats, mine)
                    for status in FINAL:
                        assert stats[status] == mine[status], (nid, status, stats, mine)

        @invariant()
        def push_service_agrees_with_the_ledger(self) -> None:
            seen = self.received()
            status_of = {(r.notification_id, r.subscription_id): r.status for r in self.rows()}
            for key, status in status_of.items():
                if status == "sent":
                    assert seen[key] >= 1, (key, "recorded sent, never received")
            extra = 0
            for key, count in seen.items():
                if key in self.uncertain:
                    extra += count - 1
                    continue
                assert count == 1, (key, count, "sent twice with no fault to explain it")
                assert status_of.get(key) in ("sent", "pending", "sending"), (
                    key, status_of.get(key), "received, yet recorded as not sent")
            assert extra <= self.kills * CONCURRENCY + self.timeouts, (extra, self.kills)

        @invariant()
        def nothing_sent_after_cancel_beyond_what_was_in_flight(self) -> None:
            for nid, (at_cancel, allowance) in self.cancelled_at.items():
                assert self._received_of(nid) <= at_cancel + allowance, nid

        @invariant()
        def sent_only_while_the_user_has_the_category_on(self) -> None:
            for row in self.rows():
                key = (row.notification_id, row.subscription_id)
                if row.status != "sent" or key in self.seen_sent:
                    continue
                self.seen_sent.add(key)
                # A choice changes between steps only: the step that sent it saw this one.
                if self.category_of[row.notification_id] == "offers":
                    assert self.offers_on[row.user_id], (key, "sent with offers turned off")

        @invariant()
        def nothing_sent_inside_quiet_hours(self) -> None:
            window = parse_window(QUIET)
            for row in self.rows():
                if row.status == "sent" and row.notification_id in self.quiet_kept:
                    local = row.sent_at.astimezone(self.zone_of[row.subscription_id])
                    assert not in_window(local.time(), window), (row, local)

        @invariant()
        def no_user_gets_more_offers_than_the_cap(self) -> None:
            count, period = CAP
            first_sent: dict[tuple[str, int], datetime] = {}
            for row in self.rows():
                if row.status == "sent" and self.category_of[row.notification_id] == "offers":
                    key = (row.user_id, row.notification_id)
                    first_sent[key] = min(first_sent.get(key, row.created_at), row.created_at)
            for user in USERS:
                times = sorted(at for (u, _nid), at in first_sent.items() if u == user)
                for i, at in enumerate(times):
                    within = [t for t in times[i:] if t - at < period]
                    assert len(within) <= count, (user, times)

        @invariant()
        def throttled_messages_wait_for_their_slots(self) -> None:
            for nid, rate in self.rate_of.items():
                slots = sorted(self.slots.get(nid, []))
                gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
                assert all(gap >= 60 / rate - 1e-6 for gap in gaps), (nid, rate, slots)
                for index, at in enumerate(sorted(self.handed.get(nid, []))):
                    assert index < len(slots) and slots[index] <= at + 1e-6, (
                        nid, "a message before its slot", at, slots)

        # -- the end: time runs on until everything is final ------------------------------

        def report(self) -> None:
            """What this run reached (WEBPUSH_MACHINE_REPORT=file): to see the rules bite."""
            rows = self.rows()
            line = {"throttled": len(self.rate_of), "slots": sum(map(len, self.slots.values())),
                    "quiet_kept_sent": sum(r.status == "sent" and r.notification_id
                                           in self.quiet_kept for r in rows),
                    "held_ever": sum(bool(self.host.notification(n).holds)
                                     for n in self.notifications),
                    "capped": sum(self.host.notification(n).capped_count or 0
                                  for n in self.notifications),
                    "opted_out": sum(self.host.notification(n).opted_out_count or 0
                                     for n in self.notifications),
                    "filled_sent": sum(r.status == "sent" and (r.notification_id, r.user_id)
                                       in self.title_for for r in rows)}
            with open(os.environ["WEBPUSH_MACHINE_REPORT"], "a") as out:
                out.write(f"{line}\n")

        def drain(self) -> None:
            # Faults set up so far stay in force; recover runs once a minute, as in a worker.
            horizon = self.max_ttl + 2 * CLAIM_TIMEOUT + RETRY_MAX + 60
            waited = 0
            while waited <= horizon:
                with self.host.app.app_context():
                    self.host.webpush.recover()
                while self.queue.ready_count() or self.queue.release_due():
                    self._run_one(None)
                self.clock.advance(60)
                waited += 60
            with self.host.app.app_context():
                self.host.webpush.recover()
            self.queue.run_all(limit=500)

    return Pipeline


@pytest.fixture
def wns_push_service() -> Iterator[LocalPushService]:
    """A local push service of this test's own, posing as WNS (406 when it throttles)."""
    with LocalPushService(pose_as="wns") as service:
        yield service


def test_the_delivery_pipeline_keeps_its_invariants_under_faults(
        db_url: str, wns_push_service: LocalPushService, redis_conn: Any) -> None:
    machine = make_machine(db_url, wns_push_service)

    class Ended(machine):  # type: ignore[valid-type, misc]
        def teardown(self) -> None:
            try:
                self.drain()
                if os.environ.get("WEBPUSH_MACHINE_REPORT"):
                    self.report()
                rows = self.rows()
                open_rows = [r for r in rows if r.status not in FINAL]
                assert not open_rows, f"not final after the horizon: {open_rows}"
                self.push_service_agrees_with_the_ledger()
                self.counters_equal_rows()
                for nid in self.notifications:
                    n = self.host.notification(nid)
                    assert n.status in ("done", "cancelled"), (nid, n.status)
            finally:
                super().teardown()

    run_state_machine_as_test(Ended, settings=_profile())
