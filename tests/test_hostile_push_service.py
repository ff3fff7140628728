"""A push service that is broken or hostile: answers split anywhere, answers that never
end, bytes nobody asked for, conflicting lengths, absurd Retry-After values, and a DNS
name that rebinds to 127.0.0.1. Real sockets throughout; the answers are scripted."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from conftest import make_subscription
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC
from hypothesis import given, settings
from hypothesis import strategies as st
from test_http_client import CREATED, Script, answer, run

from flask_webpush_targeted.testing import LocalPushService
from flask_webpush_targeted.transport import http11
from flask_webpush_targeted.transport.guard import EndpointGuard
from flask_webpush_targeted.transport.http11 import (
    MAX_BODY,
    MAX_HEAD,
    MAX_INTERIM,
    AnswerReader,
    Pool,
    ProtocolError,
    Response,
)
from flask_webpush_targeted.transport.sender import (
    Message,
    PushResult,
    PushSender,
    classify,
    parse_retry_after,
)
from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key

# -- the parser: the same answer however the bytes are split -------------------------------

VALID = [
    CREATED,
    "HTTP/1.1 201 Created\r\ncontent-length:\t5 \r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\nhello",
    "HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5;ext=1\r\ntoo b\r\n3\r\nig!\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    "HTTP/1.1 100 Continue\r\n\r\n"
    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 4\r\n\r\nslow",
    "HTTP/1.1 500 Internal Server Error\r\n\r\nuntil the close",  # body ends with the connection
]


def read(pieces: Iterable[bytes]) -> tuple[Response, bool]:
    """Feed ``pieces`` to one reader; the answer must be whole only after the last."""
    reader = AnswerReader()
    pieces = list(pieces)
    for n, piece in enumerate(pieces, 1):
        done = reader.feed(piece)
        assert done == (n == len(pieces) and reader.done), (n, piece)
    if not reader.done:
        assert reader.finish()  # an until-close body: whole once the connection ends
    return reader.response(), reader.keep


@pytest.mark.parametrize("text", VALID)
def test_an_answer_split_at_every_byte_reads_the_same(text: str) -> None:
    data = text.encode("latin-1")
    whole = read([data])
    assert whole[0].status >= 200
    for at in range(1, len(data)):
        assert read([data[:at], data[at:]]) == whole, at
    assert read([data[i:i + 1] for i in range(len(data))]) == whole


_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection"))
_VALUE = st.from_regex(r"[!-~]([ -~]{0,30}[!-~])?", fullmatch=True)


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, Response, bool]:
    """A valid answer's bytes, the Response they mean and whether they allow keep-alive."""
    status = draw(st.sampled_from([200, 201, 202, 400, 403, 404, 410, 413, 429, 500, 503]))
    headers = draw(st.lists(st.tuples(_NAME, _VALUE), max_size=6))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    close = draw(st.booleans())
    lines = [f"HTTP/{version} {status} Whatever"] + [f"{n}: {v}" for n, v in headers]
    expected = {n.lower(): v for n, v in headers}
    if close:
        lines.append("Connection: close")
        expected["connection"] = "close"
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        expected["content-length"] = str(len(body))
        encoded = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        expected["transfer-encoding"] = "chunked"
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=5)))
        bounds = zip([0, *cuts], [*cuts, len(body)], strict=True)
        chunks = [body[a:b] for a, b in bounds if body[a:b]]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    else:
        encoded = body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + encoded
    keep = version == "1.1" and not close and framing != "close"
    return data, Response(status, expected, body), keep


@given(answers(), st.data())
@settings(deadline=None)
def test_any_valid_answer_split_anywhere_reads_as_it_was_written(
        answer_: tuple[bytes, Response, bool], data: st.DataObject) -> None:
    raw, response, keep = answer_
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=8)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert read(pieces) == (response, keep)


def test_the_parsed_answers_are_what_the_bytes_say() -> None:
    parsed = [read([t.encode("latin-1")]) for t in VALID]
    assert parsed[1] == (Response(201, {"content-length": "5", "x-twice": "2"}, b"hello"), True)
    assert parsed[2] == (Response(413, {"transfer-encoding": "chunked", "x-trailer": "1"},
                                  b"too big!"), True)
    assert parsed[3] == (Response(201, {"content-length": "2"}, b"ok"), True)  # 1xx skipped
    assert [keep for _r, keep in parsed] == [True, True, True, True, True, False, False, True,
                                             False]
    assert parsed[8][0].body == b"until the close"


def test_a_body_over_the_limit_is_cut_at_it_wherever_the_bytes_are_split() -> None:
    data = f"HTTP/1.1 400 Bad\r\nContent-Length: {MAX_BODY + 10}\r\n\r\n".encode() + (
        b"e" * (MAX_BODY + 10))
    for at in (1, 40, 60, MAX_BODY // 2, MAX_BODY + 45, len(data) - 1):
        reader = AnswerReader()
        assert not reader.feed(data[:at]) or at > MAX_BODY
        reader.feed(data[at:])
        assert reader.done and not reader.keep
        assert reader.response().body == b"e" * MAX_BODY


def test_bytes_after_a_whole_answer_spoil_its_connection() -> None:
    for extra in (b"HTTP/1.1 200 OK\r\n", b"garbage", CREATED.encode()):
        assert read([CREATED.encode() + extra])[1] is False
        reader = AnswerReader()
        assert reader.feed(CREATED.encode()) and reader.keep
        assert reader.feed(extra) and not reader.keep


# -- conflicting lengths (RFC 9112 §6.3) ---------------------------------------------------

@pytest.mark.parametrize("text", [
    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokxyz",
    "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nokxyz",
    "HTTP/1.1 201 Created\r\nContent-Length: 2, 5\r\n\r\nokxyz",
    # Equal ones too: RFC 9112 lets a recipient accept them, llhttp refuses any second one.
    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    # A sender of both may be smuggling; RFC 9112 §6.3 says to treat it as an error.
    "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    "2\r\nok\r\n0\r\n\r\n",
    "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    "2\r\nok\r\n0\r\n\r\n",
    "RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
])
def test_an_answer_with_conflicting_framing_is_refused_and_its_connection_closed(
        text: str) -> None:
    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        with pytest.raises(ProtocolError):
            await pool.post(url, {}, b"x")
        with pytest.raises(ProtocolError):  # a new connection, refused again
            await pool.post(url, {}, b"x")
        assert len(connections) == 2

    run(answer(text), test)


# -- every buffer bounded: servers that never stop talking ---------------------------------

#: what the client may take in before it stops reading: the head and body bounds plus one
#: read of the event loop (256 KiB) and the kernel's segments in flight
TAKEN_IN_BOUND = MAX_HEAD + MAX_BODY + 512 * 1024
#: what the endless servers write at most; a client without bounds reads all of it
ENDLESS = 48 * 1024 * 1024


def endless(prefix: bytes, filler: bytes, closed: list[int], delay: float = 0.0) -> Script:
    """A script that writes ``prefix``, then ``filler`` over and over until the client
    closes the connection (``closed`` gets the bytes written) or ENDLESS bytes are out."""
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        await writer.drain()
        await asyncio.sleep(delay)
        block = filler * max(1, 16384 // len(filler))
        written = len(prefix)
        try:
            while written < ENDLESS:
                writer.write(block)
                written += len(block)
                await writer.drain()
        except ConnectionError:
            closed.append(written)
            return
        await asyncio.sleep(30)  # the client never stopped reading: let it time out

    return script


@pytest.fixture
def taken_in(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes each client connection took in (the real data_received, counted)."""
    counts: list[int] = []
    original = http11._Connection.data_received

    def counting(self: http11._Connection, data: bytes) -> None:
        if not hasattr(self, "_n"):
            self._n = len(counts)  # type: ignore[attr-defined]
            counts.append(0)
        counts[self._n] += len(data)  # type: ignore[attr-defined]
        original(self, data)

    monkeypatch.setattr(http11._Connection, "data_received", counting)
    return counts


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(("prefix", "filler"), [
    pytest.param(HEAD + b"0", b"0", id="chunk-size-of-endless-zeros"),
    pytest.param(HEAD + b"5;ext=", b"x", id="chunk-extension-that-never-ends"),
    pytest.param(HEAD + b"0\r\n", b"X-Trailer: 1\r\n", id="endless-trailers"),
    pytest.param(HEAD + b"0\r\nX-Trailer: ", b"x", id="a-trailer-that-never-ends"),
    pytest.param(b"HTTP/1.1 200 OK\r\n", b"X-Header: 1\r\n", id="endless-headers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Header: ", b"x", id="a-header-that-never-ends"),
    pytest.param(b"HTTP/1.1 200 ", b"O", id="a-status-line-that-never-ends"),
    pytest.param(b"", b"HTTP/1.1 100 Continue\r\n\r\n", id="endless-100-continue"),
])
def test_an_answer_that_never_ends_is_cut_at_a_bound_and_its_connection_closed(
        prefix: bytes, filler: bytes, taken_in: list[int]) -> None:
    closed: list[int] = []

    async def test(pool: Pool, url: str, _requests: list[bytes], connections: list[int]) -> None:
        with pytest.raises(ProtocolError, match="longer than|interim"):
            await pool.post(url, {}, b"x")
        for _ in range(100):  # the server sees the close
            if closed:
                break
            await asyncio.sleep(0.02)
        assert closed and closed[0] < ENDLESS
        assert 0 < taken_in[0] <= TAKEN_IN_BOUND

    run(endless(prefix, filler, closed), test, read_timeout=10.0)


def test_interim_answers_beyond_the_bound_are_refused_even_when_short() -> None:
    many = "HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1) + CREATED
    few = "HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM + CREATED
    reader = AnswerReader()
    with pytest.raises(ProtocolError, match="interim"):
        reader.feed(many.encode())
    assert read([few.encode()])[0].status == 201


def test_a_service_streaming_on_an_idle_kept_alive_connection_is_cut_off(
        taken_in: list[int]) -> None:
    closed: list[int] = []

    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        # 201, then a stream of bytes nobody asked for once the answer has been read.
        assert (await pool.post(url, {}, b"x")).status == 201
        for _ in range(250):
            if closed:
                break
            await asyncio.sleep(0.02)
        assert closed, "the client kept reading what the server streamed"
        assert taken_in[0] <= TAKEN_IN_BOUND
        assert (await pool.post(url, {}, b"x")).status == 201  # on a new connection
        assert len(connections) == 2

    run(endless(CREATED.encode(), b"z", closed, delay=0.05), test)


# -- Retry-After: never a pause for the life of the process --------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 30.0), (" 30 ", 30.0), ("0", 0.0),
    ("99999999999", 3600.0), ("9" * 5000, 3600.0),  # int() refuses 4,300+ digits
    ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past: now
    ("-5", 60.0), ("1.5", 60.0), ("١٢٣", 60.0), ("²", 60.0), ("nan", 60.0), ("inf", 60.0),
    ("Fri, 31 Dec 99999 23:59:59 GMT", 60.0), ("soon", 60.0), ("", 60.0), (None, 60.0),
])
def test_retry_after_is_read_within_bounds_whatever_it_says(
        value: str | None, seconds: float) -> None:
    assert parse_retry_after(value, 60.0, 3600.0) == seconds
    assert classify(429, value, max_delay=3600.0).retry_after == seconds


def test_a_huge_retry_after_pauses_the_origin_no_longer_than_the_maximum() -> None:
    now = [1000.0]  # the sender's clock, moved by hand
    service = LocalPushService().start()
    sub = service.new_subscription(VAPID_PUBLIC)
    service.respond(sub, 429, retry_after="99999999999", times=1)
    push = PushSender(VapidHeaders(load_vapid_private_key(VAPID_PRIVATE),
                                   "mailto:ops@shop.example"),
                      EndpointGuard([service.origin]), timeout=(2.0, 2.0), concurrency=4,
                      per_origin=2, max_retry_delay=120.0, clock=lambda: now[0])
    try:
        first = send(push, sub)
        assert (first.outcome, first.status_code, first.retry_after) == ("retry", 429, 120.0)
        now[0] += 119.0  # still paused: nothing is sent
        paused = send(push, sub)
        assert paused.outcome == "retry" and paused.retry_after == pytest.approx(1.0)
        assert service.request_count(sub) == 1
        now[0] += 2.0  # past the maximum: sent again
        assert send(push, sub).outcome == "sent"
        assert service.request_count(sub) == 2
    finally:
        push.close()
        service.stop()


def send(push: PushSender, target: str | dict[str, Any]) -> PushResult:
    """Send one message to an endpoint (a made-up subscription's keys) or to a subscription
    of the local push service; its result."""
    sub = target if isinstance(target, dict) else {**make_subscription(), "endpoint": target}
    results: dict[Any, PushResult] = {}
    push.send_many([Message(1, sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"],
                            b"hi", 60, "normal", None)], lambda done: results.update(done), 1)
    return results[1]


# -- DNS: the connection goes where the check looked; a failed lookup fails closed ---------

FCM_ENDPOINT = "https://fcm.googleapis.com/fcm/send/rebinding"
#: stands for a public address in the tests that connect: the guard is told to count it
#: public, so that no test sends a packet off this host. The guard's real rule (global
#: unicast only) is tested on resolver answers alone, below, without connecting.
PUBLIC = "127.0.0.2"
#: a public address in the tests that only resolve (nothing connects to it)
PUBLIC_ANSWER = "93.184.215.14"


def loopback_public(address: str) -> bool:
    return address == PUBLIC


class Loopback:
    """A real listener on a loopback address that counts the connections it accepts."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.address = address
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    listener = Loopback()
    yield listener
    listener.close()


@pytest.fixture
def checked() -> Iterator[Loopback]:
    """The listener at the address the guard checked (PUBLIC), on the endpoint's port 443
    (the tests run as root, as CI does)."""
    listener = Loopback(PUBLIC, 443)
    yield listener
    listener.close()


def untrusting_tls() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA loaded: no certificate verifies


def rebinding(listeners: list[Loopback], answers: list[str | Exception], calls: list[str],
              real: Callable[..., Any]) -> Callable[..., Any]:
    """getaddrinfo as a rebinding DNS answers fcm.googleapis.com: ``answers`` in turn (the
    last one again and again), each address at its listener's port. Other names resolve
    for real."""
    ports = {listener.address: listener.port for listener in listeners}

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "fcm.googleapis.com":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        given = answers[min(len(calls), len(answers)) - 1]
        if isinstance(given, Exception):
            raise given
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (given, ports[given]))]
    return resolve


def guarded_sender(guard: EndpointGuard) -> PushSender:
    return PushSender(VapidHeaders(load_vapid_private_key(VAPID_PRIVATE),
                                   "mailto:ops@shop.example"),
                      guard, timeout=(1.0, 1.0), concurrency=4, per_origin=2,
                      ssl_context=untrusting_tls())


def test_a_name_that_rebinds_to_loopback_after_the_check_is_never_connected_to(
        monkeypatch: pytest.MonkeyPatch, loopback: Loopback, checked: Loopback) -> None:
    # The only fake in this file: DNS answers cannot be scripted on this machine without a
    # DNS server of our own, so getaddrinfo (the guard's and asyncio's own) answers as a
    # rebinding DNS would: "public" to the first lookup, 127.0.0.1 to every later one.
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding(
        [loopback, checked], [PUBLIC, "127.0.0.1"], calls, socket.getaddrinfo))
    push = guarded_sender(EndpointGuard([], dns_ttl=60.0, is_public=loopback_public))
    try:
        first = send(push, FCM_ENDPOINT)
        # It went to the address checked (which closes at once, so no answer).
        assert first.outcome == "retry" and first.status_code is None, first
        assert checked.accepted == 1 and loopback.accepted == 0
        assert calls == ["fcm.googleapis.com"]  # resolved once: checked and connected to
    finally:
        push.close()


def test_a_host_resolving_to_loopback_once_its_answer_expires_is_refused(
        loopback: Loopback, checked: Loopback) -> None:
    now = [0.0]
    calls: list[str] = []
    resolve = rebinding([loopback, checked], [PUBLIC, "127.0.0.1"], calls, socket.getaddrinfo)
    push = guarded_sender(EndpointGuard([], dns_ttl=60.0, resolve=resolve, clock=lambda: now[0],
                                        is_public=loopback_public))
    try:
        send(push, FCM_ENDPOINT)
        now[0] += 61.0
        second = send(push, FCM_ENDPOINT)
        assert second.outcome == "failed" and "private" in (second.reason or ""), second
        assert loopback.accepted == 0 and len(calls) == 2
    finally:
        push.close()


def test_a_failed_lookup_is_retried_and_never_remembered_as_safe(
        monkeypatch: pytest.MonkeyPatch, loopback: Loopback) -> None:
    # As above, getaddrinfo answers as a DNS would: first no answer at all, then 127.0.0.1.
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding(
        [loopback], [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                   "127.0.0.1"], calls, socket.getaddrinfo))
    push = guarded_sender(EndpointGuard([], dns_ttl=60.0))
    try:
        first = send(push, FCM_ENDPOINT)
        assert first.outcome == "retry" and (first.reason or "").startswith("dns error"), first
        second = send(push, FCM_ENDPOINT)  # looked up again, not taken as safe from before
        assert second.outcome == "failed" and "private" in (second.reason or ""), second
        assert loopback.accepted == 0
    finally:
        push.close()


@pytest.mark.parametrize(("answers", "says"), [
    ([[PUBLIC_ANSWER, "10.0.0.7"]], "private"),  # one private address among public ones
    ([["224.0.0.1"]], "private"),  # multicast
    ([["::ffff:127.0.0.1"]], "private"),  # IPv4-mapped loopback
    ([["64:ff9b::7f00:1"]], "private"),  # NAT64 of 127.0.0.1
    ([[]], "dns error"),
    ([UnicodeError("label empty or too long")], "dns error"),
])
def test_the_guard_refuses_any_answer_that_is_not_all_public(
        answers: list[Any], says: str) -> None:
    def resolve(host: str, port: int, **_kw: Any) -> list[tuple[Any, ...]]:
        given = answers[0]
        if isinstance(given, Exception):
            raise given
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in given]

    guard = EndpointGuard([], resolve=resolve)
    assert says in (guard.problem(FCM_ENDPOINT) or "")
    route = guard.route(FCM_ENDPOINT)
    assert route.addresses == ()


def test_the_guard_routes_to_every_public_address_and_extra_origins_by_name() -> None:
    def resolve(host: str, port: int, **_kw: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in (PUBLIC_ANSWER, "142.250.1.1", PUBLIC_ANSWER)]

    guard = EndpointGuard(["http://127.0.0.1:8765"], resolve=resolve)
    assert guard.route(FCM_ENDPOINT).addresses == (PUBLIC_ANSWER, "142.250.1.1")
    local = guard.route("http://127.0.0.1:8765/push/1")
    assert local.addresses == () and local.refused is None and local.lookup_error is None
