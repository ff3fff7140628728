"""GDPR: export and erase what the extension holds about one user."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .counters import add, bump, new_increments
from .models import Models

#: the reason an erased delivery that was not sent yet is counted under (as skipped)
ERASED = "user data erased before sending"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def export_user(db: Any, m: Models, user_id: str) -> dict[str, Any]:
    """Everything about a user, readable, without raw endpoints or keys."""
    subs = db.session.scalars(
        sa.select(m.Subscription).where(m.Subscription.user_id == user_id)
        .order_by(m.Subscription.id)
    )
    consents = db.session.scalars(
        sa.select(m.Consent).where(m.Consent.user_id == user_id).order_by(m.Consent.id)
    )
    deliveries = db.session.execute(
        sa.select(m.Delivery, m.Notification.payload)
        .join(m.Notification, m.Notification.id == m.Delivery.notification_id)
        .where(m.Delivery.user_id == user_id).order_by(m.Delivery.id)
    )
    return {
        "user_id": user_id,
        "devices": [
            {"id": s.id, "label": s.label, "push_service": s.push_service,
             "user_agent": s.user_agent, "consent_version": s.consent_version,
             "created_at": _iso(s.created_at), "last_seen_at": _iso(s.last_seen_at),
             "revoked_at": _iso(s.revoked_at), "revoked_reason": s.revoked_reason}
            for s in subs
        ],
        "consents": [
            {"action": c.action, "reason": c.reason, "device_id": c.subscription_id,
             "notifications": c.notifications, "link_to_account": c.link_to_account,
             "text_version": c.text_version, "user_agent": c.user_agent,
             "at": _iso(c.created_at)}
            for c in consents
        ],
        "notifications_received": [
            {"notification_id": d.notification_id, "device_id": d.subscription_id,
             "title": payload.get("title"), "status": d.status, "sent_at": _iso(d.sent_at),
             "displayed_at": _iso(d.displayed_at), "clicked_at": _iso(d.clicked_at),
             "closed_at": _iso(d.closed_at)}
            for d, payload in deliveries
        ],
    }


def forget_user(db: Any, m: Models, user_id: str) -> dict[str, int]:
    """Delete the user's deliveries, consents and subscriptions; return what went."""
    D = m.Delivery
    # Children first, in one transaction: no foreign key is left dangling on any database.
    gone = db.session.execute(sa.delete(D).where(D.user_id == user_id)
                              .returning(D.notification_id, D.status)).all()
    # A delivery erased before its result is counted as skipped: the counters, which
    # tell a worker when a notification is done, then still add up.
    unsent: dict[int, int] = {}
    for notification_id, status in gone:
        if status in ("pending", "sending"):
            unsent[notification_id] = unsent.get(notification_id, 0) + 1
    for notification_id, count in sorted(unsent.items()):
        inc = new_increments()
        add(inc, "skipped", count, reason=(None, ERASED))
        bump(db, m, notification_id, inc)
    counts = {"deliveries": len(gone)}
    result = db.session.execute(sa.delete(m.Consent).where(m.Consent.user_id == user_id))
    counts["consents"] = result.rowcount or 0
    # Rows of other users may still point at this user's devices (a device that moved
    # accounts keeps its earlier owner's history): cut those links here, as ON DELETE
    # SET NULL would, because SQLite does not enforce it and reuses deleted ids.
    own_devices = sa.select(m.Subscription.id).where(m.Subscription.user_id == user_id)
    for model in (m.Delivery, m.Consent):
        db.session.execute(sa.update(model).where(model.subscription_id.in_(own_devices))
                           .values(subscription_id=None))
    result = db.session.execute(sa.delete(m.Subscription)
                                .where(m.Subscription.user_id == user_id))
    counts["subscriptions"] = result.rowcount or 0
    db.session.commit()
    return counts
