"""The RQ worker that runs the jobs in the app's context, the loop that keeps it up, and
the pool that runs several of them under one command.

Each worker runs ``recover`` when it starts and once per WEBPUSH_RECOVER_INTERVAL among
all workers of the queue; ``run_worker`` starts it again after a Redis failure. The
worker's sending state (``worker_state``) is built as it is made, before any job or fork,
and closed when it stops.

The default worker (``AppSimpleWorker``) runs jobs in its own process, so that keep-alive
connections, TLS sessions and signed VAPID headers live from one batch to the next: over
TLS a forking worker (``AppWorker``, ``flask webpush worker --fork``) opened up to
WEBPUSH_PER_ORIGIN_CONCURRENCY connections, each with a handshake, and a database
connection for every batch (docs/deployment.md has the measurement). What the fork gave
is kept otherwise: a job's timeout is RQ's alarm in both (``_InProcessDeathPenalty`` raises
it again every second until the job ends), and a worker process that dies is replaced by
its pool (``run_pool``, ``--processes``) or the process manager, its claimed batch sent
again by ``recover`` after WEBPUSH_CLAIM_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

import redis
from flask import Flask
from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.timeouts import UnixSignalDeathPenalty
from rq.worker import WorkerStatus
from rq.worker_pool import ForkProcess, WorkerPool

from .recovery import recover
from .redis_queue import get_queue, redis_connection, take_turn
from .worker_state import SendingState, start_sending, stop_sending

log = logging.getLogger("flask_webpush_targeted")


#: the longest an idle worker waits for a job before it looks again whether it should stop
STOP_CHECK = 5


class _AppWorkerMixin:
    """Runs every job inside the Flask app's context, and ``recover`` as maintenance."""

    app: Flask
    name: str
    _parent_pid: int
    _stop_requested: bool
    #: built by make_worker, inherited by each work horse, closed by teardown
    sending: SendingState

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        with self.app.app_context():
            if os.getpid() != self._parent_pid:
                # A forked work horse must not share the parent's database sockets.
                self.app.extensions["webpush"].db.engine.dispose(close=False)
            performed: bool = super().perform_job(job, queue, execution)  # type: ignore[misc]
            return performed

    @property
    def dequeue_timeout(self) -> int:
        # RQ runs maintenance (recover, here) only between blocking dequeues, which it
        # lets wait worker_ttl - 15 = 405 s: an idle worker would recover every ~7 minutes.
        # At most STOP_CHECK, too: a stop whose StopRequested got lost waits that long.
        ttl_bound = int(super().dequeue_timeout)  # type: ignore[misc]
        app = getattr(self, "app", None)  # RQ reads this in __init__, before make_worker sets it
        if app is None:
            return ttl_bound
        return max(1, min(ttl_bound, int(app.config["WEBPUSH_RECOVER_INTERVAL"]), STOP_CHECK))

    def _shutdown(self) -> None:
        # RQ ends an idle worker's loop by raising StopRequested from the signal handler,
        # wherever the main thread is: in a __del__ that the garbage collector runs, or in
        # code that catches Exception, it is lost, and the worker waited for jobs for ever
        # (a pool's second SIGINT, within a second, is ignored). The flag stays; the next
        # heartbeat, at most STOP_CHECK seconds later, raises it again.
        if self.get_state() != WorkerStatus.BUSY:  # type: ignore[attr-defined]
            self._stop_requested = True
        super()._shutdown()  # type: ignore[misc]

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()  # type: ignore[misc]
        if _early_stop:  # asked to stop while starting: a warm shutdown before the first job
            # Idle, RQ raises StopRequested: the flag is set, the loop ends at its first turn.
            with contextlib.suppress(StopRequested):
                self.request_stop(_early_stop[0], None)  # type: ignore[attr-defined]

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        if (getattr(self, "_stop_requested", False)
                and self.get_state() == WorkerStatus.IDLE):  # type: ignore[attr-defined]
            raise StopRequested()
        super().heartbeat(*args, **kwargs)  # type: ignore[misc]

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[misc]
        finally:
            # RQ tears down the worker, never a work horse, when work() ends: stopped,
            # burst done, or quitting on an error.
            if os.getpid() == self._parent_pid:
                stop_sending(self.app, self.sending)

    def run_maintenance_tasks(self) -> None:
        starting = getattr(self, "last_cleaned_at", None) is None
        super().run_maintenance_tasks()  # type: ignore[misc]
        with self.app.app_context():
            try:
                # A worker starting (often after another one died) always recovers.
                if starting or self._recover_turn():
                    recover()
            except StopRequested:  # SIGINT/SIGTERM while idle: RQ's way out of its loop
                raise
            except Exception:  # a failed recovery must not stop the worker; it runs again
                log.exception("webpush: recover failed")

    def _recover_turn(self) -> bool:
        """True for one worker of the queue per WEBPUSH_RECOVER_INTERVAL: with many workers,
        recovering once per interval is enough, and each round reads the sending
        notifications' deliveries."""
        interval = int(self.app.config["WEBPUSH_RECOVER_INTERVAL"])
        if interval <= 1:
            return True
        key = f"webpush:{self.app.config['WEBPUSH_QUEUE']}:recover-turn"
        return take_turn(redis_connection(self.app), key, interval - 1)


class JobTimedOut(BaseException):
    """A job ran past its RQ timeout in a worker that runs jobs in its own process.

    Not an ``Exception``: the code a job runs catches those (a message that cannot be
    encrypted is recorded failed, a batch goes on), and a timeout must end the job instead.
    """


class _InProcessDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job timeout, raised as ``JobTimedOut`` and again every second until the
    job has ended: an exception raised inside an event loop's callback is logged by the
    loop and dropped, and a forked work horse had its parent to kill it; this process has
    only the next alarm."""

    def handle_death_penalty(self, signum: int, frame: Any) -> None:
        signal.alarm(1)
        raise JobTimedOut(f"the job ran longer than its timeout ({self._timeout} s)")

    def cancel_death_penalty(self) -> None:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # no alarm between here and the reset
        super().cancel_death_penalty()  # type: ignore[no-untyped-call]


class AppWorker(_AppWorkerMixin, Worker):
    """An RQ worker forking a work horse per job, each in the app's context (``--fork``)."""


class AppSimpleWorker(_AppWorkerMixin, SimpleWorker):
    """An RQ worker running jobs in its own process (no fork): the default, see the module's
    docstring for what it keeps and how it stays isolated."""

    death_penalty_class = _InProcessDeathPenalty


def make_worker(app: Flask, *, simple: bool = True,
                name: str | None = None) -> AppWorker | AppSimpleWorker:
    """A worker for the app's queue (in-process jobs; ``simple=False``: a work horse forked
    per job), its sending state built; it runs ``recover`` at start and periodically, and
    closes the sending state when its ``work`` ends."""
    cls: type[AppWorker] | type[AppSimpleWorker] = AppSimpleWorker if simple else AppWorker
    worker = cls([get_queue(app)], connection=redis_connection(app), name=name,
                 maintenance_interval=app.config["WEBPUSH_RECOVER_INTERVAL"])
    worker.app = app
    worker._parent_pid = os.getpid()
    worker.sending = start_sending(app)
    return worker


def run_worker(app: Flask, *, burst: bool = False, simple: bool = True,
               name: str | None = None, max_delay: float = 30.0) -> None:
    """Run a worker until it is asked to stop, starting it again when Redis failed it.

    RQ's worker quits on a Redis error outside its wait for jobs (a heartbeat, a
    maintenance round: "found an unhandled exception, quitting"), and exits at once when
    started while Redis is down, so a Redis restart stopped every worker. A warm or cold
    shutdown (SIGTERM, SIGINT) and ``burst`` end the loop as before.
    """
    delay, restarts = 1.0, 0
    while True:
        worker_name = name if name is None or not restarts else f"{name}-{restarts}"
        worker = None
        try:
            worker = make_worker(app, simple=simple, name=worker_name)
            worker.work(burst=burst, with_scheduler=True)
        except redis.exceptions.RedisError as exc:
            log.warning("webpush: the worker stopped on a Redis error: %s", exc)
        # RQ marks a shutdown asked of an idle worker by its date alone (StopRequested).
        asked = worker is not None and (worker._stop_requested or getattr(
            worker, "_shutdown_requested_date", None) is not None)
        if burst or asked or not _pause(delay):
            return
        restarts += 1
        delay = min(delay * 2, max_delay)


def _pause(seconds: float) -> bool:
    """Wait before starting the worker again; False when SIGTERM or SIGINT came meanwhile."""
    stopped: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, _frame: stopped.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.warning("webpush: starting the worker again in %.0f s", seconds)
        deadline = time.monotonic() + seconds
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return not stopped


class AppWorkerPool(WorkerPool):
    """RQ's worker pool whose children are the app's workers: each a process forked from
    this one that runs ``run_worker`` (the app's context, ``recover``, its own sending
    state, started again after a Redis failure).

    RQ's pool does the rest: it checks its children every second and starts a new one for
    each that died (SIGKILL, out of memory, a crash), and on SIGINT or SIGTERM it asks every
    child to stop (a warm shutdown: the batch in hand is finished) and waits for them.
    """

    def __init__(self, app: Flask, processes: int, *, simple: bool = True,
                 name: str | None = None) -> None:
        super().__init__([get_queue(app)], connection=redis_connection(app),
                         num_workers=processes,
                         worker_class=AppSimpleWorker if simple else AppWorker)
        self.app = app
        self.simple = simple
        self.worker_prefix = name

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0,
                           logging_level: str = "INFO") -> Any:
        if self.worker_prefix:
            name = f"{self.worker_prefix}-{name[:8]}"
        return ForkProcess(target=_pool_child, args=(self.app, name, burst, self.simple),
                           name=f"webpush worker {name}")


def _pool_child(app: Flask, name: str, burst: bool, simple: bool) -> None:
    """A pool's child: the app's worker, on connections of its own."""
    # A child forked after the pool set its handlers has them, and a child would signal
    # its siblings as the pool does. Until the worker sets its own handlers, a stop is
    # noted and the worker honours it once they are set (``_install_signal_handlers``):
    # a KeyboardInterrupt raised while it starts can be swallowed (by logging's lock, a
    # __del__), and the worker would run on.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _note_early_stop)
    # What the worker forks meanwhile (RQ's scheduler, before the worker's handlers) must not
    # note a stop and run on: the worker waits for its scheduler to end when it stops.
    os.register_at_fork(after_in_child=_forget_early_stop_handlers)
    _stop_with_parent()
    with app.app_context():
        app.extensions["webpush"].db.engine.dispose(close=False)  # the parent's sockets
    run_worker(app, burst=burst, simple=simple, name=name)


#: SIGINT or SIGTERM that came while a pool's child was starting, before its worker's handlers
_early_stop: list[int] = []


def _note_early_stop(signum: int, _frame: Any) -> None:
    _early_stop.append(signum)


def _forget_early_stop_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is _note_early_stop:
            signal.signal(sig, signal.SIG_DFL)


def _stop_with_parent() -> None:
    """Ask Linux for SIGTERM (a warm shutdown) when the pool's process dies, even by SIGKILL:
    its children must not go on unsupervised. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_pool(app: Flask, processes: int, *, burst: bool = False, simple: bool = True,
             name: str | None = None) -> None:
    """Run ``processes`` workers under RQ's worker pool until SIGINT or SIGTERM (or, with
    ``burst``, until each has worked off the queue); a child that dies is replaced."""
    AppWorkerPool(app, processes, simple=simple, name=name).start(burst=burst)
