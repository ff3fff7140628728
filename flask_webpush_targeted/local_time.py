"""Times of day in a device's time zone: quiet hours and "at 09:00 local time".

Pure functions on aware datetimes (no app, no database): the fan-out asks them when
each delivery is due. A clock time is ``"HH:MM"``; a window ``(start, end)`` may cross
midnight (``("21:00", "08:00")``); a time zone is an IANA name checked with ``zoneinfo``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
#: what an IANA name is made of ("America/Argentina/Buenos_Aires", "Etc/GMT+5"): anything
#: else is refused before ``zoneinfo`` looks for a file of that name
ZONE_NAME = re.compile(
    r"(?=.{1,64}\Z)[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9][A-Za-z0-9_+\-]*){0,2}")

Window = tuple[time, time]


def parse_clock(value: object) -> time:
    """``"HH:MM"`` (00:00 to 23:59) as a time; ValueError otherwise."""
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return time(int(match[1]), int(match[2]))


def parse_window(value: object) -> Window:
    """A ``(start, end)`` pair of ``"HH:MM"`` as times; ValueError when it is not one or
    start equals end."""
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{value!r} is not a pair (start, end) of times as HH:MM")
    start, end = parse_clock(value[0]), parse_clock(value[1])
    if start == end:
        raise ValueError(f"{value!r} starts when it ends")
    return start, end


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The time zone of an IANA name; ValueError for anything else."""
    if not isinstance(name, str) or not ZONE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder's name
        raise ValueError(f"{name!r} is not an IANA time zone name") from exc


def is_zone(name: object) -> bool:
    """Whether ``name`` is an IANA time zone name ``zone`` accepts."""
    try:
        zone(name)  # lru_cache takes any hashable: the checks inside refuse a non-str
    except (ValueError, TypeError):
        return False
    return True


def in_window(t: time, window: Window) -> bool:
    """Whether the time of day ``t`` falls inside ``window`` (start included, end not)."""
    start, end = window
    if start < end:
        return start <= t < end
    return t >= start or t < end  # across midnight


def _occurrences(day: datetime, t: time, tz: ZoneInfo) -> list[datetime]:
    """The instants the clocks of ``tz`` show ``t`` on ``day``'s date (in UTC), earliest
    first: two for a time shown twice (fall back). A time the clocks skip (spring forward)
    is read with the offset before the change, so it lands as far after the gap (02:30
    becomes 03:30 after a one-hour jump at 02:00)."""
    shown = datetime.combine(day.date(), t, tzinfo=tz)
    first = shown.astimezone(UTC)
    second = shown.replace(fold=1).astimezone(UTC)
    return [first, second] if second > first else [first]


def quiet_until(at: datetime, tz: ZoneInfo, window: Window) -> datetime | None:
    """When quiet hours end, if ``at`` falls inside them in ``tz``; else None."""
    local = at.astimezone(tz)
    if not in_window(local.time().replace(second=0, microsecond=0), window):
        return None
    end = window[1]
    for days in (0, 1, 2):
        for candidate in _occurrences(local + timedelta(days=days), end, tz):
            if candidate > at:
                return candidate
    raise AssertionError("unreachable: a window is shorter than a day")


def next_local(at: datetime, tz: ZoneInfo, t: time) -> datetime:
    """The first instant at or after ``at`` when the clocks of ``tz`` show ``t``."""
    local = at.astimezone(tz)
    for days in (0, 1, 2):
        for candidate in _occurrences(local + timedelta(days=days), t, tz):
            if candidate >= at:
                return candidate
    raise AssertionError("unreachable: a day has every time of day")
