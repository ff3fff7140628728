"""The funnel of one notification."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .exceptions import NotificationNotFound
from .models import DELIVERY_STATUSES, Models


def notification_stats(db: Any, m: Models, notification_id: int) -> dict[str, Any]:
    """Counts for one notification: targeted users, deliveries by status, events."""
    n = db.session.get(m.Notification, notification_id)
    if n is None:
        raise NotificationNotFound(f"No notification has id {notification_id}.")
    D = m.Delivery
    by_status = dict(db.session.execute(
        sa.select(D.status, sa.func.count()).where(D.notification_id == notification_id)
        .group_by(D.status)).all())
    events = db.session.execute(
        sa.select(sa.func.count(D.displayed_at), sa.func.count(D.clicked_at),
                  sa.func.count(D.closed_at)).where(D.notification_id == notification_id)).one()
    result: dict[str, Any] = {
        "id": n.id,
        "status": n.status,
        "targeted_users": len(n.targeting.get("user_ids", [])),
        "users_without_devices": len(n.users_without_devices or []),
        "deliveries": sum(by_status.values()),
    }
    for status in DELIVERY_STATUSES:
        result[status] = int(by_status.get(status, 0))
    # "pending" in the funnel means not finished yet: waiting or being sent.
    result["pending"] += result.pop("sending")
    result["displayed"], result["clicked"], result["closed"] = (int(x) for x in events)
    return result
