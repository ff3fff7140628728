"""``recover``: re-enqueue what a Redis outage or a dead worker left behind; never sends twice.

Every worker runs it when it starts and, among all workers of a queue, once per
WEBPUSH_RECOVER_INTERVAL (worker.py); ``flask webpush recover`` runs it by hand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from rq.job import Job, JobStatus

from .clock import utcnow
from .context import app_state
from .fanout import enqueue_batches
from .ledger import finish_cancelled, finish_if_complete
from .redis_queue import FAN_OUT, enqueue_at, fanout_job_id, fanout_options, get_queue, take_turn
from .sql import rowcount
from .statuses import WAITING, DeliveryStatus, NotificationStatus

#: an RQ job in one of these states will still run
_ALIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED})


def _job_alive(job_id: str | None) -> bool:
    if not job_id:
        return False
    queue = get_queue()
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except Exception:  # rq raises NoSuchJobError, or a deserialisation error for a broken hash
        return False
    return job.get_status(refresh=False) in _ALIVE


def recover() -> dict[str, int]:
    """Re-enqueue what a Redis outage or a dead worker left behind; never sends twice."""
    ext = app_state()
    db, m = ext.db, ext.models
    N, D = m.Notification, m.Delivery
    config = current_app.config
    now = utcnow()
    stale = now - timedelta(seconds=config["WEBPUSH_CLAIM_TIMEOUT"])
    queue = get_queue()
    done = {"enqueued": 0, "scheduled": 0, "batches": 0}
    waiting = db.session.execute(sa.select(N.id, N.status, N.job_id, N.send_at, N.queued_at)
                                 .where(N.status.in_(sorted(WAITING)))).all()
    db.session.commit()
    for n in waiting:
        if _job_alive(n.job_id):
            continue
        job_id = fanout_job_id(n.id)
        later = bool(n.send_at and n.send_at > now)
        # Conditional, and committed before the job exists: a cancel() committed meanwhile
        # stands (and a job enqueued after it finds the notification cancelled).
        taken = rowcount(db.session.execute(
            sa.update(N).where(N.id == n.id, N.status == n.status)
            .values(status=NotificationStatus.SCHEDULED if later else NotificationStatus.QUEUED,
                    job_id=job_id, queued_at=n.queued_at or now)
            .execution_options(synchronize_session=False)))
        db.session.commit()
        if not taken:
            continue
        if later:
            enqueue_at(queue, n.send_at, FAN_OUT, n.id, **fanout_options(n.id))
            done["scheduled"] += 1
        else:
            queue.enqueue(FAN_OUT, n.id, **fanout_options(n.id))
            done["enqueued"] += 1
    sending = db.session.execute(sa.select(N.id, N.fanned_out_at, N.queued_at, N.created_at)
                                 .where(N.status == NotificationStatus.SENDING)).all()
    # Claims older than the timeout belong to a dead worker; pending rows that long past
    # their due time have lost their job (Redis down when it was enqueued, or Redis lost it)
    # or wait in a long queue: either way one more job for them is harmless (claims make a
    # second run send nothing twice), and each notification gets at most one such round per
    # WEBPUSH_CLAIM_TIMEOUT, so a long queue is not flooded with copies.
    stuck = sa.or_(sa.and_(D.status == DeliveryStatus.SENDING, D.claimed_at < stale),
                   sa.and_(D.status == DeliveryStatus.PENDING,
                           sa.func.coalesce(D.next_attempt_at, D.created_at) < stale))
    for s in sending:
        nid = s.id
        if s.fanned_out_at is None:
            job_id = fanout_job_id(nid)
            if ((s.queued_at or s.created_at) < stale and not _job_alive(job_id)
                    and _first_recovery(queue, "fan-out", nid)):
                queue.enqueue(FAN_OUT, nid, **fanout_options(nid))  # the running fan-out wins
                done["enqueued"] += 1
            continue
        has_stuck = db.session.scalar(sa.select(sa.exists().where(
            D.notification_id == nid, stuck)))
        if not has_stuck:
            finish_if_complete(nid, exact=True)
        elif _first_recovery(queue, "batches", nid):
            before = len(queue)
            enqueue_batches(nid, where=stuck)
            done["batches"] += len(queue) - before
    done["skipped"] = finish_cancelled(db, m, stale)
    return done


def _first_recovery(queue: Any, what: str, notification_id: int) -> bool:
    """True for the first recovery of this kind for this notification within
    WEBPUSH_CLAIM_TIMEOUT (all workers together), False for the others."""
    return take_turn(queue.connection, f"webpush:{queue.name}:recovered:{what}:{notification_id}",
                     current_app.config["WEBPUSH_CLAIM_TIMEOUT"])
