"""Frequency caps: at most ``count`` notifications of a category per user in any period.

A notification counts for a user once it has a delivery to one of the user's devices
that is waiting, being sent or sent, and sent (or due, or else written) within the
period; one that failed on every device does not. The fan-out checks and writes a chunk
of users under one Redis lock per category, so two campaigns of the same category
fanning out at once cannot both pass a user at the cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .categories import Category
from .models import Models
from .statuses import DeliveryStatus

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: the reason of a delivery skipped by a frequency cap
CAPPED = "frequency cap"
#: deliveries that count against a cap
_COUNTING = (DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value,
             DeliveryStatus.SENT.value)
_CHUNK = 1000


def capped_users(db: SQLAlchemy, m: Models, category: Category, user_ids: Iterable[str],
                 now: datetime, notification_id: int) -> set[str]:
    """The users among ``user_ids`` already at the category's cap (besides this notification)."""
    if category.cap is None:
        return set()
    count, period = category.cap
    D, N = m.Delivery, m.Notification
    ids = list(dict.fromkeys(user_ids))
    capped: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        rows = db.session.execute(
            sa.select(D.user_id, sa.func.count(sa.distinct(D.notification_id)))
            .join(N, N.id == D.notification_id)
            .where(D.user_id.in_(ids[start:start + _CHUNK]), N.category == category.name,
                   D.notification_id != notification_id, D.status.in_(_COUNTING),
                   # When it was sent, or is due: a held or local-time delivery counts
                   # from then, not from its fan-out hours earlier.
                   sa.func.coalesce(D.sent_at, D.due_at, D.created_at) > now - period)
            .group_by(D.user_id))
        capped.update(user for user, received in rows if received >= count)
    return capped


def capped_count(db: SQLAlchemy, m: Models, notification_id: int) -> int:
    """How many users a notification's cap skipped (its deliveries say)."""
    D = m.Delivery
    return db.session.scalar(
        sa.select(sa.func.count(sa.distinct(D.user_id)))
        .where(D.notification_id == notification_id, D.status == DeliveryStatus.SKIPPED,
               D.reason == CAPPED)) or 0
