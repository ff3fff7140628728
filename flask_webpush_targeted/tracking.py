"""Signed per-delivery tracking tokens carried in each push payload.

A token is ``<b64url(delivery id, expiry)>.<b64url(truncated HMAC-SHA256)>``:
small, because every byte counts against the 3993-byte payload limit. The key
is derived from WEBPUSH_TRACKING_SECRET or SECRET_KEY with a label of its own,
so a token can never be confused with any other signed value of the host.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app

from .clock import utcnow
from .counters import add, bucket, bump, new_increments, platform_of, send_start
from .event_log import event as log_event
from .event_log import write as write_events
from .sql import rowcount
from .transport.b64url import b64url_decode, b64url_encode

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .models import Models

_LABEL = b"flask-webpush-targeted/tracking-token/v1"
_MAC_BYTES = 16
#: the longest token: 12 bytes of data (8 id + 4 expiry) and 16 of MAC
MAX_TOKEN_LENGTH = len(b64url_encode(bytes(12))) + 1 + len(b64url_encode(bytes(_MAC_BYTES)))


class InvalidToken(ValueError):
    """The token is malformed, forged, or expired."""


def _key() -> bytes:
    config = current_app.config
    secret = config.get("WEBPUSH_TRACKING_SECRET") or config.get("SECRET_KEY")
    if not secret:
        raise RuntimeError("Set SECRET_KEY or WEBPUSH_TRACKING_SECRET to sign tracking tokens.")
    raw = secret if isinstance(secret, bytes) else str(secret).encode()
    return hmac.new(raw, _LABEL, hashlib.sha256).digest()


def make_token(delivery_id: int, expires_at: float, key: bytes | None = None) -> str:
    """A token for ``delivery_id`` valid until ``expires_at`` (unix seconds)."""
    key = key or _key()
    data = struct.pack(">QI", delivery_id, int(expires_at))
    mac = hmac.digest(key, data, "sha256")[:_MAC_BYTES]
    return f"{b64url_encode(data)}.{b64url_encode(mac)}"


def signing_key() -> bytes:
    """The current app's token key (compute once per batch, not per token)."""
    return _key()


def read_token(token: object, *, now: float | None = None) -> int:
    """The delivery id of a valid token; raise InvalidToken otherwise."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise InvalidToken("malformed token")
    data_part, mac_part = token.split(".")
    try:
        data, mac = b64url_decode(data_part), b64url_decode(mac_part)
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if len(data) != 12 or len(mac) != _MAC_BYTES:
        raise InvalidToken("malformed token")
    expected = hmac.new(_key(), data, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise InvalidToken("bad signature")
    delivery_id, expires_at = struct.unpack(">QI", data)
    if (now if now is not None else time.time()) > expires_at:
        raise InvalidToken("expired token")
    return int(delivery_id)


#: event name -> the Delivery column it fills
EVENT_COLUMNS = {"displayed": "displayed_at", "clicked": "clicked_at", "closed": "closed_at"}


def record_event(db: SQLAlchemy, m: Models, delivery_id: int, event: str,
                 action: str | None = None) -> bool:
    """Record an event once, at server time; False when it was already counted."""
    D, Sub, N = m.Delivery, m.Subscription, m.Notification
    now = utcnow()
    if event == "clicked" and action:
        # Only an action the notification offered is kept: the beacon's text is anyone's
        # who holds the token, and the admin pages and exports show what is stored.
        found = db.session.execute(sa.select(N.payload, N.variants, D.variant)
                                   .join(D, D.notification_id == N.id)
                                   .where(D.id == delivery_id)).first()
        payload = None if found is None else found.payload
        if found is not None and found.variants is not None:
            # The delivery's own variant's actions (none before it was sent)
            chosen = found.variants["variants"]
            payload = (chosen[found.variant]["payload"]
                       if found.variant is not None and found.variant < len(chosen) else None)
        offered = {a.get("action") for a in (payload or {}).get("actions") or []
                   if isinstance(a, dict)}
        action = action if action in offered else None
    events = [event] + (["displayed"] if event == "clicked" else [])
    counted = []
    for kind in events:
        column = getattr(D, EVENT_COLUMNS[kind])
        values: dict[str, Any] = {EVENT_COLUMNS[kind]: now}
        if kind == "clicked" and action:
            values["action"] = action[:64]
        # One conditional UPDATE: a replay, or two beacons racing, counts once. A click
        # also proves the notification was shown, even if its displayed beacon was lost.
        result = db.session.execute(sa.update(D).where(D.id == delivery_id, column.is_(None))
                                    .values(**values))
        if rowcount(result):
            counted.append(kind)
    if counted:
        row = db.session.execute(
            sa.select(D.notification_id, D.subscription_id, D.variant, D.user_id,
                      Sub.user_agent, N.send_at, N.created_at)
            .join(N, N.id == D.notification_id).outerjoin(Sub, Sub.id == D.subscription_id)
            .where(D.id == delivery_id)).one()
        inc = new_increments()
        at = bucket(send_start(row), now)
        for kind in counted:
            if kind == "closed":
                add(inc, kind, variant=row.variant)
            else:
                add(inc, kind, at=at, platform=platform_of(row.user_agent), variant=row.variant)
        bump(db, m, row.notification_id, inc)
        if row.subscription_id is not None:
            # The device was used: this is what the devices page shows as "last used".
            db.session.execute(sa.update(Sub).where(Sub.id == row.subscription_id)
                               .values(last_seen_at=now))
        write_events(db, m, [log_event(
            f"delivery.{kind}", notification_id=row.notification_id, user_id=row.user_id,
            at=now, delivery_id=delivery_id, subscription_id=row.subscription_id,
            action=action if kind == "clicked" else None, variant=row.variant)
            for kind in counted])  # last: it holds the log's order until the commit
    db.session.commit()
    return event in counted
