"""RQ jobs: fan-out, batch sending, recovery. Module-level, ids as arguments.

Every job is safe to run twice. Fan-out inserts deliveries with "on conflict do
nothing"; a batch *claims* its rows with one conditional UPDATE before sending,
so two workers, or a retried job, never send the same delivery twice. A claim
older than WEBPUSH_CLAIM_TIMEOUT belongs to a dead worker and may be taken again.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue as queue_module
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from flask import current_app
from rq.job import Job
from sqlalchemy.dialects import postgresql

from . import signals
from .clock import monotonic, utcnow
from .config import load_vapid_private_key
from .counters import (
    FINAL_STATUSES,
    add,
    bucket,
    bump,
    dialect_of,
    insert_for,
    new_increments,
    platform_of,
    send_start,
    totals,
)
from .models import Models
from .push import EndpointGuard, Message, PushResult, PushSender, VapidHeaders
from .queue import enqueue_at, fanout_job_id, get_queue, take_turn
from .sending import payload_encoder
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


def _insert_deliveries(db: Any, m: Models, notification_id: int, now: datetime,
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
                      pairs.c.uid, sa.literal("pending", c.status.type),
                      sa.literal(0, c.attempts.type), sa.literal(now, c.created_at.type)))
        return set(db.session.scalars(stmt.on_conflict_do_nothing(
            index_elements=["notification_id", "subscription_id"])
            .returning(table.c.subscription_id)))
    stmt = insert_for(db, table).on_conflict_do_nothing(
        index_elements=["notification_id", "subscription_id"])
    inserted = db.session.execute(stmt.returning(table.c.subscription_id), [
        {"notification_id": notification_id, "subscription_id": sid, "user_id": uid,
         "status": "pending", "attempts": 0, "created_at": now} for sid, uid, _agent in found])
    return set(inserted.scalars())


def _targets(db: Any, m: Models, targeting: dict[str, Any]) -> Any:
    """Yield (chunk of requested user ids, [(subscription id, user id, user agent)]) per chunk."""
    Sub = m.Subscription
    user_ids: list[str] = targeting["user_ids"]
    mode = targeting["devices"]
    if mode == "ids":
        ids = targeting["subscription_ids"]
        found: list[Any] = []
        for start in range(0, len(ids), _CHUNK):
            found.extend(db.session.execute(sa.select(Sub.id, Sub.user_id, Sub.user_agent).where(
                Sub.id.in_(ids[start:start + _CHUNK]), Sub.revoked_at.is_(None))).all())
        wanted = set(user_ids)
        yield user_ids, [tuple(r) for r in found if r[1] in wanted]
        return
    postgres = dialect_of(db) == "postgresql"
    for start in range(0, len(user_ids), _CHUNK):
        chunk = user_ids[start:start + _CHUNK]
        # PostgreSQL: one array parameter, not a thousand (the same statement every chunk).
        of_chunk = (Sub.user_id == sa.any_(sa.bindparam("uids", chunk,
                                                        type_=postgresql.ARRAY(sa.String)))
                    if postgres else Sub.user_id.in_(chunk))
        rows = db.session.execute(
            sa.select(Sub.id, Sub.user_id, Sub.user_agent)
            .where(of_chunk, Sub.revoked_at.is_(None))
            .order_by(Sub.user_id, Sub.created_at.desc(), Sub.id.desc())).all()
        if mode == "latest":
            seen: set[str] = set()
            rows = [r for r in rows if not (r[1] in seen or seen.add(r[1]))]  # type: ignore[func-returns-value]
        yield chunk, [tuple(r) for r in rows]


def users_without(db: Any, m: Models, targeting: dict[str, Any]) -> list[str]:
    """The targeted users, in order, whom no chosen active device covers, as the fan-out
    will find them (the push API answers with them at once)."""
    without: list[str] = []
    for chunk, found in _targets(db, m, targeting):
        covered = {uid for _sid, uid, _agent in found}
        without.extend(u for u in chunk if u not in covered)
    return without


def fan_out(notification_id: int) -> None:
    """Write one pending Delivery per chosen device, then enqueue the batches."""
    ext = _ext()
    db, m = ext.db, ext.models
    n = db.session.get(m.Notification, notification_id)
    if n is None or n.status in ("cancelled", "done"):
        return
    if n.send_at and n.send_at > utcnow():
        # Run early (a recovered job): put it back on the schedule.
        enqueue_at(get_queue(), n.send_at, fan_out, notification_id,
                   job_id=fanout_job_id(notification_id))
        return
    N = m.Notification
    if n.status in ("queued", "scheduled"):
        # Conditional: a cancel() committed since the read above must stand.
        started = db.session.execute(
            sa.update(N).where(N.id == n.id, N.status.in_(("queued", "scheduled")))
            .values(status="sending").execution_options(synchronize_session=False)).rowcount
        db.session.commit()
        if not started:
            return
    nid, last, audience = n.id, 0, n.target_count
    if n.fanned_out_at is None:
        now = utcnow()
        without: list[str] = []
        for chunk, found in _targets(db, m, n.targeting):
            covered = {uid for _sid, uid, _agent in found}
            without.extend(u for u in chunk if u not in covered)
            if not found:
                continue
            if _status(nid) == "cancelled":
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
            left = set(db.session.scalar(sa.select(N.targeting).where(N.id == nid))["user_ids"])
            without = [u for u in without if u in left]
        n.users_without_devices, n.without_count = without, len(without)
        n.fanned_out_at = utcnow()
        db.session.commit()
    enqueue_batches(nid, after=last)
    finish_if_complete(nid)


def enqueue_batches(notification_id: int, *, where: Any = None, after: int = 0) -> int:
    """Enqueue send_batch jobs over the notification's deliveries that are pending (or match
    ``where``) with ids above ``after``; return the last id covered (``after`` when none)."""
    ext = _ext()
    db, D = ext.db, ext.models.Delivery
    size = current_app.config["WEBPUSH_BATCH_SIZE"]
    queue = get_queue()
    chosen = D.status == "pending" if where is None else where
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
        queue.enqueue_many([queue.prepare_data(send_batch, (notification_id, lo, hi))
                            for lo, hi in ranges])


# -- sending ----------------------------------------------------------------------------------


def _sender() -> PushSender:
    """This process's sender: VAPID header cache and keep-alive pool live across jobs."""
    app = _app()
    cached = app.extensions.get("webpush.sender")
    if cached is None or cached[1] != _pid():
        config = app.config
        sender = PushSender(
            VapidHeaders(load_vapid_private_key(config["WEBPUSH_VAPID_PRIVATE_KEY"]),
                         config["WEBPUSH_VAPID_SUBJECT"]),
            EndpointGuard(app.extensions["webpush.extra_origins"]),
            timeout=(config["WEBPUSH_CONNECT_TIMEOUT"], config["WEBPUSH_READ_TIMEOUT"]),
            concurrency=config["WEBPUSH_SEND_CONCURRENCY"],
            per_origin=config["WEBPUSH_PER_ORIGIN_CONCURRENCY"],
            max_retry_delay=config["WEBPUSH_RETRY_MAX_DELAY"],
            clock=monotonic,
        )
        cached = (sender, _pid())
        app.extensions["webpush.sender"] = cached
        atexit.register(sender.close)
    return cached[0]


def _pid() -> int:
    return os.getpid()


def send_batch(notification_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """Claim the batch's due deliveries, send them concurrently, record results as they come."""
    ext = _ext()
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
        _skip_pending(db, m, notification_id, *in_batch)
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

    notifier = _Notifier(_app())

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
        _sender().send_many(messages(), record,
                            flush_every=max(1, concurrency // 2))
        if batch.expired_late:
            record([(i, PushResult("expired", reason="validity period (ttl) passed"))
                    for i in batch.expired_late])
    finally:
        notifier.close()
    if batch.cancelled:
        counts["skipped"] = counts.get("skipped", 0) + _skip_claimed(db, m, nid, claim)
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
            get_queue().enqueue(send_batch, nid, first_id, last_id)
        except redis.exceptions.RedisError:
            log.warning("webpush: Redis unavailable; deliveries %s-%s of notification %s are "
                        "left to recover", first_id, last_id, nid)


def _status(notification_id: int) -> str | None:
    """The notification's status as committed now (one primary-key read)."""
    ext = _ext()
    N = ext.models.Notification
    status = ext.db.session.scalar(sa.select(N.status).where(N.id == notification_id))
    ext.db.session.commit()  # end the read's transaction: the next read sees new commits
    return status


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
    ext = _ext()
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
            table.update().where(_id_in(db, table.c.id, ids), table.c.claimed_by == claim)
            .values(columns)).rowcount
    mine = set(final)
    if written != len(final):
        # Rare: another worker took over part of this claim. Count only rows still ours.
        mine = set(db.session.scalars(sa.select(table.c.id).where(
            table.c.id.in_(mine), table.c.claimed_by == claim)))
    inc = new_increments()
    at = bucket(start, now)
    for delivery_id, (status, code, reason) in final.items():
        if delivery_id in mine and status in FINAL_STATUSES:
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
            enqueue_at(get_queue(), due, send_batch, nid, first, last)
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


def _id_in(db: Any, column: Any, ids: list[int]) -> Any:
    """``column IN ids``; on PostgreSQL ``= ANY(array)``: one parameter, so the statement's
    text is the same whatever the number of ids and is prepared once per connection."""
    if dialect_of(db) == "postgresql":
        return column == sa.any_(sa.bindparam("ids", ids, type_=postgresql.ARRAY(sa.BigInteger)))
    return column.in_(ids)


def finish_if_complete(notification_id: int, *, exact: bool = False) -> bool:
    """Mark the notification done once no delivery is pending or being sent.

    The counters tell in one row: every delivery counted under ``deliveries`` is counted
    again under its final status, in the transaction that writes it. ``exact`` asks the
    delivery rows instead, a scan of the notification's deliveries (no index on status:
    see the Delivery model), which recover() does for what the counters leave open.
    """
    ext = _ext()
    db, m = ext.db, ext.models
    D, N = m.Delivery, m.Notification
    if exact:
        open_rows = db.session.scalar(sa.select(sa.exists().where(
            D.notification_id == notification_id, D.status.in_(("pending", "sending")))))
    else:
        counted = totals(db, m, [notification_id])[notification_id]
        open_rows = counted["deliveries"] > sum(counted[s] for s in FINAL_STATUSES)
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
    waiting = db.session.execute(sa.select(N.id, N.status, N.job_id, N.send_at, N.queued_at)
                                 .where(N.status.in_(("queued", "scheduled")))).all()
    db.session.commit()
    for n in waiting:
        if _job_alive(n.job_id):
            continue
        job_id = fanout_job_id(n.id)
        later = bool(n.send_at and n.send_at > now)
        # Conditional, and committed before the job exists: a cancel() committed meanwhile
        # stands (and a job enqueued after it finds the notification cancelled).
        taken = db.session.execute(
            sa.update(N).where(N.id == n.id, N.status == n.status)
            .values(status="scheduled" if later else "queued", job_id=job_id,
                    queued_at=n.queued_at or now)
            .execution_options(synchronize_session=False)).rowcount
        db.session.commit()
        if not taken:
            continue
        if later:
            enqueue_at(queue, n.send_at, fan_out, n.id, job_id=job_id)
            done["scheduled"] += 1
        else:
            queue.enqueue(fan_out, n.id, job_id=job_id)
            done["enqueued"] += 1
    sending = db.session.execute(sa.select(N.id, N.fanned_out_at, N.queued_at, N.created_at)
                                 .where(N.status == "sending")).all()
    # Claims older than the timeout belong to a dead worker; pending rows that long past
    # their due time have lost their job (Redis down when it was enqueued, or Redis lost it)
    # or wait in a long queue: either way one more job for them is harmless (claims make a
    # second run send nothing twice), and each notification gets at most one such round per
    # WEBPUSH_CLAIM_TIMEOUT, so a long queue is not flooded with copies.
    stuck = sa.or_(sa.and_(D.status == "sending", D.claimed_at < stale),
                   sa.and_(D.status == "pending",
                           sa.func.coalesce(D.next_attempt_at, D.created_at) < stale))
    for n in sending:
        nid = n.id
        if n.fanned_out_at is None:
            job_id = fanout_job_id(nid)
            if ((n.queued_at or n.created_at) < stale and not _job_alive(job_id)
                    and _first_recovery(queue, "fan-out", nid)):
                queue.enqueue(fan_out, nid, job_id=job_id)  # the fan-out still running wins
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
    done["skipped"] = _finish_cancelled(db, m, stale)
    return done


def _first_recovery(queue: Any, what: str, notification_id: int) -> bool:
    """True for the first recovery of this kind for this notification within
    WEBPUSH_CLAIM_TIMEOUT (all workers together), False for the others."""
    return take_turn(queue.connection, f"webpush:{queue.name}:recovered:{what}:{notification_id}",
                     current_app.config["WEBPUSH_CLAIM_TIMEOUT"])


def _finish_cancelled(db: Any, m: Models, stale: datetime) -> int:
    """Skip what cancelled notifications still hold: pending rows (a fan-out chunk written as
    the cancel committed) and claims of dead workers. Only notifications cancelled within a
    day: later, nothing of theirs can still be open."""
    N, D = m.Notification, m.Delivery
    recent = utcnow() - timedelta(days=1)
    ids = db.session.scalars(sa.select(N.id).where(N.status == "cancelled",
                                                   N.finished_at >= recent)).all()
    skipped = 0
    for nid, counted in totals(db, m, ids).items():
        if counted["deliveries"] <= sum(counted[s] for s in FINAL_STATUSES):
            continue
        skipped += _skip(db, m, nid, D.notification_id == nid, sa.or_(
            D.status == "pending", sa.and_(D.status == "sending", D.claimed_at < stale)))
        db.session.commit()
    return skipped


def _skip_pending(db: Any, m: Models, notification_id: int, *where: Any) -> int:
    """Mark pending deliveries skipped (cancelled), counting them, in the caller's transaction;
    return how many."""
    D = m.Delivery
    return _skip(db, m, notification_id, *where, D.status == "pending")


def _skip_claimed(db: Any, m: Models, notification_id: int, claim: str) -> int:
    """Mark the deliveries a batch claimed and never sent skipped (cancelled), counting them."""
    D = m.Delivery
    return _skip(db, m, notification_id, D.notification_id == notification_id,
                 D.claimed_by == claim, D.status == "sending")


def _skip(db: Any, m: Models, notification_id: int, *where: Any) -> int:
    D = m.Delivery
    skipped = db.session.execute(
        sa.update(D).where(*where).values(status="skipped", reason="notification cancelled",
                                          claimed_by=None)
        .execution_options(synchronize_session=False))
    if skipped.rowcount:
        inc = new_increments()
        add(inc, "skipped", skipped.rowcount, reason=(None, "notification cancelled"))
        bump(db, m, notification_id, inc)
    return int(skipped.rowcount)


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
    _skip_pending(db, m, n.id, m.Delivery.notification_id == n.id)
    db.session.commit()
    if n.job_id:
        try:
            job = Job.fetch(n.job_id, connection=get_queue().connection)
            job.cancel()
        except Exception:  # gone already, or Redis down: the status check in the job suffices
            log.info("webpush: job %s of notification %s not cancelled in RQ", n.job_id, n.id)
    return True
