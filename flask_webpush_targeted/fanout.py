"""The fan-out job: one pending delivery per chosen device, then the batches to send them.

It inserts deliveries with "on conflict do nothing", a chunk of users at a time, and
enqueues each chunk's batches at once, so other workers send while it goes on; run twice
(a recovered job), it writes and counts nothing twice.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects import postgresql

from .audiences import delete_internal, still_members, vars_of
from .caps import CAPPED, capped_count, capped_users
from .categories import Category, quiet_window
from .clock import iso, utcnow
from .context import app_state
from .counters import add, bump, new_increments, platform_of, send_start
from .ledger import finish_if_complete, notification_status
from .local_time import Window, next_local, parse_clock, quiet_until, zone
from .models import Models, NotificationRow
from .preferences import opted_out
from .redis_queue import (
    FAN_OUT,
    SEND_BATCH,
    enqueue_at,
    fanout_options,
    get_queue,
    redis_connection,
)
from .sql import dialect_of, insert_for, rowcount
from .statuses import WAITING, DeliveryStatus, NotificationStatus
from .targeting import Target, targets
from .variants import Split, in_test

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy


def _insert_deliveries(db: SQLAlchemy, m: Models, notification_id: int, now: datetime,
                       found: list[Target],
                       vars_by_user: dict[str, dict[str, str]] | None = None) -> set[int]:
    """Insert pending deliveries for the targets' rows (with their users' vars), skipping any
    that exist; return the subscription ids inserted."""
    table = m.Delivery.__table__
    if dialect_of(db) == "postgresql":
        # Array parameters and unnest: one short statement whatever the chunk's size,
        # instead of a multi-row VALUES of thousands of parameters to build and parse.
        arrays = [
            sa.bindparam("sids", [row[0] for row in found], type_=postgresql.ARRAY(sa.Integer)),
            sa.bindparam("uids", [row[1] for row in found], type_=postgresql.ARRAY(sa.String))]
        if vars_by_user:
            arrays.append(sa.bindparam("vars", [
                json.dumps(vars_by_user[row[1]]) if row[1] in vars_by_user else None
                for row in found], type_=postgresql.ARRAY(sa.Text)))
        pairs = sa.func.unnest(*arrays).table_valued(
            "sid", "uid", *(["v"] if vars_by_user else [])).render_derived(name="pairs")
        c = table.c
        columns = ["notification_id", "subscription_id", "user_id", "status", "attempts",
                   "created_at"]
        values: list[Any] = [sa.literal(notification_id, c.notification_id.type), pairs.c.sid,
                  pairs.c.uid, sa.literal(DeliveryStatus.PENDING, c.status.type),
                  sa.literal(0, c.attempts.type), sa.literal(now, c.created_at.type)]
        if vars_by_user:
            columns.append("vars")
            values.append(sa.cast(pairs.c.v, postgresql.JSON))
        stmt = insert_for(db, table).from_select(columns, sa.select(*values))
        return set(db.session.scalars(stmt.on_conflict_do_nothing(
            index_elements=["notification_id", "subscription_id"])
            .returning(table.c.subscription_id)))
    stmt = insert_for(db, table).on_conflict_do_nothing(
        index_elements=["notification_id", "subscription_id"])
    inserted = db.session.execute(stmt.returning(table.c.subscription_id), [
        {"notification_id": notification_id, "subscription_id": sid, "user_id": uid,
         "status": DeliveryStatus.PENDING, "attempts": 0, "created_at": now,
         "vars": (vars_by_user or {}).get(uid)}
        for sid, uid, *_ in found])
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
                   **fanout_options(notification_id))
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
    throttled = n.rate_per_minute is not None
    if n.fanned_out_at is None:
        now = utcnow()
        rules = Rules.of(n, now)
        vars_from = _vars_audience(db, m, n)
        without: list[str] = []
        opted: list[str] = []
        # An audience's vars come with its members; recipients' from their own audience.
        with_members = vars_from is not None and "audience_id" in n.targeting
        for chunk, found, member_vars in targets(db, m, n.targeting, member_vars=with_members):
            covered = {row[1] for row in found}
            without.extend(u for u in chunk if u not in covered)
            out = opted_out(db, m, rules.category, covered)
            if out:
                opted.extend(u for u in chunk if u in out)
                found = [row for row in found if row[1] not in out]
            if not found:
                continue
            if notification_status(nid) == NotificationStatus.CANCELLED:
                return  # cancel() skipped what was written; nothing more is written
            own = member_vars
            if vars_from is not None and not with_members:
                own = vars_of(db, m, vars_from, covered)
            with rules.cap_lock():
                _write_chunk(db, m, nid, now, found, rules, own)
            # Each chunk's batches go out at once: other workers send while this one
            # goes on fanning out (the notification is done only once fanned_out_at is set).
            # A throttled notification gets one batch at the end instead (throttle.py).
            if not throttled:
                last = enqueue_batches(nid, after=last)
        if db.session.scalar(sa.select(N.target_count).where(N.id == nid)) != audience:
            # A user was erased while this ran (forget_user shrinks the audience of a
            # notification not fanned out yet): keep only who is still in it.
            if "audience_id" in n.targeting:
                left = still_members(db, m, n.targeting["audience_id"], without + opted)
            else:
                left = set(db.session.execute(sa.select(N.targeting).where(N.id == nid))
                           .scalar_one()["user_ids"])
            without = [u for u in without if u in left]
            opted = [u for u in opted if u in left]
        n.users_without_devices, n.without_count = without, len(without)
        if rules.category is not None:
            n.users_opted_out, n.opted_out_count = opted, len(opted)
            n.capped_count = capped_count(db, m, nid) if rules.category.cap else 0
        n.fanned_out_at = utcnow()
        if n.audience_id is not None and "audience_id" not in n.targeting:
            # The recipients' vars are on their deliveries now: the copy goes.
            delete_internal(db, m, [n.audience_id])
            n.audience_id = None
        db.session.commit()
    if throttled:
        enqueue_whole(nid)
    else:
        enqueue_batches(nid, after=last)
    finish_if_complete(nid)


@dataclass(frozen=True)
class Rules:
    """What a notification's category, quiet hours and local time ask of its fan-out."""

    category: Category | None
    quiet: Window | None
    local_at: time | None
    called_at: datetime  # "the next 09:00" counts from the call
    now: datetime
    default_zone: str
    lock_key: str | None  # the category's cap lock, when it has a cap
    #: an A/B test with a test share: who is outside waits until winner_at for the winner
    split: Split | None = None
    notification_id: int = 0
    winner_at: datetime | None = None

    @classmethod
    def of(cls, n: NotificationRow, now: datetime) -> Rules:
        """The rules of ``n`` under the app's settings."""
        state = app_state()
        category = (state.categories or {}).get(n.category or "")
        lock_key = None
        if category is not None and category.cap is not None:
            lock_key = f"webpush:{current_app.config['WEBPUSH_QUEUE']}:cap:{category.name}"
        split = winner_at = None
        if n.variants is not None and n.variants.get("test_share") is not None:
            split = Split.of(n.variants)
            winner_at = send_start(n) + timedelta(seconds=split.winner_after or 0)
        return cls(category, quiet_window(category, state.quiet_hours, n.quiet_hours),
                   parse_clock(n.send_at_local) if n.send_at_local else None, n.created_at,
                   now, state.default_zone, lock_key, split, n.id, winner_at)

    def cap_lock(self) -> Any:
        """A lock held while a chunk is checked against the cap and written (or nothing)."""
        if self.lock_key is None:
            return contextlib.nullcontext()
        return redis_connection().lock(self.lock_key, timeout=120, blocking_timeout=120)

    def due(self, zone_name: str | None, user_id: str = "") -> tuple[datetime | None, bool]:
        """When a device in ``zone_name`` of ``user_id`` is due, if later than now, and
        whether quiet hours hold it (a user outside an A/B test waits for its winner)."""
        due, held = self._due_locally(zone_name)
        if (self.split is not None and self.winner_at is not None
                and not in_test(self.split, self.notification_id, user_id)):
            later = max(due or self.now, self.winner_at)
            return (later, held) if later > self.now else (due, held)
        return due, held

    def _due_locally(self, zone_name: str | None) -> tuple[datetime | None, bool]:
        if self.quiet is None and self.local_at is None:
            return None, False
        try:
            tz = zone(zone_name or self.default_zone)
        except ValueError:  # stored before it was checked, or tzdata lost a name
            tz = zone(self.default_zone)
        at = next_local(self.called_at, tz, self.local_at) if self.local_at else self.now
        if self.quiet is not None:
            released = quiet_until(max(at, self.now), tz, self.quiet)
            if released is not None:
                return released, True
        return (at, False) if at > self.now else (None, False)


def _vars_audience(db: SQLAlchemy, m: Models, n: NotificationRow) -> int | None:
    """The audience whose members' vars the deliveries carry, if any has vars."""
    if n.vars is None or n.audience_id is None:
        return None
    lengths = db.session.scalar(sa.select(m.Audience.var_lengths)
                                .where(m.Audience.id == n.audience_id))
    return n.audience_id if lengths else None


def _write_chunk(db: SQLAlchemy, m: Models, nid: int, now: datetime, found: list[Target],
                 rules: Rules, vars_by_user: dict[str, dict[str, str]] | None = None) -> None:
    """Insert one chunk's deliveries and apply the rules to them, in one transaction: the
    cap's skips, and the due time of those held or sent at a local time, whose batches
    are scheduled once it is committed."""
    inserted = _insert_deliveries(db, m, nid, now, found, vars_by_user)
    D = m.Delivery
    inc = new_increments()
    for sid, _uid, agent, _tz in found:
        if sid in inserted:
            add(inc, "deliveries", platform=platform_of(agent))
    capped: set[str] = set()
    if rules.category is not None and rules.category.cap is not None:
        capped = capped_users(db, m, rules.category, {row[1] for row in found}, now, nid)
        sids = [row[0] for row in found if row[1] in capped and row[0] in inserted]
        if sids:
            skipped = rowcount(db.session.execute(
                sa.update(D).where(D.notification_id == nid, D.subscription_id.in_(sids))
                .values(status=DeliveryStatus.SKIPPED, reason=CAPPED)
                .execution_options(synchronize_session=False)))
            add(inc, DeliveryStatus.SKIPPED, skipped, reason=(None, CAPPED))
    later: dict[tuple[datetime, bool], list[int]] = defaultdict(list)
    for sid, uid, _agent, zone_name in found:
        if sid in inserted and uid not in capped:
            due, held = rules.due(zone_name, uid)
            if due is not None:
                later[(due, held)].append(sid)
    scheduled: list[tuple[datetime, list[int]]] = []
    holds: dict[str, int] = {}
    for (due, held), sids in sorted(later.items()):
        ids = sorted(db.session.scalars(
            sa.update(D).where(D.notification_id == nid, D.subscription_id.in_(sids))
            .values(due_at=due, next_attempt_at=due).returning(D.id)))
        scheduled.append((due, ids))
        if held:
            key = iso(due) or ""
            holds[key] = holds.get(key, 0) + len(ids)
    if holds:
        N = m.Notification
        before = dict(db.session.scalar(sa.select(N.holds).where(N.id == nid)
                                        .with_for_update()) or {})
        for key, count in holds.items():
            before[key] = before.get(key, 0) + count
        db.session.execute(sa.update(N).where(N.id == nid).values(holds=dict(before))
                           .execution_options(synchronize_session=False))
    bump(db, m, nid, inc)
    db.session.commit()
    _schedule(nid, scheduled)


def _schedule(nid: int, scheduled: list[tuple[datetime, list[int]]]) -> None:
    """One batch job per batch's worth of deliveries due at each time (a lost one is
    recovered once overdue, as any pending delivery)."""
    if not scheduled:
        return
    queue, size = get_queue(), current_app.config["WEBPUSH_BATCH_SIZE"]
    for due, ids in scheduled:
        for start in range(0, len(ids), size):
            part = ids[start:start + size]
            enqueue_at(queue, due, SEND_BATCH, nid, part[0], part[-1])


def enqueue_whole(notification_id: int) -> None:
    """One batch job over every pending delivery of a throttled notification: it sends a
    horizon's worth at a time and enqueues itself again (throttle.py)."""
    D = app_state().models.Delivery
    db = app_state().db
    lo, hi = db.session.execute(sa.select(sa.func.min(D.id), sa.func.max(D.id)).where(
        D.notification_id == notification_id, D.status == DeliveryStatus.PENDING)).one()
    db.session.commit()
    if lo is not None:
        get_queue().enqueue(SEND_BATCH, notification_id, lo, hi)


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
