"""Statistics: the funnel of a notification, its time series, lists, a customer's history.

The funnel, time series and platform figures come from the running counters of
``webpush_stat`` (see counters.py), a few rows per notification however many
deliveries it has, and so do failure reasons (one counter row per status code and
reason). Nothing loads a notification's deliveries into memory. Pruned
notifications keep their reasons in ``Notification.totals``; their counters stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.orm import defer

from . import conversions, counters, variants
from .audiences import delete_internal
from .clock import iso, utcnow
from .exceptions import NotificationNotFound
from .models import DeliveryRow, Models, NotificationRow
from .sql import rowcount
from .statuses import FINAL, UNSUCCESSFUL, NotificationStatus

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    #: a delivery with its device's label (None: no device, or the device was forgotten)
    DeliveryWithLabel: TypeAlias = sa.Row[DeliveryRow, str | None]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _counts(db: SQLAlchemy, m: Models, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Funnel counts for several notifications, from their counters."""
    result = counters.totals(db, m, ids)
    for counts in result.values():
        finished = sum(counts[s] for s in FINAL)
        # "pending" in the funnel means not finished yet: waiting or being sent.
        counts["pending"] = max(counts["deliveries"] - finished, 0)
    return result


def _funnel(n: NotificationRow, counts: dict[str, int]) -> dict[str, Any]:
    targeted, without = n.target_count, n.without_count or 0
    funnel: dict[str, Any] = {"id": n.id, "status": n.status, "targeted_users": targeted,
                              "users_without_devices": without, **counts,
                              # users skipped by their preference, by the frequency cap,
                              # and deliveries held by quiet hours now
                              "opted_out": n.opted_out_count or 0,
                              "capped": n.capped_count or 0, "held": held_now(n),
                              # until the worker fans out, users_without_devices is not known
                              "fanned_out": n.fanned_out_at is not None}
    funnel["expected_finish_at"] = expected_finish(n, counts["pending"])
    funnel["display_rate"] = _rate(funnel["displayed"], funnel["sent"])
    funnel["click_rate"] = _rate(funnel["clicked"], funnel["displayed"])
    funnel["click_through_rate"] = _rate(funnel["clicked"], funnel["sent"])
    funnel["conversion_rate"] = _rate(funnel["conversions"], funnel["sent"])
    return funnel


def held_now(n: NotificationRow, now: datetime | None = None) -> int:
    """Deliveries of ``n`` that quiet hours hold at this moment (0 once it is over)."""
    if not n.holds or n.status != NotificationStatus.SENDING:
        return 0
    at = now or utcnow()
    return sum(count for until, count in n.holds.items()
               if datetime.fromisoformat(until) > at)


def expected_finish(n: NotificationRow, pending: int) -> str | None:
    """When a throttled notification that is sending should be done (ISO 8601, UTC), from
    what is left and its rate; None for the others."""
    if n.rate_per_minute is None or n.status != NotificationStatus.SENDING or not pending:
        return None
    return iso(utcnow() + timedelta(minutes=pending / n.rate_per_minute))


def get_notification(db: SQLAlchemy, m: Models, notification_id: int) -> NotificationRow:
    """The stored Notification, or NotificationNotFound."""
    n = db.session.get(m.Notification, notification_id)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    return n


def notification_stats(db: SQLAlchemy, m: Models, notification_id: int) -> dict[str, Any]:
    """The full figures of one notification: funnel, rates, failure reasons, platforms,
    languages."""
    n = get_notification(db, m, notification_id)
    S = m.Stat
    stats = _funnel(n, _counts(db, m, [n.id])[n.id])
    stats["by_platform"] = [
        {"platform": row.key, "deliveries": row.deliveries, "sent": row.sent,
         "displayed": row.displayed, "clicked": row.clicked}
        for row in db.session.scalars(
            sa.select(S).where(S.notification_id == n.id, S.dimension == "platform")
            .order_by(S.deliveries.desc(), S.key).limit(20))
    ]
    # Deliveries sent per language, for a notification written in several (else empty).
    stats["languages"] = {
        row.key: row.sent for row in db.session.scalars(
            sa.select(S).where(S.notification_id == n.id, S.dimension == "language")
            .order_by(S.sent.desc(), S.key))}
    stats["revenue"] = conversions.revenue(db, m, n.id)
    stats["variants"] = _variants(db, m, n) if n.variants is not None else []
    stats["pruned"] = bool(n.totals)
    stats["failure_reasons"] = (n.totals.get("failure_reasons", []) if n.totals
                                else _failure_reasons(db, m, n.id, stats))
    return stats




def _variants(db: SQLAlchemy, m: Models, n: NotificationRow) -> list[dict[str, Any]]:
    """Each A/B variant's funnel (the counts and rates of ``stats()``), its title, weight
    and revenue, and the p-value of its difference from the first on the winner's rate."""
    S = m.Stat
    rows = {row.key: row for row in db.session.scalars(
        sa.select(S).where(S.notification_id == n.id, S.dimension == "variant"))}
    revenue = conversions.variant_revenue(db, m, n.id)
    stored = n.variants or {}
    winner_by = stored.get("winner_by") or "clicks"
    counter = variants.WINNER_COUNTER[winner_by]
    total_weight = sum(v["weight"] for v in stored.get("variants", [])) or 1
    found: list[dict[str, Any]] = []
    for index, variant in enumerate(stored.get("variants", [])):
        row = rows.get(str(index))
        counts = {c: getattr(row, c) if row is not None else 0 for c in counters.COUNTERS}
        counts["deliveries"] = sum(counts[status] for status in FINAL)
        figures: dict[str, Any] = {
            "variant": index, "title": variant["payload"].get("title", ""),
            "weight": variant["weight"], "share": round(variant["weight"] / total_weight, 4),
            **counts, "display_rate": _rate(counts["displayed"], counts["sent"]),
            "click_rate": _rate(counts["clicked"], counts["displayed"]),
            "click_through_rate": _rate(counts["clicked"], counts["sent"]),
            "conversion_rate": _rate(counts["conversions"], counts["sent"]),
            "revenue": revenue.get(index, {}), "winner": n.winner == index}
        first = found[0] if found else None
        p = None if first is None else variants.p_value(
            first[counter], first["sent"], counts[counter], counts["sent"])
        figures["p_value"] = None if p is None else round(p, 4)
        figures["significant"] = p is not None and p < variants.SIGNIFICANCE
        found.append(figures)
    return found


def _failure_reasons(db: SQLAlchemy, m: Models, notification_id: int,
                     counts: dict[str, Any]) -> list[dict[str, Any]]:
    """The 20 most frequent (status, code, reason) of the unsuccessful deliveries, from
    the reason counters (``counts``: the notification's funnel counters)."""
    S = m.Stat
    reasons = []
    for row in db.session.scalars(sa.select(S).where(S.notification_id == notification_id,
                                                     S.dimension == "reason")):
        code, _, reason = row.key.partition("|")
        for status in UNSUCCESSFUL:
            if getattr(row, status):
                reasons.append({"status": status, "status_code": int(code) if code else None,
                                "reason": reason or None, "count": getattr(row, status)})
    if not reasons and any(counts[status] for status in UNSUCCESSFUL):
        return _failure_reasons_of_rows(db, m, notification_id)
    reasons.sort(key=lambda r: (-r["count"], r["status"], r["reason"] or ""))
    return reasons[:20]


def _failure_reasons_of_rows(db: SQLAlchemy, m: Models,
                             notification_id: int) -> list[dict[str, Any]]:
    """The same grouped over the deliveries: for notifications counted before reasons had
    counters of their own (a scan of the notification's rows)."""
    D = m.Delivery
    return [
        {"status": status, "status_code": code, "reason": reason, "count": count}
        for status, code, reason, count in db.session.execute(
            sa.select(D.status, D.status_code, D.reason, sa.func.count())
            .where(D.notification_id == notification_id, D.status.in_(UNSUCCESSFUL))
            .group_by(D.status, D.status_code, D.reason)
            .order_by(sa.func.count().desc()).limit(20))
    ]


def list_notifications(db: SQLAlchemy, m: Models, *, page: int = 1, per_page: int = 25,
                       status: str | None = None, category: str | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       lists: bool = False) -> tuple[list[dict[str, Any]], int]:
    """One page of notifications, newest first, each with its funnel; and the total count.

    ``lists``: load the targeting and the users without devices too (megabytes for a large
    audience; left out otherwise, and never loaded one row at a time).
    """
    N = m.Notification
    query = sa.select(N)
    if not lists:
        query = query.options(defer(N.targeting), defer(N.users_without_devices),
                              defer(N.users_opted_out))
    if status:
        query = query.where(N.status == status)
    if category:
        query = query.where(N.category == category)
    if since:
        query = query.where(N.created_at >= since)
    if until:
        query = query.where(N.created_at < until)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
    rows = db.session.scalars(query.order_by(N.created_at.desc(), N.id.desc())
                              .limit(per_page).offset((page - 1) * per_page)).all()
    counts = _counts(db, m, [n.id for n in rows])
    return [{"notification": n, "funnel": _funnel(n, counts[n.id])} for n in rows], int(total or 0)


def time_series(db: SQLAlchemy, m: Models, notification_id: int) -> list[dict[str, Any]]:
    """Sent, displayed and clicked per minute for the first hour after sending, then per hour."""
    get_notification(db, m, notification_id)
    S = m.Stat
    rows = db.session.scalars(sa.select(S).where(
        S.notification_id == notification_id, S.dimension.in_(("minute", "hour"))))
    points = [{"unit": r.dimension, "at": r.key, "sent": r.sent, "displayed": r.displayed,
               "clicked": r.clicked} for r in rows]
    return sorted(points, key=lambda p: p["at"])


def deliveries_page(db: SQLAlchemy, m: Models, notification_id: int, *, page: int = 1,
                    per_page: int = 50) -> tuple[list[DeliveryWithLabel], int]:
    """One page of a notification's deliveries with their device labels."""
    D, Sub = m.Delivery, m.Subscription
    n = db.session.get(m.Notification, notification_id)
    # The counter, not count(*): a million rows are not counted on every page view.
    total = 0 if n is None or n.totals else counters.totals(
        db, m, [notification_id])[notification_id]["deliveries"]
    rows = db.session.execute(
        sa.select(D, Sub.label).outerjoin(Sub, Sub.id == D.subscription_id)
        .where(D.notification_id == notification_id).order_by(D.id)
        .limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), int(total or 0)


def iter_deliveries(db: SQLAlchemy, m: Models, notification_id: int,
                    chunk: int = 1000) -> Iterator[DeliveryWithLabel]:
    """Every delivery of a notification with its device label, read in keyset chunks."""
    D, Sub = m.Delivery, m.Subscription
    last = 0
    while True:
        rows = db.session.execute(
            sa.select(D, Sub.label).outerjoin(Sub, Sub.id == D.subscription_id)
            .where(D.notification_id == notification_id, D.id > last).order_by(D.id)
            .limit(chunk)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][0].id
        db.session.expunge_all()


def user_history(db: SQLAlchemy, m: Models, user_id: str, *,
                 limit: int = 200) -> list[sa.Row[DeliveryRow, NotificationRow, str | None]]:
    """A customer's latest deliveries, with the notification and device of each."""
    D, N, Sub = m.Delivery, m.Notification, m.Subscription
    return list(db.session.execute(
        sa.select(D, N, Sub.label).join(N, N.id == D.notification_id)
        .outerjoin(Sub, Sub.id == D.subscription_id)
        .where(D.user_id == user_id).order_by(D.id.desc()).limit(limit)).all())


def prune(db: SQLAlchemy, m: Models, older_than: timedelta) -> dict[str, int]:
    """Delete deliveries of notifications finished before the cutoff.

    Their counters stay; the failure reasons are kept in ``Notification.totals``.
    """
    N, D = m.Notification, m.Delivery
    cutoff = utcnow() - older_than
    over = (N.finished_at < cutoff,
            N.status.in_((NotificationStatus.DONE, NotificationStatus.CANCELLED)))
    ids = db.session.scalars(sa.select(N.id).where(*over)).all()
    pruned = deleted = 0
    # A cancelled notification's recipients (and their vars) go too; a sent one's went
    # when it was fanned out.
    delete_internal(db, m, list(db.session.scalars(
        sa.select(N.audience_id).where(*over, N.audience_id.is_not(None)))))
    db.session.commit()
    for nid in ids:
        if not db.session.scalar(sa.select(sa.exists().where(D.notification_id == nid))):
            continue
        reasons = _failure_reasons(db, m, nid, counters.totals(db, m, [nid])[nid])
        db.session.get_one(N, nid).totals = {"failure_reasons": reasons}
        # A conversion keeps its notification, not the pruned delivery (SQLite neither
        # enforces ON DELETE SET NULL nor keeps ids from being used again).
        C = m.Conversion
        db.session.execute(sa.update(C).where(C.notification_id == nid,
                                              C.delivery_id.is_not(None))
                           .values(delivery_id=None))
        deleted += rowcount(db.session.execute(sa.delete(D).where(D.notification_id == nid)))
        db.session.commit()
        pruned += 1
    # The event log goes by the same age: what the CRM had time to read.
    events = rowcount(db.session.execute(sa.delete(m.Event).where(m.Event.created_at < cutoff)))
    db.session.commit()
    return {"notifications": pruned, "deliveries": deleted, "events": events}
