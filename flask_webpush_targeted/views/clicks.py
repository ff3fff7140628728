"""``GET /webpush/c/<token>``: a click counted where no service worker runs, then the page.

A declarative notification (WEBPUSH_PAYLOAD_FORMAT "declarative") opens this URL when
clicked: Safari shows it without running the service worker, so no beacon can report the
click. The signed per-delivery token says which delivery; the click counts once, and the
browser goes on to the notification's URL on the site. Nothing here ever leads off-site:
a URL that is not on the site, and a token that is forged, malformed or expired, lead to
the site's root, and count nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, current_app, redirect, request
from flask.typing import ResponseReturnValue

from .. import signals
from ..exceptions import InvalidNotification, RateLimited
from ..payload import check_url
from ..placeholders import filler
from ..tracking import InvalidToken, read_token, record_event
from ..transport.origins import web_origin
from .common import ext
from .events import check_events_rate_limit


def register(bp: Blueprint) -> None:
    """Add the click route to ``bp``."""
    # Any path, not only a token's characters: a mangled link still lands on the site.
    bp.add_url_rule("/c/<path:token>", "click", click)


def _site() -> str:
    """The site's origin, "https://shop.example", or "" without WEBPUSH_SITE_URL: the
    redirect is then relative, so no Host header a request makes up decides where it goes."""
    site = current_app.config["WEBPUSH_SITE_URL"]
    return web_origin(urlsplit(site)) if site else ""


def _go(url: str) -> ResponseReturnValue:
    response = redirect(url, 302)
    # A click is counted per request: no cache may answer the next one. The token in this
    # URL is not the landing page's business.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _landing(payload: dict[str, Any], wide: Any, own: Any) -> str | None:
    """The URL one delivery's notification opens (its placeholders filled), if on-site."""
    url = payload.get("url") or "/"
    if wide is not None:
        url = filler({"url": url}, wide)(own)["url"]
    try:
        checked = check_url("url", url)
    except InvalidNotification:  # stored before the check, or edited by hand
        return None
    return checked


def click(token: str) -> ResponseReturnValue:
    """Count the click of one delivery once and redirect to its notification's URL."""
    root = _site() + "/"
    # HEAD (which Flask answers with this view) is no click: a browser never sends it.
    limited = request.method != "GET"
    try:
        if not limited:
            check_events_rate_limit()
    except RateLimited:  # a person is never shown an error: the page, without the count
        limited = True
    try:
        delivery_id = read_token(token)
    except InvalidToken:
        return _go(root)
    webpush = ext()
    D, N = webpush.models.Delivery, webpush.models.Notification
    row = webpush.db.session.execute(
        sa.select(D.vars, N.payload, N.vars.label("wide")).join(N, N.id == D.notification_id)
        .where(D.id == delivery_id)).one_or_none()
    if row is None:  # pruned or erased since
        return _go(root)
    action = request.args.get("action")
    if action is not None and len(action) > 64:
        action = None
    if not limited and record_event(webpush.db, webpush.models, delivery_id, "clicked",
                                    action):
        if action is not None:  # what was kept: only an action the notification offered
            action = webpush.db.session.scalar(sa.select(D.action).where(D.id == delivery_id))
        signals.event_tracked.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                   kind="clicked", delivery_id=delivery_id, action=action)
    url = _landing(row.payload, row.wide, row.vars)
    if url is None:
        return _go(root)
    return _go(_site() + url if url.startswith("/") else url)
