"""What views read from a request: JSON bodies (size, strict JSON, depth), user-id paths.

Shared by the browser's routes, the admin views and the push API, so that each
refuses a body for the same reasons with the same words.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from flask import request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import PathConverter

from .exceptions import BadRequestError, RequestTooLarge

#: deepest nesting of arrays and objects accepted in a body (``data`` is free-form)
MAX_DEPTH = 32


def check_tree(value: Any, depth: int = 0) -> None:
    """Depth limit, and text that can be stored and encoded (no lone surrogates)."""
    if depth > MAX_DEPTH:
        raise BadRequestError(f"The body is nested deeper than {MAX_DEPTH} levels.")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequestError("The body holds text that is not valid Unicode "
                                  "(a lone surrogate escape).") from exc
    elif isinstance(value, list):
        for item in value:
            check_tree(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_tree(key, depth + 1)
            check_tree(item, depth + 1)


def read_json_body(limit: int, *, decimals: bool = False) -> Any:
    """The request's JSON body, at most ``limit`` bytes, strict UTF-8 JSON with finite numbers
    (``decimals``: numbers with a fraction or exponent as exact Decimals, not floats)."""
    data = json_bytes(limit)
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                           parse_float=_finite_decimal if decimals else _finite,
                           object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise BadRequestError(f"The body is nested deeper than {MAX_DEPTH} levels.") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, our own checks
        raise BadRequestError(f"The body is not valid JSON ({exc}).") from exc
    check_tree(value)
    return value


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


class UserIdConverter(PathConverter):
    """A user id in a path: like ``path``, but a newline in it still matches (werkzeug's
    ``path`` stops there), so every id answers JSON rather than the host's 404 page."""

    regex = r"[^/][\s\S]*?"


def add_user_id_converter(state: BlueprintSetupState) -> None:
    """Register ``webpush_user_id`` on the app (once; the admin views use it too)."""
    state.app.url_map.converters.setdefault("webpush_user_id", UserIdConverter)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is out of range")
    return value


def _finite_decimal(text: str) -> Decimal:
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("a number is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object has the same key twice")
    return result
