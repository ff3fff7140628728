"""Blinker signals. The sender is always the Flask app; data comes as keyword arguments.

Receivers are the host's code and run after the extension's own state is committed. A
receiver that raises is logged and skipped: it neither stops the other receivers nor
reaches the extension's code (a batch being recorded, a request being answered).
"""

from __future__ import annotations

import logging
from inspect import iscoroutinefunction
from typing import Any

from blinker import NamedSignal, Namespace
from rq.timeouts import BaseTimeoutException

log = logging.getLogger("flask_webpush_targeted")

#: RQ raises its job timeout inside whatever code runs when the time is up
_PASS_THROUGH = (BaseTimeoutException,)


class IsolatedSignal(NamedSignal):
    """A signal whose receivers' exceptions are logged, never propagated."""

    def send(self, sender: Any | None = None, /, *, _async_wrapper: Any = None,
             **kwargs: Any) -> list[tuple[Any, Any]]:
        """Call every receiver; one that raises is logged and its result is the exception."""
        if self.is_muted:
            return []
        results: list[tuple[Any, Any]] = []
        for receiver in self.receivers_for(sender):
            try:
                call = receiver
                if iscoroutinefunction(receiver):
                    if _async_wrapper is None:
                        raise RuntimeError("Cannot send to a coroutine function.")
                    call = _async_wrapper(receiver)
                results.append((receiver, call(sender, **kwargs)))
            except _PASS_THROUGH:
                raise  # RQ's job timeout: the job must stop, not the receiver be blamed
            except Exception as exc:
                log.exception("webpush: a receiver of %s raised; ignored", self.name)
                results.append((receiver, exc))
        return results


class _Namespace(Namespace):
    def signal(self, name: str, doc: str | None = None) -> NamedSignal:
        if name not in self:
            self[name] = IsolatedSignal(name, doc)
        return self[name]


_signals = _Namespace()

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
