"""A small HTTP/1.1 client for POSTs to push services: keep-alive pools per origin, TLS.

Push services answer a POST with a status, a few headers and a short body; the
sender needs nothing more. Each connection is an ``asyncio.Protocol`` that parses
the answer as it arrives (with ``httptools``, the llhttp parser behind uvicorn and
Node.js) and wakes its request once: aiohttp spent about 125 µs of CPU per request
here, asyncio's streams about 40 µs, this about 15 µs (benchmarks/README.md), on a
path where the encryption itself costs about 100 µs. llhttp instead of the
hand-written parser this module had: 5.3 µs against 3.5 µs to read a typical FCM
answer (six headers, Content-Length: 0; timeit, best of 5), about 2 µs of the ~120 µs a
message costs, for a parser that refuses what RFC 9112 says to refuse (two
Content-Lengths, Content-Length beside Transfer-Encoding, bad chunk sizes).
What it does not do, on purpose: redirects (a push service never redirects a POST;
the sender reports 3xx as failed), proxies, cookies, compression, pipelining, HTTP/2.

Everything a connection keeps is bounded, whatever the server sends: at most
``MAX_HEAD`` bytes of status lines, headers, chunk-size lines and trailers per
answer (interim 1xx answers included, at most ``MAX_INTERIM`` of them) and
``MAX_BODY`` bytes of body; bytes that come while no request waits close the
connection instead of being kept.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from .origins import origin_prefix

#: the most of a body read; a longer answer is cut and its connection closed
MAX_BODY = 64 * 1024
#: the most bytes of an answer that are not its body (status lines, headers, chunk-size
#: lines, trailers, 1xx answers); past it the answer is a ProtocolError. Push services
#: send well under 2 KiB.
MAX_HEAD = 32 * 1024
#: the most interim (1xx) answers before the real one
MAX_INTERIM = 8
#: an idle connection older than this is closed rather than reused: servers drop idle
#: connections after some seconds, and a POST on a dropped one fails
IDLE_REUSE = 15.0


class ProtocolError(ValueError):
    """The server's answer is not HTTP/1.x, or breaks a bound."""


@dataclass(frozen=True)
class Response:
    """A push service's answer: status, headers (lower-case names) and the body's start."""

    status: int
    headers: dict[str, str]
    body: bytes


_Key = tuple[str, str, int]  # scheme, host, port


class _Stop(Exception):
    """Raised by a parser callback to stop reading: the answer is whole, or cut."""


class AnswerReader:
    """One answer read from the pieces it arrives in, with every buffer bounded.

    ``feed`` returns True once the answer is whole (or cut at ``MAX_BODY``); ``response``
    and ``keep`` then tell what came and whether the connection may serve another
    request. ``finish`` says the connection ended: an answer whose body runs until the
    connection closes is then whole.
    """

    __slots__ = ("_parser", "_start", "_head", "_interim", "_framed", "status", "headers",
                 "body", "done", "keep", "failure")

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._start = b""  # the first bytes, until it is known they say HTTP/
        self._head = 0  # bytes read that are not body
        self._interim = 0
        self._framed = True  # the body has a length (or chunks), it does not run to the close
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False
        self.keep = False
        self.failure: str | None = None  # set by a callback that found a bound broken

    def response(self) -> Response:
        """The answer read (whole once ``done``)."""
        return Response(self.status, self.headers, bytes(self.body))

    def feed(self, data: bytes) -> bool:
        """Parse the next bytes; True once the answer is whole. Raise ProtocolError."""
        if self.done:  # bytes after the answer: the connection is not reused
            self.keep = False
            return True
        if len(self._start) < 5:
            self._start += data[:5 - len(self._start)]
            if not b"HTTP/".startswith(self._start[:5]):
                raise ProtocolError(f"not an HTTP/1.x answer: {bytes(data[:40])!r}")
        view = memoryview(data)
        at = 0
        # Fed in pieces of at most the head bytes still allowed: the parser (which joins
        # a header's pieces itself) never holds more than MAX_HEAD of them.
        while at < len(view):
            room = MAX_HEAD - self._head
            if room <= 0:
                raise ProtocolError(f"the answer's head (status lines, headers, chunk lines "
                                    f"or trailers) is longer than {MAX_HEAD} bytes")
            piece = view[at:at + room]
            at += len(piece)
            body_before = len(self.body)
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserCallbackError as exc:
                if self.failure:
                    raise ProtocolError(self.failure) from None
                if not self.done:
                    raise ProtocolError(f"not a valid HTTP/1.x answer: {exc}") from None
            except httptools.HttpParserUpgrade:
                raise ProtocolError("the server switched protocols") from None
            except httptools.HttpParserError as exc:
                if not self.done:  # garbage after a whole answer only spoils the connection
                    raise ProtocolError(f"not a valid HTTP/1.x answer: {exc}") from None
                self.keep = False
            if self.done:
                return True
            self._head += len(piece) - (len(self.body) - body_before)
        return False

    def finish(self) -> bool:
        """The connection ended: True when what was read is a whole answer."""
        if not self.done and self.status >= 200 and not self._framed:
            self.done, self.keep = True, False  # the body ran to the close
        return self.done

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # a second answer nobody asked for
            self.keep = False
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self.failure = f"more than {MAX_INTERIM} interim (1xx) answers"
                raise _Stop
            return
        # llhttp refuses a Content-Length beside Transfer-Encoding and two Content-Lengths
        # (RFC 9112 §6.3), even equal ones; without either the body runs to the close.
        encoding = self.headers.get("transfer-encoding", "").lower()
        self._framed = ("content-length" in self.headers or encoding.endswith("chunked")
                        or self.status in (204, 304))

    def on_body(self, data: bytes) -> None:
        room = MAX_BODY - len(self.body)
        if len(data) > room:  # cut: the rest is never read, the connection is closed
            self.body += data[:room]
            self.done, self.keep = True, False
            raise _Stop
        self.body += data

    def on_message_complete(self) -> None:
        if self.status < 200:  # 1xx (103 Early Hints, say) are followed by the real answer
            self.headers = {}
            return
        self.done = True
        self.keep = self._parser.should_keep_alive()


class _Connection(asyncio.Protocol):
    """One kept-alive connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[Response, bool]] | None = None
        self.reader: AnswerReader | None = None  # the answer awaited, while one is
        self.ended = False  # the server closed its side, or the connection is lost
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def expect(self, waiter: asyncio.Future[tuple[Response, bool]]) -> None:
        """Read the next answer for ``waiter``."""
        self.waiter, self.reader = waiter, AnswerReader()

    def data_received(self, data: bytes) -> None:
        reader, waiter = self.reader, self.waiter
        if reader is None or waiter is None or waiter.done():
            # Bytes nobody asked for (a server streaming on an idle connection): they
            # are never kept, and the connection is not trusted again.
            self.close()
            return
        try:
            done = reader.feed(data)
        except ProtocolError as exc:
            self.reader = None
            self.close()
            waiter.set_exception(exc)
            return
        if done:
            self._deliver(reader, waiter)

    def eof_received(self) -> bool:
        self.ended = True
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._ended()

    def usable(self) -> bool:
        return not (self.ended or self.transport is None or self.transport.is_closing()
                    or time.monotonic() - self.idle_since > IDLE_REUSE)

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def _deliver(self, reader: AnswerReader,
                 waiter: asyncio.Future[tuple[Response, bool]]) -> None:
        self.reader = None
        waiter.set_result((reader.response(), reader.keep and not self.ended))

    def _ended(self) -> None:
        reader, waiter = self.reader, self.waiter
        if reader is None or waiter is None or waiter.done():
            return
        if reader.finish():
            self._deliver(reader, waiter)
        else:
            self.reader = None
            waiter.set_exception(ConnectionResetError(
                "the connection closed before the answer ended"))


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
        # The turns per origin: asyncio.Semaphore, not the hand-written counter this had:
        # 1.3-1.9 µs a message against ~300 µs (the send path's CPU; encryption 160-180 µs),
        # 2-core VM, 2026-12-01 (best of 5, turns free or 256 requests for 64 turns);
        # no difference benchmarks/send_throughput.py or the send path alone could see.
        self._slots: dict[_Key, asyncio.Semaphore] = {}
        self._origins: dict[str, tuple[_Key, str]] = {}  # "scheme://netloc" -> key, Host
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}  # headers -> encoded
        self.opened = 0  # connections opened so far, for tests and figures

    async def post(self, url: str, headers: dict[str, str], body: bytes,
                   addresses: tuple[str, ...] = ()) -> Response:
        """POST ``body`` to ``url``; raise OSError, TimeoutError or ProtocolError on failure.

        ``addresses``: the IP addresses a new connection goes to, in turn (those the
        caller checked; TLS still verifies the certificate against the URL's host);
        empty: the host name is resolved when connecting.
        """
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
            slots = self._slots[key] = asyncio.Semaphore(self.per_origin)
        async with slots:
            connection = self._take(key) or await self._open(key, addresses)
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[tuple[Response, bool]] = loop.create_future()
            connection.expect(waiter)
            timer = loop.call_later(self.read_timeout, _expire, waiter)
            try:
                connection.transport.write(request)  # type: ignore[union-attr]
                response, keep = await waiter
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
                connection.waiter = connection.reader = None
            if keep:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()
            return response

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

    async def _open(self, key: _Key, addresses: tuple[str, ...]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self.ssl_context if scheme == "https" else None
        async with asyncio.timeout(self.connect_timeout):
            if not addresses:
                _transport, connection = await loop.create_connection(
                    _Connection, host, port, ssl=tls)
            else:
                # To the very addresses that were checked, never a second lookup: a name
                # that answers a public address to the check and 127.0.0.1 to the
                # connection (DNS rebinding) gets no further than the check.
                for n, address in enumerate(addresses, 1):
                    try:
                        _transport, connection = await loop.create_connection(
                            _Connection, address, port, ssl=tls,
                            server_hostname=host if tls else None)
                        break
                    except OSError:
                        if n == len(addresses):
                            raise
        self.opened += 1
        return connection


def _expire(waiter: asyncio.Future[tuple[Response, bool]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer within the read timeout"))
