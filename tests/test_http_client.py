"""The sender's HTTP/1.1 client: TLS against the local push service, and every shape of
answer a push service (or something pretending to be one) can give, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC

from flask_webpush_targeted.testing import LocalPushService, tls_contexts
from flask_webpush_targeted.transport.guard import EndpointGuard
from flask_webpush_targeted.transport.http11 import MAX_BODY, Pool, ProtocolError, Response
from flask_webpush_targeted.transport.sender import Message, PushResult, PushSender
from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key


def sender(service: LocalPushService, **kw: Any) -> PushSender:
    return PushSender(VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.test"),
                      EndpointGuard([service.origin]), timeout=(5.0, 5.0), concurrency=16,
                      per_origin=4, **kw)


def send(push: PushSender, messages: list[Message]) -> dict[Any, PushResult]:
    results: dict[Any, PushResult] = {}
    push.send_many(messages, lambda done: results.update(done), flush_every=8)
    return results


def test_the_sender_delivers_over_tls_on_a_few_kept_alive_connections() -> None:
    server_tls, client_tls = tls_contexts()
    service = LocalPushService(tls=server_tls).start()
    push = sender(service, ssl_context=client_tls)
    try:
        assert service.origin.startswith("https://")
        subs = [service.new_subscription(VAPID_PUBLIC) for _ in range(40)]
        messages = [Message(i, s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"],
                            f"message {i}".encode(), 60, "normal", None)
                    for i, s in enumerate(subs)]
        results = send(push, messages)
        assert {r.outcome for r in results.values()} == {"sent"}, results
        received = service.wait_for(40)
        # The service decrypted each body with the subscription's private key.
        assert sorted(p.payload or b"" for p in received) == sorted(m.payload for m in messages)
        assert 1 <= service.connections_accepted <= 4  # per_origin, and reused
        again = send(push, messages[:5])
        assert {r.outcome for r in again.values()} == {"sent"}
        assert service.connections_accepted <= 4
    finally:
        push.close()
        service.stop()


def test_a_certificate_nobody_vouches_for_is_a_connection_error_and_nothing_is_sent() -> None:
    server_tls, _client_tls = tls_contexts()
    service = LocalPushService(tls=server_tls).start()
    push = sender(service)  # the system's trust store: the self-signed certificate fails
    try:
        sub = service.new_subscription(VAPID_PUBLIC)
        results = send(push, [Message(1, sub["endpoint"], sub["keys"]["p256dh"],
                                      sub["keys"]["auth"], b"secret", 60, "normal", None)])
        assert results[1].outcome == "retry"
        assert results[1].reason == "connection error: SSLCertVerificationError"
        assert service.received == []
    finally:
        push.close()
        service.stop()


# -- a scripted server: real sockets, answers chosen per request -------------------------

Script = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, str, list[bytes], list[int]]:
    """Start a server that reads each request whole and lets ``script`` answer it."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                requests.append(head + await reader.readexactly(length))
                await script(len(requests), requests[-1], writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/push/abc?x=1", requests, connections


def run(script: Script, test: Callable[[Pool, str, list[bytes], list[int]], Awaitable[None]],
        **pool_options: Any) -> None:
    async def main() -> None:
        server, url, requests, connections = await serve(script)
        pool = Pool(**{"connect_timeout": 2.0, "read_timeout": 2.0, "per_origin": 4,
                       **pool_options})
        try:
            await test(pool, url, requests, connections)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())


def answer(text: str) -> Script:
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(text.encode("latin-1"))
    return script


CREATED = "HTTP/1.1 201 Created\r\nLocation: /m/1\r\nContent-Length: 0\r\n\r\n"


def test_the_request_is_well_formed_and_the_connection_is_kept() -> None:
    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        first = await pool.post(url, {"TTL": "60", "Urgency": "high"}, b"\x00body\xff")
        second = await pool.post(url, {"TTL": "0"}, b"")
        assert first == Response(201, {"location": "/m/1", "content-length": "0"}, b"")
        assert second.status == 201
        port = url.split(":")[2].split("/")[0]
        assert requests[0] == (f"POST /push/abc?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                               "Content-Length: 6\r\nTTL: 60\r\nUrgency: high\r\n\r\n"
                               ).encode() + b"\x00body\xff"
        assert len(connections) == 1 and pool.opened == 1

    run(answer(CREATED), test)


@pytest.mark.parametrize(("text", "body", "kept"), [
    ("HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n"
     "5;ext=1\r\ntoo b\r\n3\r\nig!\r\n0\r\nX-Trailer: 1\r\n\r\n", b"too big!", True),
    ("HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    ("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
     "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", b"", True),
    ("HTTP/1.1 204 No Content\r\n\r\n", b"", True),
])
def test_answers_are_read_whole_and_the_connection_kept_only_when_http_allows(
    text: str, body: bytes, kept: bool,
) -> None:
    async def test(pool: Pool, url: str, _requests: list[bytes], connections: list[int]) -> None:
        response = await pool.post(url, {}, b"x")
        assert response.body == body
        assert (await pool.post(url, {}, b"x")).body == body
        assert len(connections) == (1 if kept else 2)

    run(answer(text), test)


def test_an_answer_that_ends_with_the_connection_is_read_and_not_reused() -> None:
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 500 Internal Server Error\r\n\r\nbroken")
        await writer.drain()
        writer.close()

    async def test(pool: Pool, url: str, _requests: list[bytes], connections: list[int]) -> None:
        for _ in range(2):
            response = await pool.post(url, {}, b"x")
            assert (response.status, response.body) == (500, b"broken")
        assert len(connections) == 2

    run(script, test)


def test_a_huge_answer_is_cut_and_its_connection_closed() -> None:
    huge = MAX_BODY * 3

    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 400 Bad Request\r\nContent-Length: {huge}\r\n\r\n".encode()
                     + b"e" * huge)

    async def test(pool: Pool, url: str, _requests: list[bytes], connections: list[int]) -> None:
        response = await pool.post(url, {}, b"x")
        assert response.status == 400 and len(response.body) == MAX_BODY
        await pool.post(url, {}, b"x")
        assert len(connections) == 2

    run(script, test)


def test_a_kept_connection_the_server_closed_meanwhile_is_not_reused() -> None:
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(CREATED.encode())
        await writer.drain()
        writer.close()  # without saying Connection: close, as idle timeouts do

    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        assert (await pool.post(url, {}, b"1")).status == 201
        await asyncio.sleep(0.1)  # the FIN arrives
        assert (await pool.post(url, {}, b"2")).status == 201
        assert len(requests) == 2 and len(connections) == 2

    run(script, test)


def test_a_service_that_never_answers_times_out() -> None:
    async def script(_n: int, _request: bytes, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def test(pool: Pool, url: str, _requests: list[bytes], _c: list[int]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.post(url, {}, b"x")
        assert 0.2 <= loop.time() - started < 2

    run(script, test, read_timeout=0.3)


@pytest.mark.parametrize("text", [
    "SMTP ready\r\n\r\n",
    "HTTP/1.1 2x1 Odd\r\n\r\n",
    "HTTP/1.1 201 Created\r\nno colon here\r\n\r\n",
    "HTTP/1.1 201 Created\r\nContent-Length: -5\r\n\r\n",
    "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_an_answer_that_is_not_http_is_a_protocol_error(text: str) -> None:
    async def test(pool: Pool, url: str, _requests: list[bytes], _c: list[int]) -> None:
        with pytest.raises(ProtocolError):
            await pool.post(url, {}, b"x")

    run(answer(text), test)


def test_no_more_than_per_origin_connections_are_opened() -> None:
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.write(CREATED.encode())

    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        answers = await asyncio.gather(*(pool.post(url, {}, b"x") for _ in range(20)))
        assert {a.status for a in answers} == {201}
        assert len(requests) == 20 and len(connections) == 2

    run(script, test, per_origin=2)


def test_a_request_cancelled_while_waiting_for_a_connection_gives_its_turn_away() -> None:
    async def script(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)
        writer.write(CREATED.encode())

    async def test(pool: Pool, url: str, requests: list[bytes], connections: list[int]) -> None:
        first = asyncio.ensure_future(pool.post(url, {}, b"1"))
        waiting = asyncio.ensure_future(pool.post(url, {}, b"2"))
        third = asyncio.ensure_future(pool.post(url, {}, b"3"))
        await asyncio.sleep(0.02)
        waiting.cancel()
        assert [(await first).status, (await third).status] == [201, 201]
        assert waiting.cancelled()
        # No turn was lost: one connection, and it still serves.
        assert (await pool.post(url, {}, b"4")).status == 201
        assert [r[-1:] for r in requests] == [b"1", b"3", b"4"] and len(connections) == 1

    run(script, test, per_origin=1)


def test_a_turn_released_while_its_cancelled_waiter_has_not_resumed_is_not_lost() -> None:
    async def main() -> None:
        pool = Pool(connect_timeout=2.0, read_timeout=2.0, per_origin=1)
        url = "http://127.0.0.1:9/push/x"  # the discard port: closed, refused at once
        with pytest.raises(ConnectionRefusedError):
            await pool.post(url, {}, b"x")
        [slots] = pool._slots.values()  # the origin's turns, an asyncio.Semaphore
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)  # it waits for the turn
        waiter.cancel()
        slots.release()  # before the cancelled waiter runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # The turn is not lost: a request takes it at once (and is refused, as before)...
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(pool.post(url, {}, b"x"), 1)
        # ...nor doubled: one taker gets it, the next would wait.
        await asyncio.wait_for(slots.acquire(), 1)
        assert slots.locked()

    asyncio.run(main())


def test_a_refused_connection_a_bad_url_and_forged_headers_fail_clearly() -> None:
    async def main() -> None:
        pool = Pool(connect_timeout=2.0, read_timeout=2.0, per_origin=1)
        with pytest.raises(ConnectionRefusedError):
            await pool.post("http://127.0.0.1:9/push/x", {}, b"x")  # discard port: closed
        with pytest.raises(ProtocolError):
            await pool.post("http://127.0.0.1:9/push/a b", {}, b"x")
        with pytest.raises(ProtocolError):
            await pool.post("ftp://127.0.0.1/push/x", {}, b"x")
        for headers in ({"Topic": "a\r\nX-Forged: 1"}, {"Topic": "a\nb"}, {"Topic": "a\rb"}):
            with pytest.raises(ProtocolError, match="line break"):
                await pool.post("http://127.0.0.1:9/push/x", headers, b"x")
        with pytest.raises(ProtocolError, match="not ASCII"):
            await pool.post("http://127.0.0.1:9/push/caf\u00e9", {}, b"x")

    asyncio.run(main())
