"""The batch job: claim a range of deliveries, send them concurrently, record each answer.

A batch *claims* its rows with one conditional UPDATE before sending, so two workers,
or a retried job, never send the same delivery twice. A claim older than
WEBPUSH_CLAIM_TIMEOUT belongs to a dead worker and may be taken again. Results are
written flush by flush, in three steps: ``decide`` turns the answers into a ``Plan``
(no database, no app, no Redis), ``_write`` applies it in one transaction, and
``_after_commit`` tells the signal receivers and schedules the retries.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import redis
import sqlalchemy as sa
from flask import current_app

from . import signals
from .categories import quiet_window
from .clock import iso, monotonic, sleep, utcnow
from .context import app_state
from .counters import COUNTERS, add, bucket, bump, new_increments, platform_of, send_start
from .event_log import OUTCOME_EVENTS, event
from .event_log import write as write_events
from .ledger import finish_if_complete, notification_status, skip_claimed, skip_pending
from .local_time import Window, quiet_until, zone
from .localized import TEXTS, claimed, language_for, localize
from .models import Models
from .payload import MAX_PLAINTEXT, message_format
from .placeholders import filler
from .preferences import TURNED_OFF, opted_out
from .redis_queue import SEND_BATCH, enqueue_at, get_queue, redis_connection
from .sql import id_in, rowcount
from .statuses import FINAL, DeliveryStatus, NotificationStatus, Outcome
from .throttle import (
    THROTTLE_HORIZON,
    THROTTLE_LEAD,
    Slots,
    budget_key,
    claim_size,
    reserve,
    ticks,
)
from .tracking import make_token, signing_key
from .transport.sender import Message, PushResult
from .variants import Split, assigned, best, in_test
from .worker_state import sending_state

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

log = logging.getLogger("flask_webpush_targeted")

#: tokens stay valid this long after a message's validity ends, so late clicks count
TOKEN_GRACE = timedelta(days=7)
#: answers that say the VAPID keys or subject are wrong, not the subscription
VAPID_REFUSALS = frozenset({400, 401, 403})
#: the size of the reason column
REASON_SIZE = 255
#: the reason of a delivery whose message outgrew the limit after notify_users checked it
TOO_LARGE = (f"payload over {MAX_PLAINTEXT} bytes in the format sent (WEBPUSH_PAYLOAD_FORMAT "
             "or WEBPUSH_SITE_URL changed since the notification was made)")


def send_batch(notification_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """Claim the batch's due deliveries, send them concurrently, record results as they come."""
    ext = app_state()
    db, m = ext.db, ext.models
    config = current_app.config
    D, Sub, N = m.Delivery, m.Subscription, m.Notification
    # Only what a batch needs: the targeting of a large audience is megabytes of JSON.
    n = db.session.execute(sa.select(N.id, N.status, N.payload, N.ttl, N.urgency, N.topic,
                                     N.send_at, N.created_at, N.category, N.rate_per_minute,
                                     N.quiet_hours, N.vars, N.variants, N.winner)
                           .where(N.id == notification_id)).one_or_none()
    if n is None:
        return {}
    in_batch = (D.notification_id == notification_id, D.id.between(first_id, last_id))
    if n.status == NotificationStatus.CANCELLED:
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
    claimable = sa.and_(*in_batch, sa.or_(
        sa.and_(D.status == DeliveryStatus.PENDING,
                sa.or_(D.next_attempt_at.is_(None), D.next_attempt_at <= now)),
        sa.and_(D.status == DeliveryStatus.SENDING, D.claimed_at < stale)))
    if n.rate_per_minute is not None:
        # Throttled: a horizon's worth of slots at most (throttle.py), the lowest ids first.
        # The conditions stay outside the sub-select too: PostgreSQL re-checks only the
        # outer WHERE on a row another batch's claim committed meanwhile, and the ids the
        # sub-select chose may be that batch's by then (they would be sent twice).
        claimable = sa.and_(claimable, D.id.in_(
            sa.select(D.id).where(claimable).order_by(D.id)
            .limit(claim_size(n.rate_per_minute, config["WEBPUSH_BATCH_SIZE"]))
            .with_for_update(skip_locked=True)))
    db.session.execute(
        sa.update(D).where(claimable)
        .values(status=DeliveryStatus.SENDING, claimed_by=claim, claimed_at=now,
                attempts=D.attempts + 1)
        .execution_options(synchronize_session=False))
    db.session.commit()
    rows = db.session.execute(
        sa.select(D.id, D.subscription_id, D.attempts, D.due_at, D.user_id, D.vars, Sub.endpoint,
                  Sub.p256dh, Sub.auth, Sub.revoked_at, Sub.user_agent,
                  Sub.consecutive_failures, Sub.timezone, Sub.language)
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
    key = signing_key()
    turned_off = _turned_off(db, m, n.category, {row.user_id for row in rows})
    quiet = _quiet_hours_of(n.category, n.quiet_hours)
    results: dict[int, PushResult] = {}
    to_send = []
    held: dict[datetime, list[int]] = {}
    for row in rows:
        remaining = (deadline_of(row, start, deadline) - now).total_seconds()
        if row.endpoint is None or row.revoked_at is not None:
            results[row.id] = PushResult(Outcome.SKIPPED,
                                         reason="device revoked or consent withdrawn")
        elif row.user_id in turned_off:
            results[row.id] = PushResult(Outcome.SKIPPED, reason=TURNED_OFF)
        elif remaining <= 0 and not (n.ttl == 0 and row.attempts == 1):
            results[row.id] = PushResult(Outcome.EXPIRED, reason="validity period (ttl) passed")
        elif quiet is not None and (until := _quiet_until(row, quiet, now)) is not None:
            # Due inside its device's quiet hours now (a retry, a late queue): held again.
            held.setdefault(until, []).append(row.id)
        else:
            to_send.append((row, max(int(remaining), 0)))
    if held:
        _hold(db, m, nid, claim, held, first_id, last_id)

    urgency, topic = n.urgency, n.topic
    form = message_format()
    counts: dict[str, int] = {}
    notifier = _Notifier(current_app._get_current_object())  # type: ignore[attr-defined]
    batch = _Batch(deadline, notifier)
    # The payload of each variant (an A/B test), else the notification's own; each row's
    # variant is fixed by its notification and user (variants.py).
    payloads = ([v["payload"] for v in n.variants["variants"]] if n.variants is not None
                else [n.payload])
    if n.variants is not None:
        split = Split.of(n.variants)
        winner = n.winner
        outside = [row.id for row, _ttl in to_send if not in_test(split, nid, row.user_id)]
        if outside and winner is None:
            winner_at = start + timedelta(seconds=split.winner_after or 0)
            if (now < winner_at + timedelta(seconds=n.ttl // 2)
                    and _test_unfinished(db, m, nid, winner_at)):
                # The test's own deliveries are not all out yet (throttled, held by quiet
                # hours, retried): a winner now would be chosen on too little. The others
                # wait, a minute at a time, while half their validity is left.
                _postpone(db, m, nid, claim, outside, now + timedelta(seconds=60),
                          first_id, last_id)
                waiting = set(outside)
                to_send = [item for item in to_send if item[0].id not in waiting]
                outside = []
            else:
                winner = choose_winner(db, m, nid, split)
        # Every row with an outcome in this batch counts under its variant (a skipped or
        # expired one too); one outside the test has one once the winner is chosen.
        for row in rows:
            if in_test(split, nid, row.user_id):
                batch.variants[row.id] = assigned(split, nid, row.user_id)
            elif winner is not None:
                batch.variants[row.id] = winner
    # One text, or each language's, encoded (or, with placeholders, filled per recipient:
    # checked when notify_users ran) by what is made here once per batch, variant and
    # language.
    encoders: dict[tuple[int, str | None], Any] = {}
    fillers: dict[tuple[int, str | None], Any] = {}

    def encoder(variant: int, language: str | None) -> Any:
        if (variant, language) not in encoders:
            encoders[(variant, language)] = form.encoder(localize(payloads[variant], language))
        return encoders[(variant, language)]

    def own_payload(variant: int, language: str | None, own: Any) -> Any:
        if (variant, language) not in fillers:
            fillers[(variant, language)] = filler(localize(payloads[variant], language), n.vars)
        return fillers[(variant, language)](own)

    def messages(part: list[tuple[Any, int]]) -> Iterator[Message]:
        # Built as the sender takes them, and no more once the notification is cancelled
        # (the sender takes new messages only after a flush, which reads the status) or
        # once the claim is too old to be surely this batch's.
        for row, ttl in part:
            if batch.cancelled:
                return
            if monotonic() - claimed_at > claim_life:
                batch.claim_expired = True
                return
            own_deadline = deadline_of(row, start, deadline)
            if ttl:  # the validity left now, not when the batch began (a slow service)
                left = (own_deadline - utcnow()).total_seconds()
                if left <= 0:
                    batch.expired_late.append(row.id)
                    continue
                ttl = int(left)
            expiry = (own_deadline + TOKEN_GRACE).timestamp()
            token = make_token(row.id, expiry, key)
            variant = batch.variants.get(row.id, 0)
            payload = payloads[variant]
            language = None
            if payload.get(TEXTS):
                language = language_for(payload, row.language)
                batch.languages[row.id] = claimed(payload, language)
            text = (encoder(variant, language)(token) if n.vars is None
                    else form.encoder(own_payload(variant, language, row.vars))(token))
            if len(text) > MAX_PLAINTEXT:
                # Checked when notify_users ran, in the format then: WEBPUSH_PAYLOAD_FORMAT
                # or the site's URL changed while it waited. It cannot be sent as it is.
                batch.too_large.append(row.id)
                continue
            yield Message(row.id, row.endpoint, row.p256dh, row.auth, text, ttl, urgency, topic)

    by_id = {row.id: row for row in rows}

    def record(done: list[tuple[int, PushResult]]) -> None:
        for status, count in _record(nid, start, by_id, dict(done), claim, batch).items():
            counts[status] = counts.get(status, 0) + count

    # Results are written every half WEBPUSH_SEND_CONCURRENCY answers, and no more than
    # WEBPUSH_SEND_CONCURRENCY are ever sent but unwritten: what a killed worker can leave
    # to be sent again (the default tag and topic make the browser replace, not stack).
    concurrency = config["WEBPUSH_SEND_CONCURRENCY"]
    parts: list[tuple[float | None, list[tuple[Any, int]]]] = [(None, to_send)]
    next_free = None
    if n.rate_per_minute is not None and to_send:
        parts, next_free = _paced(db, m, nid, claim, n.rate_per_minute, to_send)
    sender = sending_state().sender
    try:
        if results:  # skipped and expired ones: recorded before anything is sent
            record(list(results.items()))
        for send_at, part in parts:
            if batch.cancelled or batch.claim_expired:
                break
            if send_at is not None:  # a throttled tick: not before its last slot
                sleep(send_at - utcnow().timestamp())
                if notification_status(nid) == NotificationStatus.CANCELLED:
                    batch.cancelled = True  # cancelled while this batch waited
                    break
            sender.send_many(messages(part), record, flush_every=max(1, concurrency // 2))
        if batch.expired_late:
            record([(i, PushResult(Outcome.EXPIRED, reason="validity period (ttl) passed"))
                    for i in batch.expired_late])
        if batch.too_large:
            record([(i, PushResult(Outcome.FAILED, reason=TOO_LARGE)) for i in batch.too_large])
    finally:
        notifier.close()
    if batch.cancelled:
        skipped = DeliveryStatus.SKIPPED.value
        counts[skipped] = counts.get(skipped, 0) + skip_claimed(db, m, nid, claim)
        db.session.commit()
    elif batch.claim_expired:
        _release_claimed(db, m, nid, claim, first_id, last_id)
    if n.rate_per_minute is not None and not batch.cancelled:
        _continue_throttled(db, m, nid, first_id, last_id, next_free)
    finish_if_complete(nid)
    return counts


def _test_unfinished(db: SQLAlchemy, m: Models, nid: int, winner_at: datetime) -> bool:
    """Whether deliveries of the test (those not held for the winner, whose due time is
    ``winner_at``) are still to be sent, this claim's included: their results are not in."""
    D = m.Delivery
    return bool(db.session.scalar(sa.select(sa.exists().where(
        D.notification_id == nid,
        D.status.in_((DeliveryStatus.PENDING, DeliveryStatus.SENDING)),
        sa.or_(D.due_at.is_(None), D.due_at != winner_at)))))


def _postpone(db: SQLAlchemy, m: Models, nid: int, claim: str, ids: list[int], until: datetime,
              first_id: int, last_id: int) -> None:
    """Give back claimed rows, due again at ``until`` (their validity unchanged), and
    schedule the batch then."""
    D = m.Delivery
    db.session.execute(
        sa.update(D).where(D.id.in_(ids), D.claimed_by == claim)
        .values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=until,
                attempts=D.attempts - 1)
        .execution_options(synchronize_session=False))
    db.session.commit()
    try:
        enqueue_at(get_queue(), until, SEND_BATCH, nid, first_id, last_id)
    except redis.exceptions.RedisError:
        log.warning("webpush: Redis unavailable; deliveries of notification %s waiting for "
                    "the winner of its test are left to recover", nid)


def choose_winner(db: SQLAlchemy, m: Models, nid: int, split: Split) -> int:
    """The variant the users outside the test get: the best rate so far, chosen once (the
    first batch to ask stores it; a concurrent one reads what was stored)."""
    S, N = m.Stat, m.Notification
    rows = {row.key: row for row in db.session.scalars(
        sa.select(S).where(S.notification_id == nid, S.dimension == "variant"))}
    figures = [{c: getattr(rows[str(i)], c) if str(i) in rows else 0 for c in COUNTERS}
               for i in range(len(split.weights))]
    db.session.execute(sa.update(N).where(N.id == nid, N.winner.is_(None))
                       .values(winner=best(figures, split.winner_by))
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return int(db.session.scalar(sa.select(N.winner).where(N.id == nid)))


def deadline_of(row: Any, start: datetime, deadline: datetime) -> datetime:
    """The end of a delivery's validity: the notification's, or, for a delivery due later
    (held by quiet hours, sent at a local time), as long from its own due time."""
    due: datetime | None = row.due_at
    return deadline + (due - start) if due is not None and due > start else deadline


def _quiet_hours_of(category: str | None, wanted: bool | None) -> Window | None:
    """The quiet hours a notification keeps (its category's, the global ones, or none)."""
    state = app_state()
    own = (state.categories or {}).get(category or "")
    return quiet_window(own, state.quiet_hours, wanted)


def _quiet_until(row: Any, quiet: Window, now: datetime) -> datetime | None:
    """When the quiet hours of the row's device end, if it is inside them now."""
    default = app_state().default_zone
    try:
        tz = zone(row.timezone or default)
    except ValueError:
        tz = zone(default)
    return quiet_until(now, tz, quiet)


def _hold(db: SQLAlchemy, m: Models, nid: int, claim: str, held: dict[datetime, list[int]],
          first_id: int, last_id: int) -> None:
    """Give back rows due inside quiet hours, due again (and valid from) when they end, and
    schedule the batch then; ``holds`` counts them."""
    D, N = m.Delivery, m.Notification
    for until, ids in held.items():
        db.session.execute(
            sa.update(D).where(D.id.in_(ids), D.claimed_by == claim)
            .values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=until,
                    due_at=until, attempts=D.attempts - 1)
            .execution_options(synchronize_session=False))
    holds = dict(db.session.scalar(sa.select(N.holds).where(N.id == nid).with_for_update())
                 or {})
    for until, ids in held.items():
        key = iso(until) or ""
        holds[key] = holds.get(key, 0) + len(ids)
    db.session.execute(sa.update(N).where(N.id == nid).values(holds=holds)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    try:
        for until in sorted(held):
            enqueue_at(get_queue(), until, SEND_BATCH, nid, first_id, last_id)
    except redis.exceptions.RedisError:
        log.warning("webpush: Redis unavailable; deliveries of notification %s held for quiet "
                    "hours are left to recover", nid)


def _turned_off(db: SQLAlchemy, m: Models, category: str | None, users: set[str]) -> set[str]:
    """The users who turned the category off since the fan-out (held deliveries wait for
    hours: the choice made meanwhile counts)."""
    configured = app_state().categories
    if not configured or category is None or category not in configured:
        return set()
    return opted_out(db, m, configured[category], users)


def _paced(db: SQLAlchemy, m: Models, nid: int, claim: str, rate: int,
           to_send: list[tuple[Any, int]]
           ) -> tuple[list[tuple[float | None, list[tuple[Any, int]]]], float]:
    """Slots for a throttled batch's messages, grouped in ticks; the rows no slot was left
    for go back to pending, due at the next free slot."""
    queue_name = current_app.config["WEBPUSH_QUEUE"]
    try:
        slots = reserve(redis_connection(), budget_key(queue_name, nid), rate, len(to_send))
    except redis.exceptions.RedisError:
        # No budget to take slots from: nothing is sent, every row goes back, due again a
        # horizon later (recover finds them if Redis stays down).
        log.warning("webpush: Redis unavailable; throttled deliveries of notification %s "
                    "go back to pending", nid)
        later = utcnow().timestamp() + THROTTLE_HORIZON
        slots = Slots(later, 0, 60.0 / rate, later)
    unslotted = [row.id for row, _ttl in to_send[slots.count:]]
    if unslotted:
        D = m.Delivery
        due = datetime.fromtimestamp(slots.next_free, UTC)
        db.session.execute(
            sa.update(D).where(D.id.in_(unslotted), D.claimed_by == claim,
                               D.status == DeliveryStatus.SENDING)
            .values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=due,
                    attempts=D.attempts - 1)
            .execution_options(synchronize_session=False))
        db.session.commit()
    parts: list[tuple[float | None, list[tuple[Any, int]]]] = [
        (at, [to_send[i] for i in indexes]) for at, indexes in ticks(slots)]
    return parts, slots.next_free


def _continue_throttled(db: SQLAlchemy, m: Models, nid: int, first_id: int, last_id: int,
                        next_free: float | None) -> None:
    """Enqueue the batch again for what its range still holds, when the next free slot
    comes (a throttled notification is sent a horizon at a time)."""
    D = m.Delivery
    due = db.session.scalar(
        sa.select(sa.func.min(sa.func.coalesce(D.next_attempt_at, D.created_at))).where(
            D.notification_id == nid, D.id.between(first_id, last_id),
            D.status == DeliveryStatus.PENDING))
    db.session.commit()
    if due is None:
        return
    if next_free is not None:
        # A little before the next free slot: the job starting (a fork, the scheduler's
        # poll) must not delay the slot; it waits for it before sending anything.
        due = max(due, datetime.fromtimestamp(next_free - THROTTLE_LEAD, UTC))
    try:
        enqueue_at(get_queue(), max(due, utcnow()), SEND_BATCH, nid, first_id, last_id)
    except redis.exceptions.RedisError:
        log.warning("webpush: Redis unavailable; deliveries %s-%s of throttled notification "
                    "%s are left to recover", first_id, last_id, nid)


def _release_claimed(db: SQLAlchemy, m: Models, nid: int, claim: str, first_id: int,
                     last_id: int) -> None:
    """Give back the rows a batch claimed and did not send (pending, their attempt undone),
    unless another worker holds them now, and enqueue a batch for them."""
    D = m.Delivery
    released = rowcount(db.session.execute(
        sa.update(D).where(D.notification_id == nid, D.id.between(first_id, last_id),
                           D.claimed_by == claim, D.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.PENDING, claimed_by=None, attempts=D.attempts - 1)
        .execution_options(synchronize_session=False)))
    db.session.commit()
    if released:
        log.warning("webpush: a batch of notification %s outlived its claim; %s deliveries "
                    "go back to pending", nid, released)
        try:
            get_queue().enqueue(SEND_BATCH, nid, first_id, last_id)
        except redis.exceptions.RedisError:
            log.warning("webpush: Redis unavailable; deliveries %s-%s of notification %s are "
                        "left to recover", first_id, last_id, nid)


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
    notifier: _Notifier  # tells the receivers what each flush committed
    redis_down: bool = False  # a retry could not be scheduled: leave the others to recover
    cancelled: bool = False  # seen by a flush: no new message is taken
    claim_expired: bool = False  # the claim grew too old: what is left goes back
    expired_late: list[int] = field(default_factory=list)  # validity ended while sending
    too_large: list[int] = field(default_factory=list)  # over the limit in the format sent
    #: delivery id -> the language of the texts it was sent with (several languages only)
    languages: dict[int, str | None] = field(default_factory=dict)
    #: delivery id -> its A/B variant (a notification with variants only)
    variants: dict[int, int] = field(default_factory=dict)


# -- deciding what one flush's answers mean ---------------------------------------------------


class ClaimedRow(Protocol):
    """What ``decide`` reads of a claimed delivery (a row of the batch's claim query)."""

    @property
    def attempts(self) -> int: ...  # counting the claim's own
    @property
    def subscription_id(self) -> int | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def consecutive_failures(self) -> int | None: ...
    @property
    def due_at(self) -> datetime | None: ...  # a delivery due later than its notification


@dataclass(frozen=True)
class Written:
    """The values one delivery's row gets: one UPDATE per distinct ``Written``."""

    status: DeliveryStatus
    status_code: int | None
    reason: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    claimed_by: str | None  # None lets the retry's batch claim it
    give_back: bool  # nothing was sent (a paused origin): the claim's attempt is undone
    language: str | None = None  # sent ones of a notification in several languages
    variant: int | None = None  # the A/B variant it was sent in


@dataclass(frozen=True)
class Count:
    """What a delivery that reached a final status adds to the notification's counters."""

    counter: DeliveryStatus
    at: tuple[str, str] | None = None  # the time bucket (sent ones)
    platform: str | None = None  # sent ones
    language: str | None = None  # sent ones of a notification in several languages
    reason: tuple[int | None, str | None] | None = None  # status code, reason (the others)
    variant: int | None = None  # the A/B variant it was sent in


@dataclass(frozen=True)
class Signal:
    """A signal to send once the row is committed, if the row is still this batch's."""

    kind: Literal["sent", "failed"]
    delivery_id: int
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """What one flush of answers comes to, decided before anything is written."""

    now: datetime  # when the answers were decided on: sent_at, revoked_at
    rows: Mapping[int, Written]  # delivery id -> its new values
    groups: Mapping[Written, tuple[int, ...]]  # one UPDATE each: values -> delivery ids
    counts: Mapping[int, Count]  # delivery id -> its counters, added if the row is still ours
    gone: tuple[int, ...]  # subscriptions to revoke ("gone")
    recovered: tuple[int, ...]  # subscriptions whose consecutive failures go back to 0
    failing: tuple[int, ...]  # subscriptions with one more consecutive failure
    signals: tuple[Signal, ...]
    refused: tuple[tuple[int, str | None], ...]  # (delivery id, reason): VAPID problems
    retries: Mapping[datetime, tuple[int, int]]  # due time -> first and last delivery id

    def tally(self) -> dict[str, int]:
        """How many deliveries got each status (pending: to be retried)."""
        counted: dict[str, int] = {}
        for values in self.rows.values():
            status = values.status.value  # plain text: the job's result is pickled by RQ
            counted[status] = counted.get(status, 0) + 1
        return counted


def retry_delay(attempts: int, hinted: float | None, base: float, maximum: float) -> float:
    """Seconds until the next attempt: Retry-After if given, else backoff; at most ``maximum``.

    The backoff is ``base`` doubling with each attempt made after the first.
    """
    if hinted is None:
        hinted = base * 2 ** max(attempts - 1, 0)
    return float(min(hinted, maximum))


def decide(notification_id: int, rows: Mapping[int, ClaimedRow],
           results: Mapping[int, PushResult], *, now: datetime, start: datetime,
           deadline: datetime, claim: str, max_attempts: int, retry_base_delay: float,
           retry_max_delay: float, languages: Mapping[int, str | None] | None = None,
           variants: Mapping[int, int] | None = None) -> Plan:
    """Decide what one flush of answers means, without a database, an app or Redis.

    ``rows`` hold each claimed delivery's attempts (the claim's own included) and
    subscription; ``start`` is when sending the notification began (the counters' time
    bucket), ``deadline`` the end of its validity (a delivery due later keeps its own),
    ``languages`` the language each delivery's texts were in (several languages). The plan
    covers the deliveries' values, the counters, the subscriptions' health, the signals
    and the retry jobs.
    """
    written: dict[int, Written] = {}
    groups: dict[Written, list[int]] = {}
    counts: dict[int, Count] = {}
    gone: list[int] = []
    recovered: list[int] = []
    failing: list[int] = []
    told: list[Signal] = []
    refused: list[tuple[int, str | None]] = []
    retries: dict[datetime, tuple[int, int]] = {}
    at = bucket(start, now)
    for delivery_id, result in results.items():
        row = rows[delivery_id]
        outcome = Outcome(result.outcome)
        reason, next_at, gave_up = result.reason, None, False
        if outcome == Outcome.RETRY:
            # Nothing was sent when the origin is paused: that attempt does not count.
            attempts = row.attempts if result.requested else row.attempts - 1
            if attempts >= max_attempts:
                gave_up = True
                status = DeliveryStatus.FAILED
                reason = f"gave up after {max_attempts} attempts: {reason}"
            else:
                next_at = now + timedelta(seconds=retry_delay(
                    attempts, result.retry_after, retry_base_delay, retry_max_delay))
                if next_at >= deadline_of(row, start, deadline):
                    # The retry would come after the validity ends: final now, not then.
                    status, next_at = DeliveryStatus.EXPIRED, None
                    reason = f"validity period (ttl) ends before the retry: {reason}"
                else:
                    status = DeliveryStatus.PENDING
                    # One retry job per due time (to the second, as RQ schedules): a job at
                    # the earliest time alone would find the later rows not yet due.
                    due = _whole_second(next_at)
                    lo, hi = retries.get(due, (delivery_id, delivery_id))
                    retries[due] = (min(lo, delivery_id), max(hi, delivery_id))
        else:
            status = DeliveryStatus(outcome)
        if reason is not None:
            reason = reason[:REASON_SIZE]  # the column's size, whatever was added in front
        sent = status == DeliveryStatus.SENT
        language = (languages or {}).get(delivery_id) if sent else None
        variant = (variants or {}).get(delivery_id)
        values = Written(status, result.status_code, reason, next_at,
                         now if sent else None,
                         None if status == DeliveryStatus.PENDING else claim,
                         not result.requested, language, variant)
        written[delivery_id] = values
        # One UPDATE per distinct outcome (nearly always one: "sent, 201"), not one per row:
        # the database's work per delivery is what limits several workers on one server.
        groups.setdefault(values, []).append(delivery_id)
        if status == DeliveryStatus.SENT:
            counts[delivery_id] = Count(status, at=at, platform=platform_of(row.user_agent),
                                        language=language, variant=variant)
        elif status in FINAL:
            counts[delivery_id] = Count(status, reason=(result.status_code, reason),
                                        variant=variant)

        sid = row.subscription_id  # None only for a skipped row: its subscription was deleted
        if sid is not None and outcome == Outcome.GONE:
            gone.append(sid)
        elif sid is not None and outcome == Outcome.SENT and row.consecutive_failures:
            # Only rows that had failures: a write per sent row would double the database work.
            recovered.append(sid)
        elif sid is not None and outcome in (Outcome.FAILED, Outcome.RETRY):
            failing.append(sid)

        ids = {"delivery_id": delivery_id, "notification_id": notification_id,
               "subscription_id": sid}
        if outcome == Outcome.SENT:
            told.append(Signal("sent", delivery_id, ids))
        elif outcome in (Outcome.GONE, Outcome.FAILED) or gave_up:
            if result.status_code in VAPID_REFUSALS:
                refused.append((delivery_id, result.reason))
            told.append(Signal("failed", delivery_id, {
                **ids, "error": result.reason, "status_code": result.status_code,
                "gone": outcome == Outcome.GONE}))
    return Plan(now, written, {values: tuple(ids) for values, ids in groups.items()}, counts,
                tuple(gone), tuple(recovered), tuple(failing), tuple(told), tuple(refused),
                retries)


def _whole_second(at: datetime) -> datetime:
    """``at`` rounded up to a whole second."""
    return at.replace(microsecond=0) + timedelta(seconds=1) if at.microsecond else at


# -- writing and telling ----------------------------------------------------------------------


def _record(nid: int, start: datetime, rows: Mapping[int, Any],
            results: Mapping[int, PushResult], claim: str, batch: _Batch) -> dict[str, int]:
    """Record one flush of answers: decide, write, commit, tell, schedule; return the tally.

    A few statements whatever the number of answers; the signals and the retries follow
    the commit, for the rows this claim still held.
    """
    config = current_app.config
    plan = decide(nid, rows, results, now=utcnow(), start=start, deadline=batch.deadline,
                  claim=claim, max_attempts=config["WEBPUSH_MAX_ATTEMPTS"],
                  retry_base_delay=config["WEBPUSH_RETRY_BASE_DELAY"],
                  retry_max_delay=config["WEBPUSH_RETRY_MAX_DELAY"],
                  languages=batch.languages, variants=batch.variants)
    mine = _write(nid, plan, claim, batch, rows)
    _after_commit(nid, plan, mine, batch)
    return plan.tally()


def _write(nid: int, plan: Plan, claim: str, batch: _Batch,
           rows: Mapping[int, Any] | None = None) -> set[int]:
    """Apply the plan in one transaction and commit; return the ids still this claim's.

    Only rows the claim still holds are written and counted. The notification's status
    is read in the same transaction (``batch.cancelled``).
    """
    ext = app_state()
    db, m = ext.db, ext.models
    table = m.Delivery.__table__
    written = 0
    for values, ids in plan.groups.items():
        columns: dict[str, Any] = {
            "status": values.status, "status_code": values.status_code,
            "reason": values.reason, "next_attempt_at": values.next_attempt_at,
            "sent_at": values.sent_at, "claimed_by": values.claimed_by}
        if values.language is not None:
            columns["language"] = values.language
        if values.variant is not None:
            columns["variant"] = values.variant
        if values.give_back:
            # Nothing was sent (the origin is paused): the claim's attempt is given back,
            # or a paused service would use up attempts it never received.
            columns["attempts"] = table.c.attempts - 1
        # Only rows this batch still holds: a claim taken over by another worker is theirs.
        written += rowcount(db.session.execute(
            table.update().where(id_in(db, table.c.id, list(ids)), table.c.claimed_by == claim)
            .values(columns)))
    mine = set(plan.rows)
    if written != len(plan.rows):
        # Rare: another worker took over part of this claim. Count only rows still ours.
        mine = set(db.session.scalars(sa.select(table.c.id).where(
            table.c.id.in_(mine), table.c.claimed_by == claim)))
    inc = new_increments()
    events = []
    for delivery_id, count in plan.counts.items():
        if delivery_id in mine:
            add(inc, count.counter, at=count.at, platform=count.platform, reason=count.reason,
                language=count.language, variant=count.variant)
            kind = OUTCOME_EVENTS.get(count.counter.value)
            if kind is not None:
                row = (rows or {}).get(delivery_id)
                values = plan.rows[delivery_id]
                events.append(event(
                    kind, notification_id=nid, at=plan.now,
                    user_id=getattr(row, "user_id", None), delivery_id=delivery_id,
                    subscription_id=getattr(row, "subscription_id", None),
                    status_code=values.status_code, reason=values.reason,
                    language=values.language, variant=values.variant))
    bump(db, m, nid, inc)
    Sub = m.Subscription
    if plan.gone:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(plan.gone), Sub.revoked_at.is_(None))
                           .values(revoked_at=plan.now, revoked_reason="gone"))
    if plan.recovered:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(plan.recovered))
                           .values(consecutive_failures=0))
    if plan.failing:
        db.session.execute(sa.update(Sub).where(Sub.id.in_(plan.failing))
                           .values(consecutive_failures=Sub.consecutive_failures + 1))
    if not batch.cancelled:  # read here, not in a transaction of its own: one less commit
        N = m.Notification
        batch.cancelled = db.session.scalar(
            sa.select(N.status).where(N.id == nid)) == NotificationStatus.CANCELLED
    write_events(db, m, events)  # last: it holds the log's order until the commit
    db.session.commit()
    return mine


_SIGNALS = {"sent": signals.delivery_sent, "failed": signals.delivery_failed}


def _after_commit(nid: int, plan: Plan, mine: set[int], batch: _Batch) -> None:
    """Once the plan is committed: signals of the rows still ours, then the retries.

    A Redis that does not answer leaves the retries to ``recover``; the batch goes on.
    """
    for delivery_id, reason in plan.refused:
        if delivery_id in mine:
            log.error("webpush: push service refused delivery %s (%s): check the VAPID "
                      "keys and subject", delivery_id, reason)
    # Another worker's rows are theirs to tell.
    batch.notifier.send([(_SIGNALS[s.kind], dict(s.kwargs)) for s in plan.signals
                         if s.delivery_id in mine])
    for due, (first, last) in sorted(plan.retries.items()):
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
