"""The event log: what happened, in order, for the CRM's webhooks and the event export.

Each delivery's outcome (sent, failed, gone, expired) and each first displayed, clicked or
closed, each conversion and each notification done is one row of ``webpush_event``, written
in the transaction of the change itself: an event is logged if and only if the change was
committed, as the transaction's last statement. The id orders the log and is the cursor
of the export: ids are never reused (AUTOINCREMENT on SQLite, a sequence on PostgreSQL)
and become visible in their order (``write``), and a reader goes by id, a chunk at a
time, so memory stays flat however long the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .clock import iso, utcnow
from .models import Models
from .sql import dialect_of

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: every type an event may have
EVENT_TYPES = ("delivery.sent", "delivery.failed", "delivery.gone", "delivery.expired",
               "delivery.displayed", "delivery.clicked", "delivery.closed", "conversion",
               "notification.done")
#: the delivery outcomes that are events (a skipped delivery is none: nothing was sent)
OUTCOME_EVENTS = {"sent": "delivery.sent", "failed": "delivery.failed",
                  "gone": "delivery.gone", "expired": "delivery.expired"}
#: rows read at a time by an export
CHUNK = 1000
#: the advisory lock that orders the log on PostgreSQL (any 64-bit number of our own)
ORDER_LOCK = 0x77656270757368  # "webpush"


def event(name: str, /, *, notification_id: int | None, user_id: str | None = None,
          at: datetime | None = None, **data: Any) -> dict[str, Any]:
    """One row of the log of type ``name``, to be written with ``write``."""
    return {"type": name, "notification_id": notification_id, "user_id": user_id,
            "created_at": at or utcnow(), "data": {k: v for k, v in data.items()
                                                   if v is not None}}


def write(db: SQLAlchemy, m: Models, events: Iterable[dict[str, Any]]) -> None:
    """Add the events to the log, in the caller's transaction (one statement), which
    commits at once after: it holds the log's order until then."""
    rows = list(events)
    if not rows:
        return
    if dialect_of(db) == "postgresql":
        # Ids are taken as rows are inserted and seen as transactions commit: without
        # this, id 10 could be read before id 9 and a reader's cursor would pass 9 for
        # ever. Held from here to the commit (the writer's last statement), it makes the
        # log's ids come in the order of the commits. SQLite has one writer at a time.
        db.session.execute(sa.select(sa.func.pg_advisory_xact_lock(ORDER_LOCK)))
    db.session.execute(sa.insert(m.Event.__table__), rows)


def as_json(row: Any) -> dict[str, Any]:
    """An event as the export and the webhooks carry it."""
    data = dict(row.data or {})
    data["notification_id"] = row.notification_id
    if row.user_id is not None:
        data["user_id"] = row.user_id
    return {"id": str(row.id), "type": row.type, "created_at": iso(row.created_at),
            "data": data}


def read(db: SQLAlchemy, m: Models, *, after: int = 0, since: datetime | None = None,
         up_to: int | None = None, limit: int | None = None,
         types: Iterable[str] | None = None) -> Iterator[Any]:
    """The events after id ``after`` (from ``since``, up to id ``up_to``), oldest first, at
    most ``limit``: a chunk at a time, each by its index, so that nothing grows with the log."""
    E = m.Event
    wanted = sorted(set(types)) if types is not None else None
    left = limit
    while left is None or left > 0:
        size = CHUNK if left is None else min(CHUNK, left)
        query = sa.select(E.id, E.type, E.created_at, E.notification_id, E.user_id, E.data) \
            .where(E.id > after).order_by(E.id).limit(size)
        if since is not None:
            query = query.where(E.created_at >= since)
        if up_to is not None:
            query = query.where(E.id <= up_to)
        if wanted is not None:
            query = query.where(E.type.in_(wanted))
        rows = db.session.execute(query).all()
        db.session.commit()  # no transaction held open between chunks
        yield from rows
        if len(rows) < size:
            return
        after = rows[-1].id
        if left is not None:
            left -= len(rows)


def last_id(db: SQLAlchemy, m: Models, *, after: int, since: datetime | None,
            limit: int) -> int | None:
    """The id of the last event a page of ``limit`` after ``after`` holds, or None when
    the page is not full (nothing follows it yet)."""
    E = m.Event
    query = sa.select(E.id).where(E.id > after).order_by(E.id).offset(limit - 1).limit(1)
    if since is not None:
        query = query.where(E.created_at >= since)
    found: int | None = db.session.scalar(query)
    return found


def forget(db: SQLAlchemy, m: Models, user_id: str) -> int:
    """Delete a user's events (in the caller's transaction); return how many."""
    result = db.session.execute(sa.delete(m.Event).where(m.Event.user_id == user_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
