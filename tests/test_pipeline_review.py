"""Faults of the delivery pipeline found by reviewing it from outside: each test names what
a user relies on (docs/design.md, "Nothing lost" and "Under faults"). Jobs run in this
process on an injected clock (pipeline_driver), against the real Redis, both databases and
the local push service; a scripted push service on real sockets where an answer the local
one cannot give is needed, and a Redis server of the test's own where Redis must misbehave.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import SendingHost, browser_keys
from pipeline_driver import InProcessQueue
from test_pipeline_faults import FINAL, fanned_out, notify

from flask_webpush_targeted import signals
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.jobs import send_batch


def _in_app(host: SendingHost, func: Any, *args: Any) -> Any:
    with host.app.app_context():
        return func(*args)


def _recover(host: SendingHost) -> dict[str, int]:
    with host.app.app_context():
        return dict(host.webpush.recover())


# -- a push service whose answers are scripted per endpoint ---------------------------------


class ScriptedPushService:
    """An HTTP/1.1 server on loopback answering POST /push/<name> with the status and body
    scripted for <name> (201 and an empty body otherwise), counting requests per name.
    Answers wait until ``together`` requests have arrived (or a second passed), so that
    they reach the worker at once and are written in one flush."""

    def __init__(self, script: dict[str, tuple[int, bytes]], together: int = 1) -> None:
        self.script = script
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._together = threading.Barrier(together) if together > 1 else None
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                name = self.path.rsplit("/", 1)[-1]
                with service._lock:
                    service.counts[name] = service.counts.get(name, 0) + 1
                if service._together is not None:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        service._together.wait(1.0)
                status, body = service.script.get(name, (201, b""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedPushService:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def endpoint(self, name: str) -> str:
        return f"{self.origin}/push/{name}"


def _store(host: SendingHost, user_id: str, endpoint: str) -> Any:
    """A subscription at ``endpoint`` (any push service the config admits), real keys."""
    from flask_webpush_targeted.subscriptions import SubscribeRequest, SubscriptionInfo

    keys = browser_keys()
    info = SubscriptionInfo(endpoint, keys["p256dh"], keys["auth"])
    with host.app.app_context():
        row, _ = host.webpush.store.subscribe(user_id, SubscribeRequest(info, "1", None), None)
        host.db.session.refresh(row)
        host.db.session.expunge(row)
        return row


def test_an_error_body_with_nul_from_the_push_service_neither_aborts_the_flush_nor_resends(
        make_host: Any, push_service: Any) -> None:
    # A push service's error text goes into the delivery's reason and a counter key:
    # PostgreSQL refuses NUL in text, the flush's transaction fails with every result in it,
    # and after each claim timeout the batch is sent again and fails again.
    names = ["ok-1", "nul", "ok-2", "ok-3"]
    with ScriptedPushService({"nul": (400, b"bad\x00request")}, together=4) as scripted:
        host = make_host(WEBPUSH_SEND_CONCURRENCY=4, WEBPUSH_CLAIM_TIMEOUT=60,
                         WEBPUSH_EXTRA_PUSH_SERVICES=[push_service.origin, scripted.origin])
        subs = {name: _store(host, "1", scripted.endpoint(name)) for name in names}
        clock = ManualClock()
        errors: list[str] = []

        def catching(run: Any) -> None:
            try:
                run()
            except Exception as exc:  # what a worker would log as a failed job
                errors.append(type(exc).__name__)

        with use_clock(clock):
            nid, first, last = fanned_out(host, ["1"])
            catching(lambda: _in_app(host, send_batch, nid, first, last))
            queue = InProcessQueue(host.app, clock)
            for _ in range(3):  # three claim timeouts: what was left claimed is sent again
                clock.advance(61)
                _recover(host)
                while queue.run_one(catching):
                    pass
        status = {d.subscription_id: d.status for d in host.deliveries(nid)}
        got = ({name: status[s.id] for name, s in subs.items()}, dict(scripted.counts), errors)
    assert got == ({"ok-1": "sent", "nul": "failed", "ok-2": "sent", "ok-3": "sent"},
                   dict.fromkeys(names, 1), []), got
    assert host.notification(nid).status == "done"


# -- cancel racing the start of a fan-out ----------------------------------------------------


@contextlib.contextmanager
def cancel_before_status_write(host: SendingHost, nid: int, status: str) -> Iterator[list[bool]]:
    """Inside the block, the first statement that writes ``status`` to a notification
    waits while another request (a thread of its own) cancels ``nid``; the list gets what
    that cancel() answered."""
    answers: list[bool] = []

    def cancel_now(_conn: Any, _cursor: Any, statement: str, params: Any,
                   _context: Any, _many: bool) -> None:
        if (statement.startswith("UPDATE webpush_notification") and status in str(params)
                and not answers):
            other = threading.Thread(
                target=lambda: answers.append(_in_app(host, host.webpush.cancel, nid)))
            other.start()
            other.join(30)

    with host.app.app_context():
        engine = host.db.engine
    sa.event.listen(engine, "before_cursor_execute", cancel_now)
    try:
        yield answers
    finally:
        sa.event.remove(engine, "before_cursor_execute", cancel_now)


def test_a_cancel_committed_while_the_fan_out_starts_is_not_overwritten(
        make_host: Any, push_service: Any) -> None:
    # fan_out reads the notification, then writes status "sending" unconditionally: a
    # cancel() committed in between is overwritten and everything is sent. The hook below
    # only pauses the fan-out at that point while another request cancels, as a concurrent
    # admin request would.
    host = make_host()
    subs = [host.subscribe("1") for _ in range(3)]
    nid = notify(host, ["1"])
    # the fan-out is about to write "sending": another request cancels right then
    with cancel_before_status_write(host, nid, "sending") as answers:
        InProcessQueue(host.app, ManualClock()).run_all()
    assert answers == [True]
    sent = sum(push_service.request_count(s.endpoint) for s in subs)
    got = (host.notification(nid).status, sent, {d.status for d in host.deliveries(nid)})
    assert got[0] == "cancelled" and got[1] == 0 and got[2] <= {"skipped"}, got


# -- validity ----------------------------------------------------------------------------------


def test_a_retry_due_after_the_validity_ends_is_final_within_the_stated_bound(
        make_host: Any, push_service: Any) -> None:
    # docs/design.md: a delivery that cannot be sent is final by the end of its validity
    # plus WEBPUSH_CLAIM_TIMEOUT plus WEBPUSH_RECOVER_INTERVAL (plus the queue's wait).
    # A retry time past the validity (a Retry-After up to WEBPUSH_RETRY_MAX_DELAY, 1 h)
    # leaves it pending, and the notification sending, until that retry time.
    claim, interval, ttl = 60, 60, 30
    host = make_host(WEBPUSH_CLAIM_TIMEOUT=claim, WEBPUSH_RECOVER_INTERVAL=interval)
    sub = host.subscribe("1")
    push_service.respond(sub.endpoint, 429, retry_after=3000, times=1)
    clock = ManualClock()
    with use_clock(clock):
        nid = notify(host, ["1"], ttl=ttl)
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        waited = 0
        while waited < ttl + claim + interval:  # recover once an interval, jobs as they come
            clock.advance(interval)
            waited += interval
            _recover(host)
            queue.run_all()
    got = ([d.status for d in host.deliveries(nid)], host.notification(nid).status)
    assert got == (["expired"], "done"), got
    assert push_service.request_count(sub.endpoint) == 1


# -- Redis refusing writes while a retry is scheduled ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_redis(*args: str) -> Iterator[redis.Redis]:
    """A redis-server of this test's own on a spare port, started with ``args``."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield conn
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("refusing", [
    # a replica after a failover (READONLY), a Redis at maxmemory with noeviction (OOM):
    # both answer, and refuse every write
    ("--replicaof", "127.0.0.1", "1"),
    ("--maxmemory", "1", "--maxmemory-policy", "noeviction"),
], ids=["read-only-replica", "out-of-memory"])
def test_redis_refusing_the_retry_enqueue_does_not_abort_the_batch(
        make_host: Any, push_service: Any, refusing: tuple[str, ...]) -> None:
    host = make_host(WEBPUSH_SEND_CONCURRENCY=1, WEBPUSH_CLAIM_TIMEOUT=60)
    failing = host.subscribe("1")
    healthy = [host.subscribe("1") for _ in range(4)]
    push_service.respond(failing.endpoint, 500, times=1)
    clock = ManualClock()
    with use_clock(clock), own_redis(*refusing) as refusing_redis:
        nid, first, last = fanned_out(host, ["1"])
        real = host.app.extensions["webpush.state"].redis
        host.app.extensions["webpush.state"].redis = refusing_redis
        error = None
        try:
            _in_app(host, send_batch, nid, first, last)
        except Exception as exc:
            error = type(exc).__name__
        finally:
            host.app.extensions["webpush.state"].redis = real
    rows = {d.subscription_id: d for d in host.deliveries(nid)}
    got = (error, [rows[s.id].status for s in healthy], rows[failing.id].status)
    assert got == (None, ["sent"] * 4, "pending"), got


# -- signal receivers --------------------------------------------------------------------------


def test_a_receiver_that_breaks_the_session_does_not_fail_the_batch(
        make_host: Any, push_service: Any) -> None:
    # Host code in a receiver uses the app's db.session (it is the host's session too): a
    # write of its own that fails at flush leaves the session needing a rollback, and the
    # batch's own statements after the receivers then raise.
    host = make_host(WEBPUSH_SEND_CONCURRENCY=2)
    subs = [host.subscribe("1") for _ in range(3)]
    nid, first, last = fanned_out(host, ["1"])
    D = host.webpush.models.Delivery
    calls: list[int] = []

    def audit(app: Any, **kw: Any) -> None:
        calls.append(kw["delivery_id"])
        # the host's audit write hits a constraint (here: a delivery that exists)
        host.db.session.add(D(notification_id=nid, subscription_id=subs[0].id, user_id="1",
                              status="pending"))
        host.db.session.flush()

    error = None
    with signals.delivery_sent.connected_to(audit, sender=host.app):
        try:
            _in_app(host, send_batch, nid, first, last)
        except Exception as exc:
            error = type(exc).__name__
    got = (error, len(calls), [d.status for d in host.deliveries(nid)],
           host.notification(nid).status)
    assert got == (None, 3, ["sent"] * 3, "done"), got


# -- recovery ----------------------------------------------------------------------------------


def _abandon(host: SendingHost, delivery_id: int, at: Any) -> None:
    """Leave a delivery as a worker killed mid-batch leaves it: claimed at ``at``."""
    D = host.webpush.models.Delivery
    with host.app.app_context():
        host.db.session.execute(sa.update(D).where(D.id == delivery_id).values(
            status="sending", claimed_by="dead", claimed_at=at, attempts=1))
        host.db.session.commit()


def test_a_claim_abandoned_just_after_a_recovery_round_is_recovered_within_the_bound(
        make_host: Any, push_service: Any) -> None:
    # docs/design.md: final within twice WEBPUSH_CLAIM_TIMEOUT plus
    # WEBPUSH_RECOVER_INTERVAL (plus the queue's wait) after a dead worker. The once-per-
    # claim-timeout mark is per notification: rows abandoned just after a round wait for
    # the next allowed round, one more claim timeout, and no more.
    claim, interval = 120, 60
    host = make_host(WEBPUSH_CLAIM_TIMEOUT=claim, WEBPUSH_RECOVER_INTERVAL=interval,
                     WEBPUSH_BATCH_SIZE=1)
    first_sub, second_sub = host.subscribe("1"), host.subscribe("1")
    clock = ManualClock()
    with use_clock(clock):
        nid, a, b = fanned_out(host, ["1"])
        start = clock.now
        _abandon(host, a, start)  # one worker dies now
        _abandon(host, b, start + timedelta(seconds=30))  # another one 30 s later
        queue = InProcessQueue(host.app, clock)
        clock.advance(10)
        finals: dict[int, float] = {}
        while clock.now - start < timedelta(seconds=400):
            _recover(host)  # once an interval, as one worker of the queue does
            queue.run_all()
            for d in host.deliveries(nid):
                if d.status in FINAL and d.id not in finals:
                    finals[d.id] = (clock.now - start).total_seconds()
            clock.advance(interval)
    # the documented bound: one recovery per notification per claim timeout, so a claim
    # abandoned just after a round waits for the next allowed one
    bound = 30 + 2 * claim + interval
    assert finals[a] <= claim + interval, finals
    assert finals[b] <= bound, (finals, bound)
    assert push_service.request_count(first_sub.endpoint) == 1
    assert push_service.request_count(second_sub.endpoint) == 1


def test_batches_waiting_in_a_busy_queue_get_at_most_one_copy_per_claim_timeout(
        make_host: Any, push_service: Any) -> None:
    # Pending rows overdue by the claim timeout may have lost their job or wait in a busy
    # queue; recover cannot tell, and gives each such notification one more round of jobs
    # at most once per claim timeout (docs/design.md): the queue grows by one copy of the
    # waiting batches per claim timeout, not per recover interval.
    host = make_host(WEBPUSH_CLAIM_TIMEOUT=60, WEBPUSH_BATCH_SIZE=2)
    for _ in range(6):
        host.subscribe("1")
    clock = ManualClock()
    with use_clock(clock):
        notify(host, ["1"])
        queue = InProcessQueue(host.app, clock)
        assert queue.run_one()  # the fan-out: three batch jobs now wait behind other work
        assert queue.ready_count() == 3
        lengths = []
        for _ in range(8):  # recover every 30 s for four claim timeouts, workers busy
            clock.advance(30)
            _recover(host)
            lengths.append(queue.ready_count())
    assert lengths == [3, 3, 6, 6, 9, 9, 12, 12], lengths  # overdue from 60 s on


class _MeetingRedis(redis.Redis):
    """The app's Redis client, but a read of a recovery mark waits (up to a second) until
    two threads read one: the order two workers starting at once can take."""

    meeting = threading.Barrier(2)

    def get(self, name: Any) -> Any:
        value = super().get(name)
        if ":recovered:" in str(name):
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meeting.wait(1.0)
        return value


def test_two_workers_recovering_at_once_enqueue_one_copy_of_a_stuck_batch(
        make_host: Any, push_service: Any, redis_conn: Any) -> None:
    # Every starting worker recovers (a deploy restarts them all at once); the once-per-
    # claim-timeout mark is read, then written: both see no mark and both enqueue.
    host = make_host(WEBPUSH_CLAIM_TIMEOUT=60)
    host.subscribe("1")
    clock = ManualClock()
    with use_clock(clock):
        nid, first, _last = fanned_out(host, ["1"])
        _abandon(host, first, clock.now)
        clock.advance(61)
        real = host.app.extensions["webpush.state"].redis
        host.app.extensions["webpush.state"].redis = _MeetingRedis(
            connection_pool=real.connection_pool)
        rounds: list[dict[str, int]] = []
        try:
            workers = [threading.Thread(target=lambda: rounds.append(_recover(host)))
                       for _ in range(2)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
        finally:
            host.app.extensions["webpush.state"].redis = real
        queue = InProcessQueue(host.app, clock)
        got = (sorted(r["batches"] for r in rounds), queue.ready_count())
    assert got == ([0, 1], 1), got


def advance_per_answer(push_service: Any, subs: list[Any], batch: threading.Thread,
                       clock: ManualClock, *, answers: int, seconds: float) -> None:
    """Move the batch's clock ``seconds`` on after each of its first ``answers`` requests
    (or once the batch has ended)."""
    for answered in range(1, answers + 1):
        deadline = time.monotonic() + 15
        while (sum(push_service.request_count(s.endpoint) for s in subs) <= answered
               and batch.is_alive()):
            assert time.monotonic() < deadline, "the batch neither sent nor ended"
            time.sleep(0.01)
        clock.advance(seconds)


def test_a_batch_running_longer_than_the_claim_timeout_is_not_sent_twice(
        make_host: Any, push_service: Any) -> None:
    # A batch's claim is dated once, when it is taken; a batch still sending after
    # WEBPUSH_CLAIM_TIMEOUT (a slow push service: with WEBPUSH_BATCH_SIZE rows to one
    # origin it lasts up to BATCH_SIZE / PER_ORIGIN_CONCURRENCY x (CONNECT + READ timeout),
    # 240 s by default, more with a larger batch) looks abandoned: recover gives its rows
    # to another worker while it goes on sending them. No kill, no timeout: nothing may be
    # received twice.
    from hostapp import make_host_app

    host = make_host(WEBPUSH_SEND_CONCURRENCY=2, WEBPUSH_PER_ORIGIN_CONCURRENCY=1,
                     WEBPUSH_CLAIM_TIMEOUT=60)
    subs = [host.subscribe("1") for _ in range(6)]
    for sub in subs:
        push_service.respond(sub.endpoint, 201, delay=0.4)
    # a second worker process: the same database and queue, a sender of its own
    settings = dict(host.config)
    other, _db, _webpush = make_host_app(settings.pop("SQLALCHEMY_DATABASE_URI"), **settings)
    clock = ManualClock()
    with use_clock(clock):
        nid, first, last = fanned_out(host, ["1"])
        slow = threading.Thread(target=lambda: _in_app(host, send_batch, nid, first, last))
        slow.start()
        try:
            # 25 s of the batch's time per answer: after four, it has been sending for
            # 100 s, longer than the claim timeout, its last result written 25 s ago.
            advance_per_answer(push_service, subs, slow, clock, answers=4, seconds=25)
            with other.app_context():
                other.extensions["webpush"].recover()
            InProcessQueue(other, clock).run_all()
        finally:
            slow.join(30)
        with other.app_context():
            other.extensions["webpush"].db.session.remove()
            other.extensions["webpush"].db.engine.dispose()
    counts = [push_service.request_count(s.endpoint) for s in subs]
    assert counts == [1] * 6, counts
    assert [d.status for d in host.deliveries(nid)] == ["sent"] * 6


def test_a_batch_sends_nothing_once_the_validity_has_passed(
        make_host: Any, push_service: Any) -> None:
    # Validity is checked once, when the batch claims its rows, and the TTL header is what
    # was left then: a batch that is still sending when the validity ends (a slow push
    # service) sends the rest anyway, each with a TTL as if no time had passed.
    concurrency, ttl = 2, 30
    host = make_host(WEBPUSH_SEND_CONCURRENCY=concurrency, WEBPUSH_PER_ORIGIN_CONCURRENCY=1)
    subs = [host.subscribe("1") for _ in range(6)]
    for sub in subs:
        push_service.respond(sub.endpoint, 201, delay=0.4)
    clock = ManualClock()
    with use_clock(clock):
        nid, first, last = fanned_out(host, ["1"], ttl=ttl)
        batch = threading.Thread(target=lambda: _in_app(host, send_batch, nid, first, last))
        batch.start()
        try:
            # 20 s of the batch's time per answer
            advance_per_answer(push_service, subs, batch, clock, answers=2, seconds=20)
            at_expiry = sum(push_service.request_count(s.endpoint) for s in subs)
        finally:
            batch.join(30)
    total = sum(push_service.request_count(s.endpoint) for s in subs)
    statuses = [d.status for d in host.deliveries(nid)]
    # what was in flight when the validity ended may still go; nothing taken after it
    assert total <= at_expiry + concurrency, (at_expiry, total, statuses)
    assert statuses.count("expired") >= len(subs) - at_expiry - concurrency, statuses


_SIGNALLING_WORKER = """
import json, os, sys
from hostapp import make_host_app
from flask_webpush_targeted import signals
from flask_webpush_targeted.jobs import send_batch

config = json.loads(os.environ["WEBPUSH_TEST_APP"])
app, _db, _webpush = make_host_app(config.pop("SQLALCHEMY_DATABASE_URI"), **config)
out = open(sys.argv[1], "a", buffering=1)


def told(sender, **kw):
    out.write(f"{kw['delivery_id']}\\n")


signals.delivery_sent.connect(told, sender=app)
with app.app_context():
    send_batch(*map(int, sys.argv[2:]))
"""


def test_a_worker_killed_mid_batch_has_told_the_receivers_of_what_it_recorded(
        make_host: Any, push_service: Any, tmp_path: Any) -> None:
    # Receivers now run once the whole batch is done: a worker killed in the middle (the
    # fault design.md plans for) has recorded up to WEBPUSH_BATCH_SIZE deliveries as sent
    # whose delivery_sent never reaches the host, and never will (they are final). Before,
    # at most the flush being written was untold.
    import os
    import signal
    import sys

    from conftest import TESTS_DIR

    host = make_host(WEBPUSH_SEND_CONCURRENCY=2, WEBPUSH_PER_ORIGIN_CONCURRENCY=1)
    subs = [host.subscribe("1") for _ in range(8)]
    for sub in subs:
        push_service.respond(sub.endpoint, 201, delay=0.3)
    nid, first, last = fanned_out(host, ["1"])
    told = tmp_path / "told.txt"
    told.write_text("")
    errors = tmp_path / "worker.log"
    with open(errors, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-c", _SIGNALLING_WORKER, str(told),
                                   str(nid), str(first), str(last)], env=host.env(),
                                  cwd=TESTS_DIR, stderr=log)
    D = host.webpush.models.Delivery
    try:
        deadline = time.monotonic() + 30
        while True:
            with host.app.app_context():
                sent = set(host.db.session.scalars(sa.select(D.id).where(
                    D.notification_id == nid, D.status == "sent")))
                host.db.session.commit()
            if len(sent) >= 4:
                break
            assert worker.poll() is None, errors.read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker did not record 4 deliveries"
            time.sleep(0.01)
        os.kill(worker.pid, signal.SIGKILL)  # the worker dies mid-batch
    finally:
        worker.wait(30)
    with host.app.app_context():
        recorded = set(host.db.session.scalars(sa.select(D.id).where(
            D.notification_id == nid, D.status == "sent")))
    signalled = {int(line) for line in told.read_text().split()}
    untold = recorded - signalled
    # at most the flush being written when the worker died (WEBPUSH_SEND_CONCURRENCY // 2)
    assert len(untold) <= 1, (sorted(recorded), sorted(signalled))


def test_redis_down_costs_a_batch_with_retries_no_more_than_one_failed_enqueue(
        make_host: Any, push_service: Any) -> None:
    # Each flush that holds a retry tries Redis again, inside the sender's event loop, with
    # redis-py's default of 10 retries and backoff: about 4 s per flush when Redis refuses
    # connections, 11 x the 2 s connect timeout when its host is gone, during which no
    # answer in flight is read. A batch of WEBPUSH_BATCH_SIZE rows with a retry in every
    # flush then outlasts WEBPUSH_CLAIM_TIMEOUT (and is taken over: sent twice).
    host = make_host(WEBPUSH_SEND_CONCURRENCY=1)
    subs = [host.subscribe("1") for _ in range(6)]
    for sub in subs[::2]:
        push_service.respond(sub.endpoint, 500, times=1)
    clock = ManualClock()
    with use_clock(clock):
        nid, first, last = fanned_out(host, ["1"])
        real = host.app.extensions["webpush.state"].redis
        # A port nothing listens on, with the timeouts queue.redis_connection uses.
        host.app.extensions["webpush.state"].redis = redis.Redis(
            port=1, socket_connect_timeout=2, socket_timeout=10)
        started = time.monotonic()
        try:
            _in_app(host, send_batch, nid, first, last)
        finally:
            host.app.extensions["webpush.state"].redis = real
        took = time.monotonic() - started
    status = {d.subscription_id: d.status for d in host.deliveries(nid)}
    assert [status[s.id] for s in subs] == ["pending", "sent"] * 3, status
    # three flushes with a retry: one failed enqueue (about 4 s) at most, not one per flush
    assert took < 8.0, took


def test_a_job_timeout_raised_in_a_blocking_receiver_is_not_swallowed(
        make_host: Any, push_service: Any) -> None:
    # RQ stops a job that outlasts its timeout by raising JobTimeoutException (an
    # Exception) wherever the job is: in a receiver, IsolatedSignal logs it as the
    # receiver's failure and goes on, the job runs past its timeout and ends "finished";
    # on a SimpleWorker a receiver that hangs then hangs the worker for good.
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    host = make_host()
    for _ in range(2):
        host.subscribe("1")
    nid, first, last = fanned_out(host, ["1"])

    def blocking(app: Any, **kw: Any) -> None:
        time.sleep(1.5)

    with (signals.delivery_sent.connected_to(blocking, sender=host.app),
          pytest.raises(JobTimeoutException),
          UnixSignalDeathPenalty(1, JobTimeoutException, job_id="send-batch")):
        _in_app(host, send_batch, nid, first, last)


def test_a_cancel_committed_while_recover_requeues_a_lost_job_is_not_overwritten(
        make_host: Any, push_service: Any) -> None:
    # recover() reads the waiting notifications, enqueues those whose job is gone and
    # writes their status ("scheduled" -> "queued") in one commit after the loop: a
    # cancel() committed meanwhile is overwritten. That cancel() cancels the new job (the
    # fan-out's job id is fixed), so the notification waits "queued", and the next round
    # enqueues its fan-out again, which sends.
    from conftest import empty_queue

    host = make_host()
    subs = [host.subscribe("1") for _ in range(2)]
    clock = ManualClock()
    with use_clock(clock):
        nid = notify(host, ["1"], send_at=clock.now + timedelta(seconds=30))
        empty_queue(host.app)  # Redis lost the scheduled job
        clock.advance(31)
        # recover() is about to write "queued": another request cancels right then
        with cancel_before_status_write(host, nid, "queued") as answers:
            _recover(host)
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        clock.advance(60)  # the next round: a "queued" notification whose job is gone
        _recover(host)
        queue.run_all()
    assert answers == [True]
    sent = sum(push_service.request_count(s.endpoint) for s in subs)
    got = (host.notification(nid).status, sent)
    assert got == ("cancelled", 0), got
