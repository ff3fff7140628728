"""The WEBPUSH_* settings: every default in one dict, and their validation."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .exceptions import ConfigurationError

DEFAULT_CONSENT_TEXT = (
    "I agree to receive notifications from this shop in this browser, and I agree "
    "that this browser is linked to my customer account so that messages meant for "
    "me (orders, deliveries, service) reach me here. I can withdraw this consent at "
    "any time on my devices page; the link is then removed."
)

DEFAULTS: dict[str, Any] = {
    #: base64url of the raw 32-byte P-256 private scalar, or a path to a PEM file.
    #: Required. ``flask webpush generate-vapid-keys`` prints a pair.
    "WEBPUSH_VAPID_PRIVATE_KEY": None,
    #: base64url of the 65-byte uncompressed public point matching the private key.
    "WEBPUSH_VAPID_PUBLIC_KEY": None,
    #: ``mailto:`` or ``https:`` URI the push services may contact (RFC 8292): an email
    #: address (``mailto:ops@shop.example``) or a site (``https://shop.example``, no path).
    "WEBPUSH_VAPID_SUBJECT": None,
    #: Redis URL of the queue. Unset only in development (the demo embeds a Redis).
    "WEBPUSH_REDIS_URL": None,
    #: RQ queue name.
    "WEBPUSH_QUEUE": "webpush",
    #: Prefix of the blueprint's routes.
    "WEBPUSH_URL_PREFIX": "/webpush",
    #: Register the blueprint in init_app; False for hosts that route by hand.
    "WEBPUSH_REGISTER_BLUEPRINT": True,
    #: Scope of the service worker. Defaults to the prefix, so it never replaces a
    #: service worker of the host's own at ``/``.
    "WEBPUSH_SW_SCOPE": None,
    #: Validity period of a notification in seconds when a call gives none (never 0).
    "WEBPUSH_DEFAULT_TTL": 86400,
    #: What the customer agrees to, shown by the opt-in widget.
    "WEBPUSH_CONSENT_TEXT": DEFAULT_CONSENT_TEXT,
    #: Version of that text; a consent given for another version is refused.
    "WEBPUSH_CONSENT_VERSION": "1",
    #: Check the CSRF token on state-changing browser requests.
    "WEBPUSH_CSRF_ENABLED": True,
    #: Origins accepted as push services besides the browsers' own, e.g.
    #: ``["http://127.0.0.1:8765"]``: the only way to admit a local push service.
    "WEBPUSH_EXTRA_PUSH_SERVICES": [],
    #: Revoke the subscriptions made in a session when its user logs out.
    "WEBPUSH_UNBIND_ON_LOGOUT": False,
    #: A template of the host's that the extension's pages extend (it must define a
    #: ``content`` block), so the devices and statistics pages wear the host's look.
    "WEBPUSH_BASE_TEMPLATE": None,
    #: Origin of the site (``https://shop.example``); absolute notification URLs must
    #: be on it. Unset: inside a request its host is used, otherwise only relative URLs.
    "WEBPUSH_SITE_URL": None,
    #: Key material for tracking tokens; defaults to a key derived from SECRET_KEY.
    "WEBPUSH_TRACKING_SECRET": None,
    #: Events (displayed, clicked, closed) accepted per client address and minute.
    "WEBPUSH_EVENTS_RATE_LIMIT": 600,
    #: Deliveries per batch job: each batch claims, sends and records its rows together.
    "WEBPUSH_BATCH_SIZE": 1000,
    #: Requests in flight at once in one worker process (one asyncio event loop). Results
    #: are written every half this many answers (see benchmarks/README.md for the choice).
    "WEBPUSH_SEND_CONCURRENCY": 256,
    #: Requests in flight at once to any one push-service origin.
    "WEBPUSH_PER_ORIGIN_CONCURRENCY": 64,
    #: Seconds to connect to a push service, and to wait for its answer.
    "WEBPUSH_CONNECT_TIMEOUT": 5.0,
    "WEBPUSH_READ_TIMEOUT": 10.0,
    #: Attempts per delivery before a retryable error (429, 5xx, timeout) becomes final.
    "WEBPUSH_MAX_ATTEMPTS": 5,
    #: First retry delay in seconds, doubled per attempt up to the maximum.
    "WEBPUSH_RETRY_BASE_DELAY": 10.0,
    "WEBPUSH_RETRY_MAX_DELAY": 3600.0,
    #: A delivery claimed this many seconds ago and never finished is taken as
    #: abandoned (its worker died) and sent again by ``recover``.
    "WEBPUSH_CLAIM_TIMEOUT": 300,
    #: How often, in seconds, a worker runs ``recover``.
    "WEBPUSH_RECOVER_INTERVAL": 60,
    #: Largest request body, in bytes, accepted by the subscription endpoints.
    "WEBPUSH_MAX_REQUEST_BYTES": 4096,
    #: Requests per minute accepted from one key of the push API (docs/api.md); more get
    #: 429 with Retry-After.
    "WEBPUSH_API_RATE_LIMIT": 600,
    #: Most user ids in one ``POST /api/v1/notifications``; larger audiences are split.
    "WEBPUSH_API_MAX_USERS": 10_000,
    #: Largest request body, in bytes, the push API accepts (10,000 ids of ~100 characters).
    "WEBPUSH_API_MAX_REQUEST_BYTES": 1_048_576,
}

#: Hosts of the browsers' push services. A host matches when it equals an entry
#: or ends with "." + an entry that starts with "*.".
KNOWN_PUSH_SERVICE_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet
    "android.googleapis.com",  # older Chrome subscriptions
    "updates.push.services.mozilla.com",  # Firefox
    "push.services.mozilla.com",
    "*.push.apple.com",  # Safari (web.push.apple.com)
    "*.notify.windows.com",  # Edge on Windows (WNS)
)


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def b64url_decode(value: str) -> bytes:
    """Decode base64url with or without padding; raise ValueError when invalid."""
    if not isinstance(value, str) or not value:
        raise ValueError("not a base64url string")
    stripped = value.rstrip("=")
    if not _BASE64URL.fullmatch(stripped):
        raise ValueError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a base64url string") from exc


def b64url_encode(raw: bytes) -> str:
    """Encode as base64url without padding, as browsers and web-push tools do."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def generate_vapid_keys() -> tuple[str, str]:
    """Return a new (private, public) VAPID key pair in the configured formats."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(private), b64url_encode(public)


def load_vapid_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    """Parse WEBPUSH_VAPID_PRIVATE_KEY: raw base64url scalar or a PEM file path."""
    if os.path.isfile(value):
        with open(value, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the PEM file does not hold a P-256 private key")
        return key
    raw = b64url_decode(value)
    if len(raw) != 32:
        raise ValueError(f"a raw P-256 private key is 32 bytes, this one is {len(raw)}")
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


_DEFAULT_PORTS = {"https": 443, "http": 80}


def web_origin(parts: SplitResult) -> str:
    """The RFC 6454 origin of a URL: scheme and host in lower case, the scheme's default
    port dropped, IPv6 brackets kept (``https://fcm.googleapis.com``): what VAPID's
    ``aud`` wants."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal (only ever from WEBPUSH_EXTRA_PUSH_SERVICES)
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def _origin_of(url: str) -> str:
    if not isinstance(url, str):
        raise ValueError(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(url)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


_SUBJECT_HINT = ("Write a mailto: or https: URI push services can use to contact you, "
                 "e.g. 'mailto:ops@shop.example' or 'https://shop.example'.")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def vapid_subject(value: Any) -> str:
    """WEBPUSH_VAPID_SUBJECT checked and normalised (scheme and host lower-case, an
    https: URI's lone trailing slash dropped); raise ConfigurationError saying why.

    What passes is what py_vapid signs (its ``_check_sub``: ``mailto:`` with an address
    whose domain has a dot, or ``https://`` and a host with nothing after it) narrowed
    to what push services accept: Apple refuses localhost and spaces, so no loopback,
    private or local hosts, no whitespace, no second ``mailto:``.
    """
    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(f"WEBPUSH_VAPID_SUBJECT {value!r} {why}. {_SUBJECT_HINT}")

    if not isinstance(value, str) or not value:
        raise refuse("is not set" if value is None or value == "" else "is not a string")
    if any(c.isspace() for c in value):
        raise refuse("holds a space or line break (push services, Apple's among them, "
                     "refuse such a subject)")
    if not value.isascii():
        raise refuse("is not ASCII (write a domain in its xn-- form)")
    lowered = value.lower()
    if lowered.startswith("mailto:"):
        address = value[len("mailto:"):]
        if address.lower().startswith("mailto:"):
            raise refuse("says mailto: twice")
        local, at, domain = address.rpartition("@")
        if not at or not local:
            raise refuse("has no email address after mailto: (an address is name@domain)")
        if not _LOCAL_PART.fullmatch(local):
            raise refuse(f"has {local!r} before the '@', which is not an address's name "
                         "(nothing like ?, :, <> or a second '@')")
        return f"mailto:{local}@{_subject_host(domain, refuse, 'email domain')}"
    if lowered.startswith("https://"):
        rest = value[len("https://"):]
        host, slash, after = rest.partition("/")
        if slash and after or "?" in host or "#" in host:
            raise refuse("has a path, query or fragment: py_vapid signs an https: subject "
                         "only as https://host (write 'https://shop.example', or a mailto:)")
        if "@" in host:
            raise refuse("has a user name in it")
        if ":" in host and not host.startswith("["):
            raise refuse("has a port: py_vapid signs an https: subject only as https://host")
        return f"https://{_subject_host(host, refuse, 'host')}"
    if lowered.startswith("http://"):
        raise refuse("is not https: (push services want a mailto: or an https: URI)")
    if "@" in value and ":" not in value:
        raise refuse("is an email address without mailto: in front")
    raise refuse("is neither a mailto: nor an https: URI")


def _subject_host(host: str, refuse: Callable[[str], ConfigurationError], what: str) -> str:
    """The subject's host, lower-case, if it is a public domain name."""
    host = host.lower()
    if not host:
        raise refuse(f"has no {what}")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        if ip.version == 6:
            raise refuse(f"has the IPv6 address {host} as its {what}: py_vapid cannot sign "
                         "it; write a domain name")
        if not ip.is_global:
            raise refuse(f"has {host} as its {what}, a private, loopback or reserved address "
                         "no push service can reach")
        if what == "email domain":
            raise refuse(f"has the IP address {host} as its email domain; write a domain")
        return host
    labels = host.split(".")
    if host == "localhost.localdomain" or labels[-1] in ("localhost", "local"):
        raise refuse(f"has {host} as its {what}, a name of this machine or network: Apple "
                     "refuses localhost subjects, and no push service can reach it")
    if (len(labels) < 2 or len(host) > 253 or labels[-1].isdigit()
            or not all(_LABEL.fullmatch(label) for label in labels)):
        raise refuse(f"has {host!r} as its {what}, which is not a domain name (dot-separated "
                     "letters, digits and inner hyphens, like shop.example)")
    return host


def validate_config(config: dict[str, Any]) -> None:
    """Check the settings once, at init_app, with errors that say how to fix them."""
    hint = "Run `flask webpush generate-vapid-keys` and paste its output into your config."
    private = config.get("WEBPUSH_VAPID_PRIVATE_KEY")
    public = config.get("WEBPUSH_VAPID_PUBLIC_KEY")
    subject = config.get("WEBPUSH_VAPID_SUBJECT")
    if not private or not public:
        raise ConfigurationError(
            "WEBPUSH_VAPID_PRIVATE_KEY and WEBPUSH_VAPID_PUBLIC_KEY must be set. " + hint
        )
    try:
        key = load_vapid_private_key(private)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"WEBPUSH_VAPID_PRIVATE_KEY is not valid ({exc}). {hint}") from exc
    try:
        public_raw = b64url_decode(public)
    except ValueError as exc:
        raise ConfigurationError(f"WEBPUSH_VAPID_PUBLIC_KEY is not base64url. {hint}") from exc
    expected = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    if public_raw != expected:
        raise ConfigurationError(
            "WEBPUSH_VAPID_PUBLIC_KEY does not match WEBPUSH_VAPID_PRIVATE_KEY "
            "(expected the 65-byte uncompressed point of that key). " + hint
        )
    vapid_subject(subject)
    ttl = config.get("WEBPUSH_DEFAULT_TTL")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= 28 * 86400:
        raise ConfigurationError(
            "WEBPUSH_DEFAULT_TTL must be a whole number of seconds between 1 and 2419200 (28 days)."
        )
    for name in ("WEBPUSH_BATCH_SIZE", "WEBPUSH_SEND_CONCURRENCY", "WEBPUSH_MAX_ATTEMPTS",
                "WEBPUSH_CLAIM_TIMEOUT", "WEBPUSH_RECOVER_INTERVAL", "WEBPUSH_MAX_REQUEST_BYTES",
                 "WEBPUSH_EVENTS_RATE_LIMIT", "WEBPUSH_PER_ORIGIN_CONCURRENCY",
                 "WEBPUSH_API_RATE_LIMIT", "WEBPUSH_API_MAX_USERS",
                 "WEBPUSH_API_MAX_REQUEST_BYTES"):
        value = config.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{name} must be a whole number of at least 1.")
    for name in ("WEBPUSH_CONNECT_TIMEOUT", "WEBPUSH_READ_TIMEOUT", "WEBPUSH_RETRY_BASE_DELAY",
                "WEBPUSH_RETRY_MAX_DELAY"):
        value = config.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds.")
    if not str(config.get("WEBPUSH_CONSENT_VERSION") or "").strip():
        raise ConfigurationError("WEBPUSH_CONSENT_VERSION must be a non-empty string.")
    if not str(config.get("WEBPUSH_CONSENT_TEXT") or "").strip():
        raise ConfigurationError("WEBPUSH_CONSENT_TEXT must be a non-empty string.")
    prefix = config.get("WEBPUSH_URL_PREFIX")
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigurationError("WEBPUSH_URL_PREFIX must start with '/' and not end with '/'.")
    extra = config.get("WEBPUSH_EXTRA_PUSH_SERVICES")
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise ConfigurationError(
            "WEBPUSH_EXTRA_PUSH_SERVICES must be a list of origins, e.g. ['http://127.0.0.1:8765']."
        )
    for origin in extra:
        try:
            _origin_of(origin)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"WEBPUSH_EXTRA_PUSH_SERVICES entry {origin!r} is not an origin "
                "(scheme://host[:port], nothing after it)."
            ) from exc


def extra_push_origins(config: dict[str, Any]) -> frozenset[str]:
    """The normalised origins of WEBPUSH_EXTRA_PUSH_SERVICES."""
    return frozenset(_origin_of(o) for o in config["WEBPUSH_EXTRA_PUSH_SERVICES"])
