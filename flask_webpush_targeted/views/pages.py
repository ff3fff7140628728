"""The customer's devices page: devices, the categories they receive, consent withdrawal."""

from __future__ import annotations

from typing import NoReturn

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from ..context import app_state
from ..csrf import FORM_FIELD, check_csrf, csrf_token
from ..exceptions import BadRequestError, CSRFError, InvalidPreferences, SubscriptionNotFound
from ..i18n import gettext
from ..i18n import lazy_gettext as _l
from ..preferences import set_preferences
from ..transport.text import clean_text
from ..users import user_id_of
from .common import ext, json_body, login_page, require_login_json

#: the form field of the devices page's category switches, one value per category turned on
CATEGORY_FIELD = "categories"
#: the ledger's sources a browser may name for its JSON choices ("api" and "host" are the
#: server's); the widget names itself, another page of the customer's counts as the devices
#: page's
BROWSER_SOURCES = ("devices_page", "widget")

#: what the devices page says after a change (``?done=``), in the customer's language
MESSAGES = {
    "revoked": _l("The device was removed: it will receive no more notifications."),
    "withdrawn": _l("Your consent is withdrawn and every device was unlinked from your "
                    "account."),
    "saved": _l("Your choices are saved."),
    "nothing": _l("You had not given your consent to notifications: there was nothing to "
                  "withdraw, and nothing was changed."),
}
#: the JSON answer's message when there was no consent to withdraw (English, as every JSON
#: message: the widget shows its own translated text)
NOTHING_TO_WITHDRAW = ("You had not given your consent to notifications: there was nothing "
                       "to withdraw, and no device was revoked.")
EXPIRED = _l("The form has expired: reload the devices page and try again.")


#: the title of a customer's error page, by status
ERROR_TITLES = {400: _l("This could not be done"), 404: _l("Not found")}


def page_error(status: int, message: str) -> NoReturn:
    """Stop with a page in the host's layout, in the customer's language, that says what
    went wrong and links back to the devices page."""
    html = render_template("webpush/error.html", status=status, message=message,
                           title=ERROR_TITLES.get(status, _l("Something went wrong")))
    abort(Response(html, status, mimetype="text/html"))


def register(bp: Blueprint) -> None:
    """Add the customer pages to ``bp``."""
    bp.add_url_rule("/devices", "devices", devices)
    bp.add_url_rule("/devices/<int:subscription_id>/revoke", "revoke_device", revoke_device,
                    methods=["POST"])
    bp.add_url_rule("/consent/withdraw", "withdraw_consent", withdraw_consent, methods=["POST"])
    bp.add_url_rule("/preferences", "save_preferences", save_preferences,
                    methods=["POST", "PUT"])


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


def devices() -> ResponseReturnValue:
    """The customer's own browsers: label, added, last used; revoke; the categories they
    receive; withdraw consent."""
    if not current_user.is_authenticated:
        return login_page()
    subs = ext().store.user_subscriptions(user_id_of(current_user), active_only=True)
    categories = app_state().categories or {}
    return render_template(
        "webpush/devices.html", subscriptions=subs, has_consent=bool(subs), csrf_token=csrf_token(),
        message=MESSAGES.get(request.args.get("done", "")),
        categories=list(categories.values()), preferences=ext().preferences(current_user),
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
        page_error(400, str(EXPIRED))
    except SubscriptionNotFound:
        page_error(404, gettext("You have no device with this id."))
    return redirect(url_for("webpush.devices", done="revoked"), 303)


def withdraw_consent() -> ResponseReturnValue:
    """Withdraw consent and unlink every device, from the widget (JSON) or the page (form).

    With no consent to withdraw the answer says so (``"withdrawn": false``, or the page's
    "nothing" message) and the ledger gets no row."""
    if _wants_json():
        user_id = require_login_json()
        check_csrf()
        revoked = _withdraw(user_id)
        if revoked is None:
            return jsonify(withdrawn=False, devices_revoked=0, message=NOTHING_TO_WITHDRAW)
        return jsonify(withdrawn=True, devices_revoked=revoked)
    if not current_user.is_authenticated:
        return login_page()
    try:
        check_csrf()
    except CSRFError:
        page_error(400, str(EXPIRED))
    done = "nothing" if _withdraw(user_id_of(current_user)) is None else "withdrawn"
    return redirect(url_for("webpush.devices", done=done), 303)


def _withdraw(user_id: str) -> int | None:
    """The devices revoked by the withdrawal, or None when there was no consent to withdraw."""
    return ext().store.withdraw_consent(user_id, user_agent=request.headers.get("User-Agent"))


def save_preferences() -> ResponseReturnValue:
    """Save the categories the customer receives: the devices page's form (303 back to it),
    or JSON ``{"categories": {name: bool}, "source"?: "widget"}`` answering
    ``{"preferences": {...}}``."""
    if request.method == "PUT" or _wants_json():
        user_id = require_login_json()
        check_csrf()
        body = json_body()
        if (not isinstance(body, dict) or "categories" not in body
                or not set(body) <= {"categories", "source"}):
            raise BadRequestError("Send {\"categories\": {\"<category>\": true or false}}, "
                                  "optionally with \"source\": \"widget\".")
        source = body.get("source", "devices_page")
        if source not in BROWSER_SOURCES:
            raise BadRequestError(f"'source' must be one of {', '.join(BROWSER_SOURCES)}.")
        return jsonify(preferences=_save(user_id, body["categories"], source))
    if not current_user.is_authenticated:
        return login_page()
    try:
        check_csrf()
    except CSRFError:
        page_error(400, str(EXPIRED))
    try:
        _save(user_id_of(current_user), _form_choices(), "devices_page")
    except InvalidPreferences as exc:
        page_error(400, gettext("These choices cannot be saved: %(reason)s", reason=exc.message))
    return redirect(url_for("webpush.devices", done="saved"), 303)


def _form_choices() -> dict[str, bool]:
    """The form's switches as choices: a browser sends only the ticked boxes, so every
    category it may turn off that is absent is turned off (a required one is left as is)."""
    categories = app_state().categories
    if not categories:
        page_error(400, gettext("There are no categories to choose from on this site."))
    unknown = set(request.form) - {FORM_FIELD, CATEGORY_FIELD}
    if unknown:
        page_error(400, gettext("The form has a field it should not have (%(field)s): reload the "
                           "devices page.", field=_shown(sorted(unknown)[0])))
    ticked = set(request.form.getlist(CATEGORY_FIELD))
    strangers = ticked - set(categories)
    if strangers:
        page_error(400, gettext("%(name)s is not a category of this site: reload the devices page "
                           "and choose again.", name=_shown(sorted(strangers)[0])))
    return {name: name in ticked for name, c in categories.items() if not c.required}


def _save(user_id: str, choices: object, source: str) -> dict[str, bool]:
    state = app_state()
    return set_preferences(
        state.db, state.models, state.categories, user_id, choices, source=source,
        text_version=current_app.config["WEBPUSH_CONSENT_VERSION"],
        user_agent=request.headers.get("User-Agent"))


def _shown(text: str) -> str:
    """A name the browser sent, quoted for a message (controls and surrogates blanked)."""
    return repr(clean_text(text, 64) or "")
