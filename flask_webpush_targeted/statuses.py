"""The states of a notification and of a delivery, and what one POST came to.

``StrEnum``s (RQ's ``JobStatus`` is the model): a member *is* its string, so it is
stored, compared with rows read back and written into JSON as the text the contract
names, while a misspelt status is a name error rather than a silent mismatch.
"""

from __future__ import annotations

from enum import StrEnum


class NotificationStatus(StrEnum):
    """Where a notification is: waiting for its time, in the queue, sending, or ended."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    DONE = "done"
    CANCELLED = "cancelled"


#: every notification status, in order: to check text from outside (``"x" in`` the enum
#: itself raises TypeError on Python 3.11 for a string that is not a member)
NOTIFICATION_STATUSES = tuple(NotificationStatus)
#: a notification not yet fanned out: its fan-out job is (or should be) in the queue
WAITING = frozenset({NotificationStatus.SCHEDULED, NotificationStatus.QUEUED})
#: a notification that can still be cancelled
OPEN = frozenset({NotificationStatus.SCHEDULED, NotificationStatus.QUEUED,
                  NotificationStatus.SENDING})


class DeliveryStatus(StrEnum):
    """Where one delivery (one notification to one device) is.

    ``pending`` waits for its batch (or its retry time), ``sending`` is claimed by a
    batch; every other status is final.
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    GONE = "gone"
    EXPIRED = "expired"
    SKIPPED = "skipped"


#: the final statuses, in the order the counters and statistics list them
FINAL = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.GONE,
         DeliveryStatus.EXPIRED, DeliveryStatus.SKIPPED)
#: final, and not sent
UNSUCCESSFUL = FINAL[1:]
#: not final: a batch still has to send it
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


class Outcome(StrEnum):
    """What one POST to a push service came to (``transport.sender.PushResult.outcome``)."""

    SENT = "sent"
    #: the subscription no longer exists (404, 410): the device is revoked
    GONE = "gone"
    #: final, the subscription kept (a 4xx that is not the subscription's fault)
    FAILED = "failed"
    #: try again later (5xx, 429, timeouts, connection errors)
    RETRY = "retry"
    #: decided before any request: the device was revoked, the validity passed
    SKIPPED = "skipped"
    EXPIRED = "expired"
