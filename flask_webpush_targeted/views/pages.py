"""The customer's devices page and the consent withdrawal it offers."""

from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from ..csrf import check_csrf, csrf_token
from ..exceptions import CSRFError, SubscriptionNotFound
from ..users import user_id_of
from .common import ext, login_page, require_login_json

MESSAGES = {
    "revoked": "The device was removed: it will receive no more notifications.",
    "withdrawn": "Your consent is withdrawn and every device was unlinked from your account.",
}


def register(bp: Blueprint) -> None:
    """Add the customer pages to ``bp``."""
    bp.add_url_rule("/devices", "devices", devices)
    bp.add_url_rule("/devices/<int:subscription_id>/revoke", "revoke_device", revoke_device,
                    methods=["POST"])
    bp.add_url_rule("/consent/withdraw", "withdraw_consent", withdraw_consent, methods=["POST"])


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


def devices() -> ResponseReturnValue:
    """The customer's own browsers: label, added, last used; revoke; withdraw consent."""
    if not current_user.is_authenticated:
        return login_page()
    subs = ext().store.user_subscriptions(user_id_of(current_user), active_only=True)
    return render_template(
        "webpush/devices.html", subscriptions=subs, csrf_token=csrf_token(),
        message=MESSAGES.get(request.args.get("done", "")),
    )


def revoke_device(subscription_id: int) -> ResponseReturnValue:
    """Revoke a device from the devices page's form."""
    if not current_user.is_authenticated:
        return login_page()
    try:
        check_csrf()
        ext().store.revoke(user_id_of(current_user), subscription_id,
                           user_agent=request.headers.get("User-Agent"))
    except CSRFError:
        abort(400, "The form has expired: reload the devices page and try again.")
    except SubscriptionNotFound:
        abort(404, "You have no device with this id.")
    return redirect(url_for("webpush.devices", done="revoked"), 303)


def withdraw_consent() -> ResponseReturnValue:
    """Withdraw consent and unlink every device, from the widget (JSON) or the page (form)."""
    if _wants_json():
        user_id = require_login_json()
        check_csrf()
        revoked = ext().store.withdraw_consent(user_id,
                                               user_agent=request.headers.get("User-Agent"))
        return jsonify(withdrawn=True, devices_revoked=revoked)
    if not current_user.is_authenticated:
        return login_page()
    try:
        check_csrf()
    except CSRFError:
        abort(400, "The form has expired: reload the devices page and try again.")
    ext().store.withdraw_consent(user_id_of(current_user),
                                 user_agent=request.headers.get("User-Agent"))
    return redirect(url_for("webpush.devices", done="withdrawn"), 303)
