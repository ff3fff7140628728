"""JSON endpoints of the subscription flow."""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, current_app, jsonify, request, session
from flask.typing import ResponseReturnValue

from ..config import consent_texts
from ..context import app_state
from ..csrf import check_csrf
from ..exceptions import BadRequestError
from ..preferences import check_choices, set_preferences
from ..subscriptions import label_from_user_agent, parse_subscribe_request, parse_subscription
from ..users import SESSION_SUBSCRIPTIONS
from .common import ext, json_body, require_login_json, subscription_json


def register(bp: Blueprint) -> None:
    """Add the JSON routes to ``bp``."""
    bp.add_url_rule("/vapid-public-key", "vapid_public_key", vapid_public_key)
    bp.add_url_rule("/subscriptions", "subscriptions", list_subscriptions, methods=["GET"])
    bp.add_url_rule("/subscriptions", "subscribe", subscribe, methods=["POST"])
    bp.add_url_rule("/subscriptions/<int:subscription_id>", "revoke_subscription",
                    revoke_subscription, methods=["DELETE"])
    bp.add_url_rule("/subscriptions/rotate", "rotate_subscription", rotate_subscription,
                    methods=["POST"])


def vapid_public_key() -> ResponseReturnValue:
    """The application server key for pushManager.subscribe()."""
    return jsonify(public_key=current_app.config["WEBPUSH_VAPID_PUBLIC_KEY"])


def list_subscriptions() -> ResponseReturnValue:
    """The logged-in customer's own devices."""
    user_id = require_login_json()
    subs = ext().store.user_subscriptions(user_id)
    return jsonify(subscriptions=[subscription_json(s) for s in subs])


def subscribe() -> ResponseReturnValue:
    """Store this browser's subscription with the customer's consent."""
    user_id = require_login_json()
    check_csrf()
    body = json_body()
    req = parse_subscribe_request(
        body, current_app.config["WEBPUSH_CONSENT_VERSION"],
        app_state().extra_origins, consent_texts(current_app.config),
    )
    user_agent = request.headers.get("User-Agent")
    state = app_state()
    # Checked before anything is stored: a bad choice leaves no half-made opt-in.
    choices = check_choices(state.categories, req.categories) if req.categories else {}
    if req.device_label is None:
        req = replace(req, device_label=label_from_user_agent(user_agent))
    sub, is_new = ext().store.subscribe(user_id, req, user_agent)
    if choices:
        set_preferences(state.db, state.models, state.categories, user_id, choices,
                        source="widget", text_version=req.text_version, user_agent=user_agent)
    made_here = [i for i in session.get(SESSION_SUBSCRIPTIONS, []) if i != sub.id]
    session[SESSION_SUBSCRIPTIONS] = [*made_here, sub.id][-20:]
    return jsonify(subscription_json(sub)), 201 if is_new else 200


def revoke_subscription(subscription_id: int) -> ResponseReturnValue:
    """Revoke one of the customer's own devices."""
    user_id = require_login_json()
    check_csrf()
    sub = ext().store.revoke(user_id, subscription_id,
                             user_agent=request.headers.get("User-Agent"))
    return jsonify(subscription_json(sub))


def rotate_subscription() -> ResponseReturnValue:
    """Replace a subscription the browser rotated (pushsubscriptionchange).

    The service worker has no session or CSRF token; it proves it owned the old
    subscription with that subscription's auth secret, which only the browser
    and this server know.
    """
    body = json_body()
    old = body.get("old") if isinstance(body, dict) else None
    if not isinstance(old, dict) or "subscription" not in body:
        raise BadRequestError("Send {'old': {'endpoint', 'auth'}, 'subscription': {...}}.")
    new = parse_subscription(body["subscription"], app_state().extra_origins)
    sub = ext().store.rotate(old.get("endpoint"), old.get("auth"), new)
    return jsonify(subscription_json(sub))
