"""Administrators' statistics views (HTML) and their JSON, deny by default.

The host decides who may see them with ``@webpush.stats_access``; without a
registered callback nobody may. Anonymous users go to the host's login page
(HTML) or get 401 (JSON); everyone else the callback refuses gets 403. Every
view says so with ``@stats_access_required``.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn, ParamSpec

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from werkzeug.exceptions import Forbidden

from .. import stats
from ..categories import Category, quiet_window
from ..charts import series_svg
from ..clock import iso, utcnow
from ..config import window
from ..context import app_state
from ..csrf import check_csrf, csrf_token
from ..exceptions import (
    APIError,
    BadRequestError,
    CSRFError,
    InvalidUserId,
    LoginRequired,
    NotificationNotFound,
)
from ..i18n import N_, gettext, ngettext
from ..i18n import lazy_gettext as _l
from ..limits import LATEST, MAX_PAGE, MAX_PER_PAGE
from ..local_time import Window
from ..notifications import notification_fields
from ..placeholders import title_for
from ..spreadsheet import safe_row
from ..statuses import NOTIFICATION_STATUSES, OPEN, WAITING, NotificationStatus
from ..users import user_id_of
from ..web_input import add_user_id_converter
from .common import ext, login_page

PER_PAGE = 25
#: While a notification is in one of these, its page updates its figures by itself.
LIVE = (NotificationStatus.QUEUED, NotificationStatus.SENDING)
#: How often a live page asks for its figures, in milliseconds.
LIVE_INTERVAL_MS = 3000
#: the most deliveries one JSON page may ask for with ``per_page``; notifications take the
#: push API's MAX_PER_PAGE, pages its MAX_PAGE (beyond it a 400, not an offset that
#: overflows the database's 64-bit integer), filter times end before its LATEST
MAX_DELIVERIES_PER_PAGE = 1000
#: filter times before this are refused: near datetime's ends, converting to UTC overflows
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: the longest customer name shown; a longer one from ``@webpush.user_display`` is cut
MAX_NAME = 200

log = logging.getLogger(__name__)


class AccessDenied(APIError, Forbidden):
    """The stats_access callback refused this user."""

    error = "forbidden"


def register(bp: Blueprint) -> None:
    """Add the admin routes to ``bp``."""
    rules: list[tuple[str, str, Any, list[str]]] = [
        ("/admin/", "admin_index", admin_index, ["GET"]),
        ("/admin/notifications", "admin_notifications", notifications_page, ["GET"]),
        ("/admin/notifications.json", "admin_notifications_json", notifications_json, ["GET"]),
        ("/admin/notifications/<int:nid>", "admin_notification", notification_page, ["GET"]),
        ("/admin/notifications/<int:nid>.json", "admin_notification_json", notification_json,
         ["GET"]),
        ("/admin/notifications/<int:nid>/deliveries.csv", "admin_deliveries_csv",
         deliveries_csv, ["GET"]),
        ("/admin/notifications/<int:nid>/deliveries.json", "admin_deliveries_json",
         deliveries_json, ["GET"]),
        ("/admin/notifications/<int:nid>/cancel", "admin_cancel", cancel, ["POST"]),
        # Any user id, "/" and newlines included, reaches the view (as in the push API).
        ("/admin/users/<webpush_user_id:user_id>", "admin_user", user_page, ["GET"]),
        ("/admin/users/<webpush_user_id:user_id>.json", "admin_user_json", user_json, ["GET"]),
    ]
    bp.record_once(add_user_id_converter)
    for rule, endpoint, view, methods in rules:
        bp.add_url_rule(rule, endpoint, view, methods=methods)


def _refusal(json: bool) -> ResponseReturnValue | None:
    """None when the current user may see statistics; otherwise the refusal to return (a
    JSON refusal is raised: the error handler answers it)."""
    if not current_user.is_authenticated:
        if json:
            raise LoginRequired("Log in as an administrator to see statistics.")
        return login_page()
    check = ext()._stats_access
    if check is None or not check(current_user):
        if json:
            raise AccessDenied("You may not see these statistics.")
        error_page(403, gettext("You may not see these statistics."))
    return None


ERROR_TITLES = {400: _l("This could not be done"), 403: _l("Not for your account"),
                404: _l("Not found")}


def error_page(status: int, message: str) -> NoReturn:
    """Stop with a page in the host's layout that says what went wrong and links back."""
    html = render_template("webpush/admin/error.html", status=status, message=message,
                           title=ERROR_TITLES.get(status, _l("Something went wrong")))
    abort(Response(html, status, mimetype="text/html"))


def _not_found(nid: int) -> NoReturn:
    error_page(404, gettext("No notification has id %(nid)s.", nid=nid))


def customer_name(user_id: str) -> str:
    """How staff know a customer: ``@webpush.user_display``'s name, else the id.

    Memoised per request (an export names each customer once). None or a blank name
    means the id; a callback that raises or returns a non-string falls back to the id
    and is logged once per request, so a bug in the host's lookup never breaks a page."""
    names: dict[str, str] = g.setdefault("webpush_customer_names", {})
    if user_id not in names:
        names[user_id] = _lookup_name(user_id)
    return names[user_id]


def _lookup_name(user_id: str) -> str:
    display = ext()._user_display
    if display is None:
        return user_id
    try:
        name = display(user_id)
    except Exception:  # the host's code: any failure must leave the page working
        _log_once("raised", user_id, exc_info=True)
        return user_id
    if name is None or (isinstance(name, str) and not name.strip()):
        return user_id  # no name known: not a bug
    if not isinstance(name, str):
        _log_once(f"returned {type(name).__name__}, not a str,", user_id)
        return user_id
    if not name.isprintable() and not _encodable(name):
        # a lone surrogate cannot be written as UTF-8: the page or CSV would fail
        _log_once("returned text that is not valid Unicode", user_id)
        return user_id
    return name[:MAX_NAME]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _log_once(what: str, user_id: str, **kw: Any) -> None:
    if g.get("webpush_display_logged"):
        return
    g.webpush_display_logged = True
    log.warning("@webpush.user_display %s for user %r; showing the user id instead",
                what, user_id, **kw)


P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]


def stats_access_required(*, json: bool) -> Callable[[View[P]], View[P]]:
    """Run the view only for a user ``@webpush.stats_access`` admits, like Flask-Login's
    ``login_required``: an anonymous user gets the login page (``json``: a 401 JSON error),
    one the callback refuses, or any user without a callback, a 403 page (JSON error)."""
    def decorate(view: View[P]) -> View[P]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            refused = _refusal(json)
            if refused is not None:
                return refused
            return view(*args, **kwargs)
        return guarded
    return decorate


def _int_arg(name: str, default: int, json: bool = False, *, top: int = MAX_PAGE,
             clamp: bool = False) -> int:
    """A positive integer parameter: the default when absent, not a number or 0; above
    ``top``, ``top`` when ``clamp`` (a per_page cap), else a 400 (a page: an offset past
    the database's 64-bit integers would fail in the query)."""
    text = request.args.get(name, "")
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or not digits:
        return default
    if len(digits) > len(str(top)) or int(digits) > top:
        if clamp:
            return top
        _bad_filter(json, N_("%(name)s must be at most %(top)s."), name=name, top=top)
    return int(digits)


def _bad_filter(json: bool, message: str, **variables: Any) -> NoReturn:
    """A 400: in English for JSON (code reads it), in the page's language for a page."""
    if json:
        raise BadRequestError(message % variables)  # the JSON error shape
    error_page(400, gettext(message, **variables))


def _date_arg(name: str, json: bool) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # 0001-01-01T00:00+05:00 is before datetime.min
        _bad_filter(json, N_("%(name)s must be a date like 2026-11-26."), name=name)
    if not EARLIEST <= parsed < LATEST:
        _bad_filter(json, N_("%(name)s must be between the years %(first)s and %(last)s."),
                    name=name, first=EARLIEST.year, last=LATEST.year)
    return parsed


def _filters(json: bool = False) -> dict[str, Any]:
    status = request.args.get("status") or None
    if status is not None and status not in NOTIFICATION_STATUSES:
        _bad_filter(json, N_("status must be one of %(statuses)s."),
                    statuses=", ".join(NOTIFICATION_STATUSES))
    category = request.args.get("category") or None
    if category is not None and "\x00" in category:  # PostgreSQL refuses NUL in text
        _bad_filter(json, N_("category must not contain NUL characters."))
    return {"status": status, "category": category,
            "since": _date_arg("since", json), "until": _date_arg("until", json)}


def _notification_json(n: Any) -> dict[str, Any]:
    # Not the push API's Notification (a documented contract): administrators see the
    # whole payload, the targeting and the queue time. The fields both show are shared.
    return {**notification_fields(n), "payload": n.payload,
            "devices": n.targeting.get("devices"), "targeted_users": n.target_count,
            "users_without_devices": n.users_without_devices,
            "users_opted_out": n.users_opted_out, "opted_out_count": n.opted_out_count,
            "capped_count": n.capped_count, "holds": n.holds, "queued_at": iso(n.queued_at)}


# -- a notification's rules, in words staff understand --------------------------------------

#: The funnel's figures as staff read them, here and in a host's own back-office (one
#: vocabulary: "customers", and one explanation of "skipped").
FIGURE_LABELS = {
    "targeted_users": _l("Targeted customers"),
    "users_without_devices": _l("Customers without a device"),
    "deliveries": _l("Deliveries (one per device)"),
    "pending": _l("Pending (waiting or being sent)"),
    "sent": _l("Sent (accepted by the push service)"),
    "failed": _l("Failed"),
    "gone": _l("Gone (the device unsubscribed)"),
    "expired": _l("Expired (validity period passed)"),
    "skipped": _l("Skipped (cancelled, device removed, category turned off or frequency cap)"),
    "opted_out": _l("Opted out (turned the category off)"),
    "capped": _l("Not sent: frequency cap of the category"),
    "held": _l("Held for quiet hours"),
    "displayed": _l("Displayed"),
    "clicked": _l("Clicked"),
    "closed": _l("Closed"),
    "conversions": _l("Conversions after a click"),
    "influenced_conversions": _l("Conversions after a display only"),
}


def _weeks(count: int) -> str:
    return ngettext("%(num)s week", "%(num)s weeks", count)


def _days(count: int) -> str:
    return ngettext("%(num)s day", "%(num)s days", count)


def _hours(count: int) -> str:
    return ngettext("%(num)s hour", "%(num)s hours", count)


def _minutes(count: int) -> str:
    return ngettext("%(num)s minute", "%(num)s minutes", count)


#: Units a validity period is said in, largest first: a period in one of them is whole.
_DURATION_UNITS = ((7 * 86400, _weeks), (86400, _days), (3600, _hours), (60, _minutes))


def _conversion_window_words(name: str) -> str:
    return duration_words(int(window(current_app.config, name).total_seconds()))


def duration_words(seconds: int) -> str:
    """A validity period for staff: '1 day', '2 hours', '30 minutes'; seconds only when
    it is not a whole number of minutes ('90 seconds')."""
    for unit, words in _DURATION_UNITS:
        if seconds and seconds % unit == 0:
            return words(seconds // unit)
    return ngettext("%(num)s second", "%(num)s seconds", seconds)


#: the statuses of notifications and deliveries, and the reasons the package stores, as
#: staff read them (a push service's own reason is shown as it came)
STATUS_WORDS = {
    "scheduled": _l("scheduled"), "queued": _l("queued"), "sending": _l("sending"),
    "done": _l("done"), "cancelled": _l("cancelled"), "pending": _l("pending"),
    "sent": _l("sent"), "failed": _l("failed"), "gone": _l("gone"), "expired": _l("expired"),
    "skipped": _l("skipped"),
}
REASON_WORDS = {
    "notification cancelled": _l("notification cancelled"),
    "device revoked or consent withdrawn": _l("device revoked or consent withdrawn"),
    "validity period (ttl) passed": _l("validity period (ttl) passed"),
    "category turned off": _l("category turned off"),
    "frequency cap": _l("frequency cap"),
    "timeout": _l("timeout"),
}
#: why a device was revoked (its revoked_reason), as staff read it
REVOKED_WORDS = {
    "device_revoked": _l("removed by the customer"),
    "consent_withdrawn": _l("consent withdrawn"),
    "gone": _l("gone"),
    "logout": _l("logged out"),
    "rotated": _l("replaced by a new subscription"),
}
DEVICE_WORDS = {"all": _l("all"), "latest": _l("the latest")}
URGENCY_WORDS = {"very-low": _l("very low"), "low": _l("low"), "normal": _l("normal"),
                 "high": _l("high")}


def state_words(status: str | None) -> str:
    """A notification's or delivery's status as staff read it."""
    return str(STATUS_WORDS.get(status or "", status or ""))


def reason_words(reason: str | None) -> str:
    """A stored reason in the page's language when the package wrote it, else as stored."""
    return str(REASON_WORDS.get(reason or "", reason or ""))


def platform_words(key: str) -> str:
    """A platform figure's key ("Chrome mobile", "unknown") as staff read it."""
    if key == "unknown":
        return gettext("unknown")
    family, _, form = key.rpartition(" ")
    if form == "desktop":
        return gettext("%(browser)s desktop", browser=family)
    if form == "mobile":
        return gettext("%(browser)s mobile", browser=family)
    return key


def revoked_words(reason: str | None) -> str:
    """Why a device was revoked, in the page's language (an unknown reason as stored)."""
    return str(REVOKED_WORDS.get(reason or "", reason or ""))



def _category(name: str | None) -> Category | None:
    """The configured category of that name (None: categories off, or not configured)."""
    return (app_state().categories or {}).get(name or "")


def category_label(name: str | None) -> str:
    """A category as staff know it: its label when configured, else the name as stored."""
    category = _category(name)
    return category.label if category is not None else (name or "")


def _window_words(window: Window) -> str:
    start, end = window
    return gettext("nothing is sent from %(start)s to %(end)s in each customer's time zone",
                   start=f"{start:%H:%M}", end=f"{end:%H:%M}")


def _clock(at: datetime) -> str:
    """A UTC time: '14:05 UTC' today, with its date on another day."""
    at = at.astimezone(UTC)
    return f"{at:%H:%M} UTC" if at.date() == utcnow().date() else f"{at:%Y-%m-%d %H:%M} UTC"


def _quiet_words(n: Any) -> str | None:
    """What the notification does about quiet hours (None: nothing to say, none exist)."""
    state = app_state()
    category = _category(n.category)
    if n.quiet_hours is False:
        return gettext("Ignored: sent at any hour")
    window = quiet_window(category, state.quiet_hours, n.quiet_hours)
    if n.quiet_hours is True:
        return (gettext("Kept: %(window)s", window=_window_words(window)) if window
                else gettext("Kept (none are set now)"))
    configured = state.quiet_hours is not None or any(
        isinstance(c.quiet_hours, tuple) for c in (state.categories or {}).values())
    if window is not None:
        if category is not None and isinstance(category.quiet_hours, tuple):
            return gettext("As set for the category: %(window)s", window=_window_words(window))
        return gettext("As set for the site: %(window)s", window=_window_words(window))
    if configured:
        return gettext("None for this category")
    return None


def rules_in_words(n: Any, funnel: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The notification's rules as (key, label, words) rows: only those that apply."""
    rules: list[tuple[str, str, str]] = []
    category = _category(n.category)
    if category is not None:
        rules.append(("category", gettext("Category"), category.label))
    quiet = _quiet_words(n)
    if quiet is not None:
        rules.append(("quiet_hours", gettext("Quiet hours"), quiet))
    if n.send_at_local:
        rules.append(("send_at_local", gettext("Local time"),
                      gettext("Sent at %(time)s in each customer's time zone",
                              time=n.send_at_local)))
    if n.rate_per_minute is not None:
        rate = f"{n.rate_per_minute:,}"
        if funnel.get("expected_finish_at"):
            finish = datetime.fromisoformat(funnel["expected_finish_at"])
            words = gettext("At most %(rate)s a minute; expected to finish at %(time)s",
                            rate=rate, time=_clock(finish))
        else:
            words = gettext("At most %(rate)s a minute", rate=rate)
        rules.append(("rate_per_minute", gettext("Pace"), words))
    return rules


def extra_figures(n: Any, funnel: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The figures of categories, caps and quiet hours that apply to the notification, as
    (key, label, value): a figure no rule of it can make is not shown."""
    category = _category(n.category)
    figures: list[tuple[str, str, int]] = []
    if funnel["opted_out"] or (category is not None and not category.required):
        figures.append(("opted_out", str(FIGURE_LABELS["opted_out"]), funnel["opted_out"]))
    if funnel["capped"] or (category is not None and category.cap is not None):
        figures.append(("capped", str(FIGURE_LABELS["capped"]), funnel["capped"]))
    if funnel["held"]:
        figures.append(("held", str(FIGURE_LABELS["held"]), funnel["held"]))
    return figures


def status_words(n: Any) -> str:
    """A notification's status as staff read it: a scheduled one says when it goes out."""
    if n.status == NotificationStatus.SCHEDULED and n.send_at is not None:
        return gettext("Scheduled for %(time)s", time=_clock(n.send_at))
    return state_words(n.status)


def topic_words(n: Any) -> str:
    """The push topic: "automatic" for the one the extension gave it (``n<id>``)."""
    if n.topic is None:
        return "–"
    return gettext("automatic") if n.topic == f"n{n.id}" else str(n.topic)


def no_device_words(n: Any, funnel: dict[str, Any]) -> str | None:
    """Words instead of the "customers without a device" figure while none exists (None: the
    figure): it is counted when the notification is fanned out."""
    if n.status in WAITING:
        return gettext("known once sent")
    if n.status == NotificationStatus.CANCELLED and not funnel["deliveries"]:
        return gettext("not sent (cancelled)")
    return None


def hold_releases(n: Any) -> list[tuple[str, int]]:
    """The times still to come when held deliveries are released, with their counts."""
    if not n.holds or n.status != NotificationStatus.SENDING:
        return []
    now = utcnow()
    due = sorted((datetime.fromisoformat(at), count) for at, count in n.holds.items())
    return [(_clock(at), count) for at, count in due if at > now][:10]


@stats_access_required(json=False)
def admin_index() -> ResponseReturnValue:
    """The admin home: the list of notifications."""
    return redirect(url_for("webpush.admin_notifications"))


@stats_access_required(json=False)
def notifications_page() -> ResponseReturnValue:
    """Notifications, newest first, filtered and paginated, each with its funnel."""
    page, filters = _int_arg("page", 1), _filters()
    webpush = ext()
    items, total = stats.list_notifications(webpush.db, webpush.models, page=page,
                                            per_page=PER_PAGE, **filters)
    return render_template("webpush/admin/notifications.html", items=items, total=total,
                           page=page, pages=max(1, -(-total // PER_PAGE)),
                           statuses=NOTIFICATION_STATUSES, args=request.args,
                           category_label=category_label, status_words=status_words,
                           notification_status_words=state_words)


@stats_access_required(json=True)
def notifications_json() -> ResponseReturnValue:
    """The same list as JSON."""
    page, filters = _int_arg("page", 1, True), _filters(json=True)
    per_page = _int_arg("per_page", PER_PAGE, True, top=MAX_PER_PAGE, clamp=True)
    webpush = ext()
    items, total = stats.list_notifications(webpush.db, webpush.models, page=page,
                                            per_page=per_page, lists=True, **filters)
    return jsonify(total=total, page=page, per_page=per_page, notifications=[
        {**_notification_json(i["notification"]), "funnel": i["funnel"]} for i in items])


@stats_access_required(json=False)
def notification_page(nid: int) -> ResponseReturnValue:
    """One notification: funnel, reasons, devices, time series, payload, schedule."""
    webpush = ext()
    try:
        n = webpush.get_notification(nid)
    except NotificationNotFound:
        _not_found(nid)
    page = _int_arg("page", 1)
    rows, total = stats.deliveries_page(webpush.db, webpush.models, nid, page=page)
    series = stats.time_series(webpush.db, webpush.models, nid)
    funnel = webpush.stats(nid)
    return render_template(
        "webpush/admin/notification.html", n=n, funnel=funnel, rows=rows,
        total=total, page=page, pages=max(1, -(-total // 50)), chart=series_svg(series),
        series=series, csrf_token=csrf_token(),
        cancellable=n.status in OPEN, rules=rules_in_words(n, funnel),
        extra_figures=extra_figures(n, funnel), releases=hold_releases(n),
        category_label=category_label, customer_name=customer_name,
        status_words=status_words(n), topic=topic_words(n),
        delivery_status_words=state_words, reason_words=reason_words,
        platform_words=platform_words,
        devices_words=devices_words(n), urgency_words=str(URGENCY_WORDS.get(n.urgency, n.urgency)),
        no_device_words=no_device_words(n, funnel), labels=FIGURE_LABELS,
        validity=duration_words(n.ttl), live=n.status in LIVE,
        variant_rate_words=(gettext("conversion rate")
                            if (n.variants or {}).get("winner_by") == "conversions"
                            else gettext("click-through rate")),
        attribution_window=_conversion_window_words("WEBPUSH_ATTRIBUTION_WINDOW"),
        influence_window=_conversion_window_words("WEBPUSH_INFLUENCE_WINDOW"),
        live_interval_ms=LIVE_INTERVAL_MS,
        title_of=lambda d: title_for(n.payload, n.vars, d.vars, d.language),
        audience_words=audience_words(n))


def audience_words(n: Any) -> str | None:
    """The audience a notification went to, for staff: its name and size, or that it is
    gone; None when it went to a list of users."""
    audience_id = n.targeting.get("audience_id")
    if audience_id is None:
        return None
    webpush = ext()
    audience = webpush.db.session.get(webpush.models.Audience, audience_id)
    if audience is None:
        return gettext("Audience %(id)s, deleted since it was sent.", id=audience_id)
    return ngettext("%(name)s (audience %(id)s, %(size)s member now)",
                    "%(name)s (audience %(id)s, %(size)s members now)", audience.size,
                    name=audience.name, id=audience.id, size=f"{audience.size:,}")


def devices_words(n: Any) -> str:
    """Which devices of each customer it went to: all, the latest, or the ids chosen."""
    devices = n.targeting.get("devices")
    if isinstance(devices, str):
        return str(DEVICE_WORDS.get(devices, devices))
    return str(devices)


@stats_access_required(json=True)
def notification_json(nid: int) -> ResponseReturnValue:
    """One notification's figures and time series as JSON."""
    webpush = ext()
    n = webpush.get_notification(nid)
    return jsonify(notification=_notification_json(n), stats=webpush.stats(nid),
                   time_series=stats.time_series(webpush.db, webpush.models, nid))


DELIVERY_FIELDS = ("id", "user_id", "customer", "subscription_id", "device", "title", "status",
                   "status_code", "reason", "attempts", "sent_at", "displayed_at", "clicked_at",
                   "closed_at", "action", "due_at")


def _delivery_row(delivery: Any, label: str | None, n: Any) -> dict[str, Any]:
    row = {f: getattr(delivery, f, None) for f in DELIVERY_FIELDS
           if f not in ("device", "customer", "title")}
    row["customer"] = customer_name(delivery.user_id)
    row["device"] = label
    # With placeholders, what this customer saw: the title filled with their vars.
    row["title"] = title_for(n.payload, n.vars, delivery.vars, delivery.language)
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@stats_access_required(json=False)
def deliveries_csv(nid: int) -> ResponseReturnValue:
    """Every delivery of a notification as CSV, streamed."""
    webpush = ext()
    try:
        n = webpush.get_notification(nid)
    except NotificationNotFound:
        _not_found(nid)

    def generate() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=DELIVERY_FIELDS)
        writer.writeheader()
        for delivery, label in stats.iter_deliveries(webpush.db, webpush.models, nid):
            # Labels, reasons and actions come from customers, push services and browsers:
            # none may run as a formula in the administrator's spreadsheet.
            writer.writerow(safe_row(_delivery_row(delivery, label, n)))
            if buffer.tell() > 65536:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(stream_with_context(generate()), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="notification-{nid}-deliveries.csv"'})


@stats_access_required(json=True)
def deliveries_json(nid: int) -> ResponseReturnValue:
    """A page of a notification's deliveries as JSON."""
    webpush = ext()
    n = webpush.get_notification(nid)
    page = _int_arg("page", 1, True)
    per_page = _int_arg("per_page", 100, True, top=MAX_DELIVERIES_PER_PAGE, clamp=True)
    rows, total = stats.deliveries_page(webpush.db, webpush.models, nid, page=page,
                                        per_page=per_page)
    return jsonify(total=total, page=page, per_page=per_page,
                   deliveries=[_delivery_row(d, label, n) for d, label in rows])


@stats_access_required(json=False)
def cancel(nid: int) -> ResponseReturnValue:
    """Cancel a notification that is still scheduled, queued or sending."""
    try:
        check_csrf()
        ext().cancel(nid)
    except CSRFError:
        error_page(400, gettext("The form has expired: reload the page and try again."))
    except NotificationNotFound:
        _not_found(nid)
    return redirect(url_for("webpush.admin_notification", nid=nid), 303)


def _user_id_arg(user_id: str, json: bool) -> str:
    """A user id from the URL: one that can be stored (a NUL would fail the query on
    PostgreSQL), else a 400."""
    try:
        return user_id_of(user_id)
    except InvalidUserId as exc:
        _bad_filter(json, N_("Not a user id: %(reason)s."), reason=exc)


def _history(user_id: str) -> list[dict[str, Any]]:
    webpush = ext()
    return [{"delivery": d, "notification": n, "device": label,
             "title": title_for(n.payload, n.vars, d.vars, d.language)}
            for d, n, label in stats.user_history(webpush.db, webpush.models, user_id)]


@stats_access_required(json=False)
def user_page(user_id: str) -> ResponseReturnValue:
    """One customer (support): every notification sent to them, per device, what happened."""
    user_id = _user_id_arg(user_id, json=False)
    webpush = ext()
    return render_template("webpush/admin/user.html", user_id=user_id,
                           name=customer_name(user_id),
                           devices=webpush.store.user_subscriptions(user_id),
                           history=_history(user_id), delivery_status_words=state_words,
                           revoked_words=revoked_words, reason_words=reason_words)


@stats_access_required(json=True)
def user_json(user_id: str) -> ResponseReturnValue:
    """The same as JSON."""
    user_id = _user_id_arg(user_id, json=True)
    return jsonify(user_id=user_id, customer=customer_name(user_id), history=[
        {"notification_id": h["notification"].id,
         **_delivery_row(h["delivery"], h["device"], h["notification"])}
        for h in _history(user_id)])
