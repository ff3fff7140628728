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
import math
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

from .config import b64url_decode, vapid_subject, web_origin
from .exceptions import InvalidSubscription
from .http11 import Pool, ProtocolError, origin_prefix
from .subscriptions import check_endpoint_text, clean_text, validate_endpoint

log = logging.getLogger("flask_webpush_targeted")

#: A VAPID JWT may live up to 24 h (RFC 8292); sign for 12 h, renew an hour early.
VAPID_LIFETIME = 12 * 3600
VAPID_RENEW_MARGIN = 3600


@dataclass(frozen=True)
class PushResult:
    """What one POST to a push service came to.

    ``outcome`` is ``sent``, ``gone`` (subscription no longer valid), ``failed``
    (final, subscription kept) or ``retry`` (try again after ``retry_after``).
    ``requested`` is False when nothing was sent (the origin is paused): such a
    retry does not use up one of the delivery's attempts.
    """

    outcome: str
    status_code: int | None = None
    reason: str | None = None
    retry_after: float | None = None
    requested: bool = True


def origin_of(endpoint: str) -> str:
    """The RFC 6454 origin of an endpoint, as VAPID's ``aud`` wants it
    (``https://fcm.googleapis.com``)."""
    return web_origin(urlsplit(endpoint))


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


class VapidHeaders:
    """One signed VAPID Authorization header per push-service origin, reused until near expiry.

    ``subject`` is WEBPUSH_VAPID_SUBJECT, normalised as ``config.vapid_subject`` does
    (``https://shop.example/`` signs as ``https://shop.example``).
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._vapid = Vapid02(private_key=private_key)
        self._subject = vapid_subject(subject)
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


@dataclass(frozen=True)
class Route:
    """Where the guard lets an endpoint be reached, or why not."""

    #: the checked public addresses to connect to; empty with no problem: connect by name
    #: (an origin of WEBPUSH_EXTRA_PUSH_SERVICES)
    addresses: tuple[str, ...] = ()
    #: why the endpoint must not be contacted: final
    refused: str | None = None
    #: its host did not resolve now: retryable, and never cached
    lookup_error: str | None = None


_BY_NAME = Route()
#: 64:ff9b::/96 embeds an IPv4 address (NAT64, RFC 6052) that Python calls global whatever it is
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
Resolve = Callable[..., Iterable[tuple[Any, ...]]]


class EndpointGuard:
    """Checks an endpoint again right before a POST: the policy, then where its host resolves.

    The host is resolved once per ``dns_ttl``, by ``resolve`` (``socket.getaddrinfo``'s
    signature; by default that function, looked up at each call), and the connection goes to
    the very addresses checked (``Route.addresses``). A lookup that fails is a retryable
    ``Route.lookup_error``, never remembered as safe.
    """

    def __init__(self, extra_origins: Iterable[str], dns_ttl: float = 60.0, *,
                 resolve: Resolve | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 is_public: Callable[[str], bool] | None = None) -> None:
        self.extra_origins = frozenset(extra_origins)
        self._dns_ttl = dns_ttl
        self._resolve = resolve
        # Tests on loopback alone name which loopback address stands for a public one.
        self._is_public = is_public or _public
        self._clock = clock
        self._resolved: dict[str, tuple[Route, float]] = {}
        self._origins: dict[str, tuple[str | None, str | None]] = {}  # prefix -> _policy
        self._lock = threading.Lock()

    def problem(self, endpoint: str) -> str | None:
        """Why ``endpoint`` must not be contacted now, or None when it may."""
        route = self.route(endpoint)
        return route.refused or route.lookup_error

    def route(self, endpoint: str) -> Route:
        """Where ``endpoint`` may be reached, or why not (resolving in this thread)."""
        refused, host = self._policy(endpoint)
        if refused:
            return Route(refused=refused)
        return _BY_NAME if host is None else self._lookup(host)

    async def route_in_loop(self, endpoint: str) -> Route:
        """``route`` from an event loop: a DNS lookup the cache cannot answer runs in a
        thread, so the requests in flight go on meanwhile."""
        refused, host = self._policy(endpoint)
        if refused:
            return Route(refused=refused)
        if host is None:
            return _BY_NAME
        cached = self._cached(host)
        return cached if cached is not None else await asyncio.to_thread(self._lookup, host)

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

    def _cached(self, host: str) -> Route | None:
        with self._lock:
            cached = self._resolved.get(host)
        return cached[0] if cached and cached[1] > self._clock() else None

    def _lookup(self, host: str) -> Route:
        cached = self._cached(host)
        if cached is not None:
            return cached
        resolve = self._resolve or socket.getaddrinfo
        try:
            infos = resolve(host, 443, type=socket.SOCK_STREAM)
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            public = bool(addresses) and all(self._is_public(a) for a in addresses)
        except (OSError, ValueError) as exc:  # gaierror, a name IDNA cannot encode
            # Fail closed: not remembered, and retried like any connection error.
            return Route(lookup_error=f"dns error: {type(exc).__name__}: {exc}"[:200])
        if not addresses:
            return Route(lookup_error=f"dns error: no address for {host}")
        route = Route(addresses=addresses) if public else Route(refused=_private(host))
        with self._lock:
            if len(self._resolved) > 10_000:
                self._resolved.clear()
            self._resolved[host] = (route, self._clock() + self._dns_ttl)
        return route


def _public(address: str) -> bool:
    """A global unicast address (not private, loopback, link-local, reserved or multicast)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


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
    its Retry-After, so one slow service does not stall the others; that pause, and the
    retry time any Retry-After hints, are at most ``max_retry_delay`` seconds
    (WEBPUSH_RETRY_MAX_DELAY): a service cannot silence itself for the life of the process.
    """

    def __init__(self, vapid: VapidHeaders, guard: EndpointGuard, *,
                 timeout: tuple[float, float], concurrency: int, per_origin: int,
                 ssl_context: ssl.SSLContext | None = None, max_retry_delay: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.vapid = vapid
        self.guard = guard
        self.concurrency = concurrency
        self.max_retry_delay = max_retry_delay
        self._clock = clock
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
        route = await self.guard.route_in_loop(message.endpoint)
        if route.refused:
            return PushResult("failed", reason=f"endpoint refused: {route.refused}"[:255])
        if route.lookup_error:
            return PushResult("retry", reason=route.lookup_error[:255])
        prefix = origin_prefix(message.endpoint)
        origin = self._origins.get(prefix) if prefix else None
        if origin is None:
            origin = origin_of(message.endpoint)
            if prefix and len(self._origins) < 10_000:
                self._origins[prefix] = origin
        paused = self._paused.get(origin, 0.0) - self._clock()
        if paused > 0:
            return PushResult("retry", 429, "push service asked to slow down", paused,
                              requested=False)
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
            response = await pool.post(message.endpoint, headers, body, route.addresses)
        except TimeoutError:
            return PushResult("retry", reason="timeout")
        except OSError as exc:  # refused, reset, DNS, TLS (ssl.SSLError is an OSError)
            return PushResult("retry", reason=f"connection error: {type(exc).__name__}")
        except ProtocolError as exc:
            return PushResult("failed", reason=f"request error: {exc}"[:255])
        # A service's words are stored and shown: cleaned as a label is (no NUL, which
        # PostgreSQL refuses in text and which failed the whole flush; no control character).
        text = clean_text(response.body[:200].decode("utf-8", "replace"), 200) or ""
        result = classify(response.status, response.headers.get("retry-after"), text,
                          max_delay=self.max_retry_delay)
        if result.status_code == 429 and result.retry_after:
            self._paused[origin] = self._clock() + result.retry_after
        return result


def classify(code: int, retry_after: str | None, text: str = "", *,
             max_delay: float = 3600.0) -> PushResult:
    """Map a push service's status code to an outcome (see the README's table); a
    Retry-After counts for at most ``max_delay`` seconds."""
    reason = f"{code} {text}".strip()[:255]
    if 200 <= code < 300:
        return PushResult("sent", code)
    if code in (404, 410):
        return PushResult("gone", code, reason)
    if code == 429:
        return PushResult("retry", code, reason,
                          parse_retry_after(retry_after, min(60.0, max_delay), max_delay))
    if code >= 500:
        return PushResult("retry", code, reason,
                          parse_retry_after(retry_after, 0.0, max_delay) or None)
    if 300 <= code < 400:
        return PushResult("failed", code, f"{code} redirect not followed")
    # 400/401/403 mean our request or VAPID identity is wrong, not the subscription:
    # never deactivate subscribers for them.
    return PushResult("failed", code, reason)
