"""The categories a shop sends (``WEBPUSH_CATEGORIES``): what each is, and its rules.

``None`` (the default) keeps categories off: ``category=`` is a free label. A dict turns
them on: ``name -> {"label", "description", "required", "default", "quiet_hours", "cap"}``.
A *required* category (order updates) is on while notifications are; the others are off
until the customer turns them on, unless ``default`` is True. ``quiet_hours`` absent
follows WEBPUSH_QUIET_HOURS; ``None`` means none for this category.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .local_time import Window, parse_window

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: what no page can show: NUL, and lone surrogates (a string from undecodable bytes), which
#: no response can encode
_UNSHOWABLE = re.compile("[\x00\ud800-\udfff]")
_KEYS = frozenset({"label", "description", "required", "default", "quiet_hours", "cap"})
#: the longest window a frequency cap may count over
MAX_CAP_WINDOW = timedelta(days=366)
#: ``quiet_hours`` not given: the category follows WEBPUSH_QUIET_HOURS
GLOBAL = "global"


@dataclass(frozen=True)
class Category:
    """One configured category."""

    name: str
    label: str
    description: str
    required: bool
    default: bool
    #: the category's own quiet hours, None for none, or GLOBAL for WEBPUSH_QUIET_HOURS's
    quiet_hours: Window | None | str
    #: at most ``cap[0]`` notifications of this category per user in any ``cap[1]``
    cap: tuple[int, timedelta] | None

    @property
    def default_on(self) -> bool:
        """Whether a customer who never chose gets this category."""
        return self.required or self.default


def parse_categories(value: Any) -> dict[str, Category] | None:
    """WEBPUSH_CATEGORIES validated; ValueError saying what is wrong."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must be None or a non-empty dict of name -> {label, ...}")
    parsed: dict[str, Category] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"category name {name!r} must be 1 to 64 of a-z, 0-9, '_', '-'")
        if not isinstance(spec, Mapping):
            raise ValueError(f"category {name!r} must be a dict with at least 'label'")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ValueError(f"category {name!r} has unknown key(s) {sorted(unknown)}")
        label, description = spec.get("label"), spec.get("description", "")
        if not isinstance(label, str) or not label.strip() or len(label) > 100:
            raise ValueError(f"category {name!r} needs a 'label' of 1 to 100 characters")
        if not isinstance(description, str) or len(description) > 500:
            raise ValueError(f"category {name!r}: 'description' must be text of at most 500")
        if _UNSHOWABLE.search(label) or _UNSHOWABLE.search(description):
            raise ValueError(f"category {name!r}: the label and description must be text a "
                             "page can show (no NUL, no lone surrogate)")
        flags = {}
        for key in ("required", "default"):
            flag = spec.get(key, False)
            if not isinstance(flag, bool):
                raise ValueError(f"category {name!r}: {key!r} must be True or False")
            flags[key] = flag
        quiet: Window | None | str = GLOBAL
        if "quiet_hours" in spec:
            quiet = None if spec["quiet_hours"] is None else _window(name, spec["quiet_hours"])
        parsed[name] = Category(name, label.strip(), description, flags["required"],
                                flags["default"], quiet, _cap(name, spec.get("cap")))
    return parsed


def parse_quiet_hours(value: Any) -> Window | None:
    """WEBPUSH_QUIET_HOURS validated: None or ``("21:00", "08:00")``; ValueError otherwise."""
    return None if value is None else parse_window(value)


def _window(name: str, value: Any) -> Window:
    try:
        return parse_window(value)
    except ValueError as exc:
        raise ValueError(f"category {name!r}: quiet_hours {exc}") from exc


def _cap(name: str, value: Any) -> tuple[int, timedelta] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"category {name!r}: cap must be (count, timedelta) or None")
    count, window = value
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise ValueError(f"category {name!r}: the cap's count must be a whole number 1-10000")
    if (not isinstance(window, timedelta) or not math.isfinite(window.total_seconds())
            or not timedelta(minutes=1) <= window <= MAX_CAP_WINDOW):
        raise ValueError(f"category {name!r}: the cap's period must be a timedelta from one "
                         "minute to 366 days")
    return count, window


def quiet_window(category: Category | None, global_window: Window | None,
                 wanted: bool | None) -> Window | None:
    """The quiet hours a notification keeps: ``wanted`` is ``notify_*``'s ``quiet_hours``
    (None: the category's or the global setting; False: none; True: the category's window
    or else the global one, which the caller checked exists)."""
    if wanted is False:
        return None
    own = category.quiet_hours if category is not None else GLOBAL
    if isinstance(own, str):  # GLOBAL
        return global_window
    if own is None and wanted:
        return global_window
    return own
