"""What every push API route does first and last: the key, its rate limit and scope, and
the JSON answer that is never cached."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request

from ..context import extension as ext
from ..ratelimit import check_rate_limit
from .keys import authenticate, rate_bucket, require_scope


def _check_rate_limit(key: Any) -> None:
    limit = current_app.config["WEBPUSH_API_RATE_LIMIT"]
    # Without Redis nothing is sent anyway (the queue is down): serve rather than refuse.
    check_rate_limit(f"webpush:api-rate:{rate_bucket(key)}", limit,
                     f"More than {limit} requests this minute with this API key; "
                     "try again after Retry-After seconds.",
                     outage_warning="webpush: API rate limit not checked, Redis does not answer")


def authorize(*scopes: str) -> Any:
    """The request's API key, counted against its rate limit, holding one of ``scopes``."""
    webpush = ext()
    key = authenticate(webpush.db, webpush.models, request.headers.get("Authorization"))
    _check_rate_limit(key)
    if not any(s in key.scopes for s in scopes):
        require_scope(key, scopes[0])
    return key


def answer(body: Any, status: int = 200, **headers: str) -> Response:
    """``body`` as JSON with ``status`` and ``headers``, marked not to be cached."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers)
    return response
