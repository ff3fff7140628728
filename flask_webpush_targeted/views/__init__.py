"""The ``webpush`` blueprint: service worker, client script, JSON API, customer pages."""

from __future__ import annotations

import os

from flask import Blueprint

_PACKAGE = os.path.dirname(os.path.dirname(__file__))


def create_blueprint() -> Blueprint:
    """A new blueprint with every route of the extension."""
    from . import admin, api, crm, events, pages, worker

    bp = Blueprint(
        "webpush", __name__,
        template_folder=os.path.join(_PACKAGE, "templates"),
        static_folder=os.path.join(_PACKAGE, "static"),
        static_url_path="/static",
    )
    worker.register(bp)
    api.register(bp)
    events.register(bp)
    pages.register(bp)
    admin.register(bp)
    crm.register(bp)
    return bp
