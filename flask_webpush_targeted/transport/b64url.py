"""base64url (RFC 4648 §5) as Web Push writes it: keys, secrets and tokens, no padding."""

from __future__ import annotations

import base64
import binascii
import re

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
