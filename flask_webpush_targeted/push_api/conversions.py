"""The push API's conversions: a CRM or a shop's back end reports an order, the package says
which push it is attributed to.

``POST conversions`` answers 201 for a conversion recorded now, 200 for an ``order_id``
recorded before (counted once; the answer is the first one's attribution). Under an
``Idempotency-Key``, the key and the conversion are stored in one transaction: a repeat
of the same body replays the answer, another body under the key is a 409.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from .. import conversions
from ..clock import utcnow
from ..context import extension as ext
from ..exceptions import BadRequestError
from ..limits import MAX_ID
from ..web_input import read_json_body
from .access import answer, authorize
from .requests import IdempotencyConflict, idempotency_key, parse_rfc3339

#: the body's fields; user_id alone is required
FIELDS = frozenset(("user_id", "value", "currency", "order_id", "at"))


def register(bp: Blueprint, api: str) -> None:
    """Add the conversion route under ``api``."""
    bp.add_url_rule(f"{api}/conversions", "api_record_conversion", record_conversion,
                    methods=["POST"])


def _parse(body: Any) -> tuple[conversions.Conversion, bool]:
    """The body's conversion: its shape checked here (400), its values by ``conversions`` (422)."""
    if not isinstance(body, dict):
        raise BadRequestError("The body must be a JSON object with user_id and optionally "
                              "value, currency, order_id and at.")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(repr(k[:40]) for k in unknown)}.")
    if "user_id" not in body:
        raise BadRequestError("user_id is required.")
    user_id = body["user_id"]
    if isinstance(user_id, int) and not isinstance(user_id, bool) and abs(user_id) <= MAX_ID:
        user_id = str(user_id)
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 255 or "\x00" in user_id:
        raise BadRequestError("user_id must be 1 to 255 characters (or a 64-bit integer), "
                              "without NUL.")
    value = body.get("value")
    if value is not None and (isinstance(value, bool)
                              or not isinstance(value, (int, Decimal, str))):
        raise BadRequestError("value must be a number or a decimal string such as \"19.99\".")
    currency = body.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise BadRequestError("currency must be a string (an ISO 4217 code).")
    order_id = body.get("order_id")
    if order_id is not None and (isinstance(order_id, bool)
                                 or not isinstance(order_id, (str, int))):
        raise BadRequestError("order_id must be a string or an integer.")
    at = body.get("at")
    when = None if at is None else parse_rfc3339(at, "at")
    return conversions.check(user_id, value=value, currency=currency,
                             order_id=None if order_id is None else str(order_id),
                             at=when), when is not None


def _digest(conversion: conversions.Conversion, at_given: bool) -> str:
    """SHA-256 of the conversion's meaning ("19.990" and 19.99 are one value; a time not
    given is not part of it, or no repeat would ever match)."""
    canonical = {"route": "conversions", "user_id": conversion.user_id,
                 "amount": conversion.amount, "currency": conversion.currency,
                 "order_id": conversion.order_id,
                 "at": conversion.at.isoformat() if at_given else None}
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_conversion() -> ResponseReturnValue:
    """Record a conversion and say which push it is attributed to."""
    key = authorize("conversions")
    body = read_json_body(current_app.config["WEBPUSH_API_MAX_REQUEST_BYTES"], decimals=True)
    conversion, at_given = _parse(body)
    idem = idempotency_key(request.headers.get("Idempotency-Key"))
    webpush = ext()
    db, m = webpush.db, webpush.models
    R = m.ApiRequest
    digest = _digest(conversion, at_given) if idem is not None else None
    if idem is not None:
        replayed = _replay(key.id, idem, digest or "")
        if replayed is not None:
            return replayed
    # Under a key, the conversion, its counters and the key are one transaction: a
    # concurrent request with the same key rolls all three back and replays the winner's.
    recorded = webpush._record(conversion, commit=idem is None)
    if idem is not None:
        db.session.add(R(api_key_id=key.id, idempotency_key=idem, request_sha256=digest,
                         conversion_id=recorded.row_id, created_at=utcnow()))
        try:
            db.session.commit()
        except sa.exc.IntegrityError:
            db.session.rollback()
            replayed = _replay(key.id, idem, digest or "")
            if replayed is not None:
                return replayed
            raise
    duplicate = not recorded.inserted
    return answer(_json(recorded.row_id, recorded.attribution, conversion.order_id,
                        duplicate=duplicate, replayed=False), 200 if duplicate else 201)


def _replay(key_id: int, idem: str, digest: str) -> ResponseReturnValue | None:
    """The answer to a repeat of an earlier request under this key; None for a new key."""
    webpush = ext()
    db, R, C = webpush.db, webpush.models.ApiRequest, webpush.models.Conversion
    earlier = db.session.scalar(sa.select(R).where(R.api_key_id == key_id,
                                                   R.idempotency_key == idem))
    if earlier is None:
        return None
    if earlier.conversion_id is None or not hmac.compare_digest(earlier.request_sha256, digest):
        raise IdempotencyConflict("This Idempotency-Key was used with another request; use a "
                                  "new key for a new conversion.")
    row = db.session.get(C, earlier.conversion_id)
    return answer(_json(row.id, conversions.attribution_of(row), row.order_id,
                        duplicate=False, replayed=True), 200, **{"Idempotent-Replayed": "true"})


def _json(row_id: int, attributed: dict[str, Any] | None, order_id: str | None, *,
          duplicate: bool, replayed: bool) -> dict[str, Any]:
    return {"id": row_id, "attributed": attributed is not None,
            "kind": attributed["kind"] if attributed else None,
            "notification_id": attributed["notification_id"] if attributed else None,
            "delivery_id": attributed["delivery_id"] if attributed else None,
            "order_id": order_id, "duplicate": duplicate, "replayed": replayed}
