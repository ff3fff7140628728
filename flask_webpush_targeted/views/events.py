"""``POST /webpush/events``: displayed / clicked / closed, reported by the service worker.

Authenticated by the signed per-delivery token alone: a service worker has no
session cookie it can count on and no CSRF token. A token is bound to one
delivery and expires; each (delivery, event) counts once, at server time.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from .. import signals
from ..exceptions import BadRequestError, TrackingTokenInvalid
from ..ratelimit import check_rate_limit
from ..tracking import EVENT_COLUMNS, InvalidToken, read_token, record_event
from .common import ext, json_body


def register(bp: Blueprint) -> None:
    """Add the events route to ``bp``."""
    bp.add_url_rule("/events", "events", track_event, methods=["POST"])


def check_events_rate_limit() -> None:
    """Raise RateLimited when this address sent more than WEBPUSH_EVENTS_RATE_LIMIT events
    (beacons and clicks) this minute."""
    # Named after the queue: apps sharing a Redis keep limits of their own.
    check_rate_limit(
        f"webpush:events-rate:{current_app.config['WEBPUSH_QUEUE']}:{request.remote_addr}",
        current_app.config["WEBPUSH_EVENTS_RATE_LIMIT"],
        "Too many events from this address; try again shortly.")


def track_event() -> ResponseReturnValue:
    """Count one event of one delivery."""
    body = json_body()
    if not isinstance(body, dict) or set(body) - {"token", "event", "action"}:
        raise BadRequestError("Send {'token': ..., 'event': 'displayed'|'clicked'|'closed'}.")
    event = body.get("event")
    # A list or an object cannot be looked up in the dict (TypeError): check the type first.
    if not isinstance(event, str) or event not in EVENT_COLUMNS:
        raise BadRequestError("event must be one of displayed, clicked, closed.")
    action = body.get("action")
    if action is not None and (not isinstance(action, str) or len(action) > 64):
        raise BadRequestError("action must be a string of at most 64 characters.")
    check_events_rate_limit()
    try:
        delivery_id = read_token(body.get("token"))
    except InvalidToken as exc:
        raise TrackingTokenInvalid(f"The tracking token is not valid ({exc}).") from exc
    webpush = ext()
    D = webpush.models.Delivery
    if webpush.db.session.scalar(sa.select(D.id).where(D.id == delivery_id)) is None:
        raise TrackingTokenInvalid("The tracking token names no delivery.")
    counted = record_event(webpush.db, webpush.models, delivery_id, event, action)
    if counted:
        if action is not None:  # what was kept: only an action the notification offered
            action = webpush.db.session.scalar(sa.select(D.action).where(D.id == delivery_id))
        signals.event_tracked.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                   kind=event, delivery_id=delivery_id, action=action)
    return jsonify(counted=counted)
