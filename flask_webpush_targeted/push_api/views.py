"""The push API for external systems (CRMs, operations, ticketing): ``/api/v1/...``.

Authenticated by ``Authorization: Bearer <API key>`` alone: these routes never
read the session, Flask-Login's user or a CSRF token, so a server elsewhere can
call them and a browser's cookies cannot (no ambient authority, no CSRF).
Checks run in this order: key (401), rate limit (429), scope (403), body size
(413), JSON shape (400), values (422, 413 for the Web Push payload limit).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Conflict

from .. import preferences, stats
from ..clock import iso, utcnow
from ..context import app_state
from ..context import extension as ext
from ..exceptions import (
    APIError,
    InvalidNotification,
    NotificationNotFound,
    QueueUnavailable,
)
from ..limits import MAX_ID
from ..notifications import notification_fields
from ..targeting import users_without
from ..web_input import add_user_id_converter, read_json_body
from . import audiences, conversions, events
from .access import answer as _answer
from .access import authorize as _authorize
from .openapi import openapi_document
from .requests import (
    IdempotencyConflict,
    NotifyRequest,
    check_user_id,
    idempotency_key,
    parse_list_args,
    parse_notification,
    parse_preferences,
)

log = logging.getLogger("flask_webpush_targeted")

API = "/api/v1"
#: the figures of a notification every answer carries (docs/design.md's funnel): counts,
#: then the rates and expected_finish_at, which are null until they mean something
FUNNEL = ("targeted_users", "users_without_devices", "opted_out", "capped", "deliveries",
          "pending", "held", "sent", "failed", "gone", "expired", "skipped", "displayed",
          "clicked", "closed", "conversions", "influenced_conversions", "display_rate",
          "click_rate", "click_through_rate", "conversion_rate", "expected_finish_at")
#: the FUNNEL figures that are null rather than 0 when absent
_NULLABLE = frozenset(("display_rate", "click_rate", "click_through_rate", "conversion_rate",
                       "expected_finish_at"))


class NotCancellable(APIError, Conflict):
    """The notification is already done or cancelled."""

    error = "not_cancellable"


def register(bp: Blueprint) -> None:
    """Add the push API's routes to ``bp``."""
    bp.record_once(add_user_id_converter)
    notification = f"{API}/notifications/<notification_id>"
    bp.add_url_rule(f"{API}/openapi.json", "api_openapi", openapi_json)
    bp.add_url_rule(f"{API}/notifications", "api_notifications", list_notifications)
    bp.add_url_rule(f"{API}/notifications", "api_create_notification", create_notification,
                    methods=["POST"])
    bp.add_url_rule(notification, "api_notification", get_notification)
    bp.add_url_rule(notification, "api_cancel_notification", cancel_notification,
                    methods=["DELETE"])
    bp.add_url_rule(f"{API}/users/<webpush_user_id:user_id>/devices", "api_user_devices",
                    user_devices)
    user_preferences = f"{API}/users/<webpush_user_id:user_id>/preferences"
    bp.add_url_rule(user_preferences, "api_user_preferences", get_preferences)
    bp.add_url_rule(user_preferences, "api_set_user_preferences", put_preferences,
                    methods=["PUT"])
    audiences.register(bp, API)
    conversions.register(bp, API)
    events.register(bp, API)


def _status_url(notification_id: int) -> str:
    return url_for("webpush.api_notification", notification_id=notification_id, _external=True)


def _notification_json(n: Any, figures: dict[str, Any], *, detail: bool) -> dict[str, Any]:
    """The API's Notification (its OpenAPI schema): the admin JSON's fields it shares, the
    title rather than the whole payload, and the funnel; the admin's keeps its own shape."""
    funnel = {k: figures.get(k) if k in _NULLABLE else figures.get(k, 0) for k in FUNNEL}
    body = {**notification_fields(n), "title": n.payload.get("title", ""),
            "status_url": _status_url(n.id), "stats": funnel}
    if detail:
        funnel.update(failure_reasons=figures.get("failure_reasons", []),
                      by_platform=figures.get("by_platform", []),
                      languages=figures.get("languages", {}),
                      revenue=figures.get("revenue", {}),
                      variants=figures.get("variants", []),
                      pruned=bool(figures.get("pruned")))
        # Known once the worker fanned out (the choices then, not now); the list of
        # notifications leaves it out, as it leaves out the users without devices.
        body["users_opted_out"] = list(n.users_opted_out or [])
    return body


# -- routes -----------------------------------------------------------------------------------


def openapi_json() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of this API (public: it holds no secret)."""
    base = url_for("webpush.api_openapi").rsplit("/", 1)[0]
    return _answer(openapi_document(
        base, max_users=current_app.config["WEBPUSH_API_MAX_USERS"]))


def create_notification() -> ResponseReturnValue:
    """Store and queue one notification to the CRM's users; 202 with its status URL."""
    key = _authorize("send")
    config = current_app.config
    req = parse_notification(read_json_body(config["WEBPUSH_API_MAX_REQUEST_BYTES"]),
                             config["WEBPUSH_API_MAX_USERS"])
    idem = idempotency_key(request.headers.get("Idempotency-Key"))
    webpush = ext()
    db, m = webpush.db, webpush.models
    key_id, digest = key.id, req.digest()
    claim: Any = None
    replay = False
    if idem is not None:
        claim, replay = _claim(key_id, idem, digest)
    if replay and claim.notification_id is not None:
        return _accepted(db.session.get(m.Notification, claim.notification_id), req, True)
    try:
        # Scoped per API key: two CRMs using the same Idempotency-Key never collide.
        stored_key = f"api:{key_id}:{idem}" if idem is not None else None
        n = webpush.notify_users(req.user_ids, audience=req.audience_id,
                                 recipients=req.recipients, idempotency_key=stored_key,
                                 **req.options)
    except InvalidNotification:
        if claim is not None and not replay:
            # A refused request does not use up its key: the corrected one may reuse it.
            db.session.delete(claim)
            db.session.commit()
        raise
    except QueueUnavailable as exc:
        # Stored; every worker's `recover` enqueues it once Redis is back.
        log.warning("webpush: API notification %s stored, Redis down", exc.notification_id)
        n = db.session.get(m.Notification, exc.notification_id)
    if claim is None:
        db.session.add(m.ApiRequest(api_key_id=key_id, request_sha256=digest,
                                    notification_id=n.id, created_at=utcnow()))
    else:
        claim.notification_id = n.id
    db.session.commit()
    return _accepted(n, req, replay)


def _claim(key_id: int, idem: str, digest: str) -> tuple[Any, bool]:
    """Take the idempotency key for this request: (row, False); or (earlier row, True) for a
    replay of the same request; IdempotencyConflict for another request under that key."""
    webpush = ext()
    db, R = webpush.db, webpush.models.ApiRequest
    for _attempt in range(3):
        row = R(api_key_id=key_id, idempotency_key=idem, request_sha256=digest,
                created_at=utcnow())
        db.session.add(row)
        try:
            db.session.commit()
            return row, False
        except sa.exc.IntegrityError:
            db.session.rollback()
        earlier = db.session.scalar(sa.select(R).where(R.api_key_id == key_id,
                                                       R.idempotency_key == idem))
        if earlier is None:
            continue  # released by a refused request meanwhile: take it
        if not hmac.compare_digest(earlier.request_sha256, digest):
            raise IdempotencyConflict(
                "This Idempotency-Key was used with another request body; use a new key "
                "for a new notification.")
        return earlier, True
    raise IdempotencyConflict("This Idempotency-Key is being used by a concurrent request.")


def _accepted(n: Any, req: NotifyRequest, replay: bool) -> Response:
    webpush = ext()
    without = users_without(webpush.db, webpush.models, n.targeting)
    url = _status_url(n.id)
    headers = {"Location": url}
    if replay:
        headers["Idempotent-Replayed"] = "true"
    return _answer({
        "id": n.id, "status": n.status, "status_url": url, "created_at": iso(n.created_at),
        "send_at": iso(n.send_at), "targeted_users": n.target_count,
        "users_without_devices": without, "replayed": replay,
    }, 202, **headers)


def _visible(key: Any, raw_id: str, *, own_only: bool) -> Any:
    """The notification ``raw_id`` if this key may see it; 404 otherwise (nothing to probe)."""
    webpush = ext()
    db, m = webpush.db, webpush.models
    missing = NotificationNotFound(f"No notification {raw_id[:20]!r} for this API key.")
    if not (raw_id.isascii() and raw_id.isdigit()) or not 0 < int(raw_id) <= MAX_ID:
        raise missing
    n = db.session.get(m.Notification, int(raw_id))
    if n is None:
        raise missing
    if own_only or "stats" not in key.scopes:
        R = m.ApiRequest
        mine = db.session.scalar(sa.select(sa.exists().where(
            R.api_key_id == key.id, R.notification_id == n.id)))
        if not mine:
            raise missing
    return n


def get_notification(notification_id: str) -> ResponseReturnValue:
    """Status and statistics of one notification."""
    key = _authorize("stats", "send")
    n = _visible(key, notification_id, own_only=False)
    return _answer(_notification_json(n, ext().stats(n.id), detail=True))


def cancel_notification(notification_id: str) -> ResponseReturnValue:
    """Cancel a notification this key created, if it is not finished yet."""
    key = _authorize("send")
    n = _visible(key, notification_id, own_only=True)
    webpush = ext()
    if not webpush.cancel(n.id):
        raise NotCancellable(f"Notification {n.id} is {n.status} already: nothing to cancel.")
    return _answer(_notification_json(n, webpush.stats(n.id), detail=True))


def list_notifications() -> ResponseReturnValue:
    """A page of notifications, newest first, filtered by time, status and category."""
    _authorize("stats")
    query = parse_list_args(request.args)
    webpush = ext()
    items, total = stats.list_notifications(webpush.db, webpush.models, **query)
    page, per_page = query["page"], query["per_page"]
    following = None
    if page * per_page < total:
        args = {k: v for k, v in request.args.items()}
        following = url_for("webpush.api_notifications", _external=True,
                            **{**args, "page": page + 1})
    return _answer({
        "notifications": [_notification_json(i["notification"], i["funnel"], detail=False)
                          for i in items],
        "page": page, "per_page": per_page, "total": total, "next": following,
    })


def user_devices(user_id: str) -> ResponseReturnValue:
    """What a support agent may see of a user's devices: never endpoints or keys."""
    _authorize("devices")
    user_id = check_user_id(user_id)
    webpush = ext()
    db, m = webpush.db, webpush.models
    subs = webpush.store.user_subscriptions(user_id)
    ids = [s.id for s in subs]
    C, D = m.Consent, m.Delivery
    granted = dict(db.session.execute(
        sa.select(C.subscription_id, sa.func.max(C.created_at))
        .where(C.subscription_id.in_(ids), C.action == "granted").group_by(C.subscription_id)
    ).all()) if ids else {}
    pushed = dict(db.session.execute(
        sa.select(D.subscription_id, sa.func.max(D.sent_at))
        .where(D.subscription_id.in_(ids), D.user_id == user_id).group_by(D.subscription_id)
    ).all()) if ids else {}
    return _answer({"user_id": user_id, "devices": [
        _device_json(s, granted.get(s.id), pushed.get(s.id)) for s in subs]})


def _device_json(sub: Any, granted_at: Any, pushed_at: Any) -> dict[str, Any]:
    last_used = max(filter(None, (sub.last_seen_at, pushed_at)))
    if sub.revoked_at is None:
        state = "granted"
    elif sub.revoked_reason in ("gone", "rotated"):
        state = "expired"  # the browser ended the subscription; consent was never withdrawn
    else:
        state = "withdrawn"
    return {
        "id": sub.id, "label": sub.label, "push_service": sub.push_service,
        "added_at": iso(sub.created_at), "last_used_at": iso(last_used),
        "active": sub.active,
        "consent": {"state": state, "text_version": sub.consent_version,
                    "granted_at": iso(granted_at or sub.created_at),
                    "ended_at": iso(sub.revoked_at), "reason": sub.revoked_reason},
    }


# -- users' choices of categories ---------------------------------------------------------------


def _preferences_json(user_id: str, chosen: dict[str, bool]) -> dict[str, Any]:
    categories = app_state().categories or {}
    return {
        "user_id": user_id, "preferences": chosen,
        # default: what a customer who never chose gets (a required category is on)
        "categories": [{"name": c.name, "label": c.label, "description": c.description,
                        "required": c.required, "default": c.default_on}
                       for c in categories.values()],
    }


def get_preferences(user_id: str) -> ResponseReturnValue:
    """A user's choice per category, with the categories to choose from."""
    _authorize("preferences")
    user_id = check_user_id(user_id)
    state = app_state()
    return _answer(_preferences_json(user_id, preferences.preferences(
        state.db, state.models, state.categories, user_id)))


def put_preferences(user_id: str) -> ResponseReturnValue:
    """Change a user's choices as the CRM recorded them (each change a consent-ledger row
    whose source is "api"); answers like GET."""
    _authorize("preferences")
    user_id = check_user_id(user_id)
    limit = current_app.config["WEBPUSH_API_MAX_REQUEST_BYTES"]
    choices = parse_preferences(read_json_body(limit))
    state = app_state()
    chosen = preferences.set_preferences(
        state.db, state.models, state.categories, user_id, choices, source="api",
        text_version=current_app.config["WEBPUSH_CONSENT_VERSION"])
    return _answer(_preferences_json(user_id, chosen))
