"""Sending many messages concurrently: encrypt, sign, POST, and classify each answer.

Nothing here touches the database: ``PushSender.send_many`` turns messages into
``PushResult``s; ``delivery.py`` decides what each result means for the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from ..statuses import Outcome
from .encryption import encrypt
from .guard import EndpointGuard
from .http11 import Pool, ProtocolError
from .origins import origin_of, origin_prefix
from .services import DEFAULT_RULE, PushServiceRule, rule_for_origin
from .text import clean_text
from .vapid import VapidHeaders

log = logging.getLogger("flask_webpush_targeted")


@dataclass(frozen=True)
class PushResult:
    """What one POST to a push service came to.

    ``outcome`` is ``sent``, ``gone`` (subscription no longer valid), ``failed``
    (final, subscription kept) or ``retry`` (try again after ``retry_after``).
    ``requested`` is False when nothing was sent (the origin is paused): such a
    retry does not use up one of the delivery's attempts.
    """

    outcome: Outcome
    status_code: int | None = None
    reason: str | None = None
    retry_after: float | None = None
    requested: bool = True


def parse_retry_after(value: str | None, default: float,
                      maximum: float = math.inf) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), at most
    ``maximum``; ``default`` when the header is absent or not one of those forms."""
    if not value:
        return default
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone takes "١٢٣" and "²"
        seconds = float(value) if len(value) < 16 else math.inf  # no 4,300-digit int()
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return default
    return min(max(seconds, 0.0), maximum)


@dataclass(frozen=True)
class Message:
    """One encrypted-to-be push: to whom, what, for how long."""

    key: Any  # the caller's handle, e.g. the delivery id
    endpoint: str
    p256dh: str
    auth: str
    payload: bytes
    ttl: int
    urgency: str
    topic: str | None


class PushSender:
    """Encrypts (aes128gcm, RFC 8291) and POSTs many messages concurrently on one event loop.

    One sender lives per worker process: its VAPID headers, DNS answers and keep-alive
    connections are reused by every batch. A process forked from the one that made it
    (RQ's work horse) keeps the VAPID key and headers, the TLS context, the guard's answers
    and the pauses, and gets an event loop and connections of its own.

    A push service answering 429 is paused for its Retry-After, so one slow service does
    not stall the others; that pause, and the retry time any Retry-After hints, are at most
    ``max_retry_delay`` seconds (WEBPUSH_RETRY_MAX_DELAY): a service cannot silence itself
    for the life of the process.

    Each push service's rule (``services.py``) is applied here: a TTL beyond its cap is sent
    as the cap, its throttling answer (WNS: 406) is a 429, its VAPID JWT lifetime is kept.
    ``service_kinds`` (WEBPUSH_EXTRA_PUSH_SERVICE_KINDS, origins spelled by ``web_origin``)
    names the service an extra origin stands for; any other origin is known by its host.
    """

    def __init__(self, vapid: VapidHeaders, guard: EndpointGuard, *,
                 timeout: tuple[float, float], concurrency: int, per_origin: int,
                 ssl_context: ssl.SSLContext | None = None, max_retry_delay: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic,
                 service_kinds: Mapping[str, str] | None = None) -> None:
        self.vapid = vapid
        self.service_kinds = dict(service_kinds or {})
        self.guard = guard
        self.concurrency = concurrency
        self.max_retry_delay = max_retry_delay
        self._clock = clock
        # Made once, shared by this process's pools and a forked child's: reading the CA
        # certificates takes 40-80 ms (2-core VM, 2026-12-01), which a forking worker
        # paid for every job.
        self._pool_settings = (timeout, per_origin, ssl_context or ssl.create_default_context())
        # The event loop and the pool's sockets belong to the process that made them: made
        # on the first send, and again in a forked child (``_io``).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Pool | None = None
        self._owner = 0  # the pid of the process that made them
        self._inherited: list[tuple[asyncio.AbstractEventLoop, Pool | None]] = []
        self._paused: dict[str, tuple[float, int]] = {}  # origin -> (until, the status)
        # origin_prefix -> (origin_of, its service's rule): worked out once per origin, not
        # per message (thousands a second)
        self._origins: dict[str, tuple[str, PushServiceRule]] = {}
        self._headers: dict[tuple[str, int, str, str | None], dict[str, str]] = {}

    def send_many(self, messages: Iterable[Message],
                  on_results: Callable[[list[tuple[Any, PushResult]]], None],
                  flush_every: int) -> None:
        """Send every message; hand results to ``on_results`` every ``flush_every`` answers
        (and whenever nothing else is in flight)."""
        loop, pool = self._io()
        self._run(loop, self._send_all(pool, messages, on_results, flush_every))

    def close(self) -> None:
        """Close the connections and the event loop, if this process made them; idempotent.

        Those a forked child inherited are left alone: the parent still owns them.
        """
        loop, pool = self._loop, self._pool
        if loop is None or pool is None or self._owner != os.getpid():
            return
        self._loop = self._pool = None
        pool.close()
        with contextlib.suppress(RuntimeError):  # another loop runs in this thread
            loop.run_until_complete(asyncio.sleep(0))  # let the transports close
        loop.close()

    @property
    def connections_opened(self) -> int:
        """Connections this process's pool opened so far (0 before the first send)."""
        if self._pool is None or self._owner != os.getpid():
            return 0
        return self._pool.opened

    def _io(self) -> tuple[asyncio.AbstractEventLoop, Pool]:
        """This process's event loop and pool, made on first use.

        A forked child must not touch what it inherited: its sockets are the parent's
        connections, and the loop's selector (an epoll instance) is shared with the parent,
        so closing or unregistering anything would break the parent's. Both are kept
        unclosed (a loop garbage-collected unclosed closes itself), and the child makes its own.
        """
        pid = os.getpid()
        if self._loop is None or self._pool is None or self._owner != pid:
            if self._loop is not None:
                self._inherited.append((self._loop, self._pool))
            timeout, per_origin, ssl_context = self._pool_settings
            self._loop = asyncio.new_event_loop()
            self._pool = Pool(connect_timeout=timeout[0], read_timeout=timeout[1],
                              per_origin=per_origin, ssl_context=ssl_context)
            self._owner = pid
        return self._loop, self._pool

    def _run(self, loop: asyncio.AbstractEventLoop, coroutine: Any) -> None:
        """Run ``coroutine`` to completion on this sender's own event loop.

        When the calling thread already runs an event loop (a job called from async code,
        or Playwright's sync API in a test), asyncio refuses to run a second one in that
        thread: the loop then runs in a helper thread, in a copy of the caller's context so
        that ``on_results`` still sees the Flask application context.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            _run_to_end(loop, coroutine)
            return
        context = contextvars.copy_context()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                context.run(_run_to_end, loop, coroutine)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        helper = threading.Thread(target=target, name="webpush-sender")
        helper.start()
        helper.join()
        if failure:
            raise failure[0]

    async def _send_all(self, pool: Pool, messages: Iterable[Message],
                        on_results: Callable[[list[tuple[Any, PushResult]]], None],
                        flush_every: int) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()  # strong references until each is done
        answered: list[tuple[Any, PushResult]] = []
        in_flight = 0
        wake: asyncio.Future[None] | None = None  # set when an answer comes

        stopped: list[BaseException] = []  # what ended the batch early, if anything did

        async def one(message: Message) -> None:
            nonlocal in_flight
            try:
                result = await self._send_one(pool, message)
            except Exception as exc:  # an encryption bug must not leave a batch claimed
                log.exception("webpush: message %s could not be sent", message.key)
                answered.append((message.key, PushResult(
                    Outcome.FAILED, reason=f"error: {type(exc).__name__}: {exc}"[:255])))
            except BaseException as exc:  # a job's timeout (worker.py) or a cancel: no result
                stopped.append(exc)
                raise
            else:
                answered.append((message.key, result))
            finally:
                in_flight -= 1
                if wake is not None and not wake.done():
                    wake.set_result(None)

        # A slot is freed only once its answer is recorded: at any moment at most
        # `concurrency` messages are sent but unrecorded, which bounds what a killed
        # worker can leave to be sent twice.
        waiting = iter(messages)
        try:
            while True:
                if stopped:
                    raise stopped[0]
                while in_flight + len(answered) < self.concurrency:
                    message = next(waiting, None)
                    if message is None:
                        break
                    task = loop.create_task(one(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    in_flight += 1
                if answered and (len(answered) >= flush_every or not in_flight):
                    done, answered = answered, []
                    on_results(done)
                elif in_flight:
                    wake = loop.create_future()
                    await wake
                else:
                    break
        finally:
            # A failed write ends the batch: requests still in flight must not finish
            # during the next batch, sent with nobody to record them.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_one(self, pool: Pool, message: Message) -> PushResult:
        route = await self.guard.route_in_loop(message.endpoint)
        if route.refused:
            return PushResult(Outcome.FAILED, reason=f"endpoint refused: {route.refused}"[:255])
        if route.lookup_error:
            return PushResult(Outcome.RETRY, reason=route.lookup_error[:255])
        prefix = origin_prefix(message.endpoint)
        known = self._origins.get(prefix) if prefix else None
        if known is None:
            origin = origin_of(message.endpoint)
            known = (origin, rule_for_origin(origin, self.service_kinds))
            if prefix and len(self._origins) < 10_000:
                self._origins[prefix] = known
        origin, rule = known
        until, status = self._paused.get(origin, (0.0, 429))
        paused = until - self._clock()
        if paused > 0:
            return PushResult(Outcome.RETRY, status, "push service asked to slow down", paused,
                              requested=False)
        body = encrypt(message.payload, message.p256dh, message.auth)
        authorization = self.vapid.header(origin, rule=rule)
        # Only the header is capped: the delivery's validity (its expiry) stays the stored one.
        ttl = rule.ttl_header(message.ttl)
        # One dict for all the messages of a batch: the pool encodes it once.
        shape = (authorization, ttl, message.urgency, message.topic)
        headers = self._headers.get(shape)
        if headers is None:
            headers = {
                "Authorization": authorization,
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(ttl),
                "Urgency": message.urgency,
            }
            if message.topic:
                headers["Topic"] = message.topic
            if len(self._headers) > 1000:
                self._headers.clear()
            self._headers[shape] = headers
        try:
            response = await pool.post(message.endpoint, headers, body, route.addresses)
        except TimeoutError:
            return PushResult(Outcome.RETRY, reason="timeout")
        except OSError as exc:  # refused, reset, DNS, TLS (ssl.SSLError is an OSError)
            return PushResult(Outcome.RETRY, reason=f"connection error: {type(exc).__name__}")
        except ProtocolError as exc:
            return PushResult(Outcome.FAILED, reason=f"request error: {exc}"[:255])
        # A service's words are stored and shown: cleaned as a label is (no NUL, which
        # PostgreSQL refuses in text and which failed the whole flush; no control character).
        text = clean_text(response.body[:200].decode("utf-8", "replace"), 200) or ""
        result = classify(response.status, response.headers.get("retry-after"), text,
                          max_delay=self.max_retry_delay, throttle=rule.throttle_statuses)
        if result.retry_after and result.status_code in rule.throttle_statuses:
            self._paused[origin] = (self._clock() + result.retry_after, response.status)
        return result


def _run_to_end(loop: asyncio.AbstractEventLoop, coroutine: Any) -> None:
    """``loop.run_until_complete(coroutine)``, and when something interrupts it from outside
    the loop (a job's timeout raised by SIGALRM while the loop waits), the coroutine is
    cancelled and run to its end before that is raised: nothing of this batch may go on
    sending during the next batch on the same loop (the default worker's jobs share it)."""
    task = loop.create_task(coroutine)
    try:
        loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise


def classify(code: int, retry_after: str | None, text: str = "", *,
             max_delay: float = 3600.0,
             throttle: frozenset[int] = DEFAULT_RULE.throttle_statuses) -> PushResult:
    """Map a push service's status code to an outcome (see the README's table); a
    Retry-After counts for at most ``max_delay`` seconds. ``throttle`` holds the statuses
    the service slows senders down with (its rule's; WNS: 406 too), each taken as a 429."""
    reason = f"{code} {text}".strip()[:255]
    if 200 <= code < 300:
        return PushResult(Outcome.SENT, code)
    if code in (404, 410):
        return PushResult(Outcome.GONE, code, reason)
    if code in throttle:
        return PushResult(Outcome.RETRY, code, reason,
                          parse_retry_after(retry_after, min(60.0, max_delay), max_delay))
    if code >= 500:
        return PushResult(Outcome.RETRY, code, reason,
                          parse_retry_after(retry_after, 0.0, max_delay) or None)
    if 300 <= code < 400:
        return PushResult(Outcome.FAILED, code, f"{code} redirect not followed")
    # 400/401/403 mean our request or VAPID identity is wrong, not the subscription:
    # never deactivate subscribers for them.
    return PushResult(Outcome.FAILED, code, reason)
