"""Writes to the delivery ledger the jobs share: cancelling, skipping, marking done.

A cancelled notification's open deliveries become ``skipped`` ("notification
cancelled") and are counted; a notification is ``done`` once its counters say every
delivery reached a final status.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rq.job import Job

from .clock import utcnow
from .context import app_state
from .counters import add, bump, new_increments, totals
from .event_log import event
from .event_log import write as write_events
from .exceptions import NotificationNotFound
from .models import Models
from .redis_queue import get_queue
from .sql import rowcount
from .statuses import FINAL, OPEN, UNFINISHED, DeliveryStatus, NotificationStatus

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

log = logging.getLogger("flask_webpush_targeted")

#: the reason of a delivery skipped because its notification was cancelled
CANCELLED_REASON = "notification cancelled"


def notification_status(notification_id: int) -> str | None:
    """The notification's status as committed now (one primary-key read)."""
    ext = app_state()
    N = ext.models.Notification
    status: str | None = ext.db.session.scalar(sa.select(N.status).where(N.id == notification_id))
    ext.db.session.commit()  # end the read's transaction: the next read sees new commits
    return status


def finish_if_complete(notification_id: int, *, exact: bool = False) -> bool:
    """Mark the notification done once no delivery is pending or being sent.

    The counters tell in one row: every delivery counted under ``deliveries`` is counted
    again under its final status, in the transaction that writes it. ``exact`` asks the
    delivery rows instead, a scan of the notification's deliveries (no index on status:
    see the Delivery model), which recover() does for what the counters leave open.
    """
    ext = app_state()
    db, m = ext.db, ext.models
    D, N = m.Delivery, m.Notification
    if exact:
        open_rows = db.session.scalar(sa.select(sa.exists().where(
            D.notification_id == notification_id, D.status.in_(UNFINISHED))))
    else:
        counted = totals(db, m, [notification_id])[notification_id]
        open_rows = counted["deliveries"] > sum(counted[s] for s in FINAL)
    if open_rows:
        return False
    now = utcnow()
    result = db.session.execute(
        sa.update(N).where(N.id == notification_id, N.status == NotificationStatus.SENDING,
                           N.fanned_out_at.is_not(None))
        .values(status=NotificationStatus.DONE, finished_at=now))
    done = bool(rowcount(result))
    if done:  # in the same transaction: logged once, by whoever finished it
        write_events(db, m, [event("notification.done", notification_id=notification_id,
                                   at=now)])
    db.session.commit()
    return done


def finish_cancelled(db: SQLAlchemy, m: Models, stale: datetime) -> int:
    """Skip what cancelled notifications still hold: pending rows (a fan-out chunk written as
    the cancel committed) and claims of dead workers. Only notifications cancelled within a
    day: later, nothing of theirs can still be open."""
    N, D = m.Notification, m.Delivery
    recent = utcnow() - timedelta(days=1)
    ids = db.session.scalars(sa.select(N.id).where(N.status == NotificationStatus.CANCELLED,
                                                   N.finished_at >= recent)).all()
    skipped = 0
    for nid, counted in totals(db, m, ids).items():
        if counted["deliveries"] <= sum(counted[s] for s in FINAL):
            continue
        skipped += _skip(db, m, nid, D.notification_id == nid, sa.or_(
            D.status == DeliveryStatus.PENDING,
            sa.and_(D.status == DeliveryStatus.SENDING, D.claimed_at < stale)))
        db.session.commit()
    return skipped


def skip_pending(db: SQLAlchemy, m: Models, notification_id: int, *where: Any) -> int:
    """Mark pending deliveries skipped (cancelled), counting them, in the caller's transaction;
    return how many."""
    D = m.Delivery
    return _skip(db, m, notification_id, *where, D.status == DeliveryStatus.PENDING)


def skip_claimed(db: SQLAlchemy, m: Models, notification_id: int, claim: str) -> int:
    """Mark the deliveries a batch claimed and never sent skipped (cancelled), counting them."""
    D = m.Delivery
    return _skip(db, m, notification_id, D.notification_id == notification_id,
                 D.claimed_by == claim, D.status == DeliveryStatus.SENDING)


def _skip(db: SQLAlchemy, m: Models, notification_id: int, *where: Any) -> int:
    D = m.Delivery
    skipped = rowcount(db.session.execute(
        sa.update(D).where(*where).values(status=DeliveryStatus.SKIPPED, reason=CANCELLED_REASON,
                                          claimed_by=None)
        .execution_options(synchronize_session=False)))
    if skipped:
        inc = new_increments()
        add(inc, DeliveryStatus.SKIPPED, skipped, reason=(None, CANCELLED_REASON))
        bump(db, m, notification_id, inc)
    return skipped


def cancel_notification(notification_id: int) -> bool:
    """Cancel a notification not yet finished: its job and every delivery not yet sent."""
    ext = app_state()
    db, m = ext.db, ext.models
    n = db.session.get(m.Notification, notification_id, with_for_update=True)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    if n.status not in OPEN:
        db.session.rollback()
        return False
    n.status = NotificationStatus.CANCELLED.value  # the host may hold this object
    n.finished_at = utcnow()
    skip_pending(db, m, n.id, m.Delivery.notification_id == n.id)
    db.session.commit()
    if n.job_id:
        try:
            job = Job.fetch(n.job_id, connection=get_queue().connection)
            job.cancel()
        except Exception:  # gone already, or Redis down: the status check in the job suffices
            log.info("webpush: job %s of notification %s not cancelled in RQ", n.job_id, n.id)
    return True
