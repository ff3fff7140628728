"""Faults in the delivery pipeline that once lost or resent deliveries: each test here
failed on the code before its fix. Jobs run in this process on an injected clock (see
pipeline_driver), against the real Redis, both databases and the local push service;
the idle-worker test runs a real worker process."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from browser import wait_until
from conftest import SendingHost
from pipeline_driver import InProcessQueue

from flask_webpush_targeted import signals
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.jobs import fan_out, send_batch

FINAL = {"sent", "failed", "gone", "expired", "skipped"}


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Your order has shipped")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def fanned_out(host: SendingHost, users: list[str], **kw: Any) -> tuple[int, int, int]:
    """A notification fanned out in this process with its batch jobs dropped: (id, first
    delivery id, last delivery id)."""
    nid = notify(host, users, **kw)
    with host.app.app_context():
        from flask_webpush_targeted.redis_queue import get_queue

        get_queue().empty()
        fan_out(nid)
        get_queue().empty()
    ids = [d.id for d in host.deliveries(nid)]
    return nid, min(ids), max(ids)


def test_retries_due_at_different_times_each_get_a_job_at_their_time(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_RETRY_BASE_DELAY=30)
    soon, later = host.subscribe("1"), host.subscribe("2")
    push_service.respond(soon.endpoint, 429, retry_after=1, times=1)
    push_service.respond(later.endpoint, 500, times=1)
    clock = ManualClock()
    with use_clock(clock):
        nid = notify(host, ["1", "2"])
        queue = InProcessQueue(host.app, clock)
        queue.run_all()
        rows = {d.subscription_id: d for d in host.deliveries(nid)}
        assert {d.status for d in rows.values()} == {"pending"}
        jobs = [(at, args) for at, name, args in queue.scheduled() if name == "send_batch"]
        for sub in (soon, later):
            d = rows[sub.id]
            # some job runs at or after the row's due time and covers it
            assert any(at >= d.next_attempt_at.timestamp() and args[1] <= d.id <= args[2]
                       for at, args in jobs), (sub, d.next_attempt_at, jobs)
        clock.advance(31)
        queue.run_all()
    assert {d.status for d in host.deliveries(nid)} == {"sent"}
    assert push_service.request_count(later.endpoint) == 2


def test_cancel_stops_a_batch_already_sending_beyond_what_is_in_flight(
        make_host: Any, push_service: Any) -> None:
    concurrency = 2
    host = make_host(WEBPUSH_SEND_CONCURRENCY=concurrency, WEBPUSH_BATCH_SIZE=50)
    subs = [host.subscribe(str(i % 3 + 1)) for i in range(12)]
    for sub in subs:
        push_service.respond(sub.endpoint, 201, delay=0.25)
    nid, first, last = fanned_out(host, ["1", "2", "3"])
    batch = threading.Thread(target=lambda: _in_app(host, send_batch, nid, first, last))
    batch.start()
    try:
        wait_until(lambda: sum(push_service.request_count(s.endpoint) for s in subs) >= 3,
                   "the batch did not start sending", 15)
        with host.app.app_context():
            assert host.webpush.cancel(nid) is True
        at_cancel = sum(push_service.request_count(s.endpoint) for s in subs)
    finally:
        batch.join(30)
    assert not batch.is_alive()
    total = sum(push_service.request_count(s.endpoint) for s in subs)
    # At most what was in flight (WEBPUSH_SEND_CONCURRENCY) goes out after cancel() returns.
    assert total <= at_cancel + concurrency, (at_cancel, total)
    rows = host.deliveries(nid)
    assert {d.status for d in rows} <= FINAL
    sent = [d for d in rows if d.status == "sent"]
    assert len(sent) == total and len(rows) - len(sent) >= len(subs) - at_cancel - concurrency
    with host.app.app_context():
        stats = host.webpush.stats(nid)
    assert (stats["sent"], stats["skipped"], stats["pending"]) == (
        len(sent), len(rows) - len(sent), 0)


def _in_app(host: SendingHost, func: Any, *args: Any) -> Any:
    with host.app.app_context():
        return func(*args)


def test_redis_down_while_a_retry_is_enqueued_sends_the_rest_and_recover_retries_later(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_SEND_CONCURRENCY=1, WEBPUSH_CLAIM_TIMEOUT=60)
    failing = host.subscribe("1")
    healthy = [host.subscribe("1") for _ in range(4)]
    push_service.respond(failing.endpoint, 500, times=1)
    clock = ManualClock()
    with use_clock(clock):
        nid, first, last = fanned_out(host, ["1"])
        real = host.app.extensions["webpush.state"].redis
        # A port nothing listens on: every Redis call fails as in an outage.
        host.app.extensions["webpush.state"].redis = redis.Redis(port=1, socket_connect_timeout=0.2)
        try:
            _in_app(host, send_batch, nid, first, last)  # raised ConnectionError before
        finally:
            host.app.extensions["webpush.state"].redis = real
        rows = {d.subscription_id: d for d in host.deliveries(nid)}
        assert [rows[s.id].status for s in healthy] == ["sent"] * 4
        assert rows[failing.id].status == "pending" and rows[failing.id].claimed_by is None
        queue = InProcessQueue(host.app, clock)
        clock.advance(61 + 10)  # past its due time by more than the claim timeout
        with host.app.app_context():
            assert host.webpush.recover()["batches"] == 1
        queue.run_all()
    assert {d.status for d in host.deliveries(nid)} == {"sent"}
    assert push_service.request_count(failing.endpoint) == 2
    assert all(push_service.request_count(s.endpoint) == 1 for s in healthy)


def test_a_signal_receiver_that_raises_stops_nothing_and_is_told_only_what_is_committed(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_SEND_CONCURRENCY=2)
    subs = [host.subscribe("1") for _ in range(6)]
    nid, first, last = fanned_out(host, ["1"])
    seen: list[tuple[int, str]] = []
    D = host.webpush.models.Delivery

    def receiver(app: Any, **kw: Any) -> None:
        with host.db.engine.connect() as conn:  # what is committed, not a session's view
            seen.append((kw["delivery_id"], conn.scalar(
                sa.select(D.status).where(D.id == kw["delivery_id"]))))
        raise RuntimeError("the host's receiver is broken")

    with signals.delivery_sent.connected_to(receiver, sender=host.app):
        _in_app(host, send_batch, nid, first, last)
    assert [d.status for d in host.deliveries(nid)] == ["sent"] * 6
    assert all(push_service.request_count(s.endpoint) == 1 for s in subs)
    # Each receiver call came once its delivery was committed; every one was told.
    assert sorted(seen) == [(d.id, "sent") for d in host.deliveries(nid)]
    assert host.notification(nid).status == "done"


def test_an_idle_worker_recovers_every_recover_interval(make_host: Any) -> None:
    sending = make_host(WEBPUSH_RECOVER_INTERVAL=2)
    sub = sending.subscribe("1")
    proc = sending.start_worker()
    try:
        from rq import Worker

        with sending.app.app_context():
            from flask_webpush_targeted.redis_queue import get_queue

            queue = get_queue()
        wait_until(lambda: Worker.all(queue=queue), "the worker did not start", 30)
        time.sleep(1)  # past the start-up recovery: what follows is found by a periodic one
        nid, _first, _last = fanned_out(sending, ["1"])
        D = sending.webpush.models.Delivery
        with sending.app.app_context():
            # As a dead worker leaves it: claimed long ago, never answered, no job.
            sending.db.session.execute(sa.update(D).where(D.notification_id == nid).values(
                status="sending", claimed_by="dead", attempts=1,
                claimed_at=datetime.now(UTC) - timedelta(hours=1)))
            sending.db.session.commit()
        wait_until(lambda: sending.push_service.request_count(sub.endpoint) == 1,
                   "an idle worker did not recover the abandoned delivery", 20)
    finally:
        _stop(proc)
    assert [d.status for d in sending.deliveries(nid)] == ["sent"]


def test_a_user_erased_during_the_fan_out_does_not_come_back_in_users_without_devices(
        sending: SendingHost) -> None:
    from unittest import mock

    from flask_webpush_targeted import fanout

    sending.subscribe("1")
    nid = notify(sending, ["1", "ghost"])  # "ghost" has no device: one of the users without
    real = fanout._insert_deliveries

    def erasing_meanwhile(*args: Any, **kwargs: Any) -> Any:
        sending.webpush.forget_user("ghost")  # commits, as another request would
        return real(*args, **kwargs)

    with sending.app.app_context():
        from flask_webpush_targeted.redis_queue import get_queue

        get_queue().empty()
        with mock.patch.object(fanout, "_insert_deliveries", erasing_meanwhile):
            fan_out(nid)
    n = sending.notification(nid)
    assert "ghost" not in n.users_without_devices and "ghost" not in n.targeting["user_ids"]
    assert n.without_count == 0


def test_waiting_for_a_paused_push_service_uses_up_no_attempt(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_SEND_CONCURRENCY=1, WEBPUSH_MAX_ATTEMPTS=2)
    slowing, waiting = host.subscribe("1"), host.subscribe("1")
    # Each 429 pauses the service's origin for 30 s: the other delivery is not sent then.
    push_service.respond(slowing.endpoint, 429, retry_after=30, times=2)
    clock = ManualClock()
    with use_clock(clock):
        nid = notify(host, ["1"])
        queue = InProcessQueue(host.app, clock)
        for _ in range(3):
            queue.run_all()
            clock.advance(31)
        queue.run_all()
    rows = {d.subscription_id: d for d in host.deliveries(nid)}
    assert rows[slowing.id].status == "failed"  # its 2 attempts were 2 requests
    assert push_service.request_count(slowing.endpoint) == 2
    # Paused twice without a request: still its 2 attempts, the first one sent.
    assert (rows[waiting.id].status, rows[waiting.id].attempts) == ("sent", 1)
    assert push_service.request_count(waiting.endpoint) == 1


def test_a_worker_frozen_past_its_claim_sends_no_more_than_was_in_flight_once_it_resumes(
        make_host: Any, push_service: Any) -> None:
    import os
    import signal

    concurrency = 2
    host = make_host(WEBPUSH_SEND_CONCURRENCY=concurrency, WEBPUSH_BATCH_SIZE=50,
                     WEBPUSH_CLAIM_TIMEOUT=3, WEBPUSH_CONNECT_TIMEOUT=1,
                     WEBPUSH_READ_TIMEOUT=1, WEBPUSH_RECOVER_INTERVAL=3600)
    subs = [host.subscribe("1") for _ in range(12)]
    for sub in subs:
        push_service.respond(sub.endpoint, 201, delay=0.3)

    def received() -> int:
        return sum(push_service.request_count(s.endpoint) for s in subs)

    proc = host.start_worker("--simple")
    try:
        nid = notify(host, ["1"])
        wait_until(lambda: received() >= 2, "the worker did not start sending", 30)
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: a stopped VM, a long partition
        # A real process's claim ages in real time: past WEBPUSH_CLAIM_TIMEOUT (3 s) another
        # worker, here this test, takes the batch over and sends what is left.
        time.sleep(3.5)
        with host.app.app_context():
            assert host.webpush.recover()["batches"] >= 1
        InProcessQueue(host.app, ManualClock()).run_all()
        taken_over = received()
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(2.5)  # what the resumed worker does now: its requests time out in 1 s
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        _stop(proc)
    copies = [push_service.request_count(s.endpoint) for s in subs]
    assert all(c >= 1 for c in copies)
    # Only what was in flight when it froze may go out twice; nothing after it resumed.
    assert sum(copies) - len(subs) <= concurrency, copies
    assert received() - taken_over <= concurrency
    assert {d.status for d in host.deliveries(nid)} == {"sent"}


class RestartableRedis:
    """A redis-server of this test's own on a spare port, to kill and start again."""

    def __init__(self, folder: Any) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(folder)]
        self.proc: Any = None
        self.start()

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        conn = redis.Redis(port=self.port)
        wait_until(lambda: _answers(conn), "the test's own Redis did not start", 10)

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def restartable_redis(tmp_path: Any) -> Any:
    """Set up before make_host, so it is stopped after the hosts on it are closed."""
    server = RestartableRedis(tmp_path)
    yield server
    server.stop()


def test_a_worker_started_while_redis_is_down_waits_for_it_and_then_sends(
        restartable_redis: RestartableRedis, make_host: Any, push_service: Any) -> None:

    server = restartable_redis
    host = make_host(WEBPUSH_REDIS_URL=f"redis://127.0.0.1:{server.port}/0",
                     WEBPUSH_RECOVER_INTERVAL=1)
    sub = host.subscribe("1")
    server.kill()  # a deploy starts the workers while Redis restarts
    worker = host.start_worker()
    try:
        time.sleep(2)  # RQ's worker exited at once with a ConnectionError
        assert worker.poll() is None, _stderr(worker)
        server.start()
        nid = notify(host, ["1"])
        try:
            wait_until(lambda: push_service.request_count(sub.endpoint) == 1,
                       "the worker did not send once Redis answered", 45)
        except BaseException:
            raise AssertionError(_stderr(worker)) from None
    finally:
        _stop(worker)
    assert [d.status for d in host.deliveries(nid)] == ["sent"]


def _stop(worker: Any) -> None:
    """Warm shutdown (SIGTERM), as a supervisor would; a worker that ignores it fails the
    test, killed with its children so that nothing outlives it."""
    import subprocess

    worker.terminate()
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker ignored SIGTERM: {_stderr(worker)}") from None


def _stderr(worker: Any) -> str:
    """The end of a stopped worker's stderr (its scheduler, a child, may hold the pipe)."""
    import os
    import signal
    import subprocess

    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    try:
        return str(worker.communicate(timeout=10)[1].decode(errors="replace")[-3000:])
    except subprocess.TimeoutExpired:
        return "(no stderr: the pipe stayed open)"


def _answers(conn: Any) -> bool:
    try:
        return bool(conn.ping())
    except redis.exceptions.ConnectionError:
        return False
