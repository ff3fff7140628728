"""The service worker script, served by a view so it carries the right headers."""

from __future__ import annotations

from flask import Blueprint, current_app, make_response, render_template, url_for
from flask.typing import ResponseReturnValue


def register(bp: Blueprint) -> None:
    """Add the service worker route to ``bp``."""
    bp.add_url_rule("/sw.js", "service_worker", service_worker)


def service_worker() -> ResponseReturnValue:
    """The service worker: push, notificationclick, notificationclose, pushsubscriptionchange."""
    config = current_app.config
    body = render_template(
        "webpush/sw.js",
        vapid_public_key=config["WEBPUSH_VAPID_PUBLIC_KEY"],
        rotate_url=url_for("webpush.rotate_subscription"),
        events_url=url_for("webpush.events"),
        # the route's URL with a one-character token, less that character: the prefix
        click_url=url_for("webpush.click", token="-")[:-1],  # noqa: S106 - not a secret
    )
    response = make_response(body)
    response.headers["Content-Type"] = "application/javascript; charset=utf-8"
    response.headers["Service-Worker-Allowed"] = config["WEBPUSH_SW_SCOPE"]
    # A stale worker would keep old handlers for a day: browsers must revalidate.
    response.headers["Cache-Control"] = "no-cache"
    return response
