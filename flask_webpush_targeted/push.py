"""Encryption and HTTP to push services: VAPID header cache, send-time endpoint guard.

Nothing here touches the database: ``PushSender.send_many`` turns messages into
``PushResult``s; the jobs decide what each result means for the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02

from .config import b64url_decode
from .exceptions import InvalidSubscription
from .http11 import Pool, ProtocolError, origin_prefix
from .subscriptions import check_endpoint_text, validate_endpoint

log = logging.getLogger("flask_webpush_targeted")

#: A VAPID JWT may live up to 24 h (RFC 8292); sign for 12 h, renew an hour early.
VAPID_LIFETIME = 12 * 3600
VAPID_RENEW_MARGIN = 3600


@dataclass(frozen=True)
class PushResult:
    """What one POST to a push service came to.

    ``outcome`` is ``sent``, ``gone`` (subscription no longer valid), ``failed``
    (final, subscription kept) or ``retry`` (try again after ``retry_after``).
    """

    outcome: str
    status_code: int | None = None
    reason: str | None = None
    retry_after: float | None = None


def origin_of(endpoint: str) -> str:
    """``scheme://host[:port]`` of an endpoint, as VAPID's ``aud`` wants it."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def parse_retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


class VapidHeaders:
    """One signed VAPID Authorization header per push-service origin, reused until near expiry."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._vapid = Vapid02(private_key=private_key)
        self._subject = subject
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def header(self, origin: str, now: float | None = None) -> str:
        """The Authorization header for ``origin``."""
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cache.get(origin)
            if cached and cached[1] - VAPID_RENEW_MARGIN > now:
                return cached[0]
            expires = int(now) + VAPID_LIFETIME
            # A fresh dict every time: pywebpush and py_vapid mutate the claims they get.
            claims = {"aud": origin, "exp": expires, "sub": self._subject}
            value = self._vapid.sign(claims)["Authorization"]
            self._cache[origin] = (value, expires)
            return value


class EndpointGuard:
    """Checks an endpoint again right before a POST: the policy, then where its host resolves."""

    def __init__(self, extra_origins: Iterable[str], dns_ttl: float = 60.0) -> None:
        self.extra_origins = frozenset(extra_origins)
        self._dns_ttl = dns_ttl
        self._resolved: dict[str, tuple[bool, float]] = {}
        self._origins: dict[str, tuple[str | None, str | None]] = {}  # prefix -> _policy
        self._lock = threading.Lock()

    def problem(self, endpoint: str) -> str | None:
        """Why ``endpoint`` must not be contacted, or None when it may."""
        refused, host = self._policy(endpoint)
        if refused or host is None:
            return refused
        return None if self._resolves_publicly(host) else _private(host)

    async def problem_in_loop(self, endpoint: str) -> str | None:
        """``problem`` from an event loop: a DNS lookup the cache cannot answer runs in a
        thread, so the requests in flight go on meanwhile."""
        refused, host = self._policy(endpoint)
        if refused or host is None:
            return refused
        ok = self._cached(host)
        if ok is None:
            ok = await asyncio.to_thread(self._resolves_publicly, host)
        return None if ok else _private(host)

    def _policy(self, endpoint: str) -> tuple[str | None, str | None]:
        """(why the policy refuses it, None) or (None, the host to resolve, or None for an
        origin in WEBPUSH_EXTRA_PUSH_SERVICES)."""
        prefix = origin_prefix(endpoint)
        if prefix is None:
            return self._origin_policy(endpoint)
        # What the policy says depends on the origin, and on the rest of the URL only for
        # its characters: the origin's verdict is reused by the thousands of its endpoints.
        try:
            check_endpoint_text(endpoint)
        except InvalidSubscription as exc:
            return exc.message, None
        verdict = self._origins.get(prefix)
        if verdict is None:
            verdict = self._origin_policy(prefix + "/")
            if len(self._origins) < 10_000:
                self._origins[prefix] = verdict
        return verdict

    def _origin_policy(self, endpoint: str) -> tuple[str | None, str | None]:
        try:
            validate_endpoint(endpoint, self.extra_origins)
        except InvalidSubscription as exc:
            return exc.message, None
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}" in self.extra_origins:
            return None, None
        return None, parts.hostname or ""

    def _cached(self, host: str) -> bool | None:
        with self._lock:
            cached = self._resolved.get(host)
        return cached[0] if cached and cached[1] > time.monotonic() else None

    def _resolves_publicly(self, host: str) -> bool:
        cached = self._cached(host)
        if cached is not None:
            return cached
        try:
            infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
            addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
            ok = bool(addresses) and all(a.is_global for a in addresses)
        except (OSError, ValueError):
            ok = True  # unresolvable: the POST fails as a DNS error and is retried
        with self._lock:
            self._resolved[host] = (ok, time.monotonic() + self._dns_ttl)
        return ok


def _private(host: str) -> str:
    return f"{host} resolves to a private, loopback or link-local address"


_P256 = ec.SECP256R1()
_ECDH = ec.ECDH()
#: RFC 8188 header after the salt: record size 4096, then the 65-byte key id length
_RS_IDLEN = struct.pack("!LB", 4096, 65)


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291 aes128gcm in one record, with a fresh ephemeral key per message.

    The same bytes http_ece (pywebpush's encoder) produces, from the primitives
    directly: its per-call Cipher and HKDF objects cost a fifth of the time.
    """
    if len(payload) > 4096 - 86 - 17:
        raise ValueError("payload too large for one 4096-byte record")
    ua_public = b64url_decode(p256dh)
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(_P256, ua_public)
    ephemeral = ec.generate_private_key(_P256)
    as_public = ephemeral.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ikm = hmac.digest(hmac.digest(b64url_decode(auth), ephemeral.exchange(_ECDH, ua_key), "sha256"),
                      b"WebPush: info\x00" + ua_public + as_public + b"\x01", "sha256")
    salt = os.urandom(16)
    prk = hmac.digest(salt, ikm, "sha256")
    cek = hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", "sha256")[:16]
    nonce = hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", "sha256")[:12]
    # 0x02: the delimiter of the last (only) record, no padding
    return salt + _RS_IDLEN + as_public + AESGCM(cek).encrypt(nonce, payload + b"\x02", None)


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
    connections are reused by every batch. A push service answering 429 is paused for
    its Retry-After, so one slow service does not stall the others.
    """

    def __init__(self, vapid: VapidHeaders, guard: EndpointGuard, *,
                 timeout: tuple[float, float], concurrency: int, per_origin: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.vapid = vapid
        self.guard = guard
        self.concurrency = concurrency
        self._loop = asyncio.new_event_loop()
        self._pool = Pool(connect_timeout=timeout[0], read_timeout=timeout[1],
                          per_origin=per_origin, ssl_context=ssl_context)
        self._paused: dict[str, float] = {}
        self._origins: dict[str, str] = {}  # origin_prefix -> origin_of
        self._headers: dict[tuple[str, int, str, str | None], dict[str, str]] = {}

    def send_many(self, messages: list[Message],
                  on_results: Callable[[list[tuple[Any, PushResult]]], None],
                  flush_every: int) -> None:
        """Send every message; hand results to ``on_results`` every ``flush_every`` answers
        (and whenever nothing else is in flight)."""
        self._run(self._send_all(messages, on_results, flush_every))

    def close(self) -> None:
        """Close the connections and the event loop."""
        self._pool.close()
        with contextlib.suppress(RuntimeError):  # another loop runs in this thread
            self._loop.run_until_complete(asyncio.sleep(0))  # let the transports close
        self._loop.close()

    def _run(self, coroutine: Any) -> None:
        """Run ``coroutine`` to completion on this sender's own event loop.

        When the calling thread already runs an event loop (a job called from async code,
        or Playwright's sync API in a test), asyncio refuses to run a second one in that
        thread: the loop then runs in a helper thread, in a copy of the caller's context so
        that ``on_results`` still sees the Flask application context.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._loop.run_until_complete(coroutine)
            return
        context = contextvars.copy_context()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                context.run(self._loop.run_until_complete, coroutine)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        helper = threading.Thread(target=target, name="webpush-sender")
        helper.start()
        helper.join()
        if failure:
            raise failure[0]

    async def _send_all(self, messages: list[Message],
                        on_results: Callable[[list[tuple[Any, PushResult]]], None],
                        flush_every: int) -> None:
        pool = self._pool
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()  # strong references until each is done
        answered: list[tuple[Any, PushResult]] = []
        in_flight = 0
        wake: asyncio.Future[None] | None = None  # set when an answer comes

        async def one(message: Message) -> None:
            nonlocal in_flight
            try:
                result = await self._send_one(pool, message)
            except Exception as exc:  # an encryption bug must not leave a batch claimed
                log.exception("webpush: message %s could not be sent", message.key)
                result = PushResult("failed", reason=f"error: {type(exc).__name__}: {exc}"[:255])
            answered.append((message.key, result))
            in_flight -= 1
            if wake is not None and not wake.done():
                wake.set_result(None)

        # A slot is freed only once its answer is recorded: at any moment at most
        # `concurrency` messages are sent but unrecorded, which bounds what a killed
        # worker can leave to be sent twice.
        waiting = iter(messages)
        try:
            while True:
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
        problem = await self.guard.problem_in_loop(message.endpoint)
        if problem:
            return PushResult("failed", reason=f"endpoint refused: {problem}"[:255])
        prefix = origin_prefix(message.endpoint)
        origin = self._origins.get(prefix) if prefix else None
        if origin is None:
            origin = origin_of(message.endpoint)
            if prefix and len(self._origins) < 10_000:
                self._origins[prefix] = origin
        paused = self._paused.get(origin, 0.0) - time.monotonic()
        if paused > 0:
            return PushResult("retry", 429, "push service asked to slow down", paused)
        body = encrypt(message.payload, message.p256dh, message.auth)
        authorization = self.vapid.header(origin)
        # One dict for all the messages of a batch: the pool encodes it once.
        shape = (authorization, message.ttl, message.urgency, message.topic)
        headers = self._headers.get(shape)
        if headers is None:
            headers = {
                "Authorization": authorization,
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(message.ttl),
                "Urgency": message.urgency,
            }
            if message.topic:
                headers["Topic"] = message.topic
            if len(self._headers) > 1000:
                self._headers.clear()
            self._headers[shape] = headers
        try:
            response = await pool.post(message.endpoint, headers, body)
        except TimeoutError:
            return PushResult("retry", reason="timeout")
        except OSError as exc:  # refused, reset, DNS, TLS (ssl.SSLError is an OSError)
            return PushResult("retry", reason=f"connection error: {type(exc).__name__}")
        except ProtocolError as exc:
            return PushResult("failed", reason=f"request error: {exc}"[:255])
        text = response.body[:200].decode("utf-8", "replace")
        result = classify(response.status, response.headers.get("retry-after"), text)
        if result.status_code == 429 and result.retry_after:
            self._paused[origin] = time.monotonic() + result.retry_after
        return result


def classify(code: int, retry_after: str | None, text: str = "") -> PushResult:
    """Map a push service's status code to an outcome (see the README's table)."""
    reason = f"{code} {text}".strip()[:255]
    if 200 <= code < 300:
        return PushResult("sent", code)
    if code in (404, 410):
        return PushResult("gone", code, reason)
    if code == 429:
        return PushResult("retry", code, reason, parse_retry_after(retry_after, 60.0))
    if code >= 500:
        return PushResult("retry", code, reason, parse_retry_after(retry_after, 0.0) or None)
    if 300 <= code < 400:
        return PushResult("failed", code, f"{code} redirect not followed")
    # 400/401/403 mean our request or VAPID identity is wrong, not the subscription:
    # never deactivate subscribers for them.
    return PushResult("failed", code, reason)
