"""The RQ worker that runs the jobs in the app's context, and the loop that keeps it up.

Each worker runs ``recover`` when it starts and once per WEBPUSH_RECOVER_INTERVAL among
all workers of the queue; ``run_worker`` starts it again after a Redis failure. The
worker's sending state (``worker_state``) is built as it is made, before any job or fork,
and closed when it stops.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import redis
from flask import Flask
from rq import SimpleWorker, Worker

from .recovery import recover
from .redis_queue import get_queue, redis_connection, take_turn
from .worker_state import SendingState, start_sending, stop_sending

log = logging.getLogger("flask_webpush_targeted")


class _AppWorkerMixin:
    """Runs every job inside the Flask app's context, and ``recover`` as maintenance."""

    app: Flask
    name: str
    _parent_pid: int
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
        ttl_bound = int(super().dequeue_timeout)  # type: ignore[misc]
        app = getattr(self, "app", None)  # RQ reads this in __init__, before make_worker sets it
        if app is None:
            return ttl_bound
        return max(1, min(ttl_bound, int(app.config["WEBPUSH_RECOVER_INTERVAL"])))

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


class AppWorker(_AppWorkerMixin, Worker):
    """An RQ worker forking a work horse per job, each in the app's context."""


class AppSimpleWorker(_AppWorkerMixin, SimpleWorker):
    """An RQ worker running jobs in its own process (no fork): faster, less isolated."""


def make_worker(app: Flask, *, simple: bool = False,
                name: str | None = None) -> AppWorker | AppSimpleWorker:
    """A worker for the app's queue, its sending state built; it runs ``recover`` at start
    and periodically, and closes the sending state when its ``work`` ends."""
    cls: type[AppWorker] | type[AppSimpleWorker] = AppSimpleWorker if simple else AppWorker
    worker = cls([get_queue(app)], connection=redis_connection(app), name=name,
                 maintenance_interval=app.config["WEBPUSH_RECOVER_INTERVAL"])
    worker.app = app
    worker._parent_pid = os.getpid()
    worker.sending = start_sending(app)
    return worker


def run_worker(app: Flask, *, burst: bool = False, simple: bool = False,
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
