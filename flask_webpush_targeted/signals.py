"""Blinker signals. The sender is always the Flask app; data comes as keyword arguments."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A new subscription was stored: ``subscription=``.
subscription_created = _signals.signal("webpush.subscription-created")

#: A subscription moved from one account to another: ``subscription=``,
#: ``from_user_id=``, ``to_user_id=``.
subscription_moved = _signals.signal("webpush.subscription-moved")

#: A subscription stopped being used: ``subscription=``, ``reason=`` (one of
#: ``device_revoked``, ``consent_withdrawn``, ``logout``, ``moved``, ``gone``).
subscription_revoked = _signals.signal("webpush.subscription-revoked")

#: A user withdrew consent; their subscriptions were revoked: ``user_id=``.
consent_withdrawn = _signals.signal("webpush.consent-withdrawn")

#: A user's data was erased: ``user_id=``, ``counts=``.
user_forgotten = _signals.signal("webpush.user-forgotten")

#: A notification was stored and handed to the queue: ``notification=``.
notification_queued = _signals.signal("webpush.notification-queued")

#: A push service accepted a delivery (201): ``delivery_id=``, ``notification_id=``,
#: ``subscription_id=``.
delivery_sent = _signals.signal("webpush.delivery-sent")

#: A delivery ended without being accepted: ``delivery_id=``, ``notification_id=``,
#: ``subscription_id=``, ``error=``, ``status_code=``, ``gone=`` (True when the
#: subscription no longer exists and was deactivated).
delivery_failed = _signals.signal("webpush.delivery-failed")

#: The service worker reported an event, counted for the first time: ``kind=``
#: (displayed, clicked, closed), ``delivery_id=``, ``action=``.
event_tracked = _signals.signal("webpush.event-tracked")
