"""The worker's sending state: built once per worker process, reused by every job.

Each case runs the jobs of one notification (two batches) in a real process on the real
Redis, against the local push service: the default worker (jobs in its own process), the
`--fork` worker (a work horse per job), and jobs called directly (no worker). Spies in that
process note, with their pid, every VAPID key load, VAPID signature, connection pool made,
batch run and state closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import TESTS_DIR, SendingHost

# Run in a new process: argv = mode ("simple", "fork" or "direct"), events file.
SCRIPT = """
import os, sys
from pathlib import Path

from flask_webpush_targeted import jobs, worker_state
from flask_webpush_targeted.redis_queue import get_queue
from flask_webpush_targeted.transport import sender as sender_module
from flask_webpush_targeted.transport.vapid import VapidHeaders
from flask_webpush_targeted.worker import run_worker
from hostapp import create_app

mode, events = sys.argv[1], Path(sys.argv[2])


def note(event):
    with events.open("a") as out:  # closed at once: a work horse ends with os._exit
        out.write(f"{event} {os.getpid()}\\n")


def spy(owner, name, event):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        note(event)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


spy(worker_state, "load_vapid_private_key", "key")
spy(sender_module, "Pool", "pool")
spy(VapidHeaders, "_sign", "sign")
spy(jobs, "send_batch", "batch")
spy(worker_state.SendingState, "close", "close")

app = create_app()
note("process")
if mode == "direct":
    with app.app_context():
        queue = get_queue()
        while queue.count:
            job = queue.jobs[0]
            queue.remove(job)
            getattr(jobs, job.func_name.rsplit(".", 1)[1])(*job.args)
        assert worker_state.sending_state() is app.extensions["webpush.state"].sending
else:
    run_worker(app, burst=True, simple=mode == "simple")
    assert app.extensions["webpush.state"].sending is None, "the worker forgot its state"
"""


def run_jobs(host: SendingHost, mode: str, events: Path) -> dict[str, list[int]]:
    """Run the queued jobs in a new process; the pids each event was noted in, by event."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(events)],
                          env=host.env(), cwd=TESTS_DIR, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    noted: dict[str, list[int]] = {}
    for line in events.read_text().splitlines():
        event, pid = line.split()
        noted.setdefault(event, []).append(int(pid))
    return noted


def two_batches(make_host: Any) -> tuple[SendingHost, list[Any]]:
    """A host whose next notification to four users goes in two batches of two, at most
    one connection at a time to the push service."""
    host = make_host(WEBPUSH_BATCH_SIZE=2, WEBPUSH_PER_ORIGIN_CONCURRENCY=1)
    subs = [host.subscribe(str(uid)) for uid in range(4)]
    with host.app.app_context():
        host.webpush.notify_users([str(uid) for uid in range(4)], title="Shipped")
    return host, subs


def authorization_headers(host: SendingHost, subs: list[Any]) -> set[str]:
    pushes = [p for s in subs for p in host.push_service.received_for(s.endpoint)]
    assert len(pushes) == len(subs) and all(p.ok for p in pushes)
    return {p.headers["authorization"] for p in pushes}


def assert_one_process_kept_everything(make_host: Any, mode: str, tmp_path: Path) -> None:
    """Two batches run by one process: one key load, pool, signature and connection, one
    close."""
    host, subs = two_batches(make_host)
    connections = host.push_service.connections_accepted
    noted = run_jobs(host, mode, tmp_path / "events")
    [process] = noted["process"]
    assert noted["batch"] == [process, process]
    assert noted["key"] == [process] and noted["pool"] == [process]
    assert noted["sign"] == [process]
    assert host.push_service.connections_accepted - connections == 1
    assert len(authorization_headers(host, subs)) == 1
    assert noted["close"] == [process]


def test_the_default_worker_reuses_one_connection_and_one_vapid_header_for_two_batches(
    make_host: Any, tmp_path: Path,
) -> None:
    # closed when the worker stopped, and not again at exit
    assert_one_process_kept_everything(make_host, "simple", tmp_path)


def test_the_forking_worker_loads_the_vapid_key_once_before_forking_its_horses(
    make_host: Any, tmp_path: Path,
) -> None:
    host, subs = two_batches(make_host)
    connections = host.push_service.connections_accepted
    noted = run_jobs(host, "fork", tmp_path / "events")
    [worker] = noted["process"]
    horses = noted["batch"]
    assert len(horses) == 2 and len(set(horses)) == 2 and worker not in horses
    # The key is loaded in the worker, once; each horse inherits it.
    assert noted["key"] == [worker]
    # What is not inherited: each horse that sends makes its own pool (the worker and the
    # fan-out's horse make none), opens its own connection, and signs its own header,
    # the same header (exp on a grid, a deterministic signature): the push service gets
    # one JWT, not one per job.
    assert Counter(noted["pool"]) == Counter(horses)
    assert host.push_service.connections_accepted - connections == len(horses)
    assert Counter(noted["sign"]) == Counter(horses)
    assert len(authorization_headers(host, subs)) == 1
    assert noted["close"] == [worker]  # a horse ends without closing what it inherited


def test_jobs_run_outside_a_worker_build_the_state_on_first_use_and_close_it_at_exit(
    make_host: Any, tmp_path: Path,
) -> None:
    assert_one_process_kept_everything(make_host, "direct", tmp_path)


def test_a_forked_child_sends_on_a_loop_and_pool_of_its_own(push_service: Any) -> None:
    """The sender keeps what a fork may share and remakes the loop and sockets in the child."""
    from hostapp import VAPID_PRIVATE

    from flask_webpush_targeted.transport.guard import EndpointGuard
    from flask_webpush_targeted.transport.sender import Message, PushSender
    from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key

    vapid = VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.example")
    sender = PushSender(vapid, EndpointGuard([push_service.origin]), timeout=(5.0, 5.0),
                        concurrency=4, per_origin=1)

    # Made before the fork: the child takes no lock the service's threads may hold.
    subs = [push_service.new_subscription() for _ in range(3)]

    def send() -> str:
        sub = subs.pop()
        results: list[Any] = []
        sender.send_many([Message(1, sub["endpoint"], sub["keys"]["p256dh"],
                                  sub["keys"]["auth"], b"{}", 60, "normal", None)],
                         results.extend, flush_every=1)
        return str(results[0][1].outcome)

    assert send() == "sent" and sender.connections_opened == 1
    parent_loop = sender._loop
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        ok = False
        try:
            inherited = sender.connections_opened == 0  # the parent's pool is not this one's
            ok = inherited and send() == "sent" and sender._loop is not parent_loop
            ok = ok and sender.connections_opened == 1
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(child, 0)
    os.close(read)
    assert answer == b"1"
    # The parent's loop and connection still serve, untouched by the child.
    assert sender._loop is parent_loop and send() == "sent"
    assert sender.connections_opened == 1
    sender.close()
    assert sender.connections_opened == 0
