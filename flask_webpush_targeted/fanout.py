"""The fan-out job: one pending delivery per chosen device, then the batches to send them.

It inserts deliveries with "on conflict do nothing", a chunk of users at a time, and
enqueues each chunk's batches at once, so other workers send while it goes on; run twice
(a recovered job), it writes and counts nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects import postgresql

from .clock import utcnow
from .context import app_state
from .counters import add, bump, new_increments, platform_of
from .ledger import finish_if_complete, notification_status
from .models import Models
from .redis_queue import FAN_OUT, SEND_BATCH, enqueue_at, fanout_job_id, get_queue
from .sql import dialect_of, insert_for, rowcount
from .statuses import WAITING, DeliveryStatus, NotificationStatus
from .targeting import targets

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy


def _insert_deliveries(db: SQLAlchemy, m: Models, notification_id: int, now: datetime,
                       found: list[tuple[int, str, str | None]]) -> set[int]:
    """Insert pending deliveries for (subscription id, user id, user agent) rows, skipping any
    that exist; return the subscription ids inserted."""
    table = m.Delivery.__table__
    if dialect_of(db) == "postgresql":
        # Two array parameters and unnest: one short statement whatever the chunk's size,
        # instead of a multi-row VALUES of thousands of parameters to build and parse.
        pairs = sa.func.unnest(
            sa.bindparam("sids", [sid for sid, _uid, _agent in found],
                         type_=postgresql.ARRAY(sa.Integer)),
            sa.bindparam("uids", [uid for _sid, uid, _agent in found],
                         type_=postgresql.ARRAY(sa.String)),
        ).table_valued("sid", "uid").render_derived(name="pairs")
        c = table.c
        stmt = insert_for(db, table).from_select(
            ["notification_id", "subscription_id", "user_id", "status", "attempts", "created_at"],
            sa.select(sa.literal(notification_id, c.notification_id.type), pairs.c.sid,
                      pairs.c.uid, sa.literal(DeliveryStatus.PENDING, c.status.type),
                      sa.literal(0, c.attempts.type), sa.literal(now, c.created_at.type)))
        return set(db.session.scalars(stmt.on_conflict_do_nothing(
            index_elements=["notification_id", "subscription_id"])
            .returning(table.c.subscription_id)))
    stmt = insert_for(db, table).on_conflict_do_nothing(
        index_elements=["notification_id", "subscription_id"])
    inserted = db.session.execute(stmt.returning(table.c.subscription_id), [
        {"notification_id": notification_id, "subscription_id": sid, "user_id": uid,
         "status": DeliveryStatus.PENDING, "attempts": 0, "created_at": now}
        for sid, uid, _agent in found])
    return set(inserted.scalars())


def fan_out(notification_id: int) -> None:
    """Write one pending Delivery per chosen device, then enqueue the batches."""
    ext = app_state()
    db, m = ext.db, ext.models
    n = db.session.get(m.Notification, notification_id)
    if n is None or n.status in (NotificationStatus.CANCELLED, NotificationStatus.DONE):
        return
    if n.send_at and n.send_at > utcnow():
        # Run early (a recovered job): put it back on the schedule.
        enqueue_at(get_queue(), n.send_at, FAN_OUT, notification_id,
                   job_id=fanout_job_id(notification_id))
        return
    N = m.Notification
    if n.status in WAITING:
        # Conditional: a cancel() committed since the read above must stand.
        started = rowcount(db.session.execute(
            sa.update(N).where(N.id == n.id, N.status.in_(sorted(WAITING)))
            .values(status=NotificationStatus.SENDING)
            .execution_options(synchronize_session=False)))
        db.session.commit()
        if not started:
            return
    nid, last, audience = n.id, 0, n.target_count
    if n.fanned_out_at is None:
        now = utcnow()
        without: list[str] = []
        for chunk, found in targets(db, m, n.targeting):
            covered = {uid for _sid, uid, _agent in found}
            without.extend(u for u in chunk if u not in covered)
            if not found:
                continue
            if notification_status(nid) == NotificationStatus.CANCELLED:
                return  # cancel() skipped what was written; nothing more is written
            inserted = _insert_deliveries(db, m, nid, now, found)
            # Count only rows this run inserted: a concurrent duplicate run adds none.
            inc = new_increments()
            for sid, _uid, agent in found:
                if sid in inserted:
                    add(inc, "deliveries", platform=platform_of(agent))
            bump(db, m, nid, inc)
            db.session.commit()
            # Each chunk's batches go out at once: other workers send while this one
            # goes on fanning out (the notification is done only once fanned_out_at is set).
            last = enqueue_batches(nid, after=last)
        if db.session.scalar(sa.select(N.target_count).where(N.id == nid)) != audience:
            # A user was erased while this ran (forget_user shrinks the audience of a
            # notification not fanned out yet): keep only who is still in it.
            left = set(db.session.execute(sa.select(N.targeting).where(N.id == nid))
                       .scalar_one()["user_ids"])
            without = [u for u in without if u in left]
        n.users_without_devices, n.without_count = without, len(without)
        n.fanned_out_at = utcnow()
        db.session.commit()
    enqueue_batches(nid, after=last)
    finish_if_complete(nid)


def enqueue_batches(notification_id: int, *, where: Any = None, after: int = 0) -> int:
    """Enqueue send_batch jobs over the notification's deliveries that are pending (or match
    ``where``) with ids above ``after``; return the last id covered (``after`` when none)."""
    ext = app_state()
    db, D = ext.db, ext.models.Delivery
    size = current_app.config["WEBPUSH_BATCH_SIZE"]
    queue = get_queue()
    chosen = D.status == DeliveryStatus.PENDING if where is None else where
    ranges: list[tuple[int, int]] = []
    last = after
    while True:  # a batch's worth of ids at a time: a large audience is never read at once
        ids = db.session.scalars(
            sa.select(D.id).where(D.notification_id == notification_id, D.id > last, chosen)
            .order_by(D.id).limit(size)).all()
        if not ids:
            break
        ranges.append((ids[0], ids[-1]))
        last = ids[-1]
        if len(ranges) >= 500:
            _enqueue_ranges(queue, notification_id, ranges)
            ranges = []
    _enqueue_ranges(queue, notification_id, ranges)
    return last


def _enqueue_ranges(queue: Any, notification_id: int, ranges: list[tuple[int, int]]) -> None:
    if ranges:
        queue.enqueue_many([queue.prepare_data(SEND_BATCH, (notification_id, lo, hi))
                            for lo, hi in ranges])
