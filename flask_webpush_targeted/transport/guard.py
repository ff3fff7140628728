"""The send-time endpoint guard: the policy again, then where the host resolves (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import InvalidSubscription
from .endpoints import check_endpoint_text, is_extra_origin, validate_endpoint
from .origins import origin_prefix


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
    ``Route.lookup_error``, never remembered as safe. ``extra_origins`` are spelled as
    ``web_origin`` spells them (``config.extra_push_origins``): ``http://127.0.0.1:8765``.
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
        if is_extra_origin(parts, self.extra_origins):
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
