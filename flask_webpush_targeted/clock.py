"""The time the pipeline's decisions are taken at: the wall clock, or one a test sets.

Claims, retry times, validity and recovery all compare stored times with ``utcnow()``.
A test of the pipeline's states moves a ``ManualClock`` forward instead of sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

_source: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (or the clock set by ``use_clock``)."""
    return datetime.now(UTC) if _source is None else _source()


def sleep(seconds: float) -> None:
    """Wait ``seconds``: ``time.sleep``, or, under a ``ManualClock``, move it forward."""
    if seconds <= 0:
        return
    advance = getattr(_source, "advance", None)
    if advance is None:
        time.sleep(seconds)
    else:
        advance(seconds)


def monotonic() -> float:
    """Seconds to measure waits with: ``time.monotonic()``, or the set clock's time."""
    return time.monotonic() if _source is None else _source().timestamp()


class ManualClock:
    """A clock that moves only when told to: ``advance(seconds)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds``; return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@contextlib.contextmanager
def use_clock(source: Callable[[], datetime]) -> Iterator[Callable[[], datetime]]:
    """Let ``utcnow()`` answer from ``source`` inside the block (this process only)."""
    global _source
    previous, _source = _source, source
    try:
        yield source
    finally:
        _source = previous


def iso(value: datetime | None) -> str | None:
    """A stored time in a JSON answer or an export: ISO 8601 text, or None."""
    return value.isoformat() if value is not None else None
