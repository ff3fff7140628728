"""Reading the push API's requests: JSON bodies, query strings, idempotency, outcomes.

The split of errors, documented in docs/api.md and the OpenAPI document:
a request that is not the documented shape (not JSON, unknown field, wrong JSON
type, a time that is not RFC 3339 with an offset) is a 400 ``bad_request``,
found here; a well-formed request whose values the library refuses is a 422
``invalid_notification`` (or 413 ``payload_too_large``) from ``sending.py``,
which this module never duplicates.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from werkzeug.exceptions import Conflict, RequestEntityTooLarge

from ..exceptions import APIError, BadRequestError
from ..limits import LATEST, MAX_ID, MAX_PAGE, MAX_PER_PAGE
from ..notifications import JsonKind, NotificationOptions
from ..statuses import NOTIFICATION_STATUSES

_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
                      r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")

_QUERY_INTEGER = re.compile(r"([0-9]+)(?:\.0*)?", re.ASCII)

#: the body's options and their JSON types: NotificationOptions' fields the body takes
OPTION_KINDS: dict[str, JsonKind] = {
    f.name: f.metadata["json"] for f in fields(NotificationOptions) if f.metadata["json"]}
_TEXT_FIELDS = tuple(n for n, kind in OPTION_KINDS.items() if kind == "string")
_BOOL_FIELDS = tuple(n for n, kind in OPTION_KINDS.items() if kind == "boolean")
_INT_FIELDS = tuple(n for n, kind in OPTION_KINDS.items() if kind == "integer")
#: the body's fields that say who gets it: exactly one is given
TARGETS = ("user_ids", "audience_id", "recipients")
FIELDS = frozenset((*TARGETS, *OPTION_KINDS))


class IdempotencyConflict(APIError, Conflict):
    """An Idempotency-Key reused by the same API key with another request body."""

    error = "idempotency_conflict"


class TooManyUsers(APIError, RequestEntityTooLarge):
    """More user ids than WEBPUSH_API_MAX_USERS in one request."""

    error = "too_many_users"


@dataclass(frozen=True)
class NotifyRequest:
    """A well-formed ``POST notifications`` body: who (user ids, an audience, or recipients
    with their vars) and notify_users' keyword arguments (the options given, not null: the
    digest must not change when a default does)."""

    user_ids: list[str] | None
    options: dict[str, Any] = field(default_factory=dict)
    audience_id: int | None = None
    recipients: list[dict[str, Any]] | None = None

    def digest(self) -> str:
        """SHA-256 of the canonical request: equal for equal meaning, whatever the spelling."""
        # Only the target given is in it: a request with user_ids digests as it always did.
        targets = {name: value for name, value in (
            ("user_ids", self.user_ids), ("audience_id", self.audience_id),
            ("recipients", self.recipients)) if value is not None}
        canonical = {**targets, **self.options}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=lambda v: v.isoformat())
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the body ---------------------------------------------------------------------------------


def _integer(value: Any) -> int | None:
    """An int for a JSON integer (``3`` or ``3.0``, as JSON Schema counts them), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _user_id(value: Any, index: int, where: str = "user_ids") -> str:
    name = f"{where}[{index}]" + (".user_id" if where == "recipients" else "")
    number = _integer(value)
    if number is not None:
        if not -MAX_ID - 1 <= number <= MAX_ID:
            raise BadRequestError(f"{name} is an integer out of the 64-bit range.")
        return str(number)
    if not isinstance(value, str):
        raise BadRequestError(f"{name} must be a string or an integer.")
    if "\x00" in value:
        raise BadRequestError(f"{name} must not contain NUL characters.")
    return value


def _recipients(value: Any, max_users: int) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequestError("recipients must be a list of {'user_id', 'vars'?} objects.")
    if len(value) > max_users:
        raise TooManyUsers(f"{len(value)} recipients in one request; at most {max_users} are "
                           "accepted. Send a larger set as an audience (POST audiences).")
    chosen = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or "user_id" not in item or set(item) - {"user_id", "vars"}:
            raise BadRequestError(f"recipients[{index}] must be an object with user_id and "
                                  "optionally vars.")
        user_id = _user_id(item["user_id"], index, "recipients")
        values = item.get("vars")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise BadRequestError(f"recipients[{index}].vars must be an object.")
        chosen.append({"user": user_id, "vars": values})
    return chosen


def _devices(value: Any) -> Any:
    if isinstance(value, str):
        return value  # "all" | "latest"; another word is refused by sending.py (422)
    if not isinstance(value, list):
        raise BadRequestError("devices must be 'all', 'latest' or a list of subscription ids.")
    ids = []
    for index, item in enumerate(value):
        number = _integer(item)
        if number is None or not 1 <= number <= MAX_ID:
            raise BadRequestError(f"devices[{index}] must be a subscription id (a positive "
                                  "64-bit integer).")
        ids.append(number)
    return ids


def _actions(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadRequestError("actions must be a list of {'action', 'title', 'icon'?} objects.")
    for index, item in enumerate(value):
        if (not isinstance(item, dict) or set(item) - {"action", "title", "icon"}
                or not {"action", "title"} <= set(item)
                or not all(isinstance(item[k], str) for k in item if k != "title")
                or not _is_text(item["title"])):
            raise BadRequestError(f"actions[{index}] must be an object with the strings "
                                  "'action' and 'title' (or texts by language), and "
                                  "optionally 'icon'.")
    return value


#: a variant's fields and the JSON type each must have (the values are sending.py's to check)
_VARIANT_KINDS = {"title": "text", "body": "text", "url": "string", "icon": "string",
                  "image": "string", "badge": "string", "tag": "string", "actions": "actions",
                  "data": "any", "require_interaction": "boolean", "silent": "boolean",
                  "weight": "integer"}


def _variants(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequestError("variants must be a list of objects of payload fields and a weight.")
    for index, item in enumerate(value):
        where = f"variants[{index}]"
        if not isinstance(item, dict) or set(item) - set(_VARIANT_KINDS):
            raise BadRequestError(f"{where} must be an object of the fields "
                                  f"{', '.join(_VARIANT_KINDS)}.")
        for name, kind in _VARIANT_KINDS.items():
            if name not in item or item[name] is None or kind == "any":
                continue
            field_value = item[name]
            wrong = {
                "text": not _is_text(field_value),
                "string": not isinstance(field_value, str),
                "boolean": not isinstance(field_value, bool),
                "integer": _integer(field_value) is None,
                "actions": not isinstance(field_value, list),
            }[kind]
            if wrong:
                raise BadRequestError(f"{where}.{name} must be {_KIND_WORDS[kind]}.")
            if kind == "actions":
                item[name] = _actions(field_value)
            elif kind == "integer":
                item[name] = _integer(field_value)
    return value


_KIND_WORDS = {"text": "a string or an object of strings by language", "string": "a string",
               "boolean": "true or false", "integer": "an integer",
               "actions": "a list of actions"}


def _is_text(value: Any) -> bool:
    """A text, or an object of texts by language (their tags are sending.py's to check)."""
    return isinstance(value, str) or (isinstance(value, dict) and all(
        isinstance(v, str) for v in value.values()))


def parse_notification(body: Any, max_users: int) -> NotifyRequest:
    """Check the shape of a ``POST notifications`` body; the values are left to sending.py."""
    if not isinstance(body, dict):
        raise BadRequestError("The body must be a JSON object.")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(unknown)}.")
    # Unlike an option, a target given as null is not "absent": it is refused as a wrong type.
    targets = [name for name in TARGETS if name in body]
    if len(targets) != 1:
        raise BadRequestError("Give one of user_ids (a list of user ids), audience_id (an "
                              "audience's id) or recipients (a list of {user_id, vars}).")
    user_ids = audience_id = recipients = None
    raw_ids = body.get("user_ids")
    if "user_ids" in body:
        if not isinstance(raw_ids, list):
            raise BadRequestError("user_ids must be a list of user ids (strings or integers).")
        if len(raw_ids) > max_users:
            raise TooManyUsers(f"{len(raw_ids)} user ids in one request; at most {max_users} "
                               "are accepted. Send a larger set as an audience (POST "
                               "audiences).")
        user_ids = [_user_id(v, i) for i, v in enumerate(raw_ids)]
    if "audience_id" in body:
        audience_id = _integer(body["audience_id"])
        if audience_id is None or not 1 <= audience_id <= MAX_ID:
            raise BadRequestError("audience_id must be an audience's id (a positive integer).")
    if "recipients" in body:
        recipients = _recipients(body["recipients"], max_users)
    if not _is_text(body.get("title")):
        raise BadRequestError("title is required and must be a string, or an object of "
                              "strings by language ({\"en\": ..., \"pl\": ...}).")
    if body.get("body") is not None and not _is_text(body["body"]):
        raise BadRequestError("body must be a string, or an object of strings by language.")
    # null means "not given": the library's default applies.
    given = {k: v for k, v in body.items() if v is not None and k not in TARGETS}
    options: dict[str, Any] = {"title": given.pop("title")}
    for name in _TEXT_FIELDS:
        if name in given and not isinstance(given[name], str):
            raise BadRequestError(f"{name} must be a string.")
    if "category" in given and "\x00" in given["category"]:
        raise BadRequestError("category must not contain NUL characters.")
    for name in _BOOL_FIELDS:
        if name in given and not isinstance(given[name], bool):
            raise BadRequestError(f"{name} must be true or false.")
    for name in _INT_FIELDS:
        if name in given:
            number = _integer(given[name])
            if number is None:
                what = "an integer number of seconds" if name == "ttl" else "an integer"
                raise BadRequestError(f"{name} must be {what}.")
            given[name] = number  # the range is sending.py's to check (422)
    if "devices" in given:
        given["devices"] = _devices(given["devices"])
    if "actions" in given:
        given["actions"] = _actions(given["actions"])
    if "send_at" in given:
        given["send_at"] = parse_rfc3339(given["send_at"], "send_at")
    if "vars" in given and not isinstance(given["vars"], dict):
        raise BadRequestError("vars must be an object of name -> string or number.")
    if "variants" in given:
        given["variants"] = _variants(given["variants"])
    if "test_share" in given and (isinstance(given["test_share"], bool)
                                  or not isinstance(given["test_share"], (int, float))):
        raise BadRequestError("test_share must be a number (0.2: a fifth of the users).")
    options.update(given)
    return NotifyRequest(user_ids, options, audience_id, recipients)


def parse_preferences(body: Any) -> dict[str, bool]:
    """Check the shape of a ``PUT users/{id}/preferences`` body: ``{"preferences": {name:
    bool}}``; which names and values are allowed is preferences.py's to say (422)."""
    if not isinstance(body, dict):
        raise BadRequestError("The body must be a JSON object.")
    unknown = sorted(set(body) - {"preferences"})
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(unknown)}.")
    choices = body.get("preferences")
    if not isinstance(choices, dict):
        raise BadRequestError("preferences is required: an object of category -> true/false.")
    for name, value in choices.items():
        if not isinstance(value, bool):
            raise BadRequestError(f"preferences[{name[:64]!r}] must be true or false.")
    return choices


# -- times, query strings, headers -------------------------------------------------------------


def parse_rfc3339(value: Any, name: str) -> datetime:
    """An RFC 3339 date-time with its offset (``Z`` or ``+01:00``), as an aware UTC datetime."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise BadRequestError(
            f"{name} must be an RFC 3339 date-time with an offset, e.g. "
            "'2026-12-01T09:00:00+01:00' or '2026-12-01T08:00:00Z'; a time without an "
            "offset is ambiguous and refused.")
    text = value.upper().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise BadRequestError(f"{name} is not a valid date-time ({exc}).") from exc
    if when >= LATEST:
        # Scheduling adds a validity period and a grace time: leave room before year 9999.
        raise BadRequestError(f"{name} is not a valid date-time (after {LATEST.year}).")
    return when


def _int_arg(args: Mapping[str, str], name: str, default: int, top: int) -> int:
    text = args.get(name)
    if text is None:
        return default
    # "24.0" is the integer 24 to JSON Schema, as in a body (schemathesis sends it so).
    match = _QUERY_INTEGER.fullmatch(text)
    if match is None or len(match[1].lstrip("0")) > 9 or not 1 <= int(match[1]) <= top:
        raise BadRequestError(f"{name} must be an integer from 1 to {top}.")
    return int(match[1])


def parse_list_args(args: Mapping[str, str]) -> dict[str, Any]:
    """The filters and page of ``GET notifications``; unknown parameters are ignored, and
    an empty one (``?since=&status=done``, as URL templates write) is as if absent."""
    args = {k: v for k, v in args.items() if v != ""}
    query: dict[str, Any] = {
        "page": _int_arg(args, "page", 1, MAX_PAGE),
        "per_page": _int_arg(args, "per_page", 25, MAX_PER_PAGE),
    }
    for name in ("since", "until"):
        if args.get(name) is not None:
            query[name] = parse_rfc3339(args[name], name)
    status = args.get("status")
    if status is not None and status not in NOTIFICATION_STATUSES:
        raise BadRequestError(f"status must be one of {', '.join(NOTIFICATION_STATUSES)}.")
    category = args.get("category")
    if category is not None and (not 0 < len(category) <= 64 or "\x00" in category):
        raise BadRequestError("category must be 1 to 64 characters, without NUL.")
    query.update(status=status, category=category)
    return query


def idempotency_key(header: str | None) -> str | None:
    """The Idempotency-Key header: 1 to 200 visible ASCII characters, or None."""
    if header is None:
        return None
    if not 0 < len(header) <= 200 or not all("!" <= c <= "~" for c in header):
        raise BadRequestError("Idempotency-Key must be 1 to 200 visible ASCII characters "
                              "(e.g. a UUID).")
    return header


def check_user_id(user_id: str) -> str:
    """A user id from a path: 1 to 255 characters, no NUL."""
    if not 0 < len(user_id) <= 255 or "\x00" in user_id:
        raise BadRequestError("A user id is 1 to 255 characters, without NUL.")
    return user_id
