"""The origin of a URL, computed one way for every use: VAPID's ``aud``, the stored
spelling of an endpoint, WEBPUSH_EXTRA_PUSH_SERVICES and the endpoints matched against
it (when stored and again before each POST), the connection pools' keys.

``web_origin`` is that one way; the others are shortcuts to it.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}


def web_origin(parts: SplitResult) -> str:
    """The RFC 6454 origin of a URL: scheme and host in lower case, the scheme's default
    port dropped, IPv6 brackets kept (``https://fcm.googleapis.com``): what VAPID's
    ``aud`` wants, and the spelling WEBPUSH_EXTRA_PUSH_SERVICES is compared in."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal (only ever from WEBPUSH_EXTRA_PUSH_SERVICES)
    port = parts.port
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\\]*(?=/)")


def origin_prefix(url: str) -> str | None:
    """``scheme://netloc`` of a URL with a path and no user name, or None: the part
    thousands of push endpoints share, whose parsing and checks are then done once."""
    match = _PREFIX.match(url)
    return match.group() if match else None


def origin_of(endpoint: str) -> str:
    """The RFC 6454 origin of an endpoint, as VAPID's ``aud`` wants it
    (``https://fcm.googleapis.com``)."""
    return web_origin(urlsplit(endpoint))
