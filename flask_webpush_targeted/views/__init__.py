"""The ``webpush`` blueprint: the browser's routes and pages, the admin views, and the
push API's routes (``push_api/``) in one blueprint, one URL prefix."""

from __future__ import annotations

import os

from flask import Blueprint

from ..push_api import views as push_api
from . import admin, clicks, events, pages, service_worker, subscriptions

_PACKAGE = os.path.dirname(os.path.dirname(__file__))


def create_blueprint() -> Blueprint:
    """A new blueprint with every route of the extension."""
    bp = Blueprint(
        "webpush", __name__,
        template_folder=os.path.join(_PACKAGE, "templates"),
        static_folder=os.path.join(_PACKAGE, "static"),
        static_url_path="/static",
    )
    service_worker.register(bp)
    subscriptions.register(bp)
    events.register(bp)
    clicks.register(bp)
    pages.register(bp)
    admin.register(bp)
    push_api.register(bp)
    return bp
