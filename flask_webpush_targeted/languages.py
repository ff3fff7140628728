"""Language tags (BCP 47, as ``navigator.language`` gives them) and choosing a text by one."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: the longest tag kept (RFC 5646 asks that 35 characters be supported)
MAX_LANGUAGE = 35

# A primary subtag of 2-3 letters (or 4-8 registered ones), then subtags of 1-8 letters or
# digits: the shape of every tag a browser sends, without RFC 5646's registry (a tag that
# fits the shape but names no language is matched by nothing and falls back to the default).
_TAG = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")


def is_language(value: Any) -> bool:
    """Whether ``value`` is a language tag of the shape BCP 47 gives ("pl", "en-GB")."""
    return (isinstance(value, str) and len(value) <= MAX_LANGUAGE
            and _TAG.fullmatch(value) is not None)


def normalized(tag: str) -> str:
    """``tag`` spelled as stored and matched: "pl-pl" -> "pl-PL", "zh-hant-tw" -> "zh-Hant-TW"."""
    parts = tag.split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            out.append(part.upper())  # region
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())  # script
        else:
            out.append(part.lower())
    return "-".join(out)


def primary(tag: str) -> str:
    """The primary subtag of ``tag``, lower-cased: "pl-PL" -> "pl"."""
    return tag.split("-", 1)[0].lower()


def best_match(tag: str | None, available: Iterable[str], default: str) -> str:
    """The one of ``available`` for a device of language ``tag``: RFC 4647's lookup (the
    tag, then the tag less its last subtag, down to the primary one: "zh-Hant-TW",
    "zh-Hant", "zh"), else a text of the same primary language ("pt-BR" takes "pt-PT"),
    else ``default``. Case does not matter."""
    ordered = list(available)
    keys = {key.lower(): key for key in reversed(ordered)}  # the first of equal ones wins
    if not tag:
        return default
    parts = tag.lower().split("-")
    while parts:
        found = keys.get("-".join(parts))
        if found is not None:
            return found
        parts.pop()
        if parts and len(parts[-1]) == 1:  # a singleton ("x", "u") goes with what follows
            parts.pop()
    first = primary(tag)
    return next((key for key in ordered if primary(key) == first), default)
