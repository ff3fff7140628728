"""Helpers shared by the views."""

from __future__ import annotations

import json
from typing import Any

from flask import abort, current_app
from flask.typing import ResponseReturnValue
from flask_login import current_user

from ..clock import iso
from ..context import extension as ext
from ..exceptions import BadRequestError, LoginRequired
from ..users import user_id_of
from ..web_input import MAX_DEPTH, check_tree, json_bytes

__all__ = ["ext", "json_body", "login_page", "require_login_json", "subscription_json"]


def login_page() -> ResponseReturnValue:
    """What an anonymous user gets from an HTML page: Flask-Login's ``unauthorized()`` (the
    host's login page, or its own handler's answer), or a 401 without a login manager."""
    manager = getattr(current_app, "login_manager", None)
    if manager is None:
        abort(401)
    answer: ResponseReturnValue = manager.unauthorized()
    return answer


def require_login_json() -> str:
    """The current user's id, or a JSON 401."""
    if not current_user.is_authenticated:
        raise LoginRequired("Log in first: devices are linked to a customer account.")
    return user_id_of(current_user)


def json_body() -> Any:
    """The request's JSON body, read at most WEBPUSH_MAX_REQUEST_BYTES; nested at most
    MAX_DEPTH levels, its text valid Unicode (a lone surrogate escape is refused)."""
    data = json_bytes(current_app.config["WEBPUSH_MAX_REQUEST_BYTES"])
    try:
        value = json.loads(data)
    except RecursionError as exc:  # "[[[[..." a few thousand deep fits in 4 kB
        raise BadRequestError(f"The body is nested deeper than {MAX_DEPTH} levels.") from exc
    except ValueError as exc:  # includes UnicodeDecodeError
        raise BadRequestError("The body is not valid JSON.") from exc
    check_tree(value)
    return value


def subscription_json(sub: Any) -> dict[str, Any]:
    """What a customer sees of one of their devices (no endpoint, no keys)."""
    return {
        "id": sub.id,
        "label": sub.label,
        "push_service": sub.push_service,
        "active": sub.active,
        "created_at": iso(sub.created_at),
        "last_seen_at": iso(sub.last_seen_at),
        "revoked_at": iso(sub.revoked_at),
        # lets the page tell "this browser" apart without the server echoing the endpoint
        "endpoint_sha256": sub.endpoint_sha256,
    }
