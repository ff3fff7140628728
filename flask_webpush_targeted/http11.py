"""A small HTTP/1.1 client for POSTs to push services: keep-alive pools per origin, TLS.

Push services answer a POST with a status, a few headers and a short body; the
sender needs nothing more. Each connection is an ``asyncio.Protocol`` that parses
the answer as it arrives and wakes its request once: aiohttp spent about 125 µs of
CPU per request here, asyncio's streams about 40 µs, this about 15 µs
(benchmarks/README.md), on a path where the encryption itself costs about 100 µs.
What it does not do, on purpose: redirects (a push service never redirects a POST;
the sender reports 3xx as failed), proxies, cookies, compression, pipelining, HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

#: the most of a body read; a longer answer is cut and its connection closed
MAX_BODY = 64 * 1024
#: an idle connection older than this is closed rather than reused: servers drop idle
#: connections after some seconds, and a POST on a dropped one fails
IDLE_REUSE = 15.0


class ProtocolError(ValueError):
    """The server's answer is not HTTP/1.x."""


@dataclass(frozen=True)
class Response:
    """A push service's answer: status, headers (lower-case names) and the body's start."""

    status: int
    headers: dict[str, str]
    body: bytes


_Key = tuple[str, str, int]  # scheme, host, port
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\\]*(?=/)")


def origin_prefix(url: str) -> str | None:
    """``scheme://netloc`` of a URL with a path and no user name, or None: the part
    thousands of push endpoints share, whose parsing and checks are then done once."""
    match = _PREFIX.match(url)
    return match.group() if match else None


class _Connection(asyncio.Protocol):
    """One kept-alive connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[Response, bool]] | None = None
        self.ended = False  # the server closed its side, or the connection is lost
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer()

    def eof_received(self) -> bool:
        self.ended = True
        self._answer()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._answer()

    def usable(self) -> bool:
        return not (self.ended or self.buffer or self.transport is None
                    or self.transport.is_closing()
                    or time.monotonic() - self.idle_since > IDLE_REUSE)

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def _answer(self) -> None:
        """Wake the request once its answer is whole (or can never be)."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self.buffer, self.ended)
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        if parsed is not None:
            response, keep, used = parsed
            del self.buffer[:used]
            waiter.set_result((response, keep and not self.buffer and not self.ended))
        elif self.ended:
            waiter.set_exception(ConnectionResetError(
                "the connection closed before the answer ended"))


class _Slots:
    """At most ``size`` requests at once to one origin: a counter, and a queue of waiters."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() handed its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over, then cancelled: pass the slot on
            elif waiter in self._waiters:  # release() may have dropped it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Pool:
    """Keep-alive connections per origin, at most ``per_origin`` open to each.

    One pool belongs to one event loop. ``connect_timeout`` covers TCP and TLS set-up,
    ``read_timeout`` the wait from the end of the request to the end of the answer.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float, per_origin: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.per_origin = per_origin
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._slots: dict[_Key, _Slots] = {}
        self._origins: dict[str, tuple[_Key, str]] = {}  # "scheme://netloc" -> key, Host
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}  # headers -> encoded
        self.opened = 0  # connections opened so far, for tests and figures

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        """POST ``body`` to ``url``; raise OSError, TimeoutError or ProtocolError on failure."""
        key, host, target = self._split(url)
        if any(c in target for c in " \r\n\t"):
            raise ProtocolError(f"the URL's path cannot go in a request line: {target[:80]!r}")
        try:
            start = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n".encode("ascii")
        except UnicodeEncodeError as exc:
            raise ProtocolError("the URL or a header is not ASCII") from exc
        request = b"".join((start, b"Content-Length: %d\r\n" % len(body),
                            self._encoded(headers), body))
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(self.per_origin)
        if not slots.try_take():
            await slots.take()
        try:
            connection = self._take(key) or await self._open(key)
            loop = asyncio.get_running_loop()
            waiter = connection.waiter = loop.create_future()
            timer = loop.call_later(self.read_timeout, _expire, waiter)
            try:
                connection.transport.write(request)  # type: ignore[union-attr]
                response, keep = await waiter
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
                connection.waiter = None
            if keep:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()
            return response
        finally:
            slots.release()

    def _encoded(self, headers: dict[str, str]) -> bytes:
        """The header lines and the blank line, checked; encoded once per distinct set."""
        shape = tuple(headers.items())
        encoded = self._blocks.get(shape)
        if encoded is not None:
            return encoded
        lines = [f"{name}: {value}" for name, value in shape]
        block = "".join(line + "\r\n" for line in lines) + "\r\n"
        if block.count("\n") != len(lines) + 1 or "\r" in block.replace("\r\n", ""):
            raise ProtocolError("a header holds a line break")  # would forge headers
        try:
            encoded = block.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ProtocolError("the URL or a header is not ASCII") from exc
        if len(self._blocks) > 1000:
            self._blocks.clear()
        self._blocks[shape] = encoded
        return encoded

    def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _split(self, url: str) -> tuple[_Key, str, str]:
        """(scheme, host, port), the Host header and the request target of ``url``.

        The origin part is parsed once per origin: thousands of endpoints share one.
        """
        prefix = origin_prefix(url)
        if prefix is not None:
            known = self._origins.get(prefix)
            if known is not None:
                return known[0], known[1], url[len(prefix):].split("#", 1)[0]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProtocolError(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.hostname,
               parts.port or (443 if parts.scheme == "https" else 80))
        host = parts.netloc.rsplit("@", 1)[-1]  # as the URL writes it, IPv6 brackets and all
        if prefix is not None and len(self._origins) < 10_000:
            self._origins[prefix] = (key, host)
        return key, host, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _open(self, key: _Key) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _transport, connection = await loop.create_connection(
                _Connection, host, port, ssl=self.ssl_context if scheme == "https" else None)
        self.opened += 1
        return connection


def _expire(waiter: asyncio.Future[tuple[Response, bool]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer within the read timeout"))


def parse_response(data: bytearray, ended: bool) -> tuple[Response, bool, int] | None:
    """The answer at the start of ``data``: (response, keep-alive, bytes used), or None
    while it is incomplete. ``ended``: no more bytes will come."""
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            if len(data) - start > MAX_BODY:
                raise ProtocolError("the answer's headers are too long")
            return None
        lines = data[start:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if status >= 200:
            break  # 1xx (103 Early Hints, say) are followed by the real answer
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return Response(status, headers, b""), keep, start
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _chunked(data, start)
        if chunked is None:
            return None
        body, complete, used = chunked
        return Response(status, headers, body), keep and complete, used
    length = headers.get("content-length")
    if length is None:  # the body ends when the server closes
        if not ended and len(data) - start < MAX_BODY:
            return None
        return Response(status, headers, bytes(data[start:start + MAX_BODY])), False, len(data)
    if not length.isdigit():
        raise ProtocolError(f"bad Content-Length: {length[:20]!r}")
    size = int(length)
    if size > MAX_BODY:
        if len(data) - start < MAX_BODY:
            return None
        return Response(status, headers, bytes(data[start:start + MAX_BODY])), False, len(data)
    if len(data) - start < size:
        return None
    return Response(status, headers, bytes(data[start:start + size])), keep, start + size


def _chunked(data: bytearray, start: int) -> tuple[bytes, bool, int] | None:
    """A chunked body from ``start``, up to MAX_BODY: (body, read to its end, bytes used),
    or None while incomplete."""
    body = bytearray()
    at = start
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(data[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from exc
        at = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = data.find(b"\r\n", at)
                if line_end < 0:
                    return None
                empty, at = line_end == at, line_end + 2
                if empty:
                    return bytes(body), True, at
        if len(body) + size > MAX_BODY:
            return bytes(body), False, len(data)
        if len(data) < at + size + 2:
            return None
        if data[at + size:at + size + 2] != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
        body += data[at:at + size]
        at += size + 2
