"""`flask webpush worker --processes N`: N app workers under RQ's worker pool, one command;
and the default worker's jobs, run in its own process, still bounded by their timeout.

Real `flask webpush worker` processes on the real Redis, the local push service, SQLite
and PostgreSQL. A child killed with SIGKILL is replaced within the pool's check (every
second) and its claimed batch is sent again by ``recover`` within WEBPUSH_CLAIM_TIMEOUT +
WEBPUSH_RECOVER_INTERVAL of the kill (docs/deployment.md); the test shortens both
settings instead of waiting minutes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import TESTS_DIR, SendingHost
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC
from rq import Queue, Worker
from rq.job import Job

from flask_webpush_targeted.redis_queue import get_queue
from flask_webpush_targeted.testing import LocalPushService
from flask_webpush_targeted.transport.guard import EndpointGuard
from flask_webpush_targeted.transport.sender import Message, PushSender
from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key
from flask_webpush_targeted.worker import JobTimedOut

CLAIM_TIMEOUT = 4
RECOVER_INTERVAL = 1
#: the pool checks its children every second; a new one starts in about a second
RESPAWN = 3.0


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def wait_until(test: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def workers_of(host: SendingHost) -> list[Worker]:
    with host.app.app_context():
        queue = get_queue()
    return [w for w in Worker.all(queue=queue) if alive(w.pid)]


@contextlib.contextmanager
def pool(host: SendingHost, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`flask webpush worker ...` in a session of its own (its log in a file: a pipe
    nobody reads would fill and stall the workers), stopped at the end."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(host.worker_command(*args), env=host.env(), cwd=TESTS_DIR,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def log_tail(proc: subprocess.Popen[bytes]) -> str:
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    return str(log.read()[-12000:].decode(errors="replace"))


def children(host: SendingHost, proc: subprocess.Popen[bytes], count: int) -> list[Worker]:
    """Wait until ``count`` live workers of the command are registered; return them."""
    def registered() -> list[Worker] | None:
        assert proc.poll() is None, log_tail(proc)
        found = [w for w in workers_of(host) if parent_of(w.pid) == proc.pid]
        return found if len(found) == count else None
    found: list[Worker] = wait_until(registered, 30, f"{count} workers of the command")
    return found


def test_processes_runs_that_many_app_workers_under_one_command_and_they_send(
        sending: SendingHost) -> None:
    users = [f"u{i}" for i in range(6)]
    subs = {u: sending.subscribe(u) for u in users}
    with pool(sending, "--processes", "2") as proc:
        found = children(sending, proc, 2)
        assert len({w.pid for w in found}) == 2
        assert all(w.pid != proc.pid for w in found)  # the command itself runs no jobs
        with sending.app.app_context():
            nid = sending.webpush.notify_users(users, title="Hello", body="From the pool").id
        wait_until(lambda: all(d.status == "sent" for d in sending.deliveries(nid))
                   and len(sending.deliveries(nid)) == 6, 30, "every delivery sent")
        rows = {d.subscription_id: (d.status, d.status_code, d.attempts)
                for d in sending.deliveries(nid)}
        log = log_tail(proc)
    for user, sub in subs.items():
        got = sending.push_service.received_for(sub.endpoint)
        requests = sending.push_service.request_count(sub.endpoint)
        assert [p for p in got if p.ok], (
            f"{user}: delivery {rows.get(sub.id)}, {requests} request(s), received "
            f"{[(p.status, p.error) for p in got]}; the pool's log:\n{log}")


def test_a_child_killed_with_sigkill_is_replaced_and_its_batch_sent_again_within_the_bound(
        make_host: Callable[..., SendingHost]) -> None:
    host = make_host(WEBPUSH_CLAIM_TIMEOUT=CLAIM_TIMEOUT, WEBPUSH_RECOVER_INTERVAL=RECOVER_INTERVAL,
                     WEBPUSH_BATCH_SIZE=5)
    users = [f"k{i}" for i in range(10)]
    subs = {u: host.subscribe(u) for u in users}
    for sub in subs.values():  # the first request of each is slow: the kill lands mid-batch
        host.push_service.respond(sub.endpoint, 201, times=1, delay=1.5)
    D = host.webpush.models.Delivery
    with pool(host, "--processes", "2") as proc:
        before = {w.pid for w in children(host, proc, 2)}
        with host.app.app_context():
            nid = host.webpush.notify_users(users, title="Hello", body="Killed mid-batch").id

        def statuses(first: int, last: int) -> list[str]:
            with host.app.app_context():
                found = list(host.db.session.scalars(sa.select(D.status).where(
                    D.notification_id == nid, D.id.between(first, last))))
                host.db.session.rollback()
            return found

        def busy_batch() -> tuple[Worker, int, int] | None:
            """A child whose batch has claimed its deliveries (send_batch(nid, first, last))."""
            for w in workers_of(host):
                job_id = w.get_current_job_id()
                if w.pid not in before or not job_id:
                    continue
                job = Job.fetch(job_id, connection=w.connection)
                if "batch" in (job.func_name or ""):
                    _nid, first, last = job.args
                    if statuses(first, last) == ["sending"] * 5:
                        return w, first, last
            return None

        victim, first, last = wait_until(busy_batch, 30, "a child sending a batch")
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        with host.app.app_context():
            orphans = set(host.db.session.scalars(sa.select(D.id).where(
                D.notification_id == nid, D.id.between(first, last))))
            host.db.session.rollback()
        assert len(orphans) == 5
        replacement = wait_until(
            lambda: [w for w in workers_of(host) if parent_of(w.pid) == proc.pid
                     and w.pid not in before], RESPAWN, "a new child in the victim's place")
        assert len(replacement) == 1
        assert not alive(victim.pid)

        def orphans_sent() -> bool:
            with host.app.app_context():
                statuses = host.db.session.scalars(sa.select(D.status).where(
                    D.id.in_(orphans))).all()
                host.db.session.rollback()
            return set(statuses) == {"sent"}

        bound = CLAIM_TIMEOUT + RECOVER_INTERVAL + RESPAWN
        wait_until(orphans_sent, bound + 10, "the killed batch sent again")
        took = time.monotonic() - killed_at
        assert took <= bound, f"the killed batch took {took:.1f} s, over the bound {bound} s"
        # The survivors' batch too (a request of it cut by its claim's life is retried).
        with contextlib.suppress(AssertionError):
            wait_until(lambda: [d.status for d in host.deliveries(nid)] == ["sent"] * 10, 10,
                       "every delivery sent")
        rows = host.deliveries(nid)
        assert [d.status for d in rows] == ["sent"] * 10, [
            (d.id, d.status, d.attempts, d.reason) for d in rows]
        assert len(children(host, proc, 2)) == 2
    for sub in subs.values():
        assert [p for p in host.push_service.received_for(sub.endpoint) if p.ok], sub.endpoint


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process(sending: SendingHost, how: str) -> None:
    with pool(sending, "--processes", "2") as proc:
        pids = [w.pid for w in children(sending, proc, 2)]
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # a process manager signals the command
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 20 s after {how}:\n{log_tail(proc)}") from None
        assert code == 0, log_tail(proc)
        wait_until(lambda: not any(alive(p) for p in pids), 5, "every child ended")
        wait_until(lambda: not workers_of(sending), 5, "no worker left registered")


def test_children_stop_when_the_command_itself_is_killed(sending: SendingHost) -> None:
    with pool(sending, "--processes", "2") as proc:
        pids = [w.pid for w in children(sending, proc, 2)]
        proc.kill()  # SIGKILL: the pool cannot stop them; Linux tells them (PR_SET_PDEATHSIG)
        proc.wait(5)
        try:
            wait_until(lambda: not any(alive(p) for p in pids), 10, "every child ended")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{log_tail(proc)}") from None


def test_burst_with_processes_works_off_the_queue_and_exits(sending: SendingHost) -> None:
    users = [f"b{i}" for i in range(4)]
    for u in users:
        sending.subscribe(u)
    with sending.app.app_context():
        nid = sending.webpush.notify_users(users, title="Hello", body="Burst").id
    sending.run_worker("--processes", "2")
    assert [d.status for d in sending.deliveries(nid)] == ["sent"] * 4


def test_a_job_past_its_timeout_is_stopped_in_the_default_worker_and_the_next_one_runs(
        sending: SendingHost) -> None:
    with sending.app.app_context():
        queue: Queue = get_queue()
    slow = queue.enqueue("time.sleep", 60, job_timeout=1)
    after = queue.enqueue("builtins.len", "four")
    started = time.monotonic()
    sending.run_worker()  # --burst, jobs in the worker's own process (the default)
    assert time.monotonic() - started < 30
    slow.refresh()
    after.refresh()
    assert slow.get_status() == "failed"
    assert "JobTimedOut" in (slow.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert after.get_status() == "finished" and after.return_value() == 4


def test_a_timeout_while_the_sender_waits_cancels_the_batch_and_frees_its_loop(
        push_service: LocalPushService) -> None:
    """SIGALRM raises in the sender's event loop (as the default worker's job timeout does):
    the batch stops, nothing of it goes on in the next batch on the same loop, which sends."""
    subs = [push_service.new_subscription(VAPID_PUBLIC) for _ in range(4)]
    for s in subs:
        push_service.respond(s["endpoint"], 201, times=1, delay=5.0)
    push = PushSender(VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.test"),
                      EndpointGuard([push_service.origin]), timeout=(5.0, 10.0), concurrency=8,
                      per_origin=4)
    messages = [Message(i, s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"], b"hi", 60,
                        "normal", None) for i, s in enumerate(subs)]
    recorded: list[Any] = []

    def timeout(signum: int, frame: Any) -> None:
        raise JobTimedOut("test")

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        started = time.monotonic()
        with pytest.raises(JobTimedOut):
            push.send_many(messages, recorded.extend, flush_every=4)
        assert time.monotonic() - started < 3
        assert recorded == []  # nothing answered yet, nothing recorded
        loop = push._loop
        assert loop is not None and not asyncio_tasks(loop)
        for s in subs:
            push_service.clear_faults(s["endpoint"])
        push.send_many(messages, recorded.extend, flush_every=4)
        assert sorted(k for k, r in recorded if r.outcome == "sent") == [0, 1, 2, 3]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        push.close()


def asyncio_tasks(loop: Any) -> list[Any]:
    import asyncio

    return [t for t in asyncio.all_tasks(loop) if not t.done()]
