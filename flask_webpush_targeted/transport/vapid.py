"""VAPID (RFC 8292): the key pair, the subject, and the signed header per push service."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..exceptions import ConfigurationError
from .b64url import b64url_decode, b64url_encode
from .services import DEFAULT_RULE, PushServiceRule


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


#: A VAPID JWT may live up to 24 h (RFC 8292); sign for 12 h, renew an hour early. A
#: service's rule (``services.py``) may shorten the lifetime and lengthen the reuse.
VAPID_LIFETIME = 12 * 3600


VAPID_RENEW_MARGIN = 3600


#: the JOSE header of every VAPID JWT, as py_vapid writes it
_JWT_HEADER = b64url_encode(b'{"typ":"JWT","alg":"ES256"}')


def _ecdsa(key: ec.EllipticCurvePrivateKey) -> ec.ECDSA:
    """ECDSA with SHA-256, deterministic (RFC 6979) where cryptography and OpenSSL offer it
    (cryptography 43+, OpenSSL 3.2+): the same claims then sign to the same JWT."""
    try:
        deterministic = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        key.sign(b"probe", deterministic)
    except (TypeError, UnsupportedAlgorithm):
        return ec.ECDSA(hashes.SHA256())
    return deterministic


class VapidHeaders:
    """One signed VAPID Authorization header per push-service origin, reused until near expiry.

    ``subject`` is WEBPUSH_VAPID_SUBJECT, normalised as ``config.vapid_subject`` does
    (``https://shop.example/`` signs as ``https://shop.example``).

    A JWT's ``exp`` is on a grid (a multiple of a step of hours) and its signature is
    deterministic, so every process signing for an origin within one step signs the same
    header: the work horses of ``flask webpush worker --fork``, the processes of
    ``--processes N`` and other hosts with the same key send one JWT, not one per job.
    Apple asks that a JWT be renewed at most once an hour.
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._key = private_key
        self._algorithm = _ecdsa(private_key)
        self._public = b64url_encode(private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        self._subject = vapid_subject(subject)
        self._cache: dict[str, tuple[str, float, float]] = {}  # origin -> header, exp, renew at
        self._lock = threading.Lock()

    @property
    def deterministic(self) -> bool:
        """Whether signatures are deterministic: then processes share each header."""
        return bool(getattr(self._algorithm, "deterministic_signing", False))

    def header(self, origin: str, now: float | None = None,
               rule: PushServiceRule = DEFAULT_RULE) -> str:
        """The Authorization header for ``origin``, whose push service follows ``rule``.

        Its JWT's ``exp`` is at most ``rule.vapid_max_lifetime`` ahead, and the header is
        reused for at least ``rule.vapid_min_reuse`` seconds (Apple: a day, an hour), never
        signed again per batch or message.
        """
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cache.get(origin)
            if cached and cached[2] > now:
                return cached[0]
            lifetime = min(VAPID_LIFETIME, rule.vapid_max_lifetime)
            # Renewed an hour before it expires, unless that would cut the reuse the
            # service asks for short: then later, at worst at its expiry.
            margin = max(0, min(VAPID_RENEW_MARGIN, lifetime - rule.vapid_min_reuse))
            usable = lifetime - margin
            # exp rounded down to the grid: at most `lifetime` ahead, and more than
            # `usable - step` of use left, which is at least half of it and the reuse asked.
            step = max(1, int(min(usable / 2, usable - rule.vapid_min_reuse)))
            expires = int(now + lifetime) // step * step
            value = self._sign({"aud": origin, "exp": expires, "sub": self._subject})
            self._cache[origin] = (value, expires, expires - margin)
            return value

    def _sign(self, claims: dict[str, Any]) -> str:
        """``vapid t=<JWT>,k=<public key>`` for ``claims``, in py_vapid's form (claims
        sorted, compact JSON: Chrome wants them sorted)."""
        body = b64url_encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        token = f"{_JWT_HEADER}.{body}"
        r, s = decode_dss_signature(self._key.sign(token.encode(), self._algorithm))
        signature = b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return f"vapid t={token}.{signature},k={self._public}"
