"""RQ jobs: fan-out, batch sending, recovery. Module-level, ids as arguments.

Every job is safe to run twice. Fan-out inserts deliveries with "on conflict do
nothing"; a batch *claims* its rows with one conditional UPDATE before sending,
so two workers, or a retried job, never send the same delivery twice. A claim
older than WEBPUSH_CLAIM_TIMEOUT belongs to a dead worker and may be taken again.
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from rq.job import Job

from . import signals
from .config import load_vapid_private_key
from .models import Models, utcnow
from .push import EndpointGuard, PushResult, PushSender, VapidHeaders, new_http_session
from .queue import get_queue
from .sending import encode_payload
from .tracking import make_token, signing_key

log = logging.getLogger("flask_webpush_targeted")

_CHUNK = 1000
#: tokens stay valid this long after a message's validity ends, so late clicks count
TOKEN_GRACE = timedelta(days=7)


def _ext() -> Any:
    return current_app.extensions["webpush"]


def _app() -> Any:
    return current_app._get_current_object()  # type: ignore[attr-defined]


# -- fan-out ----------------------------------------------------------------------------------


def _insert_ignoring_duplicates(db: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).on_conflict_do_nothing(
            index_elements=["notification_id", "subscription_id"])
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing(
            index_elements=["notification_id", "subscription_id"])
    else:
        stmt = sa.insert(table).prefix_with("IGNORE")  # MySQL / MariaDB
    db.session.execute(stmt, rows)


def _targets(db: Any, m: Models, targeting: dict[str, Any]) -> Any:
    """Yield (chunk of requested user ids, [(subscription id, user id)]) per chunk."""
    Sub = m.Subscription
    user_ids: list[str] = targeting["user_ids"]
    mode = targeting["devices"]
    if mode == "ids":
        ids = targeting["subscription_ids"]
        found: list[tuple[int, str]] = []
        for start in range(0, len(ids), _CHUNK):
            found.extend(db.session.execute(sa.select(Sub.id, Sub.user_id).where(
                Sub.id.in_(ids[start:start + _CHUNK]), Sub.revoked_at.is_(None))).all())
        yield user_ids, [(sid, uid) for sid, uid in found if uid in set(user_ids)]
        return
    for start in range(0, len(user_ids), _CHUNK):
        chunk = user_ids[start:start + _CHUNK]
        rows = db.session.execute(
            sa.select(Sub.id, Sub.user_id).where(Sub.user_id.in_(chunk), Sub.revoked_at.is_(None))
            .order_by(Sub.user_id, Sub.created_at.desc(), Sub.id.desc())).all()
        if mode == "latest":
            seen: set[str] = set()
            rows = [r for r in rows if not (r[1] in seen or seen.add(r[1]))]  # type: ignore[func-returns-value]
        yield chunk, [(sid, uid) for sid, uid in rows]


def fan_out(notification_id: int) -> None:
    """Write one pending Delivery per chosen device, then enqueue the batches."""
    ext = _ext()
    db, m = ext.db, ext.models
    n = db.session.get(m.Notification, notification_id)
    if n is None or n.status in ("cancelled", "done"):
        return
    if n.send_at and n.send_at > utcnow() + timedelta(seconds=1):
        # Run early (a recovered job): put it back on the schedule.
        get_queue().enqueue_at(n.send_at, fan_out, notification_id,
                               job_id=f"webpush-fanout-{notification_id}")
        return
    if n.status in ("queued", "scheduled"):
        n.status = "sending"
        db.session.commit()
    if n.fanned_out_at is None:
        now = utcnow()
        without: list[str] = []
        for chunk, found in _targets(db, m, n.targeting):
            covered = {uid for _sid, uid in found}
            without.extend(u for u in chunk if u not in covered)
            if found:
                _insert_ignoring_duplicates(db, m.Delivery.__table__, [
                    {"notification_id": n.id, "subscription_id": sid, "user_id": uid,
                     "status": "pending", "attempts": 0, "created_at": now}
                    for sid, uid in found])
        n.users_without_devices = without
        n.fanned_out_at = utcnow()
        db.session.commit()
    enqueue_batches(notification_id)
    finish_if_complete(notification_id)


def enqueue_batches(notification_id: int, *, statuses: tuple[str, ...] = ("pending",)) -> int:
    """Enqueue send_batch jobs over the notification's deliveries in these statuses."""
    ext = _ext()
    db, D = ext.db, ext.models.Delivery
    size = current_app.config["WEBPUSH_BATCH_SIZE"]
    queue = get_queue()
    ranges: list[tuple[int, int]] = []
    last = 0
    while True:
        ids = db.session.scalars(
            sa.select(D.id).where(D.notification_id == notification_id, D.id > last,
                                  D.status.in_(statuses))
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
        queue.enqueue_many([queue.prepare_data(send_batch, (notification_id, lo, hi))
                            for lo, hi in ranges])


# -- sending ----------------------------------------------------------------------------------


def _sender() -> tuple[PushSender, ThreadPoolExecutor]:
    """This process's sender: VAPID header cache and keep-alive pool live across jobs."""
    app = _app()
    cached = app.extensions.get("webpush.sender")
    if cached is None or cached[2] != _pid():
        config = app.config
        concurrency = config["WEBPUSH_SEND_CONCURRENCY"]
        sender = PushSender(
            VapidHeaders(load_vapid_private_key(config["WEBPUSH_VAPID_PRIVATE_KEY"]),
                         config["WEBPUSH_VAPID_SUBJECT"]),
            EndpointGuard(app.extensions["webpush.extra_origins"]),
            new_http_session(concurrency),
            (config["WEBPUSH_CONNECT_TIMEOUT"], config["WEBPUSH_READ_TIMEOUT"]),
        )
        cached = (sender, ThreadPoolExecutor(concurrency, thread_name_prefix="webpush"), _pid())
        app.extensions["webpush.sender"] = cached
    return cached[0], cached[1]


def _pid() -> int:
    return os.getpid()


def _deadline(n: Any) -> datetime:
    return (n.send_at or n.queued_at or n.created_at) + timedelta(seconds=n.ttl)


def send_batch(notification_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """Claim the batch's due deliveries, send them, record every result together."""
    ext = _ext()
    db, m = ext.db, ext.models
    config = current_app.config
    D, Sub = m.Delivery, m.Subscription
    n = db.session.get(m.Notification, notification_id)
    if n is None:
        return {}
    in_batch = (D.notification_id == notification_id, D.id.between(first_id, last_id))
    if n.status == "cancelled":
        db.session.execute(sa.update(D).where(*in_batch, D.status == "pending")
                           .values(status="skipped", reason="notification cancelled"))
        db.session.commit()
        return {}
    now = utcnow()
    claim = uuid.uuid4().hex
    stale = now - timedelta(seconds=config["WEBPUSH_CLAIM_TIMEOUT"])
    db.session.execute(
        sa.update(D).where(*in_batch, sa.or_(
            sa.and_(D.status == "pending",
                    sa.or_(D.next_attempt_at.is_(None), D.next_attempt_at <= now)),
            sa.and_(D.status == "sending", D.claimed_at < stale),
        )).values(status="sending", claimed_by=claim, claimed_at=now, attempts=D.attempts + 1)
        .execution_options(synchronize_session=False))
    db.session.commit()
    rows = db.session.execute(
        sa.select(D.id, D.subscription_id, D.attempts, Sub.endpoint, Sub.p256dh, Sub.auth,
                  Sub.revoked_at)
        .outerjoin(Sub, Sub.id == D.subscription_id).where(D.claimed_by == claim)).all()
    if not rows:
        finish_if_complete(notification_id)
        return {}

    deadline = _deadline(n)
    key = signing_key()
    token_expiry = (deadline + TOKEN_GRACE).timestamp()
    results: dict[int, PushResult] = {}
    to_send = []
    for row in rows:
        remaining = int((deadline - now).total_seconds())
        if row.endpoint is None or row.revoked_at is not None:
            results[row.id] = PushResult("skipped", reason="device revoked or consent withdrawn")
        elif remaining <= 0 and not (n.ttl == 0 and row.attempts == 1):
            results[row.id] = PushResult("expired", reason="validity period (ttl) passed")
        else:
            to_send.append((row, max(remaining, 0)))

    sender, pool = _sender()

    def push(item: tuple[Any, int]) -> tuple[int, PushResult]:
        row, ttl = item
        body = encode_payload(n.payload, make_token(row.id, token_expiry, key))
        subscription = {"endpoint": row.endpoint, "keys": {"p256dh": row.p256dh, "auth": row.auth}}
        try:
            return row.id, sender.send(subscription, body, ttl=ttl, urgency=n.urgency,
                                       topic=n.topic)
        except Exception as exc:  # an encryption bug must not leave the batch claimed
            log.exception("webpush: delivery %s could not be sent", row.id)
            return row.id, PushResult("failed", reason=f"error: {type(exc).__name__}: {exc}"[:255])

    results.update(pool.map(push, to_send))
    return _record(n, rows, results, claim)


def _retry_delay(attempts: int, hinted: float | None) -> float:
    config = current_app.config
    # The push service's Retry-After wins; otherwise exponential backoff.
    if hinted is None:
        hinted = config["WEBPUSH_RETRY_BASE_DELAY"] * 2 ** max(attempts - 1, 0)
    return float(min(hinted, config["WEBPUSH_RETRY_MAX_DELAY"]))


def _record(n: Any, rows: list[Any], results: dict[int, PushResult], claim: str) -> dict[str, int]:
    """Write every result of a batch in a few statements; then signals, retries, completion."""
    ext = _ext()
    db, m = ext.db, ext.models
    app = _app()
    max_attempts = current_app.config["WEBPUSH_MAX_ATTEMPTS"]
    now = utcnow()
    attempts = {row.id: row.attempts for row in rows}
    subscription_of = {row.id: row.subscription_id for row in rows}
    updates: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    retry_at: datetime | None = None
    for delivery_id, result in results.items():
        status, next_at = result.outcome, None
        reason = result.reason
        if status == "retry":
            if attempts[delivery_id] >= max_attempts:
                status, reason = "failed", f"gave up after {max_attempts} attempts: {reason}"
            else:
                status = "pending"
                next_at = now + timedelta(seconds=_retry_delay(attempts[delivery_id],
                                                               result.retry_after))
                retry_at = min(retry_at or next_at, next_at)
        counts[status] = counts.get(status, 0) + 1
        updates.append({"b_id": delivery_id, "status": status, "status_code": result.status_code,
                        "reason": reason, "next_attempt_at": next_at,
                        "sent_at": now if status == "sent" else None,
                        "claimed_by": None if status == "pending" else claim})
    table = m.Delivery.__table__
    # Only rows this batch still holds: a claim taken over by another worker is theirs.
    db.session.execute(
        table.update().where(table.c.id == sa.bindparam("b_id"), table.c.claimed_by == claim)
        .values(status=sa.bindparam("status"), status_code=sa.bindparam("status_code"),
                reason=sa.bindparam("reason"), next_attempt_at=sa.bindparam("next_attempt_at"),
                sent_at=sa.bindparam("sent_at"), claimed_by=sa.bindparam("claimed_by")),
        updates)
    Sub = m.Subscription
    gone = [subscription_of[d] for d, r in results.items() if r.outcome == "gone"]
    sent = [subscription_of[d] for d, r in results.items() if r.outcome == "sent"]
    failed = [subscription_of[d] for d, r in results.items() if r.outcome in ("failed", "retry")]
    if gone:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(gone), Sub.revoked_at.is_(None))
                           .values(revoked_at=now, revoked_reason="gone"))
    if sent:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(sent))
                           .values(last_seen_at=now, consecutive_failures=0))
    if failed:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(failed))
                           .values(consecutive_failures=Sub.consecutive_failures + 1))
    db.session.commit()

    for delivery_id, result in results.items():
        if result.outcome == "sent":
            signals.delivery_sent.send(app, delivery_id=delivery_id, notification_id=n.id,
                                       subscription_id=subscription_of[delivery_id])
        elif result.outcome in ("gone", "failed") or (
            result.outcome == "retry" and attempts[delivery_id] >= max_attempts
        ):
            if result.status_code in (400, 401, 403):
                log.error("webpush: push service refused delivery %s (%s): check the VAPID "
                          "keys and subject", delivery_id, result.reason)
            signals.delivery_failed.send(app, delivery_id=delivery_id, notification_id=n.id,
                                         subscription_id=subscription_of[delivery_id],
                                         error=result.reason, status_code=result.status_code,
                                         gone=result.outcome == "gone")
    if retry_at is not None:
        first, last = min(results), max(results)
        get_queue().enqueue_at(retry_at, send_batch, n.id, first, last)
    finish_if_complete(n.id)
    return counts


def finish_if_complete(notification_id: int) -> bool:
    """Mark the notification done once no delivery is pending or being sent."""
    ext = _ext()
    db, m = ext.db, ext.models
    D, N = m.Delivery, m.Notification
    open_rows = db.session.scalar(sa.select(sa.exists().where(
        D.notification_id == notification_id, D.status.in_(("pending", "sending")))))
    if open_rows:
        return False
    result = db.session.execute(
        sa.update(N).where(N.id == notification_id, N.status == "sending",
                           N.fanned_out_at.is_not(None))
        .values(status="done", finished_at=utcnow()))
    db.session.commit()
    return bool(result.rowcount)


# -- recovery ---------------------------------------------------------------------------------


def _job_alive(job_id: str | None) -> bool:
    if not job_id:
        return False
    queue = get_queue()
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except Exception:  # rq raises NoSuchJobError, or a deserialisation error for a broken hash
        return False
    return job.get_status(refresh=False) in ("queued", "scheduled", "started", "deferred")


def recover() -> dict[str, int]:
    """Re-enqueue what a Redis outage or a dead worker left behind; never sends twice."""
    ext = _ext()
    db, m = ext.db, ext.models
    N, D = m.Notification, m.Delivery
    config = current_app.config
    now = utcnow()
    stale = now - timedelta(seconds=config["WEBPUSH_CLAIM_TIMEOUT"])
    queue = get_queue()
    done = {"enqueued": 0, "scheduled": 0, "batches": 0}
    waiting = db.session.scalars(sa.select(N).where(N.status.in_(("queued", "scheduled"))))
    for n in waiting:
        if _job_alive(n.job_id):
            continue
        job_id = f"webpush-fanout-{n.id}"
        if n.send_at and n.send_at > now:
            queue.enqueue_at(n.send_at, fan_out, n.id, job_id=job_id)
            n.status, done["scheduled"] = "scheduled", done["scheduled"] + 1
        else:
            queue.enqueue(fan_out, n.id, job_id=job_id)
            n.status, done["enqueued"] = "queued", done["enqueued"] + 1
        n.job_id, n.queued_at = job_id, n.queued_at or now
    db.session.commit()
    sending = db.session.scalars(sa.select(N.id).where(N.status == "sending")).all()
    for nid in sending:
        n = db.session.get(N, nid)
        if n.fanned_out_at is None:
            if (n.queued_at or n.created_at) < stale:
                queue.enqueue(fan_out, nid)
                done["enqueued"] += 1
            continue
        abandoned = [sa.and_(D.status == "sending", D.claimed_at < stale)]
        if len(queue) == 0:
            # Pending rows long overdue while nothing waits in the queue: their job was lost.
            abandoned.append(sa.and_(D.status == "pending",
                                     sa.func.coalesce(D.next_attempt_at, D.created_at) < stale))
        stuck = db.session.scalar(sa.select(sa.exists().where(
            D.notification_id == nid, sa.or_(*abandoned))))
        if stuck:
            before = len(queue)
            enqueue_batches(nid, statuses=("pending", "sending"))
            done["batches"] += len(queue) - before
        else:
            finish_if_complete(nid)
    return done



def cancel_notification(notification_id: int) -> bool:
    """Cancel a notification not yet finished: its job and every delivery not yet sent."""
    from .exceptions import NotificationNotFound

    ext = _ext()
    db, m = ext.db, ext.models
    n = db.session.get(m.Notification, notification_id, with_for_update=True)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    if n.status not in ("scheduled", "queued", "sending"):
        db.session.rollback()
        return False
    n.status = "cancelled"
    n.finished_at = utcnow()
    D = m.Delivery
    db.session.execute(sa.update(D).where(D.notification_id == n.id, D.status == "pending")
                       .values(status="skipped", reason="notification cancelled"))
    db.session.commit()
    if n.job_id:
        try:
            job = Job.fetch(n.job_id, connection=get_queue().connection)
            job.cancel()
        except Exception:  # gone already, or Redis down: the status check in the job suffices
            log.info("webpush: job %s of notification %s not cancelled in RQ", n.job_id, n.id)
    return True
