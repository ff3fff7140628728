"""Sending under stress: schedules, cancels, parallel and killed workers, Redis outages, retries.

Workers are real `flask webpush worker` processes (burst or long-running, with RQ's
scheduler) on a real Redis; the push service is the project's local one. Every test
runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from browser import wait_until
from conftest import SendingHost
from rq import Worker
from rq.job import Job

from flask_webpush_targeted.exceptions import QueueUnavailable
from flask_webpush_targeted.payload import default_tag
from flask_webpush_targeted.redis_queue import get_queue


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Gate change: LO123 now boards at 14")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def status_of(host: SendingHost, nid: int) -> str:
    return str(host.notification(nid).status)


def stop_worker(proc: subprocess.Popen[Any]) -> str:
    """Warm shutdown (SIGTERM, the worker stops its scheduler); SIGKILL if it hangs."""
    proc.terminate()
    try:
        return proc.communicate(timeout=20)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[1].decode(errors="replace")


@contextmanager
def running_workers(host: SendingHost, count: int = 1) -> Iterator[list[str]]:
    """``count`` long-running workers (named, so jobs tell who ran them); stopped on exit."""
    names = [f"w{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]
    procs = [host.start_worker("--name", name) for name in names]
    try:
        yield names
    finally:
        for proc in procs:
            stop_worker(proc)


def kill_worker_and_horse(pid: int) -> None:
    """SIGKILL a worker's process group (it and its scheduler) and its work horse, which RQ
    forks into a process group of its own."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGSTOP)  # frozen: no new horse is forked meanwhile
    parent_of = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as f:
            parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    family = {pid}
    while grown := {p for p, parent in parent_of.items() if parent in family} - family:
        family |= grown
    for member in family - {pid}:
        with suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@contextmanager
def database_busy(host: SendingHost) -> Iterator[None]:
    """Another transaction holds the deliveries' table: a worker's next write there waits."""
    table = host.webpush.models.Delivery.__tablename__
    with host.app.app_context(), host.db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite: the one write lock
        try:
            yield
        finally:
            conn.rollback()


class OwnRedis:
    """A redis-server of this test's own on a free port, which the test may stop."""

    def __init__(self, folder: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"],
            stdout=subprocess.DEVNULL)
        conn = redis.Redis.from_url(self.url)
        wait_until(lambda: self._answers(conn), "waited in vain for redis-server to answer", 10)

    @staticmethod
    def _answers(conn: redis.Redis) -> bool:
        try:
            return bool(conn.ping())
        except redis.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# -- 1. scheduling ------------------------------------------------------------------------------


def test_send_at_is_not_received_before_its_time_and_is_received_after(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    with running_workers(sending):
        send_at = datetime.now(UTC) + timedelta(seconds=3)
        nid = notify(sending, ["1"], send_at=send_at)
        assert status_of(sending, nid) == "scheduled"
        while time.time() < send_at.timestamp() - 0.05:
            assert sending.push_service.request_count(sub.endpoint) == 0
            time.sleep(0.05)
        assert status_of(sending, nid) == "scheduled"
        [push] = sending.push_service.wait_for(1, timeout=20, endpoint_or_id=sub.endpoint)
        assert push.received_at >= send_at.timestamp()
        wait_until(lambda: status_of(sending, nid) == "done", "waited in vain for status done", 20)
    assert [d.status for d in sending.deliveries(nid)] == ["sent"]


# -- 2. cancel ----------------------------------------------------------------------------------


def test_cancel_stops_a_scheduled_notification_while_a_worker_runs(sending: SendingHost) -> None:
    cancelled_sub, kept_sub = sending.subscribe("1"), sending.subscribe("2")
    with running_workers(sending):
        send_at = datetime.now(UTC) + timedelta(seconds=2)
        cancelled = notify(sending, ["1"], send_at=send_at)
        kept = notify(sending, ["2"], send_at=send_at)
        with sending.app.app_context():
            assert sending.webpush.cancel(cancelled) is True
        # The uncancelled twin arriving shows the worker and its scheduler did run past send_at.
        sending.push_service.wait_for(1, timeout=20, endpoint_or_id=kept_sub.endpoint)
        wait_until(lambda: status_of(sending, kept) == "done",
                   "waited in vain for the twin done", 20)
        time.sleep(1.5)  # one more scheduler tick
    assert sending.push_service.request_count(cancelled_sub.endpoint) == 0
    assert status_of(sending, cancelled) == "cancelled"
    assert sending.deliveries(cancelled) == []


def test_cancel_stops_a_queued_notification_before_any_worker_runs(sending: SendingHost) -> None:
    cancelled_sub, kept_sub = sending.subscribe("1"), sending.subscribe("2")
    cancelled, kept = notify(sending, ["1"]), notify(sending, ["2"])
    assert status_of(sending, cancelled) == "queued"
    with sending.app.app_context():
        assert sending.webpush.cancel(cancelled) is True
    sending.run_worker()
    assert len(sending.push_service.received_for(kept_sub.endpoint)) == 1
    assert sending.push_service.request_count(cancelled_sub.endpoint) == 0
    assert status_of(sending, cancelled) == "cancelled" and status_of(sending, kept) == "done"


def test_cancel_leaves_alone_another_apps_notification_with_the_same_id_on_a_shared_redis(
    make_host: Any, push_service: Any, tmp_path: Any,
) -> None:
    ours = make_host()
    theirs = make_host(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'other-shop.db'}")
    our_sub, their_sub = ours.subscribe("1"), theirs.subscribe("1")
    mine, other = notify(ours, ["1"]), notify(theirs, ["1"])
    assert mine == other  # two databases, one Redis, two queues
    with ours.app.app_context():
        assert ours.webpush.cancel(mine) is True
    their_job = theirs.notification(other).job_id
    with theirs.app.app_context():  # still waiting in their queue: not cancelled with ours
        assert get_queue().job_ids == [their_job]
    theirs.run_worker()
    ours.run_worker()
    assert len(push_service.received_for(their_sub.endpoint)) == 1
    assert status_of(theirs, other) == "done"
    assert push_service.request_count(our_sub.endpoint) == 0


def test_cancel_of_a_done_notification_returns_false_and_changes_nothing(
    sending: SendingHost,
) -> None:
    sending.subscribe("1")
    nid = notify(sending, ["1"])
    sending.run_worker()
    assert status_of(sending, nid) == "done"
    with sending.app.app_context():
        assert sending.webpush.cancel(nid) is False
    assert status_of(sending, nid) == "done"
    assert [d.status for d in sending.deliveries(nid)] == ["sent"]


# -- 3. two workers -----------------------------------------------------------------------------


def test_two_workers_on_one_notification_send_each_subscription_exactly_once(
    make_host: Any, push_service: Any,
) -> None:
    host = make_host(WEBPUSH_BATCH_SIZE=5)
    users = [f"u{i}" for i in range(100)]
    subs = [host.subscribe(u) for u in users for _device in range(2)]
    for sub in subs:  # a little slow, so that both workers get batches
        push_service.respond(sub.endpoint, 201, delay=0.05)
    with running_workers(host, count=2) as names, host.app.app_context():
        queue = get_queue()
        wait_until(lambda: len(Worker.all(queue=queue)) == 2,
                   "waited in vain for both workers listening", 30)
        nid = notify(host, users)
        wait_until(lambda: status_of(host, nid) == "done",
                   "waited in vain for notification done", 90)
        jobs = Job.fetch_many(queue.finished_job_registry.get_job_ids(), queue.connection)
    assert [push_service.request_count(s.endpoint) for s in subs] == [1] * len(subs)
    assert all(len(push_service.received_for(s.endpoint)) == 1 for s in subs)
    deliveries = host.deliveries(nid)
    assert len(deliveries) == 200 and {d.status for d in deliveries} == {"sent"}
    batch_runners = {j.worker_name for j in jobs if j and j.func_name.endswith("send_batch")}
    assert batch_runners == set(names)  # both workers really sent batches


# -- 4. a worker killed mid-batch ---------------------------------------------------------------


def test_a_worker_killed_mid_batch_resends_only_what_was_in_flight(
    make_host: Any, push_service: Any,
) -> None:
    concurrency, claim_timeout = 1, 2
    host = make_host(WEBPUSH_SEND_CONCURRENCY=concurrency, WEBPUSH_CLAIM_TIMEOUT=claim_timeout,
                     WEBPUSH_BATCH_SIZE=5)
    users = [f"u{i}" for i in range(15)]
    subs = {host.subscribe(u).endpoint: u for u in users}
    for endpoint in subs:
        # Slow but working: 0.6 s a push leaves a batch of 5 three seconds, so the kill
        # below lands inside one even when a loaded machine notices the 7th push late.
        push_service.respond(endpoint, 201, delay=0.6)

    def received() -> Counter[str]:
        return Counter({e: len(push_service.received_for(e)) for e in subs})

    nid = notify(host, users)
    worker = host.start_worker()
    try:
        wait_until(lambda: sum(received().values()) >= 7,
                   "waited in vain for 7 pushes (mid second batch)", 60)
        # The worst moment: an answer is in but not yet written down (the database is busy).
        with database_busy(host):
            time.sleep(1.2)  # > the 0.6 s a push takes: whatever was started has arrived
            kill_worker_and_horse(worker.pid)
    finally:
        if worker.poll() is None:
            kill_worker_and_horse(worker.pid)
        worker.communicate(timeout=10)
    at_kill = host.deliveries(nid)
    in_flight = {d.user_id for d in at_kill if d.status == "sending"}
    assert in_flight, "the kill did not land in the middle of a batch"
    time.sleep(claim_timeout + 0.5)
    host.run_worker()

    counts = received()
    assert all(counts[e] >= 1 for e in subs), "a subscription never received it"
    assert max(counts.values()) <= 2
    twice = {subs[e] for e, c in counts.items() if c == 2}
    assert twice <= in_flight
    assert len(twice) <= concurrency, (
        f"{len(twice)} duplicates ({sorted(twice)}); only the {concurrency} push(es) in "
        "flight at the kill may be sent again")
    for endpoint in subs:
        tags = {p.notification()["tag"] for p in push_service.received_for(endpoint)}
        assert tags == {default_tag(nid)}  # a duplicate replaces the shown one
    assert {d.status for d in host.deliveries(nid)} == {"sent"}
    assert status_of(host, nid) == "done"


# -- 5. Redis down at call time -----------------------------------------------------------------


def notify_while_redis_is_down(host: SendingHost, server: OwnRedis) -> int:
    server.stop()
    with host.app.app_context(), pytest.raises(QueueUnavailable) as caught:
        host.webpush.notify_user("1", title="Your order shipped")
    nid = caught.value.notification_id
    assert nid is not None and str(nid) in str(caught.value)
    n = host.notification(nid)
    assert (n.status, n.job_id) == ("queued", None)
    server.start()  # same port
    return int(nid)


def test_notification_stored_while_redis_was_down_is_enqueued_by_recover_command(
    own_redis: OwnRedis, make_host: Any, push_service: Any,
) -> None:
    host = make_host(WEBPUSH_REDIS_URL=own_redis.url)
    sub = host.subscribe("1")
    nid = notify_while_redis_is_down(host, own_redis)
    result = host.app.test_cli_runner().invoke(args=["webpush", "recover"])
    assert result.exit_code == 0 and "1 enqueued" in result.output, result.output
    job_id = host.notification(nid).job_id
    with host.app.app_context():
        assert job_id is not None and get_queue().job_ids == [job_id]
    host.run_worker()
    assert len(push_service.received_for(sub.endpoint)) == 1
    assert status_of(host, nid) == "done"


def test_a_burst_worker_recovers_at_start_what_was_stored_while_redis_was_down(
    own_redis: OwnRedis, make_host: Any, push_service: Any,
) -> None:
    host = make_host(WEBPUSH_REDIS_URL=own_redis.url)
    sub = host.subscribe("1")
    nid = notify_while_redis_is_down(host, own_redis)
    host.run_worker()
    assert len(push_service.received_for(sub.endpoint)) == 1
    assert status_of(host, nid) == "done"


# -- 6. validity and retries --------------------------------------------------------------------


def test_a_delivery_past_its_ttl_is_expired_and_never_sent(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    nid = notify(sending, ["1"], ttl=1)
    time.sleep(2)
    sending.run_worker()
    [d] = sending.deliveries(nid)
    assert d.status == "expired" and "ttl" in (d.reason or "")
    assert sending.push_service.request_count(sub.endpoint) == 0
    assert status_of(sending, nid) == "done"


def scheduled_jobs(host: SendingHost) -> list[str]:
    with host.app.app_context():
        return list(get_queue().scheduled_job_registry.get_job_ids())


def test_429_with_retry_after_is_retried_through_the_scheduler_after_that_delay(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    sending.push_service.respond(sub.endpoint, 429, retry_after=1, times=1)
    nid = notify(sending, ["1"])
    sending.run_worker()
    [d] = sending.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("pending", 429, 1)
    assert 0.9 <= (d.next_attempt_at - d.claimed_at).total_seconds() <= 2
    assert len(scheduled_jobs(sending)) == 1  # the retry waits in RQ's scheduled registry
    assert sending.push_service.received_for(sub.endpoint) == []
    time.sleep(max(0.0, d.next_attempt_at.timestamp() - time.time()) + 1.2)  # RQ: whole s
    sending.run_worker()
    [push] = sending.push_service.received_for(sub.endpoint)
    assert push.received_at >= d.next_attempt_at.timestamp()
    [d] = sending.deliveries(nid)
    assert (d.status, d.attempts) == ("sent", 2)
    assert sending.push_service.request_count(sub.endpoint) == 2
    assert scheduled_jobs(sending) == [] and status_of(sending, nid) == "done"


def test_a_long_running_worker_sends_a_429_retry_once_retry_after_has_passed(
    sending: SendingHost,
) -> None:
    sub = sending.subscribe("1")
    sending.push_service.respond(sub.endpoint, 429, retry_after=1, times=1)
    with running_workers(sending):
        nid = notify(sending, ["1"])
        [push] = sending.push_service.wait_for(1, timeout=15, endpoint_or_id=sub.endpoint)
        wait_until(lambda: status_of(sending, nid) == "done", "waited in vain for status done", 10)
    [d] = sending.deliveries(nid)
    assert (d.status, d.attempts) == ("sent", 2)
    assert push.received_at - d.created_at.timestamp() >= 1  # not before Retry-After


def run_twice_with_backoff(host: SendingHost) -> None:
    """A burst worker, then one more once the first backoff (0.5 s here) is due: RQ's
    scheduler counts in whole seconds."""
    host.run_worker()
    time.sleep(1.6)
    host.run_worker()


def test_500_on_every_attempt_ends_failed_after_max_attempts(
    make_host: Any, push_service: Any,
) -> None:
    host = make_host(WEBPUSH_MAX_ATTEMPTS=2)
    sub = host.subscribe("1")
    push_service.respond(sub.endpoint, 500)
    nid = notify(host, ["1"])
    run_twice_with_backoff(host)
    [d] = host.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("failed", 500, 2)
    assert d.reason.startswith("gave up after 2 attempts"), d.reason
    assert push_service.request_count(sub.endpoint) == 2
    assert scheduled_jobs(host) == [] and status_of(host, nid) == "done"


def test_503_once_then_201_is_sent_on_the_retry(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    sending.push_service.respond(sub.endpoint, 503, times=1)
    nid = notify(sending, ["1"])
    run_twice_with_backoff(sending)
    [d] = sending.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("sent", 201, 2)
    assert sending.push_service.request_count(sub.endpoint) == 2
    assert len(sending.push_service.received_for(sub.endpoint)) == 1
    assert status_of(sending, nid) == "done"
