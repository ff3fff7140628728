"""A lean push service for throughput runs: asyncio, keep-alive, no decryption.

It answers like a push service (201 with Location; 400 without TTL; 401 for a
missing or invalid VAPID header, verified once per distinct header value, as
the sender reuses one per origin), counts what it accepted per subscription,
and reports the counts on ``GET /counts``. The project's LocalPushService
checks and decrypts everything and is meant for tests; this one exists so the
service is not the bottleneck when the sender is measured.

    python benchmarks/push_sink.py [--port 0]     # prints "listening <port>"
    python benchmarks/push_sink.py --tls-cert cert.pem --tls-key key.pem   # HTTPS

Over TLS (``--tls-cert``/``--tls-key``, as ``harness.tls_files`` writes them) every
connection costs a handshake, as with a real push service; a sender keeping its
connections alive pays it once per connection, a naive one per message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import time
from collections import Counter

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

counts: Counter[str] = Counter()
verified: dict[str, float] = {}  # Authorization header -> its exp
origin = ""
CREATED = b""


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def vapid_ok(header: str) -> bool:
    """RFC 8292 check of a ``vapid t=..., k=...`` header; cached per header value."""
    exp = verified.get(header)
    if exp is not None:
        return exp > time.time()
    try:
        params = dict(p.strip().split("=", 1) for p in header.split(" ", 1)[1].split(","))
        head, claims_b64, sig_b64 = params["t"].split(".")
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64(params["k"]))
        sig = _b64(sig_b64)
        key.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                        int.from_bytes(sig[32:], "big")),
                   f"{head}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        claims = json.loads(_b64(claims_b64))
    except (KeyError, ValueError, IndexError, InvalidSignature):
        return False
    if claims.get("aud") != origin or not time.time() < claims.get("exp", 0) < time.time() + 86400:
        return False
    verified[header] = claims["exp"]
    return True


def answer(status: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The answer to one request."""
    if method == "GET" and path == "/counts":
        return answer("200 OK", json.dumps({"total": sum(counts.values()),
                                            "distinct": len(counts)}).encode())
    if method != "POST" or not path.startswith("/push/"):
        return answer("404 Not Found")
    if not headers.get("ttl", "").isdigit():
        return answer("400 Bad Request")
    if not vapid_ok(headers.get("authorization", "")):
        return answer("401 Unauthorized")
    if not body or headers.get("content-encoding") != "aes128gcm":
        return answer("400 Bad Request")
    counts[path[6:]] += 1
    return CREATED


def next_request(buffer: bytes) -> tuple[str, str, dict[str, str], bytes, bytes] | None:
    """(method, path, headers, body, the bytes after it) of the first whole request in
    ``buffer``, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    size = end + 4 + int(headers.get("content-length", "0"))
    if len(buffer) < size:
        return None
    method, path, _ = lines[0].split(" ", 2)
    return method, path, headers, buffer[end + 4:size], buffer[size:]


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive on a bare protocol (no coroutine or stream per request), so the
    sink costs a fraction of what the sender does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := next_request(self.buffer)) is not None:
            method, path, headers, body, self.buffer = request
            self.transport.write(respond(method, path, headers, body))


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the certificate (TLS 1.2 and 1.3, as push services offer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def main(port: int, tls: ssl.SSLContext | None = None) -> None:
    global origin
    global CREATED
    server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", port,
                                                            backlog=1024, ssl=tls)
    bound = server.sockets[0].getsockname()[1]
    origin = f"{'https' if tls else 'http'}://127.0.0.1:{bound}"
    CREATED = answer("201 Created", extra=f"Location: {origin}/m/1\r\n")
    print(f"listening {bound}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="and this private key (PEM)")
    args = parser.parse_args()
    tls = server_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    try:  # the `bench` extra: the sink's own CPU then drops by about half
        import uvloop
    except ImportError:
        asyncio.run(main(args.port, tls))
    else:
        uvloop.run(main(args.port, tls))
