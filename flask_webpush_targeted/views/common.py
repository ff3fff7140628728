"""Helpers shared by the views."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from flask_login import current_user

from ..exceptions import BadRequestError, LoginRequired, RequestTooLarge
from ..extension import WebPush, user_id_of


def ext() -> WebPush:
    """The WebPush extension of the current app."""
    return current_app.extensions["webpush"]


def require_login_json() -> str:
    """The current user's id, or a JSON 401."""
    if not current_user.is_authenticated:
        raise LoginRequired("Log in first: devices are linked to a customer account.")
    return user_id_of(current_user)


def json_bytes(limit: int) -> bytes:
    """The raw body of a JSON request, read at most ``limit`` bytes (413 beyond, 400 if
    it is not declared as JSON)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"The body is larger than {limit} bytes.")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLarge(f"The body is larger than {limit} bytes.")
    if not request.is_json:
        raise BadRequestError("Send JSON with Content-Type: application/json.")
    return data


def json_body() -> Any:
    """The request's JSON body, read at most WEBPUSH_MAX_REQUEST_BYTES; nested at most
    MAX_DEPTH levels, its text valid Unicode (a lone surrogate escape is refused)."""
    from ..crm_requests import MAX_DEPTH, check_tree

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
        "created_at": sub.created_at.isoformat(),
        "last_seen_at": sub.last_seen_at.isoformat(),
        "revoked_at": sub.revoked_at.isoformat() if sub.revoked_at else None,
        # lets the page tell "this browser" apart without the server echoing the endpoint
        "endpoint_sha256": sub.endpoint_sha256,
    }
