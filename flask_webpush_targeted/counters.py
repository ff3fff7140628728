"""Running counters per notification (the ``webpush_stat`` rows), bumped as things happen.

The funnel, the time series and the per-platform figures are read from a few
counter rows instead of aggregating up to millions of deliveries. Every change
of a delivery's final state, and every first event, bumps them in the same
transaction as the change itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from .models import Models
from .platforms import PLATFORMS as PLATFORMS  # re-exported, with the keys' function:
from .platforms import platform_of as platform_of  # a device counts under its User-Agent's
from .platforms import platform_of_old_key
from .sql import insert_for

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

COUNTERS = ("deliveries", "sent", "failed", "gone", "expired", "skipped", "displayed",
            "clicked", "closed", "conversions", "influenced_conversions")
#: what ``bump`` adds up: the counters, and the conversions' amounts (dimension "revenue")
SUMS = (*COUNTERS, "amount")

Increments = dict[tuple[str, str], dict[str, int]]


class Sending(Protocol):
    """What ``send_start`` reads: a notification, or a row with its two columns."""

    @property
    def send_at(self) -> datetime | None:
        """When sending was scheduled for, if it was."""

    @property
    def created_at(self) -> datetime:
        """When the notification was created."""


def send_start(n: Sending) -> datetime:
    """When sending a notification starts: its send_at, or its creation if that is later."""
    return max(n.send_at, n.created_at) if n.send_at else n.created_at


def bucket(start: datetime, at: datetime) -> tuple[str, str]:
    """The time-series bucket of ``at``: per minute in the first hour after ``start``, then
    per hour (UTC)."""
    if at < start + timedelta(hours=1):
        return "minute", at.strftime("%Y-%m-%dT%H:%M:00")
    return "hour", at.strftime("%Y-%m-%dT%H:00:00")


def new_increments() -> Increments:
    """An empty set of increments: ``inc[(dimension, key)][counter] += n``."""
    return defaultdict(lambda: defaultdict(int))


def add(inc: Increments, counter: str, n: int = 1, *, at: tuple[str, str] | None = None,
        platform: str | None = None,
        reason: tuple[int | None, str | None] | None = None,
        language: str | None = None, variant: int | None = None) -> None:
    """Count ``n`` in the total, and in a time bucket, a platform (see ``platform_of``), a
    failure reason (status code, reason), a language (of a notification written in
    several) and an A/B variant when given."""
    inc[("total", "")][counter] += n
    if at is not None:
        inc[at][counter] += n
    if platform is not None:
        inc[("platform", platform)][counter] += n
    if reason is not None:
        inc[("reason", reason_key(*reason))][counter] += n
    if language is not None:
        inc[("language", language)][counter] += n
    if variant is not None:
        inc[("variant", str(variant))][counter] += n


def reason_key(code: int | None, reason: str | None) -> str:
    """The key of a failure-reason counter row: ``code|reason``, cut to the key's size."""
    return f"{'' if code is None else code}|{reason or ''}"[:200]


def bump(db: SQLAlchemy, m: Models, notification_id: int, inc: Increments) -> None:
    """Add the increments to the counter rows (upsert), in the caller's transaction."""
    rows = [{"notification_id": notification_id, "dimension": d, "key": k,
             **{c: int(values.get(c, 0)) for c in SUMS}}
            for (d, k), values in sorted(inc.items()) if any(values.values())]
    if not rows:
        return
    table = m.Stat.__table__
    stmt = insert_for(db, table)
    # Sorted rows: two workers bumping the same rows lock them in the same order.
    db.session.execute(stmt.on_conflict_do_update(
        index_elements=["notification_id", "dimension", "key"],
        set_={c: table.c[c] + stmt.excluded[c] for c in SUMS}), rows)


def totals(db: SQLAlchemy, m: Models, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The funnel counters of several notifications (zeros where nothing happened yet)."""
    ids = list(ids)
    result = {i: dict.fromkeys(COUNTERS, 0) for i in ids}
    if ids:
        S = m.Stat
        for row in db.session.scalars(sa.select(S).where(S.notification_id.in_(ids),
                                                         S.dimension == "total")):
            result[row.notification_id] = {c: getattr(row, c) for c in COUNTERS}
    return result


def fold_old_platform_rows(db: SQLAlchemy, m: Models, chunk: int = 1000) -> int:
    """Fold per-platform counters keyed by device labels (written before platforms were a
    closed set) into keys of ``PLATFORMS``; return how many rows were folded.

    Once, on an existing installation: a label a customer typed is then no key of any
    statistic. Each chunk is one transaction, so the figures add up at every moment.
    """
    S = m.Stat
    folded = 0
    while True:
        rows = db.session.execute(
            sa.select(S.id, S.notification_id, S.key, *(getattr(S, c) for c in COUNTERS))
            .where(S.dimension == "platform", S.key.not_in(PLATFORMS))
            .order_by(S.id).limit(chunk)).all()
        if not rows:
            return folded
        merged: dict[int, Increments] = {}
        for row in rows:
            inc = merged.setdefault(row.notification_id, new_increments())
            for counter in COUNTERS:
                inc[("platform", platform_of_old_key(row.key))][counter] += getattr(row, counter)
        db.session.execute(sa.delete(S).where(S.id.in_([row.id for row in rows])))
        for notification_id, inc in sorted(merged.items()):
            bump(db, m, notification_id, inc)
        db.session.commit()
        folded += len(rows)
