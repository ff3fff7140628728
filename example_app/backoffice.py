"""The shop's back-office: pick customers, write a notification, send it, watch its funnel.

Administrators only. The customer list is a CRM stand-in: it is filtered
server-side from the shop's own Order table (customers with an order of a
product, on a date). Sending goes through the public API, ``webpush.notify_users``;
the funnel comes from ``webpush.stats`` and cancelling from ``webpush.cancel``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from functools import wraps
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from flask_webpush_targeted.csrf import check_csrf
from flask_webpush_targeted.exceptions import (
    CSRFError,
    InvalidNotification,
    NotificationNotFound,
    PayloadTooLarge,
    QueueUnavailable,
)
from flask_webpush_targeted.views.admin import (
    FIGURE_LABELS,
    LIVE,
    LIVE_INTERVAL_MS,
    duration_words,
    topic_words,
)

from . import db, login_manager, webpush
from .models import Customer, Order, Product

bp = Blueprint("backoffice", __name__, url_prefix="/admin")

#: The validity periods offered (seconds, label); "custom" takes any number of seconds.
TTL_CHOICES = [
    (900, "15 minutes"), (3600, "1 hour"), (4 * 3600, "4 hours"), (86400, "1 day"),
    (3 * 86400, "3 days"), (7 * 86400, "1 week"), (28 * 86400, "4 weeks"),
]
URGENCY_CHOICES = [
    ("very-low", "Very low (waits for power and Wi-Fi)"), ("low", "Low"),
    ("normal", "Normal"), ("high", "High (wakes the device)"),
]
#: Statuses in which a notification can still be cancelled.
CANCELLABLE = ("scheduled", "queued", "sending")
#: The funnel rows of a notification's page, in the statistics pages' words.
FUNNEL = [(key, FIGURE_LABELS[key]) for key in (
    "targeted_users", "users_without_devices", "deliveries", "pending", "sent", "failed",
    "gone", "expired", "skipped", "opted_out", "capped", "held", "displayed", "clicked",
    "closed")]
#: What staff change in the form, by the argument the library's message starts with; an
#: argument not here shows the library's own message.
STAFF_MESSAGES = {
    "title": "Write a title.",
    "url": "The link must be a page of this shop, such as /products/2.",
    "topic": "The topic must be 1 to 32 letters, digits, - or _ (no spaces).",
    "urgency": "Choose an urgency from the list.",
    "ttl": "The validity period must be from 0 seconds to 4 weeks (2419200 seconds).",
    "send_at_local": "The time of day must be like 09:30 (00:00 to 23:59).",
    "category": "Choose a category from the list.",
    "rate_per_minute": "The rate per minute must be a whole number from 1 to 1,000,000, "
                       "or empty for no limit.",
}
#: The form's words for the arguments whose text can hold a character that cannot be sent.
FIELD_WORDS = {"title": "title", "body": "text", "url": "link", "topic": "topic",
               "category": "category"}
_FIELD = re.compile(r"[a-z_]+")
_SIZE = re.compile(r"is (\d+) bytes .* allows (\d+)")
#: The title and the text together fit in about this many characters (plain Latin text;
#: the library checks the real size, in bytes, tracking token included).
TEXT_LIMIT = 3600
MESSAGES = {
    "cancelled": "The notification is cancelled: nothing more of it will be sent.",
    "not-cancelled": "It could not be cancelled: it has already finished.",
}
#: Shown on a notification's page when its validity period is 0 seconds (docs/config.md).
TTL_ZERO_WARNING = ("Valid for 0 seconds: a device that is offline at the moment it is sent "
                    "never gets it, and no error says so. Send it again with a longer "
                    "validity period if it must reach every customer.")
FORM_FIELDS = ("title", "body", "url", "devices", "ttl", "ttl_custom", "urgency", "topic",
               "category", "when", "send_at", "tz_offset", "send_at_local", "quiet_hours",
               "rate_per_minute", "nonce", "title_b", "body_b")
FORM_DEFAULTS = {"url": "/", "devices": "all", "ttl": "86400", "urgency": "normal",
                 "when": "now", "quiet_hours": ""}
#: The quiet-hours choices: form value, notify_users' quiet_hours, label.
QUIET_CHOICES = [
    ("", None, "As set for the category"),
    ("keep", True, "Keep quiet hours (hold until they end)"),
    ("ignore", False, "Ignore quiet hours (send at any hour)"),
]
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_OFFSET = re.compile(r"[+-]?\d{1,4}")
#: UTC-12:00 to UTC+14:00, in minutes
_MAX_OFFSET = 14 * 60
PAGE_SIZE = 50
NAMES_SHOWN = 100


class FormError(ValueError):
    """The back-office form's own checks (the library checks the rest)."""


def admin_required(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """Anonymous users go to the login page; logged-in customers get a 403 page."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        if not current_user.is_authenticated:
            answer: ResponseReturnValue = login_manager.unauthorized()
            return answer
        if not getattr(current_user, "is_admin", False):
            return render_template("admin/forbidden.html"), 403
        return view(*args, **kwargs)

    return wrapped


# -- template helpers -----------------------------------------------------------------------


@bp.app_template_filter("utc")
def format_utc(value: datetime | None) -> str:
    """An aware datetime as 'YYYY-MM-DD HH:MM UTC'."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _characters(excess_bytes: int, text: str) -> int:
    """Roughly how many characters of ``text`` make up ``excess_bytes`` (an accented
    letter takes two bytes, an emoji four)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    return -(-excess_bytes * len(text) // size) if size else excess_bytes


@bp.app_template_filter("duration")
def format_duration(seconds: int) -> str:
    """A validity period for people, as the statistics pages say it: '1 day', '90 seconds'."""
    return duration_words(seconds)


def staff_message(exc: InvalidNotification, text: str = "") -> str:
    """What staff change in the form for the library's refusal (its message is for
    developers): by the argument it concerns, else the library's message. ``text`` is the
    title and the text typed, to say in characters how much is too long."""
    if isinstance(exc, PayloadTooLarge):
        size = _SIZE.search(exc.message)
        over = ""
        if size:
            over = f" by about {_characters(int(size[1]) - int(size[2]), text)} characters"
        return f"The message is too long{over}: shorten the title or the text."
    match = _FIELD.match(exc.message)
    field = match[0] if match else ""
    if "must not contain NUL" in exc.message and field in FIELD_WORDS:
        return (f"The {FIELD_WORDS[field]} contains a character that cannot be sent "
                "(a control character or broken text): retype it.")
    return STAFF_MESSAGES.get(field, exc.message)


# -- the customer list (CRM stand-in) -------------------------------------------------------


def _filters() -> tuple[int | None, date | None, list[str]]:
    """The ``product`` and ``ordered_on`` GET parameters, checked."""
    errors: list[str] = []
    product_id: int | None = None
    day: date | None = None
    raw = request.args.get("product", "").strip()
    if raw:
        if raw.isdigit() and db.session.get(Product, int(raw)) is not None:
            product_id = int(raw)
        else:
            errors.append("Unknown product in the filter.")
    raw = request.args.get("ordered_on", "").strip()
    if raw:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            errors.append("The order date of the filter must be a date (YYYY-MM-DD).")
    return product_id, day, errors


def _customers(product_id: int | None, day: date | None) -> list[Customer]:
    """Customers with an order matching both filters (the same order), by name."""
    query = sa.select(Customer).order_by(Customer.name, Customer.id)
    if product_id is not None or day is not None:
        match = [Order.customer_id == Customer.id]
        if product_id is not None:
            match.append(Order.product_id == product_id)
        if day is not None:
            match.append(Order.ordered_on == day)
        query = query.where(sa.exists().where(*match))
    return list(db.session.scalars(query))


def _customers_by_id(ids: Iterable[str]) -> dict[str, Customer]:
    numbers = {int(i) for i in ids if i.isdigit() and len(i) < 12}
    if not numbers:
        return {}
    rows = db.session.scalars(sa.select(Customer).where(Customer.id.in_(numbers)))
    return {str(c.id): c for c in rows}


def _device_counts(ids: list[str]) -> dict[str, int]:
    """Active devices per customer id, so the admin sees who can be reached."""
    if not ids:
        return {}
    Sub = webpush.models.Subscription
    rows = db.session.execute(
        sa.select(Sub.user_id, sa.func.count()).where(Sub.user_id.in_(ids),
                                                      Sub.revoked_at.is_(None))
        .group_by(Sub.user_id)).all()
    return {user_id: int(count) for user_id, count in rows}


def _names(ids: Iterable[str], limit: int | None = None) -> list[str]:
    """Customers' names for user ids; an id with no customer (erased) shows as such."""
    wanted = list(ids)[:limit] if limit is not None else list(ids)
    known = _customers_by_id(wanted)
    return [known[i].name if i in known else f"user {i} (no such customer)" for i in wanted]


# -- the send form --------------------------------------------------------------------------


def _render_send(form: dict[str, Any], errors: list[str], status: int = 200) -> ResponseReturnValue:
    product_id, day, filter_errors = _filters()
    customers = [] if filter_errors else _customers(product_id, day)
    shown = {str(c.id) for c in customers}
    chosen = [c for i, c in _customers_by_id(form["users"]).items() if i not in shown]
    customers = chosen + customers
    products = db.session.scalars(sa.select(Product).order_by(Product.name)).all()
    return render_template(
        "admin/send.html", form=form, errors=filter_errors + errors, customers=customers,
        devices=_device_counts([str(c.id) for c in customers]), products=products,
        product_id=product_id, ordered_on=day.isoformat() if day else "",
        filtered=product_id is not None or day is not None,
        ttl_choices=TTL_CHOICES, urgency_choices=URGENCY_CHOICES,
        categories=webpush.categories, quiet_choices=QUIET_CHOICES, text_limit=TEXT_LIMIT,
        action=url_for(".send", product=request.args.get("product") or None,
                       ordered_on=request.args.get("ordered_on") or None),
    ), status if status != 200 else (400 if filter_errors or errors else 200)


def _send_at(raw: str, offset: str) -> datetime:
    """The aware time to send at, from a datetime-local value and the browser's offset.

    ``offset`` is minutes east of UTC (``-Date.getTimezoneOffset()`` in the
    browser: 60 in Warsaw in winter, -300 in New York); absent means UTC.
    """
    if not raw.strip():
        raise FormError("Choose the date and time to send at, or choose 'Send now'.")
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise FormError("The send time is not a valid date and time.") from None
    if when.tzinfo is None:
        offset = offset.strip() or "0"
        if not _OFFSET.fullmatch(offset) or abs(int(offset)) > _MAX_OFFSET:
            raise FormError("The browser's time zone offset is not valid; reload the page.")
        when = when.replace(tzinfo=timezone(timedelta(minutes=int(offset))))
    when = when.astimezone(UTC)
    if when < datetime.now(UTC) - timedelta(minutes=1):
        raise FormError("The send time has passed: choose a later time, or 'Send now'.")
    return when


def _ttl(form: dict[str, Any]) -> int:
    raw = (form["ttl_custom"] if form["ttl"] == "custom" else form["ttl"]).strip()
    if not raw.isdigit():
        raise FormError("The validity period must be a whole number of seconds.")
    return int(raw)


def _quiet_hours(raw: str) -> bool | None:
    for value, quiet, _label in QUIET_CHOICES:
        if raw == value:
            return quiet
    raise FormError("Choose how quiet hours apply: as set, keep them, or ignore them.")


def _rate(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise FormError("The rate per minute must be a whole number, or empty for no limit.")
    # A longer number is refused by notify_users all the same, with the range in its
    # message; int() of thousands of digits would raise instead.
    return int(raw) if len(raw) <= 18 else 10**18


def _timing(form: dict[str, Any]) -> dict[str, Any]:
    """send_at or send_at_local, from the "When" choice; raises FormError."""
    if form["when"] == "later":
        return {"send_at": _send_at(form["send_at"], form["tz_offset"]), "send_at_local": None}
    if form["when"] == "local":
        if not form["send_at_local"].strip():
            raise FormError("Choose the time of day to send at in each customer's time zone.")
        return {"send_at": None, "send_at_local": form["send_at_local"].strip()}
    return {"send_at": None, "send_at_local": None}


def _notify_arguments(form: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The form, checked, as notify_users' arguments; raises FormError."""
    if not _NONCE.fullmatch(form["nonce"]):
        raise FormError("The form has no valid one-time key: reload the page and try again.")
    users: list[str] = list(dict.fromkeys(form["users"]))
    if not users:
        raise FormError("Choose at least one customer.")
    unknown = sorted(set(users) - set(_customers_by_id(users)))
    if unknown:
        raise FormError(f"Unknown customer id(s): {', '.join(unknown)}.")
    if form["devices"] not in ("all", "latest"):
        raise FormError("Choose the devices: all of them, or each customer's latest.")
    variants = None
    if form["title_b"].strip():
        # An A/B test: half the customers get each wording (the same one on every device).
        variants = [{"title": form["title"].strip(), "body": form["body"].strip()},
                    {"title": form["title_b"].strip(),
                     "body": form["body_b"].strip() or form["body"].strip()}]
    elif form["body_b"].strip():
        raise FormError("Give the second wording a title too, or leave both empty.")
    return users, {
        "variants": variants,
        "title": form["title"].strip(), "body": form["body"].strip(),
        "url": form["url"].strip() or "/", "devices": form["devices"], "ttl": _ttl(form),
        "urgency": form["urgency"], "topic": form["topic"].strip() or None,
        "category": form["category"].strip() or None, **_timing(form),
        "quiet_hours": _quiet_hours(form["quiet_hours"]),
        "rate_per_minute": _rate(form["rate_per_minute"]),
        # The one-time nonce of the form: a double submit finds the first notification.
        "idempotency_key": f"backoffice-{form['nonce']}",
    }


@bp.route("/send", methods=["GET", "POST"])
@admin_required
def send() -> ResponseReturnValue:
    """GET: the form. POST: send, then land on the notification's page."""
    if request.method == "GET":
        form: dict[str, Any] = {name: FORM_DEFAULTS.get(name, "") for name in FORM_FIELDS}
        form["nonce"] = secrets.token_urlsafe(24)
        form["users"] = []
        return _render_send(form, [])
    try:
        check_csrf()
    except CSRFError:
        abort(400, "The form has expired: reload the page and try again.")
    form = {name: request.form.get(name, "") for name in FORM_FIELDS}
    form["users"] = request.form.getlist("user")
    try:
        users, arguments = _notify_arguments(form)
        notification = webpush.notify_users(users, **arguments)
    except (FormError, InvalidNotification) as exc:
        message = (staff_message(exc, form["title"] + form["body"])
                   if isinstance(exc, InvalidNotification) else str(exc))
        return _render_send(form, [message], 400)
    except QueueUnavailable as exc:
        if exc.notification_id is None:
            return _render_send(form, [str(exc)], 503)
        # Stored: its page says it waits for the queue (as long as it does).
        return redirect(url_for(".notification", notification_id=exc.notification_id), 303)
    return redirect(url_for(".notification", notification_id=notification.id), 303)


# -- notifications --------------------------------------------------------------------------


@bp.route("/notifications")
@admin_required
def notifications() -> ResponseReturnValue:
    """The recent notifications, newest first; ``?before=<id>`` pages back."""
    N = webpush.models.Notification
    query = sa.select(N).order_by(N.id.desc()).limit(PAGE_SIZE + 1)
    before = request.args.get("before", type=int)
    if before is not None:
        query = query.where(N.id < before)
    rows = list(db.session.scalars(query))
    older = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    shown = rows[:PAGE_SIZE]
    return render_template("admin/notifications.html", notifications=shown, older=older,
                           figures={n.id: webpush.stats(n.id) for n in shown})


@bp.route("/notifications/<int:notification_id>")
@admin_required
def notification(notification_id: int) -> ResponseReturnValue:
    """One notification: message, status, targeting, schedule, funnel, Cancel."""
    n = db.session.get(webpush.models.Notification, notification_id) or abort(404)
    stats = webpush.stats(notification_id)
    user_ids: list[str] = list(n.targeting.get("user_ids", []))
    without: list[str] = list(n.users_without_devices or [])
    message = MESSAGES.get(request.args.get("done", ""))
    if n.status in ("queued", "scheduled") and n.queued_at is None:
        # notify_users stored it but Redis did not answer (QueueUnavailable); a repeat of
        # the same form returns it without trying the queue again, so read the state.
        message = (f"Notification {n.id} is stored, but the queue (Redis) did not answer: it "
                   "will be sent when the queue is back (every worker enqueues what was left "
                   "behind).")
    return render_template(
        "admin/notification.html", n=n, stats=stats, rules=_rules(n, stats),
        funnel=[(key, label, _figure(n, key, stats)) for key, label in FUNNEL
                if _shown(n, key, stats)],
        topic=topic_words(n),
        targeted=_names(user_ids, NAMES_SHOWN), more_targeted=max(len(user_ids) - NAMES_SHOWN, 0),
        without=_names(without), opted_out=_names(n.users_opted_out or [], NAMES_SHOWN),
        cancellable=n.status in CANCELLABLE, message=message,
        ttl_warning=TTL_ZERO_WARNING if n.ttl == 0 else None,
        live=n.status in LIVE, live_interval_ms=LIVE_INTERVAL_MS,
    )


def _figure(n: Any, key: str, stats: dict[str, Any]) -> Any:
    """A funnel figure; who has no device is not known before the fan-out, so not 0."""
    if key == "users_without_devices" and n.fanned_out_at is None:
        return "—"
    return stats[key]


def _category_spec(name: str | None) -> dict[str, Any] | None:
    """The shop's WEBPUSH_CATEGORIES entry of a category (None: not a configured one)."""
    configured = current_app.config.get("WEBPUSH_CATEGORIES") or {}
    spec = configured.get(name or "")
    return dict(spec) if spec is not None else None


def _shown(n: Any, key: str, stats: dict[str, Any]) -> bool:
    """Whether a funnel row applies: opted out for an optional category, capped for one
    with a cap, held while quiet hours hold some; the others always."""
    if key not in stats:
        return False
    spec = _category_spec(n.category)
    if key == "opted_out":
        return bool(stats[key]) or (spec is not None and not spec.get("required"))
    if key == "capped":
        return bool(stats[key]) or (spec is not None and spec.get("cap") is not None)
    if key == "held":
        return bool(stats[key])
    return True


def _quiet_words(n: Any) -> str:
    if n.quiet_hours is False:
        return "Ignored: sent at any hour"
    spec = _category_spec(n.category) or {}
    window = spec["quiet_hours"] if "quiet_hours" in spec else current_app.config[
        "WEBPUSH_QUIET_HOURS"]
    if window is None and n.quiet_hours is True:
        window = current_app.config["WEBPUSH_QUIET_HOURS"]
    if window is None:
        return "None for this category"
    how = "Kept" if n.quiet_hours else "As set for the category"
    return f"{how}: nothing from {window[0]} to {window[1]} in each customer's time zone"


def _rules(n: Any, stats: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The notification's category, quiet hours, local time and pace, in words."""
    spec = _category_spec(n.category)
    rules = [("category", "Category", spec["label"] if spec else (n.category or "—")),
             ("quiet-hours", "Quiet hours", _quiet_words(n))]
    if n.send_at_local:
        rules.append(("send-at-local", "Local time",
                      f"Sent at {n.send_at_local} in each customer's time zone"))
    if n.rate_per_minute is not None:
        pace = f"At most {n.rate_per_minute:,} a minute"
        if stats.get("expected_finish_at"):
            finish = datetime.fromisoformat(stats["expected_finish_at"])
            pace += f"; expected to finish at {format_utc(finish)}"
        rules.append(("rate", "Pace", pace))
    return rules


@bp.route("/notifications/<int:notification_id>/cancel", methods=["POST"])
@admin_required
def cancel(notification_id: int) -> ResponseReturnValue:
    """Cancel a scheduled, queued or still-sending notification."""
    try:
        check_csrf()
    except CSRFError:
        abort(400, "The form has expired: reload the page and try again.")
    try:
        done = webpush.cancel(notification_id)
    except NotificationNotFound:
        abort(404)
    return redirect(url_for(".notification", notification_id=notification_id,
                            done="cancelled" if done else "not-cancelled"), 303)
