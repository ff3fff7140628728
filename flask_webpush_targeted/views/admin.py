"""Administrators' statistics views (HTML) and their JSON, deny by default.

The host decides who may see them with ``@webpush.stats_access``; without a
registered callback nobody may. Anonymous users go to the host's login page
(HTML) or get 401 (JSON); everyone else the callback refuses gets 403.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn

from flask import (
    Blueprint,
    Response,
    abort,
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
from ..charts import series_svg
from ..crm_requests import STATUSES
from ..csrf import check_csrf, csrf_token
from ..exceptions import APIError, BadRequestError, CSRFError, LoginRequired, NotificationNotFound
from .common import ext
from .pages import _login_page

PER_PAGE = 25


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
        ("/admin/users/<user_id>", "admin_user", user_page, ["GET"]),
        ("/admin/users/<user_id>.json", "admin_user_json", user_json, ["GET"]),
    ]
    for rule, endpoint, view, methods in rules:
        bp.add_url_rule(rule, endpoint, view, methods=methods)


def _allowed(json: bool) -> ResponseReturnValue | None:
    """None when the current user may see statistics; otherwise the refusal to return."""
    if not current_user.is_authenticated:
        if json:
            raise LoginRequired("Log in as an administrator to see statistics.")
        return _login_page()
    check = ext()._stats_access
    if check is None or not check(current_user):
        if json:
            raise AccessDenied("You may not see these statistics.")
        abort(403, "You may not see these statistics.")
    return None


def _int_arg(name: str, default: int) -> int:
    value = request.args.get(name, type=int)
    return value if value is not None and value > 0 else default


def _bad_filter(json: bool, message: str) -> NoReturn:
    if json:
        raise BadRequestError(message)  # the JSON error shape
    abort(400, message)


def _date_arg(name: str, json: bool) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _bad_filter(json, f"{name} must be a date like 2026-11-26.")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _filters(json: bool = False) -> dict[str, Any]:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        _bad_filter(json, f"status must be one of {', '.join(STATUSES)}.")
    return {"status": status, "category": request.args.get("category") or None,
            "since": _date_arg("since", json), "until": _date_arg("until", json)}


def _notification_json(n: Any) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": n.id, "status": n.status, "category": n.category, "payload": n.payload,
            "devices": n.targeting.get("devices"),
            "targeted_users": n.target_count,
            "users_without_devices": n.users_without_devices, "ttl": n.ttl,
            "urgency": n.urgency, "topic": n.topic, "send_at": iso(n.send_at),
            "created_at": iso(n.created_at), "queued_at": iso(n.queued_at),
            "finished_at": iso(n.finished_at)}


def admin_index() -> ResponseReturnValue:
    """The admin home: the list of notifications."""
    return _allowed(json=False) or redirect(url_for("webpush.admin_notifications"))


def notifications_page() -> ResponseReturnValue:
    """Notifications, newest first, filtered and paginated, each with its funnel."""
    refused = _allowed(json=False)
    if refused:
        return refused
    page, filters = _int_arg("page", 1), _filters()
    webpush = ext()
    items, total = stats.list_notifications(webpush.db, webpush.models, page=page,
                                            per_page=PER_PAGE, **filters)
    return render_template("webpush/admin/notifications.html", items=items, total=total,
                           page=page, pages=max(1, -(-total // PER_PAGE)), statuses=STATUSES,
                           args=request.args)


def notifications_json() -> ResponseReturnValue:
    """The same list as JSON."""
    _allowed(json=True)
    page, filters = _int_arg("page", 1), _filters(json=True)
    webpush = ext()
    items, total = stats.list_notifications(webpush.db, webpush.models, page=page,
                                            per_page=_int_arg("per_page", PER_PAGE),
                                            lists=True, **filters)
    return jsonify(total=total, page=page, notifications=[
        {**_notification_json(i["notification"]), "funnel": i["funnel"]} for i in items])


def notification_page(nid: int) -> ResponseReturnValue:
    """One notification: funnel, reasons, devices, time series, payload, schedule."""
    refused = _allowed(json=False)
    if refused:
        return refused
    webpush = ext()
    try:
        n = webpush.get_notification(nid)
    except NotificationNotFound:
        abort(404, f"No notification has id {nid}.")
    page = _int_arg("page", 1)
    rows, total = stats.deliveries_page(webpush.db, webpush.models, nid, page=page)
    series = stats.time_series(webpush.db, webpush.models, nid)
    return render_template(
        "webpush/admin/notification.html", n=n, funnel=webpush.stats(nid), rows=rows,
        total=total, page=page, pages=max(1, -(-total // 50)), chart=series_svg(series),
        series=series, csrf_token=csrf_token(),
        cancellable=n.status in ("scheduled", "queued", "sending"))


def notification_json(nid: int) -> ResponseReturnValue:
    """One notification's figures and time series as JSON."""
    _allowed(json=True)
    webpush = ext()
    n = webpush.get_notification(nid)
    return jsonify(notification=_notification_json(n), stats=webpush.stats(nid),
                   time_series=stats.time_series(webpush.db, webpush.models, nid))


DELIVERY_FIELDS = ("id", "user_id", "subscription_id", "device", "status", "status_code",
                   "reason", "attempts", "sent_at", "displayed_at", "clicked_at", "closed_at",
                   "action")


def _delivery_row(delivery: Any, label: str | None) -> dict[str, Any]:
    row = {f: getattr(delivery, f, None) for f in DELIVERY_FIELDS if f != "device"}
    row["device"] = label
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def deliveries_csv(nid: int) -> ResponseReturnValue:
    """Every delivery of a notification as CSV, streamed."""
    refused = _allowed(json=False)
    if refused:
        return refused
    webpush = ext()
    try:
        webpush.get_notification(nid)
    except NotificationNotFound:
        abort(404, f"No notification has id {nid}.")

    from ..spreadsheet import safe_row

    def generate() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=DELIVERY_FIELDS)
        writer.writeheader()
        for delivery, label in stats.iter_deliveries(webpush.db, webpush.models, nid):
            # Labels, reasons and actions come from customers, push services and browsers:
            # none may run as a formula in the administrator's spreadsheet.
            writer.writerow(safe_row(_delivery_row(delivery, label)))
            if buffer.tell() > 65536:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(stream_with_context(generate()), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="notification-{nid}-deliveries.csv"'})


def deliveries_json(nid: int) -> ResponseReturnValue:
    """A page of a notification's deliveries as JSON."""
    _allowed(json=True)
    webpush = ext()
    webpush.get_notification(nid)
    page = _int_arg("page", 1)
    per_page = min(_int_arg("per_page", 100), 1000)
    rows, total = stats.deliveries_page(webpush.db, webpush.models, nid, page=page,
                                        per_page=per_page)
    return jsonify(total=total, page=page,
                   deliveries=[_delivery_row(d, label) for d, label in rows])


def cancel(nid: int) -> ResponseReturnValue:
    """Cancel a notification that is still scheduled, queued or sending."""
    refused = _allowed(json=False)
    if refused:
        return refused
    try:
        check_csrf()
        ext().cancel(nid)
    except CSRFError:
        abort(400, "The form has expired: reload the page and try again.")
    except NotificationNotFound:
        abort(404, f"No notification has id {nid}.")
    return redirect(url_for("webpush.admin_notification", nid=nid), 303)


def _history(user_id: str) -> list[dict[str, Any]]:
    webpush = ext()
    return [{"delivery": d, "notification": n, "device": label}
            for d, n, label in stats.user_history(webpush.db, webpush.models, user_id)]


def user_page(user_id: str) -> ResponseReturnValue:
    """One customer (support): every notification sent to them, per device, what happened."""
    refused = _allowed(json=False)
    if refused:
        return refused
    webpush = ext()
    return render_template("webpush/admin/user.html", user_id=user_id,
                           devices=webpush.store.user_subscriptions(user_id),
                           history=_history(user_id))


def user_json(user_id: str) -> ResponseReturnValue:
    """The same as JSON."""
    _allowed(json=True)
    return jsonify(user_id=user_id, history=[
        {"notification_id": h["notification"].id, "title": h["notification"].payload["title"],
         **_delivery_row(h["delivery"], h["device"])} for h in _history(user_id)])
