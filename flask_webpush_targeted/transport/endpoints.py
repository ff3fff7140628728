"""Which push endpoints the worker may POST to, and the keys that go with them.

A stored endpoint is a URL the worker will POST to, so it is untrusted input:
it must be ``https`` on port 443 at a known browser push service, matched on
the *parsed* host, unless its exact origin is listed in
WEBPUSH_EXTRA_PUSH_SERVICES. Checked when a subscription is stored, and again by
the guard right before each POST (``guard.py``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ..exceptions import BadRequestError, InvalidSubscription
from .b64url import b64url_decode
from .origins import web_origin

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


MAX_ENDPOINT_LENGTH = 2048


#: anything but printable ASCII, and the backslash
_UNSAFE_URL_CHARACTER = re.compile(r"[^\x21-\x5b\x5d-\x7e]")


def _host_is_known(host: str) -> bool:
    for entry in KNOWN_PUSH_SERVICE_HOSTS:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def check_endpoint_text(endpoint: str) -> None:
    """The checks of ``validate_endpoint`` that look at the whole URL, not its origin."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise InvalidSubscription(f"The endpoint is longer than {MAX_ENDPOINT_LENGTH} characters.")
    # urlsplit and the HTTP client disagree about such characters (a backslash ends the
    # host for urllib3 and browsers, urlsplit drops tabs and newlines): refuse them.
    if _UNSAFE_URL_CHARACTER.search(endpoint):
        raise InvalidSubscription(
            "The endpoint contains characters a URL may not hold (spaces, control "
            "characters, backslashes or non-ASCII)."
        )
    if "#" in endpoint:
        raise InvalidSubscription("The endpoint must not have a fragment.")


def validate_endpoint(endpoint: Any, extra_origins: Iterable[str]) -> str:
    """Return the endpoint if the worker may POST to it, else raise InvalidSubscription."""
    if not isinstance(endpoint, str) or not endpoint:
        raise BadRequestError("subscription.endpoint must be a non-empty string.")
    check_endpoint_text(endpoint)
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise InvalidSubscription("The endpoint is not a valid URL.") from exc
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidSubscription("The endpoint has no host.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidSubscription("The endpoint must not carry a user name or password.")
    scheme = parts.scheme.lower()
    normalised = normalise_endpoint(parts)
    if is_extra_origin(parts, extra_origins):
        return normalised
    if scheme != "https":
        raise InvalidSubscription("The endpoint must use https.")
    if port not in (None, 443):
        raise InvalidSubscription("The endpoint must use the https port 443.")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise InvalidSubscription("The endpoint's host must be a name, not an IP address.")
    if host == "localhost" or host.endswith(".localhost"):
        raise InvalidSubscription("The endpoint must not point at localhost.")
    if not _host_is_known(host):
        raise InvalidSubscription(
            f"{host} is not a known browser push service. A site operator can admit another "
            "origin with WEBPUSH_EXTRA_PUSH_SERVICES."
        )
    return normalised


def is_extra_origin(parts: SplitResult, extra_origins: Iterable[str]) -> bool:
    """Whether the URL's origin is one of ``extra_origins`` (``web_origin`` spellings, as
    ``config.extra_push_origins`` gives them): then none of the policy's other checks apply."""
    return web_origin(parts) in extra_origins


def normalise_endpoint(parts: SplitResult) -> str:
    """The endpoint with its origin normalised (``web_origin``); path and query as the push
    service wrote them.

    One subscription spelled two ways is then one row (the unique key is the hash of this
    text), and the VAPID ``aud`` built from it is the origin the push service expects.
    """
    return web_origin(parts) + parts.path + (f"?{parts.query}" if parts.query else "")


def lookup_endpoint(endpoint: str) -> str:
    """The stored spelling of an endpoint given by a client (e.g. the old one of a
    rotation), or the text itself when it does not parse: then it matches no row."""
    try:
        return normalise_endpoint(urlsplit(endpoint))
    except ValueError:
        return endpoint


def validate_keys(p256dh: Any, auth: Any) -> tuple[str, str]:
    """Check p256dh is an uncompressed P-256 point and auth 16 bytes; return both."""
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        raise BadRequestError("subscription.keys.p256dh and .auth must be strings.")
    try:
        raw = b64url_decode(p256dh)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise InvalidSubscription(
            "keys.p256dh is not an uncompressed P-256 public key in base64url."
        ) from exc
    try:
        if len(b64url_decode(auth)) != 16:
            raise ValueError
    except ValueError as exc:
        raise InvalidSubscription("keys.auth is not a 16-byte secret in base64url.") from exc
    return p256dh.rstrip("="), auth.rstrip("=")
