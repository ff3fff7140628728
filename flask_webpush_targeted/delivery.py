"""The batch job: claim a range of deliveries, send them concurrently, record each answer.

A batch *claims* its rows with one conditional UPDATE before sending, so two workers,
or a retried job, never send the same delivery twice. A claim older than
WEBPUSH_CLAIM_TIMEOUT belongs to a dead worker and may be taken again. Results are
written flush by flush; signals and retries follow each flush's commit.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from flask import current_app

from . import signals
from .clock import monotonic, utcnow
from .context import app_state
from .counters import add, bucket, bump, new_increments, platform_of, send_start
from .ledger import finish_if_complete, skip_claimed, skip_pending
from .models import Models
from .payload import payload_encoder
from .redis_queue import SEND_BATCH, enqueue_at, get_queue
from .sql import id_in
from .statuses import FINAL
from .tracking import make_token, signing_key
from .transport.sender import Message, PushResult
from .worker_state import worker_sender

log = logging.getLogger("flask_webpush_targeted")

#: tokens stay valid this long after a message's validity ends, so late clicks count
TOKEN_GRACE = timedelta(days=7)




# -- fan-out ----------------------------------------------------------------------------------


# -- sending ----------------------------------------------------------------------------------


def send_batch(notification_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """Claim the batch's due deliveries, send them concurrently, record results as they come."""
    ext = app_state()
    db, m = ext.db, ext.models
    config = current_app.config
    D, Sub, N = m.Delivery, m.Subscription, m.Notification
    # Only what a batch needs: the targeting of a large audience is megabytes of JSON.
    n = db.session.execute(sa.select(N.id, N.status, N.payload, N.ttl, N.urgency, N.topic,
                                     N.send_at, N.created_at).where(N.id == notification_id)
                           ).one_or_none()
    if n is None:
        return {}
    in_batch = (D.notification_id == notification_id, D.id.between(first_id, last_id))
    if n.status == "cancelled":
        skip_pending(db, m, notification_id, *in_batch)
        db.session.commit()
        return {}
    now = utcnow()
    claim = uuid.uuid4().hex
    claim_timeout = config["WEBPUSH_CLAIM_TIMEOUT"]
    stale = now - timedelta(seconds=claim_timeout)
    claimed_at = monotonic()
    # Past this age the claim may be another worker's (this one seemed dead: frozen,
    # partitioned, or just slow): no new message is taken, so that requests in flight
    # can still end before anyone takes over, and what is left goes back to pending.
    claim_life = max(claim_timeout - config["WEBPUSH_CONNECT_TIMEOUT"]
                     - config["WEBPUSH_READ_TIMEOUT"], claim_timeout / 2)
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
                  Sub.revoked_at, Sub.user_agent, Sub.consecutive_failures)
        .outerjoin(Sub, Sub.id == D.subscription_id)
        .where(*in_batch, D.claimed_by == claim)).all()  # in_batch: no index on claimed_by
    if not rows:
        finish_if_complete(notification_id)
        return {}

    nid, start = n.id, send_start(n)
    # Validity counts from the planned send time, or from the call when that was earlier
    # (a send_at in the past means "now", not "already expired").
    deadline = start + timedelta(seconds=n.ttl)
    # Expired only once the deadline has passed: truncated to whole seconds first, a
    # 1-second validity would always look expired. The TTL header gets the whole seconds left.
    remaining = (deadline - now).total_seconds()
    key = signing_key()
    token_expiry = (deadline + TOKEN_GRACE).timestamp()
    results: dict[int, PushResult] = {}
    to_send = []
    for row in rows:
        if row.endpoint is None or row.revoked_at is not None:
            results[row.id] = PushResult("skipped", reason="device revoked or consent withdrawn")
        elif remaining <= 0 and not (n.ttl == 0 and row.attempts == 1):
            results[row.id] = PushResult("expired", reason="validity period (ttl) passed")
        else:
            to_send.append((row, max(int(remaining), 0)))

    payload, urgency, topic = n.payload, n.urgency, n.topic
    with_token = payload_encoder(payload)
    counts: dict[str, int] = {}
    batch = _Batch(deadline)

    def messages() -> Any:
        # Built as the sender takes them, and no more once the notification is cancelled
        # (the sender takes new messages only after a flush, which reads the status) or
        # once the claim is too old to be surely this batch's.
        for row, ttl in to_send:
            if batch.cancelled:
                return
            if monotonic() - claimed_at > claim_life:
                batch.claim_expired = True
                return
            if ttl:  # the validity left now, not when the batch began (a slow service)
                left = (deadline - utcnow()).total_seconds()
                if left <= 0:
                    batch.expired_late.append(row.id)
                    continue
                ttl = int(left)
            yield Message(row.id, row.endpoint, row.p256dh, row.auth,
                          with_token(make_token(row.id, token_expiry, key)), ttl, urgency, topic)

    by_id = {row.id: row for row in rows}

    notifier = _Notifier(current_app._get_current_object())  # type: ignore[attr-defined]

    def record(done: list[tuple[int, PushResult]]) -> None:
        for status, count in _record(nid, start, by_id, dict(done), claim, batch).items():
            counts[status] = counts.get(status, 0) + count
        notifier.send(batch.signals)  # what this flush wrote, now committed
        batch.signals = []

    if results:  # skipped and expired ones: recorded before anything is sent
        record(list(results.items()))
    # Results are written every half WEBPUSH_SEND_CONCURRENCY answers, and no more than
    # WEBPUSH_SEND_CONCURRENCY are ever sent but unwritten: what a killed worker can leave
    # to be sent again (the default tag and topic make the browser replace, not stack).
    concurrency = config["WEBPUSH_SEND_CONCURRENCY"]
    try:
        worker_sender().send_many(messages(), record,
                            flush_every=max(1, concurrency // 2))
        if batch.expired_late:
            record([(i, PushResult("expired", reason="validity period (ttl) passed"))
                    for i in batch.expired_late])
    finally:
        notifier.close()
    if batch.cancelled:
        counts["skipped"] = counts.get("skipped", 0) + skip_claimed(db, m, nid, claim)
        db.session.commit()
    elif batch.claim_expired:
        _release_claimed(db, m, nid, claim, first_id, last_id)
    finish_if_complete(nid)
    return counts


def _release_claimed(db: Any, m: Models, nid: int, claim: str, first_id: int,
                     last_id: int) -> None:
    """Give back the rows a batch claimed and did not send (pending, their attempt undone),
    unless another worker holds them now, and enqueue a batch for them."""
    D = m.Delivery
    released = db.session.execute(
        sa.update(D).where(D.notification_id == nid, D.id.between(first_id, last_id),
                           D.claimed_by == claim, D.status == "sending")
        .values(status="pending", claimed_by=None, attempts=D.attempts - 1)
        .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    if released:
        log.warning("webpush: a batch of notification %s outlived its claim; %s deliveries "
                    "go back to pending", nid, released)
        try:
            get_queue().enqueue(SEND_BATCH, nid, first_id, last_id)
        except redis.exceptions.RedisError:
            log.warning("webpush: Redis unavailable; deliveries %s-%s of notification %s are "
                        "left to recover", first_id, last_id, nid)


def _retry_delay(attempts: int, hinted: float | None) -> float:
    config = current_app.config
    # The push service's Retry-After wins; otherwise exponential backoff.
    if hinted is None:
        hinted = config["WEBPUSH_RETRY_BASE_DELAY"] * 2 ** max(attempts - 1, 0)
    return float(min(hinted, config["WEBPUSH_RETRY_MAX_DELAY"]))


_RESULT_COLUMNS = ("status", "status_code", "reason", "next_attempt_at", "sent_at", "claimed_by")


class _Notifier:
    """Sends a batch's signals from a thread of its own, flush by flush, once each flush is
    committed: the host's receivers, whatever they do (raise, block, write), neither hold
    up the event loop with requests in flight nor touch the batch's database session. A
    worker killed mid-batch loses the signals of at most the flushes not yet sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._queue: queue_module.SimpleQueue[list[tuple[Any, dict[str, Any]]] | None] = (
            queue_module.SimpleQueue())
        self._thread: threading.Thread | None = None

    def send(self, pending: list[tuple[Any, dict[str, Any]]]) -> None:
        """Hand over signals to send (nothing happens when nobody listens)."""
        wanted = [(sig, kw) for sig, kw in pending if sig.receivers]
        if not wanted:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webpush-signals",
                                            daemon=True)
            self._thread.start()
        self._queue.put(wanted)

    def close(self) -> None:
        """Wait until every signal handed over was sent."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        with self.app.app_context():
            db = self.app.extensions["webpush"].db
            while (pending := self._queue.get()) is not None:
                for sig, kwargs in pending:
                    sig.send(self.app, **kwargs)
                    db.session.rollback()  # a receiver's failed write spoils no later one


@dataclass
class _Batch:
    """What one batch's flushes and its message generator share."""

    deadline: datetime  # the end of the notification's validity
    signals: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # of this flush
    redis_down: bool = False  # a retry could not be scheduled: leave the others to recover
    cancelled: bool = False  # seen by a flush: no new message is taken
    claim_expired: bool = False  # the claim grew too old: what is left goes back
    expired_late: list[int] = field(default_factory=list)  # validity ended while sending


def _record(nid: int, start: datetime, rows: dict[int, Any], results: dict[int, PushResult],
            claim: str, batch: _Batch) -> dict[str, int]:
    """Write results in a few statements, whatever their number; then schedule the retries.
    The signals the results call for are added to ``batch.signals``, sent by the caller;
    the notification's status is read in the same transaction (``batch.cancelled``)."""
    ext = app_state()
    db, m = ext.db, ext.models
    max_attempts = current_app.config["WEBPUSH_MAX_ATTEMPTS"]
    now = utcnow()
    final: dict[int, tuple[str, int | None, str | None]] = {}  # id -> status, code, reason
    groups: dict[tuple[Any, ...], list[int]] = {}  # the columns written -> delivery ids
    counts: dict[str, int] = {}
    retries: dict[datetime, tuple[int, int]] = {}  # due time -> first and last delivery id
    for delivery_id, result in results.items():
        status, next_at = result.outcome, None
        reason = result.reason
        attempts = rows[delivery_id].attempts
        if status == "retry":
            if not result.requested:
                attempts -= 1  # given back below
            if attempts >= max_attempts:
                status, reason = "failed", f"gave up after {max_attempts} attempts: {reason}"
            else:
                status = "pending"
                next_at = now + timedelta(seconds=_retry_delay(attempts, result.retry_after))
            if next_at is not None and next_at >= batch.deadline:
                # The retry would come after the validity ends: final now, not then.
                status, next_at = "expired", None
                reason = f"validity period (ttl) ends before the retry: {reason}"
            elif next_at is not None:
                # One retry job per due time (to the second, as RQ schedules): a job at the
                # earliest time alone would find the later rows not yet due and leave them.
                due = _whole_second(next_at)
                lo, hi = retries.get(due, (delivery_id, delivery_id))
                retries[due] = (min(lo, delivery_id), max(hi, delivery_id))
        if reason is not None:
            reason = reason[:255]  # the column's size, whatever was added in front
        counts[status] = counts.get(status, 0) + 1
        final[delivery_id] = (status, result.status_code, reason)
        # One UPDATE per distinct outcome (nearly always one: "sent, 201"), not one per row:
        # the database's work per delivery is what limits several workers on one server.
        groups.setdefault((status, result.status_code, reason, next_at,
                           now if status == "sent" else None,
                           None if status == "pending" else claim,
                           not result.requested), []).append(delivery_id)
    table = m.Delivery.__table__
    written = 0
    for (*values, give_back), ids in groups.items():
        columns: dict[str, Any] = dict(zip(_RESULT_COLUMNS, values, strict=True))
        if give_back:
            # Nothing was sent (the origin is paused): the claim's attempt is given back,
            # or a paused service would use up attempts it never received.
            columns["attempts"] = table.c.attempts - 1
        # Only rows this batch still holds: a claim taken over by another worker is theirs.
        written += db.session.execute(
            table.update().where(id_in(db, table.c.id, ids), table.c.claimed_by == claim)
            .values(columns)).rowcount
    mine = set(final)
    if written != len(final):
        # Rare: another worker took over part of this claim. Count only rows still ours.
        mine = set(db.session.scalars(sa.select(table.c.id).where(
            table.c.id.in_(mine), table.c.claimed_by == claim)))
    inc = new_increments()
    at = bucket(start, now)
    for delivery_id, (status, code, reason) in final.items():
        if delivery_id in mine and status in FINAL:
            if status == "sent":
                add(inc, status, at=at, platform=platform_of(rows[delivery_id].user_agent))
            else:
                add(inc, status, reason=(code, reason))
    bump(db, m, nid, inc)
    Sub = m.Subscription
    gone = [rows[d].subscription_id for d, r in results.items() if r.outcome == "gone"]
    sent = [rows[d].subscription_id for d, r in results.items()
            if r.outcome == "sent" and rows[d].consecutive_failures]
    failed = [rows[d].subscription_id for d, r in results.items()
              if r.outcome in ("failed", "retry")]
    if gone:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(gone), Sub.revoked_at.is_(None))
                           .values(revoked_at=now, revoked_reason="gone"))
    if sent:
        # Only rows that had failures: a write per sent row would double the database work.
        db.session.execute(sa.update(Sub).where(Sub.id.in_(sent)).values(consecutive_failures=0))
    if failed:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(failed))
                           .values(consecutive_failures=Sub.consecutive_failures + 1))
    if not batch.cancelled:  # read here, not in a transaction of its own: one less commit
        N = m.Notification
        batch.cancelled = db.session.scalar(sa.select(N.status).where(N.id == nid)) == "cancelled"
    db.session.commit()

    for delivery_id, result in results.items():
        if delivery_id not in mine:
            continue  # another worker's now: it tells
        if result.outcome == "sent":
            batch.signals.append((signals.delivery_sent, {
                "delivery_id": delivery_id, "notification_id": nid,
                "subscription_id": rows[delivery_id].subscription_id}))
        elif result.outcome in ("gone", "failed") or (
            result.outcome == "retry" and rows[delivery_id].attempts >= max_attempts
        ):
            if result.status_code in (400, 401, 403):
                log.error("webpush: push service refused delivery %s (%s): check the VAPID "
                          "keys and subject", delivery_id, result.reason)
            batch.signals.append((signals.delivery_failed, {
                "delivery_id": delivery_id, "notification_id": nid,
                "subscription_id": rows[delivery_id].subscription_id, "error": result.reason,
                "status_code": result.status_code, "gone": result.outcome == "gone"}))
    for due, (first, last) in sorted(retries.items()):
        if batch.redis_down:
            break  # each failed attempt costs seconds of redis-py's own retries
        try:
            enqueue_at(get_queue(), due, SEND_BATCH, nid, first, last)
        except redis.exceptions.RedisError:
            batch.redis_down = True
            # The rows are written as pending with their due time: recover() finds them
            # once they are overdue. The batch itself goes on.
            log.warning("webpush: Redis unavailable; the retry of deliveries %s-%s of "
                        "notification %s is left to recover", first, last, nid)
    return counts


def _whole_second(at: datetime) -> datetime:
    """``at`` rounded up to a whole second."""
    return at.replace(microsecond=0) + timedelta(seconds=1) if at.microsecond else at


# -- recovery ---------------------------------------------------------------------------------


