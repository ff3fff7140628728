"""``{name}`` placeholders in a notification's texts, filled per recipient.

Templates come from a CRM and values from its rows: neither is trusted. The parse is the
standard library's (``string.Formatter.parse``: ``{{`` and ``}}`` escape a brace), but a
template is never given to ``str.format``, which would evaluate ``{0.__class__}`` or
``{user.password}``: only plain names are accepted, without a conversion or a format
spec, and the text is joined here from the parsed pieces.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from .exceptions import InvalidNotification
from .localized import TEXTS, localize
from .transport.text import storable

#: a placeholder's name: what a CSV column or a JSON field is called, kept plain
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)
#: the most vars one recipient may carry, and the longest value (the 4 KB payload bounds
#: what is sent anyway; these bound what is stored for a recipient)
MAX_VARS = 50
MAX_VALUE_LENGTH = 1000

_FORMATTER = string.Formatter()
#: a parsed template: literal texts and placeholder names, in order
Parsed = tuple[tuple[str, str | None], ...]


@functools.lru_cache(maxsize=256)
def parse(template: str) -> Parsed:
    """The template's pieces, (literal text, placeholder name or None); InvalidNotification
    for a brace that is not a plain ``{name}`` or an escaped ``{{``/``}}``."""
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise InvalidNotification(
            f"{exc} in {template[:80]!r}: a placeholder is {{name}}; write {{{{ or }}}} for "
            "a brace itself.") from exc
    parsed = []
    for literal, name, spec, conversion in pieces:
        if name is not None and (not NAME.fullmatch(name) or spec or conversion):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (
                f":{spec}" if spec else "") + "}"
            raise InvalidNotification(
                f"{shown[:80]!r} is not a placeholder: only plain names such as {{gate}} "
                "are filled (no attribute or index access, no conversion, no format spec).")
        parsed.append((literal, name))
    return tuple(parsed)


def names(template: str) -> set[str]:
    """The placeholder names in ``template``."""
    return {name for _, name in parse(template) if name is not None}


def fill(template: str, values: Mapping[str, str], *, in_url: bool = False) -> str:
    """The template with each placeholder replaced by its value (percent-encoded in a URL,
    so that a value never changes where the URL leads); KeyError names a missing one."""
    out = []
    for literal, name in parse(template):
        out.append(literal)
        if name is not None:
            value = values[name]
            out.append(quote(value, safe="") if in_url else value)
    return "".join(out)


def literal(template: str) -> str:
    """The text a template shows with no values: ``{{`` as ``{`` (checks it parses)."""
    return "".join(text for text, _ in parse(template))


def json_width(value: str) -> int:
    """The bytes ``value`` takes inside a JSON string (escapes counted), in UTF-8."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8")) - 2


def check_vars(vars_: Any, where: str) -> dict[str, str]:
    """A recipient's or a notification's vars as {name: text}; InvalidNotification naming
    ``where`` for anything else. Numbers are written as Python writes them."""
    if not isinstance(vars_, Mapping):
        raise InvalidNotification(f"{where}: vars must be an object of name -> text.")
    if len(vars_) > MAX_VARS:
        raise InvalidNotification(f"{where}: at most {MAX_VARS} vars, not {len(vars_)}.")
    checked: dict[str, str] = {}
    for name, value in vars_.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidNotification(
                f"{where}: {str(name)[:64]!r} is not a var name (letters, digits and _, "
                "not starting with a digit, at most 64).")
        checked[name] = text_of(value, f"{where}: vars[{name!r}]")
    return checked


def text_of(value: Any, where: str) -> str:
    """A var's value as the text that fills a placeholder; InvalidNotification else."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidNotification(f"{where} must be a string or a number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidNotification(f"{where} must be a finite number.")
    if isinstance(value, int) and abs(value) >= 10**MAX_VALUE_LENGTH:
        raise InvalidNotification(f"{where} is longer than {MAX_VALUE_LENGTH} characters.")
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE_LENGTH:
        raise InvalidNotification(f"{where} is longer than {MAX_VALUE_LENGTH} characters.")
    if not storable(text):
        raise InvalidNotification(f"{where} must not contain NUL characters or lone "
                                  "surrogates.")
    return text


#: the payload's fields that take placeholders (and each action's title)
FIELDS = ("title", "body", "url")


def payload_names(payload: Mapping[str, Any]) -> set[str]:
    """Every placeholder name in a payload's title, body, url and action titles."""
    found: set[str] = set()
    for key in FIELDS:
        if isinstance(payload.get(key), str):
            found |= names(payload[key])
    for action in payload.get("actions") or ():
        found |= names(action["title"])
    for texts in (payload.get(TEXTS) or {}).values():  # the other languages' (localized.py)
        for key in ("title", "body"):
            if isinstance(texts.get(key), str):
                found |= names(texts[key])
        for title in texts.get("actions") or ():
            if isinstance(title, str):
                found |= names(title)
    return found


def fill_payload(payload: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """The payload with its placeholders filled from ``values`` (KeyError for a missing one)."""
    filled = dict(payload)
    for key in FIELDS:
        if isinstance(payload.get(key), str):
            filled[key] = fill(payload[key], values, in_url=key == "url")
    if payload.get("actions"):
        filled["actions"] = [{**a, "title": fill(a["title"], values)} for a in payload["actions"]]
    if payload.get(TEXTS):
        filled[TEXTS] = {
            language: {**{key: fill(texts[key], values) for key in ("title", "body")
                          if isinstance(texts.get(key), str)},
                       **({"actions": [fill(t, values) if isinstance(t, str) else t
                                       for t in texts["actions"]]}
                          if texts.get("actions") else {})}
            for language, texts in payload[TEXTS].items()}
    return filled


def filler(payload: Mapping[str, Any],
           wide: Mapping[str, str]) -> Callable[[Mapping[str, str] | None], dict[str, Any]]:
    """``fill_payload`` for the many recipients of one payload: a recipient's own vars over
    the notification's; a placeholder neither has is left empty (notify_users refused
    that, so only a row edited by hand can lack one)."""
    def fill_for(own: Mapping[str, str] | None) -> dict[str, Any]:
        values = _Blank({**wide, **(own or {})})
        return fill_payload(payload, values)
    return fill_for


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def title_for(payload: Mapping[str, Any], wide: Mapping[str, str] | None,
              own: Mapping[str, str] | None, language: str | None = None) -> str:
    """The title one recipient got: the template, in the language they got it in, filled
    with their vars (``wide`` None: the notification has no placeholders, its title is as
    written)."""
    title = str(localize(payload, language).get("title", ""))
    if wide is None:
        return title
    try:
        return fill(title, _Blank({**wide, **(own or {})}))
    except InvalidNotification:  # stored before it was checked: show it as written
        return title
