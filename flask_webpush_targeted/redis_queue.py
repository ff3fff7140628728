"""The RQ queue on WEBPUSH_REDIS_URL: the connection, enqueueing, turns shared by workers.

Jobs are enqueued by the dotted path of their function in ``jobs.py`` (the text RQ stores
with each job), so the modules that enqueue them need not import the modules that run them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import Flask, current_app
from rq import Queue

from .clock import utcnow
from .context import app_state
from .exceptions import ConfigurationError

log = logging.getLogger("flask_webpush_targeted")

#: The jobs, by the names RQ keeps in Redis: stable across releases (jobs.py).
FAN_OUT = "flask_webpush_targeted.jobs.fan_out"
SEND_BATCH = "flask_webpush_targeted.jobs.send_batch"

#: What a Redis outage looks like to the client library.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def redis_connection(app: Flask | None = None) -> redis.Redis:
    """The app's Redis client (one per app, created on first use)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = app_state(app)
    conn = state.redis
    if conn is None:
        url = app.config["WEBPUSH_REDIS_URL"]
        if not url:
            raise ConfigurationError(
                "WEBPUSH_REDIS_URL is not set: the queue needs Redis, e.g. "
                "'redis://localhost:6379/0'.")
        # Short timeouts: a back-office call must fail fast when Redis is down.
        conn = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        state.redis = conn
    return conn


def get_queue(app: Flask | None = None) -> Queue:
    """The RQ queue jobs go to."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return Queue(app.config["WEBPUSH_QUEUE"], connection=redis_connection(app))


def fanout_job_id(notification_id: int) -> str:
    """The id of a notification's fan-out job. RQ job ids are global in a Redis database, so
    it names the queue too: apps sharing a Redis (each with its WEBPUSH_QUEUE) would otherwise
    overwrite, delete or cancel each other's ``webpush-fanout-<id>`` jobs."""
    queue = current_app.config["WEBPUSH_QUEUE"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,28}", queue):  # what a job id allows, and short
        queue = hashlib.sha256(queue.encode()).hexdigest()[:28]
    return f"webpush-fanout-{queue}-{notification_id}"


def fanout_options(notification_id: int) -> dict[str, Any]:
    """RQ's options of a notification's fan-out job: its id, and a timeout long enough for a
    large audience (RQ's default of 180 s stopped a million-member fan-out half-way, and
    each run again began from the start)."""
    return {"job_id": fanout_job_id(notification_id),
            "job_timeout": current_app.config["WEBPUSH_FANOUT_TIMEOUT"]}


def take_turn(connection: redis.Redis, key: str, seconds: float) -> bool:
    """True for the first caller of ``key`` within ``seconds`` (of ``clock.utcnow``), among
    every process sharing the Redis; False for the others.

    The time of the last turn is kept in the key's value and compared and set in one step
    (a script), so that two callers never both take it, and so that a test's clock counts.
    """
    return bool(connection.eval(_TAKE_TURN, 1, key, utcnow().timestamp(), max(seconds, 1)))


_TAKE_TURN = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(ARGV[1]) - tonumber(last) < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', math.ceil(2 * tonumber(ARGV[2])))
return 1
"""


def enqueue_at(queue: Queue, when: datetime, func: Any, *args: Any, **kwargs: Any) -> Any:
    """``queue.enqueue_at``, but never early: RQ keeps the time in whole seconds, rounded down,
    so ``when`` is rounded up here (a job run before its time would send early, or, for a
    retry, find nothing due yet and be lost)."""
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return queue.enqueue_at(when, func, *args, **kwargs)


