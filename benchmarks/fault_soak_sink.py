"""A push service that misbehaves at random, for the fault soak (benchmarks/fault_soak.py).

It listens on several ports (several push-service origins, so that a 429, which pauses
one origin in a worker, does not pause them all), checks each request as
benchmarks/push_sink.py does (TTL, VAPID, encoding; no decryption), and answers each
with a fault drawn at random: 429 with a random Retry-After, 5xx, no answer at all
until past the sender's read timeout, a connection reset, or a slow 201. A few
subscriptions are gone (always 404 or 410). Every 2xx it writes is counted per
endpoint (port and path): that count is how often the delivery was sent. A 2xx is
never written past the sender's read timeout, so a 2xx the sender did not see is
one that a dead worker or a cut link lost, not one the service answered too late.

    python benchmarks/fault_soak_sink.py --host 127.0.0.1 --origins 4 --read-timeout 2
    # prints "listening <port> <port> ...";  GET /report on any port: the counts as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import random
import socket
import struct
import time
from collections import Counter
from typing import Any

import push_sink

#: per endpoint key ("<port>/push/<id>"): 2xx answers written
accepted: Counter[str] = Counter()
#: per endpoint key: requests received (any answer, or none)
requests: Counter[str] = Counter()
#: answers by kind (201, slow 201, 429, 5xx, timeout, reset, gone, refused)
faults: Counter[str] = Counter()
#: per endpoint key: the wall-clock time of each 2xx (to tell which fault caused a resend)
accepted_at: dict[str, list[float]] = {}
RATES: dict[str, float] = {}
OPTIONS: dict[str, Any] = {}


def accept(key: str) -> None:
    accepted[key] += 1
    accepted_at.setdefault(key, []).append(time.time())


def is_gone(key: str) -> bool:
    """A fixed few subscriptions are gone for good (chosen by a hash of the endpoint)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    return bool(digest % 100_000 < OPTIONS["gone"] * 100_000)


def draw() -> str:
    """This request's fate."""
    r = random.random()
    for kind, rate in RATES.items():
        if r < rate:
            return kind
        r -= rate
    return "201"


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive; one request at a time (the sender does not pipeline)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.origin = f"http://{OPTIONS['host']}:{port}"
        self.created = push_sink.answer("201 Created", extra=f"Location: {self.origin}/m/1\r\n")
        self.busy = False  # an answer is being held back (slow or never)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.busy and (request := push_sink.next_request(self.buffer)) is not None:
            method, path, headers, body, self.buffer = request
            self.handle(method, path, headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        if method == "GET" and path == "/report":
            self.transport.write(push_sink.answer("200 OK", json.dumps(
                {"accepted": accepted, "faults": faults, "requests": requests,
                 "twice": {k: v for k, v in accepted_at.items() if len(v) > 1}}).encode()))
            return
        push_sink.origin = self.origin  # the audience the VAPID check expects, per port
        if (method != "POST" or not path.startswith("/push/")
                or not headers.get("ttl", "").isdigit()
                or not push_sink.vapid_ok(headers.get("authorization", ""))
                or not body or headers.get("content-encoding") != "aes128gcm"):
            faults["refused"] += 1
            self.transport.write(push_sink.answer("400 Bad Request"))
            return
        key = f"{self.port}{path}"
        requests[key] += 1
        if is_gone(key):
            faults["gone"] += 1
            self.transport.write(push_sink.answer(random.choice(("404 Not Found", "410 Gone"))))
            return
        kind = draw()
        faults[kind] += 1
        loop = asyncio.get_running_loop()
        if kind == "201":
            accept(key)
            self.transport.write(self.created)
        elif kind == "429":
            wait = random.randint(1, OPTIONS["max_retry_after"])
            self.transport.write(push_sink.answer("429 Too Many Requests",
                                                  extra=f"Retry-After: {wait}\r\n"))
        elif kind == "5xx":
            self.transport.write(push_sink.answer(random.choice(
                ("500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable"))))
        elif kind == "reset":
            # SO_LINGER 0: close() sends an RST, as a crashing load balancer does.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif kind == "timeout":
            # No answer, ever: the connection is closed a second after the sender's timeout.
            self.busy = True
            loop.call_later(OPTIONS["read_timeout"] + 1, self.transport.close)
        elif kind == "slow":
            # A 201 late, but well inside the read timeout (never a 2xx the sender gave up on).
            self.busy = True
            loop.call_later(random.uniform(0.1, OPTIONS["read_timeout"] / 2), self.slow, key)

    def slow(self, key: str) -> None:
        self.busy = False
        if self.transport.is_closing():  # the sender went away meanwhile: nothing sent
            faults["slow, client gone"] += 1
            return
        accept(key)
        self.transport.write(self.created)
        self.data_received(b"")


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    servers, ports = [], []
    for _ in range(args.origins):
        sock = socket.socket()
        sock.bind((args.host, 0))
        port = sock.getsockname()[1]
        servers.append(await loop.create_server(functools.partial(Connection, port), sock=sock,
                                                backlog=1024))
        ports.append(port)
    print("listening " + " ".join(map(str, ports)), flush=True)
    started = time.monotonic()
    while time.monotonic() - started < args.lifetime:  # bounded: never outlives its run
        await asyncio.sleep(1)


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    """The fault rates, as the sink and the soak (which passes them on) both take them."""
    parser.add_argument("--p429", type=float, default=0.002)
    parser.add_argument("--max-retry-after", type=int, default=4)
    parser.add_argument("--p5xx", type=float, default=0.03)
    parser.add_argument("--ptimeout", type=float, default=0.01)
    parser.add_argument("--preset", type=float, default=0.01)
    parser.add_argument("--pslow", type=float, default=0.03)
    parser.add_argument("--gone", type=float, default=0.002, help="share of gone subscriptions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--origins", type=int, default=4)
    parser.add_argument("--read-timeout", type=float, default=2.0,
                        help="the sender's WEBPUSH_READ_TIMEOUT")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lifetime", type=float, default=3600, help="seconds, then exit")
    add_fault_options(parser)
    args = parser.parse_args()
    random.seed(args.seed)
    RATES.update({"429": args.p429, "5xx": args.p5xx, "timeout": args.ptimeout,
                  "reset": args.preset, "slow": args.pslow})
    OPTIONS.update(host=args.host, read_timeout=args.read_timeout, gone=args.gone,
                   max_retry_after=args.max_retry_after)
    asyncio.run(main(args))
