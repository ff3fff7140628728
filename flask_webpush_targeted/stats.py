"""Statistics: the funnel of a notification, its time series, lists, a customer's history.

Every figure is an aggregate query over ``webpush_delivery`` using the
(notification_id, status) index; nothing loads a notification's deliveries into
memory. Pruned notifications keep their figures in ``Notification.totals``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .exceptions import NotificationNotFound
from .models import DELIVERY_STATUSES, Models, utcnow

FUNNEL_KEYS = ("deliveries", "pending", "sent", "failed", "gone", "expired", "skipped",
               "displayed", "clicked", "closed")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _counts(db: Any, m: Models, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Funnel counts for several notifications in two grouped queries."""
    D = m.Delivery
    ids = list(ids)
    result = {i: {k: 0 for k in (*DELIVERY_STATUSES, *FUNNEL_KEYS)} for i in ids}
    if not ids:
        return result
    for nid, status, count in db.session.execute(
        sa.select(D.notification_id, D.status, sa.func.count())
        .where(D.notification_id.in_(ids)).group_by(D.notification_id, D.status)
    ):
        result[nid][status] = count
        result[nid]["deliveries"] += count
    for nid, displayed, clicked, closed in db.session.execute(
        sa.select(D.notification_id, sa.func.count(D.displayed_at), sa.func.count(D.clicked_at),
                  sa.func.count(D.closed_at))
        .where(D.notification_id.in_(ids), D.displayed_at.is_not(None))
        .group_by(D.notification_id)
    ):
        result[nid].update(displayed=displayed, clicked=clicked, closed=closed)
    for counts in result.values():
        # "pending" in the funnel means not finished yet: waiting or being sent.
        counts["pending"] += counts.pop("sending")
        counts.pop("delivered", None)
    return result


def _funnel(n: Any, counts: dict[str, int]) -> dict[str, Any]:
    targeted = len(n.targeting.get("user_ids", []))
    without = len(n.users_without_devices or [])
    funnel: dict[str, Any] = {"id": n.id, "status": n.status, "targeted_users": targeted,
                              "users_without_devices": without, **counts}
    funnel["display_rate"] = _rate(funnel["displayed"], funnel["sent"])
    funnel["click_rate"] = _rate(funnel["clicked"], funnel["displayed"])
    funnel["click_through_rate"] = _rate(funnel["clicked"], funnel["sent"])
    return funnel


def notification_stats(db: Any, m: Models, notification_id: int) -> dict[str, Any]:
    """The full figures of one notification: funnel, rates, failure reasons, platforms."""
    n = db.session.get(m.Notification, notification_id)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    if n.totals:
        return {**n.totals, "id": n.id, "status": n.status, "pruned": True}
    D, Sub = m.Delivery, m.Subscription
    stats = _funnel(n, _counts(db, m, [n.id])[n.id])
    stats["failure_reasons"] = [
        {"status": status, "status_code": code, "reason": reason, "count": count}
        for status, code, reason, count in db.session.execute(
            sa.select(D.status, D.status_code, D.reason, sa.func.count())
            .where(D.notification_id == n.id, D.status.in_(("failed", "gone", "expired",
                                                            "skipped")))
            .group_by(D.status, D.status_code, D.reason)
            .order_by(sa.func.count().desc()).limit(20))
    ]
    stats["by_platform"] = [
        {"platform": label or "unknown", "deliveries": total, "sent": sent,
         "displayed": displayed, "clicked": clicked}
        for label, total, sent, displayed, clicked in db.session.execute(
            sa.select(Sub.label, sa.func.count(),
                      sa.func.count(D.sent_at), sa.func.count(D.displayed_at),
                      sa.func.count(D.clicked_at))
            .select_from(D).outerjoin(Sub, Sub.id == D.subscription_id)
            .where(D.notification_id == n.id).group_by(Sub.label)
            .order_by(sa.func.count().desc()).limit(20))
    ]
    stats["pruned"] = False
    return stats


def list_notifications(db: Any, m: Models, *, page: int = 1, per_page: int = 25,
                       status: str | None = None, category: str | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       ) -> tuple[list[dict[str, Any]], int]:
    """One page of notifications, newest first, each with its funnel; and the total count."""
    N = m.Notification
    query = sa.select(N)
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
    counts = _counts(db, m, [n.id for n in rows if not n.totals])
    items = []
    for n in rows:
        funnel = n.totals if n.totals else _funnel(n, counts[n.id])
        items.append({"notification": n, "funnel": funnel})
    return items, int(total or 0)


def _bucket(db: Any, column: Any, unit: str) -> Any:
    if db.session.get_bind().dialect.name == "postgresql":
        return sa.func.date_trunc(unit, column)
    fmt = "%Y-%m-%d %H:%M:00" if unit == "minute" else "%Y-%m-%d %H:00:00"
    return sa.func.strftime(fmt, column)


def time_series(db: Any, m: Models, notification_id: int) -> list[dict[str, Any]]:
    """Sent, displayed and clicked per minute for the first hour after sending, then per hour."""
    n = db.session.get(m.Notification, notification_id)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    D = m.Delivery
    start = n.send_at or n.queued_at or n.created_at
    first_hour_end = start + timedelta(hours=1)
    series: dict[tuple[str, str], dict[str, int]] = {}
    for event, column in (("sent", D.sent_at), ("displayed", D.displayed_at),
                          ("clicked", D.clicked_at)):
        for unit, window in (("minute", column < first_hour_end),
                             ("hour", column >= first_hour_end)):
            bucket = _bucket(db, column, unit)
            for at, count in db.session.execute(
                sa.select(bucket, sa.func.count()).where(
                    D.notification_id == notification_id, column.is_not(None), window)
                .group_by(bucket)
            ):
                key = (unit, at.isoformat() if isinstance(at, datetime) else str(at))
                series.setdefault(key, {"sent": 0, "displayed": 0, "clicked": 0})[event] = count
    return [{"unit": unit, "at": at.replace(" ", "T")[:19], **counts}
            for (unit, at), counts in sorted(series.items(), key=lambda kv: kv[0][1])]


def deliveries_page(db: Any, m: Models, notification_id: int, *, page: int = 1,
                    per_page: int = 50) -> tuple[list[Any], int]:
    """One page of a notification's deliveries with their device labels."""
    D, Sub = m.Delivery, m.Subscription
    total = db.session.scalar(sa.select(sa.func.count()).select_from(D)
                              .where(D.notification_id == notification_id))
    rows = db.session.execute(
        sa.select(D, Sub.label).outerjoin(Sub, Sub.id == D.subscription_id)
        .where(D.notification_id == notification_id).order_by(D.id)
        .limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), int(total or 0)


def iter_deliveries(db: Any, m: Models, notification_id: int, chunk: int = 1000) -> Any:
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


def user_history(db: Any, m: Models, user_id: str, *, limit: int = 200) -> list[Any]:
    """A customer's latest deliveries, with the notification and device of each."""
    D, N, Sub = m.Delivery, m.Notification, m.Subscription
    return list(db.session.execute(
        sa.select(D, N, Sub.label).join(N, N.id == D.notification_id)
        .outerjoin(Sub, Sub.id == D.subscription_id)
        .where(D.user_id == user_id).order_by(D.id.desc()).limit(limit)).all())


def prune(db: Any, m: Models, older_than: timedelta) -> dict[str, int]:
    """Delete deliveries of notifications finished before the cutoff, keeping their totals."""
    N, D = m.Notification, m.Delivery
    cutoff = utcnow() - older_than
    ids = db.session.scalars(sa.select(N.id).where(
        N.finished_at < cutoff, N.status.in_(("done", "cancelled")))).all()
    pruned = deleted = 0
    for nid in ids:
        if not db.session.scalar(sa.select(sa.exists().where(D.notification_id == nid))):
            continue
        stats = notification_stats(db, m, nid)
        n = db.session.get(N, nid)
        n.totals = {k: v for k, v in stats.items() if k not in ("id", "status", "pruned")}
        deleted += db.session.execute(sa.delete(D).where(D.notification_id == nid)).rowcount or 0
        db.session.commit()
        pruned += 1
    return {"notifications": pruned, "deliveries": deleted}
