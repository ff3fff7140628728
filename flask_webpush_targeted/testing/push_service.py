"""A real Web Push service on loopback, for tests, demos and benchmarks.

The HTTP side is what an application server talks to (RFC 8030 push
messages, RFC 8292 VAPID, RFC 8291 aes128gcm payloads). Subscriptions come
from two places:

* ``new_subscription()`` mints a browser-like subscription whose private key
  stays here, so the service decrypts what it receives and tests can assert
  on the exact payload;
* a real Firefox, pointed at ``websocket_url`` (preference
  ``dom.push.serverURL``), registers channels over the Mozilla Push protocol
  in "webpush" mode; pushes to those endpoints are forwarded to the browser,
  which decrypts them and acknowledges.

Nothing is mocked: keys, signatures and encryption are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection

__all__ = ["POSES", "Ack", "LocalPushService", "Pose", "ReceivedPush", "Subscription"]

MAX_BODY = 4096  # RFC 8030 section 7.2: push services must accept at least 4096 bytes
MAX_VAPID_LIFETIME = 24 * 3600  # RFC 8292 section 2: exp no more than 24 hours ahead
_READ_LIMIT = 1 << 20  # bodies beyond this are not even read
URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
ACK_DELIVERED, ACK_DECRYPTION_FAILED, ACK_NOT_DELIVERED = 100, 101, 102


@dataclass(frozen=True)
class Pose:
    """What a real push service enforces, for ``LocalPushService(pose_as=...)``.

    Written down here from the services' own behaviour, apart from the sender's table
    (``transport/services.py``): a test then checks the table against the services.
    """

    #: a TTL above this is refused with 400; None: any TTL
    max_ttl: int | None
    #: what it answers when it throttles (``LocalPushService.throttle``)
    throttle_status: int = 429
    #: what it answers a VAPID JWT whose exp is more than 24 hours ahead
    far_exp_status: int = 401


#: The services ``pose_as`` takes.
POSES: dict[str, Pose] = {
    "fcm": Pose(max_ttl=2_419_200),  # 4 weeks
    "mozilla": Pose(max_ttl=2_592_000),  # 30 days (autopush)
    "apple": Pose(max_ttl=2_592_000, far_exp_status=403),  # refuses exp > a day with 403
    "wns": Pose(max_ttl=None, throttle_status=406),  # 406 Not Acceptable: throttled
}


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url, with or without padding."""
    text = text.strip().rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class ReceivedPush:
    """One push message as the service received it."""

    subscription_id: str
    endpoint: str
    ttl: int
    urgency: str | None  # the header as sent; None when absent (RFC 8030 default: normal)
    topic: str | None
    headers: dict[str, str]  # lower-cased names
    body: bytes  # the encrypted body
    payload: bytes | None  # decrypted; None for browser channels or decrypt=False
    status: int  # what the service answered: 201, or 400 when decryption failed
    received_at: float  # time.time()
    message_id: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the service accepted the message (201)."""
        return self.status == 201

    def json(self) -> Any:
        """The decrypted payload decoded as JSON."""
        if self.payload is None:
            raise ValueError(f"push {self.message_id} has no decrypted payload")
        return json.loads(self.payload)

    def notification(self) -> Any:
        """The decrypted notification in one shape whichever WEBPUSH_PAYLOAD_FORMAT sent it:
        the package's fields (title, body, url, token, actions, data...) at the top level.
        A declarative message's own fields (navigate, lang, mutable) are kept beside them."""
        message = self.json()
        note = message.get("notification") if isinstance(message, dict) else None
        if not isinstance(note, dict) or message.get("web_push") != 8030:
            return message
        data = note.get("data")
        own: dict[str, Any] = data if isinstance(data, dict) else {}
        return {**own, **{key: value for key, value in note.items() if key != "data"}}


@dataclass
class Ack:
    """A browser's ack (100, 101, 102) or nack (301-303) for one message."""

    uaid: str
    channel_id: str
    version: str
    code: int
    received_at: float


@dataclass
class Subscription:
    """A push subscription known to the service: minted here or a browser channel."""

    id: str
    endpoint: str
    application_server_key: bytes | None = None  # raw 65-byte point; pushes must sign with it
    private_key: ec.EllipticCurvePrivateKey | None = None
    auth_secret: bytes | None = None
    uaid: str | None = None  # set for channels registered by a browser
    channel_id: str | None = None
    gone: bool = False

    @property
    def is_browser(self) -> bool:
        """True for a channel registered by a browser over the WebSocket."""
        return self.uaid is not None


@dataclass
class _Fault:
    status: int
    retry_after: float | str | None
    remaining: int | None
    delay: float


@dataclass
class _Stored:
    """A message for a browser channel, kept until acked or expired."""

    message: dict[str, Any]
    expires: float  # time.monotonic()
    push: ReceivedPush


@dataclass
class _Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, service: LocalPushService, port: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.service = service
        self.open_sockets: set[socket.socket] = set()
        self.connections_accepted = 0
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            # The handshake runs in each connection's thread, not in the accept loop.
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses the certificate or hangs up is its own business."""
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so benchmarks measure the sender
    timeout = 30

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        self.server.open_sockets.add(self.connection)
        self.server.connections_accepted += 1

    def finish(self) -> None:
        self.server.open_sockets.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(_error(HTTPStatus.LENGTH_REQUIRED, "a valid Content-Length is required"))
            return
        if length > _READ_LIMIT:
            self.close_connection = True
            body = b""
        else:
            body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._send(self.server.service._handle_post(self.path, headers, body, length))

    def _not_allowed(self) -> None:
        self._send(_error(HTTPStatus.METHOD_NOT_ALLOWED, "only POST is supported"))

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    """An autopush-style JSON error answer."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    body = {"code": status, "errno": status, "error": phrase, "message": message}
    reply_headers = {"Content-Type": "application/json", **(headers or {})}
    return _Reply(status, reply_headers, json.dumps(body).encode())


def self_signed_certificate(name: str = "local push service") -> tuple[bytes, bytes]:
    """A new self-signed certificate for 127.0.0.1 and localhost, its own CA, and its key
    (PKCS #8), both PEM: what a client told to trust the certificate alone accepts."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # what push services' certificates use
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a new self-signed certificate for 127.0.0.1 and localhost,
    and a client context that trusts that certificate alone."""
    import tempfile

    cert_pem, key_pem = self_signed_certificate()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only
        cert_file, key_file = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(cert_pem)
        with open(key_file, "wb") as f:
            f.write(key_pem)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


class LocalPushService:
    """A Web Push service on 127.0.0.1: HTTP for app servers, WebSocket for Firefox."""

    def __init__(
        self,
        decrypt: bool = True,
        *,
        require_vapid: bool = True,
        port: int = 0,
        websocket_port: int = 0,
        tls: ssl.SSLContext | None = None,
        pose_as: str | None = None,
    ) -> None:
        """Ports 0 (the default) let the OS choose; fixed ones suit a demo's configuration.

        With ``tls`` (a server context, see ``tls_contexts()``) the push endpoints are https.
        ``pose_as`` ("fcm", "mozilla", "apple" or "wns"; see ``POSES``) makes the service
        enforce that real service's rules: a TTL above its cap is refused (400), Apple
        refuses a VAPID JWT whose exp is more than a day ahead with 403, WNS throttles with
        406 (``throttle()``). An app server learns what it stands for from
        WEBPUSH_EXTRA_PUSH_SERVICE_KINDS.
        """
        if pose_as is not None and pose_as not in POSES:
            raise ValueError(f"pose_as must be one of {', '.join(POSES)} or None, not {pose_as!r}")
        self.pose_as = pose_as
        self.decrypt = decrypt
        self._tls = tls
        self._ports = (port, websocket_port)
        self.require_vapid = require_vapid
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subs: dict[str, Subscription] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._counts: Counter[str] = Counter()
        self._received: list[ReceivedPush] = []
        self._acks: list[Ack] = []
        self._dropped: list[ReceivedPush] = []
        self._http: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ws: Server | None = None
        # Owned by the event loop thread; read elsewhere only under the lock.
        self._connections: dict[str, ServerConnection] = {}
        self._stored: dict[str, dict[str, _Stored]] = {}  # uaid -> version -> message
        self._refused: set[str] = set()

    # -- life cycle ---------------------------------------------------------

    def start(self) -> LocalPushService:
        """Bind free ports on 127.0.0.1 and serve in background threads."""
        from websockets.asyncio.server import serve
        from websockets.typing import Subprotocol

        if self._http is not None:
            raise RuntimeError("LocalPushService is already running")
        self._http = _HTTPServer(self, self._ports[0], self._tls)
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
            name="push-service-http", daemon=True,
        )
        self._http_thread.start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="push-service-ws", daemon=True
        )
        self._loop_thread.start()

        async def open_ws() -> Server:
            return await serve(
                self._ws_session, "127.0.0.1", self._ports[1],
                subprotocols=[Subprotocol("push-notification")],
                close_timeout=1,  # Firefox leaves a server's close frame unanswered
            )

        try:
            self._ws = asyncio.run_coroutine_threadsafe(open_ws(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close both servers and their connections, and end the threads."""
        if self._loop is not None and self._loop_thread is not None:
            if self._ws is not None:
                ws = self._ws

                async def close_ws() -> None:
                    ws.close()
                    await ws.wait_closed()

                asyncio.run_coroutine_threadsafe(close_ws(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(10)
            self._loop.close()
        if self._http is not None:
            self._http.shutdown()
            for sock in list(self._http.open_sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(10)
        self._http = self._http_thread = self._ws = self._loop = self._loop_thread = None
        self._connections.clear()

    def __enter__(self) -> LocalPushService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """The HTTP origin, e.g. ``http://127.0.0.1:40123``; also the VAPID ``aud``."""
        if self._http is None:
            raise RuntimeError("LocalPushService is not started")
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._http.server_address[1]}"

    @property
    def connections_accepted(self) -> int:
        """How many connections app servers opened (keep-alive reuses them)."""
        return self._http.connections_accepted if self._http else 0

    @property
    def websocket_url(self) -> str:
        """The URL for Firefox's ``dom.push.serverURL``."""
        if self._ws is None:
            raise RuntimeError("LocalPushService is not started")
        return f"ws://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}/"

    # -- subscriptions ------------------------------------------------------

    def new_subscription(self, application_server_key: str | bytes | None = None) -> dict[str, Any]:
        """Mint a subscription like a browser's; the service keeps its private key."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        auth = os.urandom(16)
        sub = self._add(private_key=private_key, auth_secret=auth,
                        application_server_key=_key_bytes(application_server_key))
        return {
            "endpoint": sub.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url_encode(public), "auth": b64url_encode(auth)},
        }

    def _add(self, **fields: Any) -> Subscription:
        sub_id = uuid.uuid4().hex
        sub = Subscription(id=sub_id, endpoint=f"{self.origin}/push/{sub_id}", **fields)
        with self._lock:
            self._subs[sub_id] = sub
        return sub

    def subscription(self, endpoint_or_id: str | Mapping[str, Any]) -> Subscription:
        """The subscription for an endpoint URL, an id, or a subscription dict."""
        sub_id = self._id(endpoint_or_id)
        with self._lock:
            if sub_id not in self._subs:
                raise KeyError(f"unknown subscription {endpoint_or_id!r}")
            return self._subs[sub_id]

    @property
    def channels(self) -> dict[str, Subscription]:
        """Channels registered by browsers, by channelID."""
        with self._lock:
            return {s.channel_id: s for s in self._subs.values() if s.channel_id is not None}

    def mark_gone(self, endpoint_or_id: str | Mapping[str, Any]) -> None:
        """Make the subscription expired: pushes to it get 410 from now on."""
        self.subscription(endpoint_or_id).gone = True

    @staticmethod
    def _id(endpoint_or_id: str | Mapping[str, Any]) -> str:
        if isinstance(endpoint_or_id, Mapping):
            endpoint_or_id = str(endpoint_or_id["endpoint"])
        return endpoint_or_id.rstrip("/").rsplit("/", 1)[-1]

    # -- fault injection ----------------------------------------------------

    def respond(
        self,
        endpoint_or_id: str | Mapping[str, Any],
        status: int,
        *,
        retry_after: float | str | None = None,
        times: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` requests (None: all) to a subscription with `status`.

        A 2xx status with a delay makes a slow but working service. Calls queue up:
        ``respond(s, 429, times=1); respond(s, 500, times=1)`` answers 429, then 500.
        """
        with self._lock:
            self._faults.setdefault(self._id(endpoint_or_id), []).append(
                _Fault(status, retry_after, times, delay)
            )

    def throttle(self, endpoint_or_id: str | Mapping[str, Any], *, times: int | None = None,
                 retry_after: float | str | None = None) -> None:
        """Answer the next ``times`` requests (None: all) to a subscription as the posed
        service throttles: 406 for WNS, 429 otherwise (``respond`` with that status)."""
        pose = POSES.get(self.pose_as or "")
        status = pose.throttle_status if pose is not None else HTTPStatus.TOO_MANY_REQUESTS
        self.respond(endpoint_or_id, status, retry_after=retry_after, times=times)

    def clear_faults(self, endpoint_or_id: str | Mapping[str, Any] | None = None) -> None:
        """Forget injected answers for one subscription, or for all."""
        with self._lock:
            if endpoint_or_id is None:
                self._faults.clear()
            else:
                self._faults.pop(self._id(endpoint_or_id), None)

    def _take_fault(self, sub_id: str) -> _Fault | None:
        queue = self._faults.get(sub_id)
        while queue:
            fault = queue[0]
            if fault.remaining is None:
                return fault
            if fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    queue.pop(0)
                return fault
            queue.pop(0)
        return None

    # -- records ------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedPush]:
        """A snapshot of what was received: accepted pushes and decryption failures."""
        with self._lock:
            return list(self._received)

    @property
    def acks(self) -> list[Ack]:
        """A snapshot of the browsers' acks and nacks."""
        with self._lock:
            return list(self._acks)

    @property
    def dropped(self) -> list[ReceivedPush]:
        """Accepted pushes never handed to a browser (TTL 0 while offline, or TTL expired)."""
        with self._lock:
            return list(self._dropped)

    def received_for(self, endpoint_or_id: str | Mapping[str, Any]) -> list[ReceivedPush]:
        """What was received for one subscription."""
        sub_id = self._id(endpoint_or_id)
        with self._lock:
            return [p for p in self._received if p.subscription_id == sub_id]

    def request_count(self, endpoint_or_id: str | Mapping[str, Any]) -> int:
        """All requests to a subscription's endpoint, whatever the answer."""
        with self._lock:
            return self._counts[self._id(endpoint_or_id)]

    def wait_for(
        self,
        count: int,
        timeout: float = 10.0,
        *,
        endpoint_or_id: str | Mapping[str, Any] | None = None,
    ) -> list[ReceivedPush]:
        """Block until `count` accepted pushes arrived (for one subscription if given)."""
        sub_id = None if endpoint_or_id is None else self._id(endpoint_or_id)

        def accepted() -> list[ReceivedPush]:
            return [p for p in self._received
                    if p.ok and (sub_id is None or p.subscription_id == sub_id)]

        with self._changed:
            if not self._changed.wait_for(lambda: len(accepted()) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} accepted push(es) within {timeout}s, "
                    f"got {len(accepted())} (all requests so far: {sum(self._counts.values())})"
                )
            return accepted()

    def wait_for_acks(self, count: int, timeout: float = 10.0) -> list[Ack]:
        """Block until browsers sent at least `count` acks or nacks."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._acks) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} ack(s) within {timeout}s, got {len(self._acks)}"
                )
            return list(self._acks)

    def clear(self) -> None:
        """Forget received pushes, acks, dropped messages and request counts."""
        with self._lock:
            self._received.clear()
            self._acks.clear()
            self._dropped.clear()
            self._counts.clear()

    def _record(self, push: ReceivedPush) -> None:
        with self._changed:
            self._received.append(push)
            self._changed.notify_all()

    # -- HTTP side ----------------------------------------------------------

    def _handle_post(self, path: str, headers: dict[str, str], body: bytes, length: int) -> _Reply:
        prefix, _, sub_id = path.partition("?")[0].rpartition("/")
        if prefix != "/push" or not sub_id:
            return _error(HTTPStatus.NOT_FOUND, "no such endpoint")
        with self._lock:
            self._counts[sub_id] += 1
            sub = self._subs.get(sub_id)
            fault = self._take_fault(sub_id)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status >= 300:
                extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                return _error(fault.status, "injected by LocalPushService.respond()", extra)
        if sub is None:
            return _error(HTTPStatus.NOT_FOUND, "no such subscription")
        if sub.gone:
            return _error(HTTPStatus.GONE, "subscription expired or unsubscribed")
        problem = self._check_vapid(sub, headers.get("authorization", ""))
        if problem is not None:
            return problem
        ttl_text = headers.get("ttl", "").strip()
        if not (ttl_text.isascii() and ttl_text.isdigit()):
            required = " (WNS requires it)" if self.pose_as == "wns" else ""
            return _error(HTTPStatus.BAD_REQUEST,
                          f"TTL header missing or not an integer >= 0{required}")
        pose = POSES.get(self.pose_as or "")
        if pose is not None and pose.max_ttl is not None and int(ttl_text) > pose.max_ttl:
            return _error(HTTPStatus.BAD_REQUEST,
                          f"TTL {ttl_text} exceeds {self.pose_as}'s maximum of {pose.max_ttl}")
        urgency, topic = headers.get("urgency"), headers.get("topic")
        if urgency is not None and urgency not in URGENCIES:
            return _error(HTTPStatus.BAD_REQUEST, f"Urgency must be one of {', '.join(URGENCIES)}")
        if topic is not None and (len(topic) > 32 or not set(topic) <= _TOPIC_CHARS):
            return _error(HTTPStatus.BAD_REQUEST,
                          "Topic must be at most 32 characters of the base64url alphabet")
        if length > MAX_BODY:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"body of {length} bytes exceeds {MAX_BODY}")
        if body and headers.get("content-encoding", "").lower() != "aes128gcm":
            return _error(HTTPStatus.BAD_REQUEST, "Content-Encoding must be aes128gcm")

        message_id = uuid.uuid4().hex
        push = ReceivedPush(
            subscription_id=sub.id, endpoint=sub.endpoint, ttl=int(ttl_text), urgency=urgency,
            topic=topic, headers=headers, body=body, payload=None,
            status=201, received_at=time.time(), message_id=message_id,
        )
        if sub.is_browser:
            self._forward(sub, push)
        elif self.decrypt and body:
            try:
                push.payload = http_ece.decrypt(
                    body, private_key=sub.private_key, auth_secret=sub.auth_secret,
                    version="aes128gcm",
                )
            except Exception as exc:  # http_ece raises several kinds
                push.status, push.error = 400, f"decryption failed: {exc!r}"
                self._record(push)
                return _error(HTTPStatus.BAD_REQUEST, push.error)
        elif self.decrypt:
            push.payload = b""
        self._record(push)
        return _Reply(HTTPStatus.CREATED, {
            "Location": f"{self.origin}/m/{message_id}", "TTL": ttl_text,
        })

    def _check_vapid(self, sub: Subscription, authorization: str) -> _Reply | None:
        """RFC 8292: None when the Authorization header is acceptable, else the error."""

        def unauthorized(why: str) -> _Reply:
            return _error(HTTPStatus.UNAUTHORIZED, f"VAPID: {why}",
                          {"WWW-Authenticate": "vapid"})

        if not authorization:
            if self.require_vapid or sub.application_server_key:
                return unauthorized("missing Authorization header")
            return None
        scheme, _, params = authorization.strip().partition(" ")
        if scheme.lower() != "vapid":
            return unauthorized("scheme must be 'vapid t=<jwt>, k=<key>'")
        parts: dict[str, str] = {}
        for item in params.split(","):
            name, sep, value = item.strip().partition("=")
            if sep:
                parts[name.strip().lower()] = value.strip()
        token, key_text = parts.get("t", ""), parts.get("k", "")
        try:
            key_raw = b64url_decode(key_text)
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_raw)
            header_b64, claims_b64, sig_b64 = token.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(sig_b64)
        except (ValueError, TypeError):
            return unauthorized("malformed t= token or k= key")
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            return unauthorized("JWT alg must be ES256")
        if len(signature) != 64:
            return unauthorized("ES256 signature must be 64 bytes")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        try:
            public_key.verify(der, f"{header_b64}.{claims_b64}".encode(),
                              ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return unauthorized("signature does not verify with k")
        if not isinstance(claims, dict):
            return unauthorized("JWT claims must be an object")
        if claims.get("aud") != self.origin:
            return unauthorized(f"aud {claims.get('aud')!r} is not {self.origin!r}")
        exp, now = claims.get("exp"), time.time()
        if not isinstance(exp, int) or exp <= now:
            return unauthorized("exp missing or in the past")
        if exp > now + MAX_VAPID_LIFETIME:
            pose = POSES.get(self.pose_as or "")
            if pose is not None and pose.far_exp_status != HTTPStatus.UNAUTHORIZED:
                return _error(pose.far_exp_status, "VAPID: exp more than 24 hours ahead")
            return unauthorized("exp more than 24 hours ahead")
        sub_claim = claims.get("sub")
        if not isinstance(sub_claim, str) or not sub_claim.startswith(("mailto:", "https:")):
            return unauthorized("sub must be a mailto: or https: URI")
        if sub.application_server_key and key_raw != sub.application_server_key:
            return _error(HTTPStatus.FORBIDDEN,
                          "VAPID key differs from the applicationServerKey of the subscription")
        return None

    # -- WebSocket side (Mozilla Push protocol, webpush mode) ---------------

    def connected_uaids(self) -> list[str]:
        """The uaids of browsers connected now."""
        with self._lock:
            return list(self._connections)

    def wait_for_connection(self, uaid: str | None = None, timeout: float = 10.0) -> str:
        """Block until a browser (this uaid, or any) completed its hello; return its uaid."""
        with self._changed:
            def found() -> str | None:
                if uaid is not None:
                    return uaid if uaid in self._connections else None
                return next(iter(self._connections), None)

            if not self._changed.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no browser connected (uaid {uaid}) within {timeout}s")
            result = found()
            assert result is not None
            return result

    def disconnect(self, uaid: str, *, refuse_reconnect: bool = False) -> None:
        """Drop a browser's connection; optionally refuse its hellos until allow_reconnect().

        The TCP connection is aborted like a network loss: Firefox does not answer a
        server's close frame, so a closing handshake would only wait for its timeout.
        """
        if refuse_reconnect:
            with self._lock:
                self._refused.add(uaid)
        with self._lock:
            conn = self._connections.get(uaid)
        if conn is not None and self._loop is not None:
            live = conn

            async def abort() -> None:
                live.transport.abort()
                await live.wait_closed()

            asyncio.run_coroutine_threadsafe(abort(), self._loop).result(10)

    def allow_reconnect(self, uaid: str) -> None:
        """Accept this browser's hellos again (Firefox retries with backoff)."""
        with self._lock:
            self._refused.discard(uaid)

    def _forward(self, sub: Subscription, push: ReceivedPush) -> None:
        message: dict[str, Any] = {
            "messageType": "notification", "channelID": sub.channel_id,
            "version": push.message_id,
        }
        if push.body:
            message["data"] = b64url_encode(push.body)
            message["headers"] = {"encoding": "aes128gcm"}
        if self._loop is None:
            raise RuntimeError("LocalPushService is not started")
        asyncio.run_coroutine_threadsafe(
            self._deliver(str(sub.uaid), message, push), self._loop
        ).result(10)

    async def _deliver(self, uaid: str, message: dict[str, Any], push: ReceivedPush) -> None:
        """On the loop: send now if connected; keep for later while the TTL lasts."""
        from websockets.exceptions import ConnectionClosed

        if push.ttl > 0:
            self._stored.setdefault(uaid, {})[push.message_id] = _Stored(
                message, time.monotonic() + push.ttl, push
            )
        conn = self._connections.get(uaid)
        if conn is not None:
            try:
                await conn.send(json.dumps(message))
                return
            except ConnectionClosed:
                pass
        if push.ttl == 0:
            with self._lock:
                self._dropped.append(push)

    async def _flush(self, uaid: str, conn: ServerConnection) -> None:
        """Send a reconnected browser what it missed; drop what expired."""
        now = time.monotonic()
        for version, stored in list(self._stored.get(uaid, {}).items()):
            if stored.expires <= now:
                del self._stored[uaid][version]
                with self._lock:
                    self._dropped.append(stored.push)
            else:
                await conn.send(json.dumps(stored.message))

    async def _ws_session(self, conn: ServerConnection) -> None:
        """One browser connection: hello first, then register/unregister/ack/ping."""
        from websockets.exceptions import ConnectionClosed

        uaid: str | None = None
        try:
            async for raw in conn:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    await conn.close(1007, "not JSON")
                    return
                if not isinstance(msg, dict):
                    continue
                kind = msg.get("messageType")
                if not msg:  # {} is a ping
                    await conn.send("{}")
                elif kind == "hello":
                    uaid = await self._hello(conn, msg)
                    if uaid is None:
                        return
                elif uaid is None:
                    await conn.close(1002, "hello first")
                    return
                elif kind == "register":
                    await conn.send(json.dumps(self._register(uaid, msg)))
                elif kind == "unregister":
                    channel_id = str(msg.get("channelID"))
                    self._unregister(uaid, channel_id)
                    await conn.send(json.dumps({"messageType": "unregister",
                                                "channelID": channel_id, "status": 200}))
                elif kind in ("ack", "nack"):
                    self._ack(uaid, msg)
        except ConnectionClosed:
            pass
        finally:
            if uaid is not None and self._connections.get(uaid) is conn:
                with self._changed:
                    del self._connections[uaid]
                    self._changed.notify_all()

    async def _hello(self, conn: ServerConnection, msg: dict[str, Any]) -> str | None:
        uaid = msg.get("uaid")
        if not isinstance(uaid, str) or not uaid:
            uaid = uuid.uuid4().hex  # a new browser; echoing an old uaid keeps its channels
        with self._lock:
            refused = uaid in self._refused
        if refused:  # like a network failure: Firefox retries with backoff
            conn.transport.abort()
            return None
        await conn.send(json.dumps({"messageType": "hello", "uaid": uaid, "status": 200,
                                    "use_webpush": True, "broadcasts": {}}))
        old = self._connections.get(uaid)
        with self._changed:
            self._connections[uaid] = conn
            self._changed.notify_all()
        if old is not None and old is not conn:
            await old.close(1000, "replaced by a newer connection")
        await self._flush(uaid, conn)
        return uaid

    def _register(self, uaid: str, msg: dict[str, Any]) -> dict[str, Any]:
        channel_id = str(msg.get("channelID"))
        try:
            key = _key_bytes(msg.get("key"))
        except ValueError:
            return {"messageType": "register", "channelID": channel_id, "status": 400}
        sub = self._add(application_server_key=key, uaid=uaid, channel_id=channel_id)
        return {"messageType": "register", "channelID": channel_id, "status": 200,
                "pushEndpoint": sub.endpoint}

    def _unregister(self, uaid: str, channel_id: str) -> None:
        with self._lock:
            for sub in self._subs.values():
                if sub.uaid == uaid and sub.channel_id == channel_id:
                    sub.gone = True
        stored = self._stored.get(uaid, {})
        for version in [v for v, s in stored.items() if s.message["channelID"] == channel_id]:
            del stored[version]

    def _ack(self, uaid: str, msg: dict[str, Any]) -> None:
        stored = self._stored.get(uaid, {})
        if msg["messageType"] == "nack":  # an error in the service worker: code 301-303
            updates = [{"version": msg.get("version"), "code": msg.get("code")}]
        else:
            updates = msg.get("updates") or []
        now = time.time()
        with self._changed:
            for update in updates:
                version = str(update.get("version"))
                kept = stored.pop(version, None)
                channel_id = update.get("channelID") or (
                    kept.message["channelID"] if kept is not None else "")
                self._acks.append(Ack(uaid, str(channel_id), version,
                                      int(update.get("code") or 0), now))
            self._changed.notify_all()


def _key_bytes(key: str | bytes | None) -> bytes | None:
    """An applicationServerKey as raw bytes, validated as a P-256 point."""
    if key is None or key == "":
        return None
    raw = b64url_decode(key) if isinstance(key, str) else bytes(key)
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # raises ValueError
    return raw
