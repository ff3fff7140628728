"""How the extension names a customer and a notification given by host code."""

from __future__ import annotations

from typing import Any

from .exceptions import InvalidUserId, NotificationNotFound
from .limits import MAX_ID
from .transport.text import storable

#: session key of the subscription ids made in this session (for unbinding at logout)
SESSION_SUBSCRIPTIONS = "_webpush_subscriptions"


def user_id_of(user: Any) -> str:
    """The id string of a Flask-Login user object, or of an id given directly.

    Raises InvalidUserId for anything else: a user id is 1 to 255 characters of text
    that can be stored (no NUL, which PostgreSQL refuses, no lone surrogate).
    """
    if hasattr(user, "get_id"):
        user = user.get_id()
    if user is None or isinstance(user, bool) or not isinstance(user, (str, int)):
        raise InvalidUserId(
            "expected a Flask-Login user (with get_id()) or a user id (str or int)")
    # 255 digits at most: checked before str(), which refuses ints of 4,300 digits or more.
    if isinstance(user, int) and abs(user) >= 10**255:
        raise InvalidUserId("a user id is 1 to 255 characters")
    user_id = str(user)
    if not user_id or len(user_id) > 255:
        raise InvalidUserId("a user id is 1 to 255 characters")
    if not storable(user_id):
        raise InvalidUserId("a user id must not contain NUL characters or lone surrogates")
    return user_id


def notification_id_of(notification_id: Any) -> int:
    """A notification id as given by host code; NotificationNotFound when it names none.

    Ids a bigint column cannot hold (or that are not ints) name no notification; without
    this check the database would raise its own error for them.
    """
    if (isinstance(notification_id, bool) or not isinstance(notification_id, int)
            or not 0 < notification_id <= MAX_ID):  # the column is a 64-bit integer
        raise NotificationNotFound(f"No notification has id {str(notification_id)[:40]!r}.")
    return notification_id
