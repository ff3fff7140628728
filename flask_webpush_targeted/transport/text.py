"""Text from outside (customers, browsers, push services) made storable, or refused."""

from __future__ import annotations

import re

_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str | None, limit: int) -> str | None:
    """Free text a person or a browser wrote (a device label, a User-Agent header), made
    storable rather than refused: control characters (NUL among them: PostgreSQL refuses
    it) and lone surrogates become spaces, runs of spaces one, at most ``limit`` characters;
    None when nothing is left."""
    if not text:
        return None
    cleaned = " ".join(_CONTROL_OR_SURROGATE.sub(" ", text).split())[:limit]
    return cleaned or None


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> bool:
    """True when ``text`` can be stored and sent: no NUL (PostgreSQL refuses it in text)
    and no lone surrogate (not encodable as UTF-8)."""
    return "\x00" not in text and _SURROGATE.search(text) is None
