"""A small HTTP/1.1 client for POSTs to push services: keep-alive pools per origin, TLS.

Push services answer a POST with a status, a few headers and a short body; the
sender needs nothing more. aiohttp spent about 125 µs of CPU per request here
against about 20 µs for this client (benchmarks/README.md), on a path where the
encryption itself costs about 130 µs. What it does not do, on purpose: redirects
(a push service never redirects a POST; the sender reports 3xx as failed),
proxies, cookies, compression, HTTP/2.
"""

from __future__ import annotations

import asyncio
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


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing()
                    or time.monotonic() - self.idle_since > IDLE_REUSE)

    def close(self) -> None:
        self.writer.close()


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
        self._slots: dict[_Key, asyncio.Semaphore] = {}
        self.opened = 0  # connections opened so far, for tests and figures

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        """POST ``body`` to ``url``; raise OSError, TimeoutError or ProtocolError on failure."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProtocolError(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.hostname,
               parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]  # as the URL writes it, IPv6 brackets and all
        if any(c in target for c in " \r\n\t"):
            raise ProtocolError(f"the URL's path cannot go in a request line: {target[:80]!r}")
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = "\r\n".join(lines)
        if head.count("\n") != len(lines) - 1 or "\r" in head.replace("\r\n", ""):
            raise ProtocolError("a header holds a line break")  # would forge headers
        try:
            request = (head + "\r\n\r\n").encode("ascii") + body
        except UnicodeEncodeError as exc:
            raise ProtocolError("the URL or a header is not ASCII") from exc

        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.per_origin)
        async with slots:
            connection = self._take(key) or await self._open(key)
            try:
                async with asyncio.timeout(self.read_timeout):
                    connection.writer.write(request)
                    await connection.writer.drain()
                    response, keep = await _read_response(connection.reader)
            except asyncio.IncompleteReadError as exc:
                connection.close()
                raise ConnectionResetError("the connection closed before the answer "
                                           "ended") from exc
            except BaseException:
                connection.close()
                raise
            if keep:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()
            return response

    def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

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
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.ssl_context if scheme == "https" else None,
                limit=MAX_BODY)
        self.opened += 1
        return _Connection(reader, writer)


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """Read one answer; return it and whether the connection may be reused."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("the answer's headers are too long") from exc
        lines = head[:-4].decode("latin-1").split("\r\n")
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
        if status >= 200:
            break  # 1xx (103 Early Hints, say) are followed by the real answer
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return Response(status, headers, b""), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = await _read_chunked(reader)
        return Response(status, headers, body), keep and complete
    length = headers.get("content-length")
    if length is None:  # the body ends when the server closes
        return Response(status, headers, await reader.read(MAX_BODY)), False
    if not length.isdigit():
        raise ProtocolError(f"bad Content-Length: {length[:20]!r}")
    size = int(length)
    if size > MAX_BODY:
        return Response(status, headers, await reader.readexactly(MAX_BODY)), False
    return Response(status, headers, await reader.readexactly(size)), keep


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """A chunked body, up to MAX_BODY; whether it was read to its end."""
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return bytes(body), True
        if len(body) + size > MAX_BODY:
            return bytes(body), False
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
