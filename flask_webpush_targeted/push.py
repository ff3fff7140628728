"""Encryption and HTTP to push services: VAPID header cache, send-time endpoint guard.

Nothing here touches the database: ``PushSender.send`` turns one message into
one ``PushResult``; the jobs decide what the result means for the ledger.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher
from requests.adapters import HTTPAdapter

from .exceptions import InvalidSubscription
from .subscriptions import validate_endpoint

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
        self._lock = threading.Lock()

    def problem(self, endpoint: str) -> str | None:
        """Why ``endpoint`` must not be contacted, or None when it may."""
        try:
            validate_endpoint(endpoint, self.extra_origins)
        except InvalidSubscription as exc:
            return exc.message
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}" in self.extra_origins:
            return None
        if not self._resolves_publicly(parts.hostname or ""):
            return f"{parts.hostname} resolves to a private, loopback or link-local address"
        return None

    def _resolves_publicly(self, host: str) -> bool:
        now = time.monotonic()
        with self._lock:
            cached = self._resolved.get(host)
        if cached and cached[1] > now:
            return cached[0]
        try:
            infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
            addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
            ok = bool(addresses) and all(a.is_global for a in addresses)
        except (OSError, ValueError):
            ok = True  # unresolvable: the POST fails as a DNS error and is retried
        with self._lock:
            self._resolved[host] = (ok, now + self._dns_ttl)
        return ok


def new_http_session(pool_size: int) -> requests.Session:
    """A keep-alive session with ``pool_size`` connections per push-service host."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # proxies from the environment are not the app's decision
    return session


class PushSender:
    """Encrypts (aes128gcm, RFC 8291) and POSTs one message; classifies the answer."""

    def __init__(self, vapid: VapidHeaders, guard: EndpointGuard, session: requests.Session,
                 timeout: tuple[float, float]) -> None:
        self.vapid = vapid
        self.guard = guard
        self.session = session
        self.timeout = timeout

    def send(self, subscription: dict[str, Any], payload: bytes, *, ttl: int,
             urgency: str, topic: str | None) -> PushResult:
        """Send ``payload`` to one subscription ({endpoint, keys: {p256dh, auth}})."""
        endpoint = subscription["endpoint"]
        problem = self.guard.problem(endpoint)
        if problem:
            return PushResult("failed", reason=f"endpoint refused: {problem}"[:255])
        body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
        headers = {
            "Authorization": self.vapid.header(origin_of(endpoint)),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(ttl),
            "Urgency": urgency,
        }
        if topic:
            headers["Topic"] = topic
        try:
            response = self.session.post(endpoint, data=body, headers=headers,
                                         timeout=self.timeout, allow_redirects=False)
        except requests.Timeout:
            return PushResult("retry", reason="timeout")
        except requests.ConnectionError as exc:
            return PushResult("retry", reason=f"connection error: {type(exc).__name__}")
        except requests.RequestException as exc:
            return PushResult("failed", reason=f"request error: {exc}"[:255])
        return classify(response.status_code, response.headers.get("Retry-After"),
                        response.text[:200])


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
