"""The OpenAPI 3.1 document of the push API, written by hand to match push_api/views.py.

tests/test_openapi.py keeps the two honest: every route under ``/api/v1`` is
described here and everything here is routed, every example validates against
its schema, and a property-based test finds no answer the document does not
describe. Response objects are closed (``additionalProperties: false``) so a
field added to an answer must be added here too.
"""

from __future__ import annotations

import copy
from typing import Any

from ..event_log import EVENT_TYPES
from ..limits import LATEST, MAX_ID, MAX_PAGE, MAX_PER_PAGE
from ..notifications import DEVICE_WORDS, MAX_RATE_PER_MINUTE, MAX_TTL, URGENCIES
from ..placeholders import MAX_VALUE_LENGTH, MAX_VARS
from ..platforms import PLATFORMS
from ..statuses import NOTIFICATION_STATUSES
from ..web_input import MAX_DEPTH

STATUS_URL = "https://shop.example/webpush/api/v1/notifications/42"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (null means "not given": the default applies)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _error(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


_ERRORS: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "400": ("Malformed: not JSON, an unknown field, a wrong type, a time without offset.", {
        "bad_filter": _error("bad_request", "status must be one of scheduled, queued, sending, "
                             "done, cancelled."),
        "bad_user_id": _error("bad_request", "A user id is 1 to 255 characters, without NUL."),
        "not_a_choice": _error("bad_request", "preferences['marketing'] must be true or false."),
        "unknown_field": _error("bad_request", "Unknown field(s): colour."),
        "naive_time": _error("bad_request", "send_at must be an RFC 3339 date-time with an "
                             "offset, e.g. '2026-12-01T09:00:00+01:00' or "
                             "'2026-12-01T08:00:00Z'; a time without an offset is ambiguous "
                             "and refused."),
    }),
    "401": ("No API key, or one that is unknown, wrong or revoked.", {
        "missing": _error("api_key_required", "Send an API key: 'Authorization: Bearer wpk_...'."),
        "invalid": _error("invalid_api_key", "The API key is not valid."),
    }),
    "403": ("The key lacks the scope this operation needs.", {
        "scope": _error("insufficient_scope", "This API key lacks the 'send' scope; create one "
                        "with `flask webpush api-key create NAME --scope send`."),
    }),
    "404": ("No such notification (or not one this key may see), or no such audience.", {
        "missing": _error("not_found", "No notification '99' for this API key."),
        "audience": _error("not_found", "No audience has id 99."),
    }),
    "409": ("Conflict.", {
        "idempotency": _error("idempotency_conflict", "This Idempotency-Key was used with another "
                              "request body; use a new key for a new notification."),
        "finished": _error("not_cancellable", "Notification 42 is done already: nothing to "
                           "cancel."),
        "audience_in_use": _error("audience_in_use", "Notification 42 is to be sent to "
                                  "audience 7 and has not read it yet: cancel it, or delete "
                                  "the audience once it is sending."),
    }),
    "413": ("Too large: the body, the number of user ids, or the Web Push payload.", {
        "users": _error("too_many_users", "10001 user ids in one request; at most 10000 are "
                        "accepted. Send a larger audience in several requests."),
        "payload": _error("payload_too_large", "The payload is 4120 bytes with its tracking "
                          "token; Web Push allows 3993. Shorten the body or data."),
        "body": _error("too_large", "The body is larger than 1048576 bytes."),
        "audience": _error("too_large", "The audience is over 209,715,200 bytes "
                           "(WEBPUSH_API_MAX_AUDIENCE_BYTES); nothing was stored."),
    }),
    "422": ("Well-formed, but a value is refused: a notification's (urgency, ttl, topic, "
            "url, devices...) or a choice of categories.", {
        "urgency": _error("invalid_notification",
                          "urgency must be one of very-low, low, normal, high."),
        "required": _error("invalid_preferences", "'orders' (Your orders) is required while "
                           "notifications are on; to stop it, withdraw the consent to "
                           "notifications."),
        "unknown": _error("invalid_preferences", "'deals' is not a category (known: orders, "
                          "marketing, news)."),
        "off": _error("invalid_preferences", "Categories are off (WEBPUSH_CATEGORIES is "
                      "None): there is nothing to choose."),
        "missing_var": _error("invalid_notification", "recipients[12] (user '1054'): no value "
                              "for the placeholder {seat} (in the recipient's vars or the "
                              "notification's vars)."),
        "audience_name": _error("invalid_audience", "An audience's name is 1 to 200 "
                                "characters."),
        "conversion": _error("invalid_conversion", "a value needs its currency (an ISO 4217 "
                             "code such as 'EUR')."),
    }),
    "429": ("Over the key's rate limit (WEBPUSH_API_RATE_LIMIT per minute).", {
        "limited": _error("rate_limited", "More than 600 requests this minute with this API "
                          "key; try again after Retry-After seconds."),
    }),
}


def _errors(*codes: str, **only: str) -> dict[str, Any]:
    """The error responses ``codes``; ``e409="finished"`` keeps that 409 example only."""
    responses: dict[str, Any] = {}
    for code in codes:
        description, examples = _ERRORS[code]
        if f"e{code}" in only:
            examples = {name: examples[name] for name in only[f"e{code}"].split(",")}
        response: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": _ref("Error"), "examples": {
                name: {"value": value} for name, value in examples.items()}}}}
        if code == "429":
            response["headers"] = {"Retry-After": {
                "description": "Seconds until the next minute's window.", "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": 60}}}
        if code == "401":
            response["headers"] = {"WWW-Authenticate": {
                "description": "The Bearer challenge of RFC 6750.", "required": True,
                "schema": {"type": "string"}}}
        responses[code] = response
    return responses


_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_TIME = {"type": "string", "format": "date-time"}
#: a text in several languages: language tag (BCP 47) -> text
_TEXTS = {"type": "object", "minProperties": 1, "maxProperties": 50,
          "description": "Texts by language tag (BCP 47: 'en', 'pl-PL'); each device gets "
                         "its own language's, else the default language's.",
          "additionalProperties": {"type": "string"},
          "example": {"en": "Your parcel is on its way", "pl": "Twoja paczka jest w drodze"}}
#: a time a client sends: RFC 3339 with an offset, before LATEST
_TIME_IN = {**_TIME, "description": "RFC 3339 with an offset ('Z' or '+01:00'); a time "
            f"without one is refused (400), and so is one from {LATEST.year} on."}
_URL_TEXT = "A path on this site ('/trips/42') or a URL on its origin."
_URL = {"type": "string", "minLength": 1, "maxLength": 2048, "description": _URL_TEXT}
_COUNT = {"type": "integer", "minimum": 0}
_RATE = {"type": ["number", "null"], "minimum": 0}
#: an exact amount: a decimal string, at most 4 decimals
_AMOUNT = {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2,4}$"}
#: the counts of a notification's funnel (Stats), in the order of the answers
_COUNTS = ("targeted_users", "users_without_devices", "opted_out", "capped", "deliveries",
           "pending", "held", "sent", "failed", "gone", "expired", "skipped", "displayed",
           "clicked", "closed", "conversions", "influenced_conversions")
#: the counters each A/B variant has (deliveries: those with an outcome so far)
_VARIANT_COUNTS = ("deliveries", "sent", "failed", "gone", "expired", "skipped", "displayed",
                   "clicked", "closed", "conversions", "influenced_conversions")
#: what a variant may set (null: the notification's own), and weight
_VARIANT_FIELDS: dict[str, Any] = {
    "title": {"anyOf": [{"type": "string", "minLength": 1, "pattern": "\\S"}, _TEXTS]},
    "body": {"anyOf": [{"type": "string"}, _TEXTS]},
    "url": _URL, "icon": _URL, "image": _URL, "badge": _URL,
    "tag": {"type": "string", "minLength": 1, "maxLength": 64},
    "actions": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "additionalProperties": False,
        "required": ["action", "title"], "properties": {
            "action": {"type": "string"},
            "title": {"anyOf": [{"type": "string"}, _TEXTS]},
            "icon": {"type": "string"}}}},
    "data": {},
    "require_interaction": {"type": "boolean"}, "silent": {"type": "boolean"},
    "weight": {"type": "integer", "minimum": 1, "maximum": 10_000,
               "description": "Relative: 50/50 is 1/1. Default 1."}}
_SEND_AT_LOCAL = {"type": ["string", "null"], "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}

_USER_ID_ITEM = {"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\u0000]*$"},
    {"type": "integer", "minimum": -MAX_ID - 1, "maximum": MAX_ID},
]}
_VARS = {"type": "object", "maxProperties": MAX_VARS,
         "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
         "additionalProperties": {"anyOf": [
             {"type": "string", "maxLength": MAX_VALUE_LENGTH, "pattern": "^[^\\u0000]*$"},
             {"type": "number"}]}}
_AUDIENCE_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "additionalProperties": False, "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "A machine-readable code."},
            "message": {"type": "string", "description": "What is wrong, for a person."},
        },
    },
    "NotificationRequest": {
        "type": "object", "additionalProperties": False, "required": ["title"],
        "oneOf": [{"required": ["user_ids"]}, {"required": ["audience_id"]},
                  {"required": ["recipients"]}],
        "description": "The arguments of notify_users, to user_ids, an audience's members "
                       "or recipients with their own vars (exactly one of the three). A null "
                       "field is the same as an absent one. Fields the document does not "
                       "list are refused (400).",
        "properties": {
            "user_ids": {
                "type": "array", "minItems": 1, "maxItems": 10_000,
                "description": "The users, as your user ids (Flask-Login's get_id()). At most "
                               "WEBPUSH_API_MAX_USERS (10,000 by default; more is a 413): "
                               "upload a larger set as an audience (POST /audiences).",
                "items": _USER_ID_ITEM,
            },
            "audience_id": {**_ID, "description": "An audience's id (POST /audiences): one "
                            "notification to all its members, with their vars."},
            "recipients": {
                "type": "array", "minItems": 1, "maxItems": 10_000,
                "description": "Users each with their own vars, which fill {name} "
                               "placeholders in title, body, url and action titles over the "
                               "notification's vars. At most WEBPUSH_API_MAX_USERS; more go "
                               "through an audience.",
                "items": {"type": "object", "additionalProperties": False,
                          "required": ["user_id"],
                          "properties": {"user_id": _USER_ID_ITEM,
                                         "vars": _nullable(_VARS)}},
            },
            "title": {"description": "The title: a text, or texts by language "
                                     "(WEBPUSH_DEFAULT_LANGUAGE among them).",
                      "anyOf": [{"type": "string", "minLength": 1, "pattern": "\\S"},
                                _TEXTS]},
            "body": _nullable({"anyOf": [{"type": "string"}, _TEXTS]}),
            "url": _nullable({**_URL, "minLength": 0,
                              "description": _URL_TEXT + " Empty or absent: '/'."}),
            "devices": _nullable({"anyOf": [
                {"type": "string", "enum": list(DEVICE_WORDS)},
                {"type": "array", "minItems": 1, "items": _ID,
                 "description": "Subscription ids, each of one of the targeted users."},
            ]}),
            "ttl": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_TTL,
                              "description": "Validity period in seconds (RFC 8030 TTL); "
                                            "default WEBPUSH_DEFAULT_TTL."}),
            "urgency": _nullable({"type": "string",
                                  "enum": list(URGENCIES)}),
            "topic": _nullable({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$",
                                "description": "Collapse key (RFC 8030 Topic)."}),
            "send_at": _nullable(_TIME_IN),
            "category": _nullable({"type": "string", "minLength": 1, "maxLength": 64,
                                   "pattern": "^[^\\u0000]*$"}),
            "icon": _nullable(_URL),
            "image": _nullable(_URL),
            "badge": _nullable(_URL),
            "tag": _nullable({"type": "string", "minLength": 1, "maxLength": 64}),
            "actions": _nullable({
                "type": "array", "maxItems": 2,
                "items": {"type": "object", "additionalProperties": False,
                          "required": ["action", "title"], "properties": {
                              "action": {"type": "string"},
                              "title": {"anyOf": [{"type": "string"}, _TEXTS]},
                              "icon": {"type": "string"}}},
            }),
            "data": {"description": f"Any JSON, nested at most {MAX_DEPTH} levels, handed to "
                                    "the service worker."},
            "require_interaction": _nullable({"type": "boolean"}),
            "silent": _nullable({"type": "boolean"}),
            "quiet_hours": _nullable({
                "type": "boolean",
                "description": "null or absent: the category's quiet hours, else "
                               "WEBPUSH_QUIET_HOURS; true: keep them (422 when neither is "
                               "set); false: send at once, whatever the hour. A held "
                               "delivery goes out when its device's quiet hours end."}),
            "send_at_local": _nullable({
                "type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
                "description": "HH:MM: each device gets the notification at the next such "
                               "time in its own time zone (WEBPUSH_DEFAULT_TIMEZONE when the "
                               "browser did not say). Exclusive with send_at: both given is "
                               "a 422."}),
            "rate_per_minute": _nullable({
                "type": "integer", "minimum": 1, "maximum": MAX_RATE_PER_MINUTE,
                "description": "At most this many deliveries in any minute, across all "
                               "workers; stats.expected_finish_at says when it should be "
                               "done."}),
            "variants": _nullable({
                "type": "array", "minItems": 2, "maxItems": 5,
                "description": "A/B variants: each user gets one, by a hash of the "
                               "notification and the user (the same on every device and "
                               "retry), in proportion to the weights. Each variant overrides "
                               "the notification's own payload fields; each is held to the "
                               "payload limit.",
                "items": {"type": "object", "additionalProperties": False, "properties": {
                    name: _nullable(schema) for name, schema in _VARIANT_FIELDS.items()}}}),
            "test_share": _nullable({
                "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                "description": "Only this share of the users gets the test; the others get "
                               "the winner once winner_after has passed. With winner_after."}),
            "winner_after": _nullable({
                "type": "integer", "minimum": 60, "maximum": MAX_TTL,
                "description": "Seconds the test runs before the winner goes to the rest."}),
            "winner_by": _nullable({
                "type": "string", "enum": ["clicks", "conversions"],
                "description": "What picks the winner: the rate of clicks, or of direct "
                               "conversions, per delivery sent. Default clicks."}),
            "vars": _nullable({**_VARS, "description": "Values for {name} placeholders, for "
                               "every recipient; a recipient's or audience member's own vars "
                               "win. Given (or with recipients, or an audience with vars), "
                               "title, body, url and action titles are templates: {{ and }} "
                               "write a brace, a placeholder with no value is a 422 naming "
                               "the recipient, and values are percent-encoded in url."}),
        },
    },
    "Audience": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "name", "size", "created_at", "vars"],
        "properties": {
            "id": _AUDIENCE_ID_SCHEMA, "name": {"type": "string"}, "size": _COUNT,
            "created_at": _TIME,
            "vars": {"type": "array", "items": {"type": "string"},
                     "description": "The var names the members carry."},
        },
    },
    "AudienceCreated": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "name", "size", "created_at", "vars", "rejected"],
        "properties": {
            "id": _AUDIENCE_ID_SCHEMA, "name": {"type": "string"}, "size": _COUNT,
            "created_at": _TIME, "vars": {"type": "array", "items": {"type": "string"}},
            "rejected": {
                "type": "object", "additionalProperties": False,
                "required": ["count", "duplicates", "first"],
                "properties": {
                    "count": {**_COUNT, "description": "Rows refused (empty, too long, NUL, "
                              "not UTF-8, bad vars...), duplicates apart."},
                    "duplicates": {**_COUNT, "description": "Rows repeating a user id "
                                   "(the first one counts)."},
                    "first": {"type": "array", "maxItems": 10, "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["line", "reason", "text"],
                        "properties": {"line": {"type": "integer", "minimum": 1},
                                       "reason": {"type": "string"},
                                       "text": {"type": ["string", "null"]}}}},
                },
            },
        },
    },
    "NotificationAccepted": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "status", "status_url", "created_at", "send_at", "targeted_users",
                     "users_without_devices", "replayed"],
        "properties": {
            "id": _ID,
            "status": {"type": "string", "enum": list(NOTIFICATION_STATUSES)},
            "status_url": {"type": "string", "format": "uri"},
            "created_at": _TIME,
            "send_at": {"type": ["string", "null"], "format": "date-time"},
            "targeted_users": _COUNT,
            "users_without_devices": {
                "type": ["array", "null"], "items": {"type": "string"},
                "description": "The requested ids with no active, consented device among "
                               "those targeted, at the time of the answer; null for an "
                               "audience, whose figures say it once fanned out."},
            "replayed": {"type": "boolean", "description": "True when this answers an earlier "
                         "request with the same Idempotency-Key and body."},
        },
    },
    "FailureReason": {
        "type": "object", "additionalProperties": False,
        "required": ["status", "status_code", "reason", "count"],
        "properties": {"status": {"type": "string"},
                       "status_code": {"type": ["integer", "null"]},
                       "reason": {"type": ["string", "null"]}, "count": _COUNT},
    },
    "PlatformFigures": {
        "type": "object", "additionalProperties": False,
        "required": ["platform", "deliveries", "sent", "displayed", "clicked"],
        "properties": {"platform": {"type": "string", "enum": list(PLATFORMS)},
                       "deliveries": _COUNT, "sent": _COUNT,
                       "displayed": _COUNT, "clicked": _COUNT},
    },
    "Stats": {
        "type": "object", "additionalProperties": False,
        "description": "The funnel of docs/design.md; rates are null until their base is > 0. "
                       "failure_reasons, by_platform, languages and pruned come with one "
                       "notification.",
        "required": [*_COUNTS, "display_rate", "click_rate", "click_through_rate",
                     "conversion_rate", "expected_finish_at"],
        "properties": {
            **{k: _COUNT for k in _COUNTS},
            "opted_out": {**_COUNT, "description": "Targeted users skipped because they "
                          "turned the notification's category off (known after fan-out)."},
            "capped": {**_COUNT, "description": "Targeted users skipped by the category's "
                       "frequency cap."},
            "held": {**_COUNT, "description": "Deliveries quiet hours hold at this moment; "
                     "each goes out when its device's quiet hours end."},
            "conversions": {**_COUNT, "description": "Conversions attributed to a click on "
                            "this notification within WEBPUSH_ATTRIBUTION_WINDOW (direct)."},
            "influenced_conversions": {**_COUNT, "description": "Conversions with no click "
                                       "in their window, after this notification was "
                                       "displayed within WEBPUSH_INFLUENCE_WINDOW."},
            **{k: _RATE for k in ("display_rate", "click_rate", "click_through_rate")},
            "conversion_rate": {**_RATE, "description": "Direct conversions per delivery "
                                "sent; null until one is sent."},
            "expected_finish_at": {
                "type": ["string", "null"], "format": "date-time",
                "description": "When a notification sent at rate_per_minute should be done, "
                               "while it is sending; null otherwise."},
            "failure_reasons": {"type": "array", "items": _ref("FailureReason")},
            "by_platform": {"type": "array", "items": _ref("PlatformFigures")},
            "languages": {"type": "object", "additionalProperties": _COUNT,
                          "description": "Deliveries sent per language, for a notification "
                                         "written in several (else empty).",
                          "example": {"en": 812, "pl": 390}},
            "revenue": {"type": "object", "propertyNames": {"pattern": "^[A-Z]{3}$"},
                        "additionalProperties": _AMOUNT,
                        "description": "The direct conversions' values per ISO 4217 "
                                       "currency, exact decimal strings.",
                        "example": {"EUR": "1520.40", "PLN": "89.99"}},
            "variants": {"type": "array", "items": _ref("VariantFigures"),
                         "description": "Each A/B variant's funnel; empty without variants."},
            "pruned": {"type": "boolean"},
        },
    },
    "VariantFigures": {
        "type": "object", "additionalProperties": False,
        "required": ["variant", "title", "weight", "share", *_VARIANT_COUNTS, "display_rate",
                     "click_rate", "click_through_rate", "conversion_rate", "revenue",
                     "winner", "p_value", "significant"],
        "properties": {
            "variant": {"type": "integer", "minimum": 0, "maximum": 4},
            "title": {"anyOf": [{"type": "string"}, _TEXTS]},
            "weight": {"type": "integer", "minimum": 1},
            "share": {"type": "number", "minimum": 0, "maximum": 1},
            **{k: _COUNT for k in _VARIANT_COUNTS},
            "deliveries": {**_COUNT, "description": "Its deliveries with an outcome so far "
                           "(the variant of one still waiting is not known yet)."},
            **{k: _RATE for k in ("display_rate", "click_rate", "click_through_rate",
                                  "conversion_rate")},
            "revenue": {"type": "object", "additionalProperties": _AMOUNT},
            "winner": {"type": "boolean", "description": "The variant the users outside the "
                       "test got (with test_share)."},
            "p_value": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                        "description": "Two-proportion z-test of its rate (winner_by) against "
                                       "the first variant's; null for the first, or too few "
                                       "sent."},
            "significant": {"type": "boolean", "description": "p_value below 0.05."},
        },
    },
    "Notification": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "status", "title", "category", "urgency", "ttl", "topic",
                     "created_at", "send_at", "finished_at", "quiet_hours", "send_at_local",
                     "rate_per_minute", "status_url", "stats"],
        "properties": {
            "id": _ID,
            "status": {"type": "string", "enum": list(NOTIFICATION_STATUSES)},
            "title": {"type": "string"},
            "category": {"type": ["string", "null"]},
            "urgency": {"type": "string", "enum": list(URGENCIES)},
            "ttl": _COUNT,
            "topic": {"type": ["string", "null"]},
            "created_at": _TIME,
            "send_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "quiet_hours": {"type": ["boolean", "null"],
                            "description": "As requested: null follows the settings."},
            "send_at_local": _SEND_AT_LOCAL,
            "rate_per_minute": {"type": ["integer", "null"], "minimum": 1,
                                "maximum": MAX_RATE_PER_MINUTE},
            "status_url": {"type": "string", "format": "uri"},
            "stats": _ref("Stats"),
            "users_opted_out": {
                "type": "array", "items": {"type": "string"},
                "description": "With one notification (not in lists): the targeted users "
                               "who had turned its category off when the worker fanned it "
                               "out; empty before then. The answer to POST cannot say it: "
                               "the choices that count are those at fan-out."},
        },
    },
    "NotificationList": {
        "type": "object", "additionalProperties": False,
        "required": ["notifications", "page", "per_page", "total", "next"],
        "properties": {
            "notifications": {"type": "array", "items": _ref("Notification")},
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
            "total": _COUNT,
            "next": {"type": ["string", "null"], "format": "uri",
                     "description": "The next page, or null on the last one."},
        },
    },
    "Device": {
        "type": "object", "additionalProperties": False,
        "description": "What a support agent may see: never the endpoint or keys.",
        "required": ["id", "label", "push_service", "added_at", "last_used_at", "active",
                     "consent"],
        "properties": {
            "id": _ID,
            "label": {"type": ["string", "null"], "description": "e.g. 'Firefox on Linux'."},
            "push_service": {"type": "string", "description": "The push service's host only."},
            "added_at": _TIME,
            "last_used_at": {**_TIME, "description": "The later of the browser's last contact "
                             "and the last push a push service accepted for it."},
            "active": {"type": "boolean"},
            "consent": {
                "type": "object", "additionalProperties": False,
                "required": ["state", "text_version", "granted_at", "ended_at", "reason"],
                "properties": {
                    "state": {"type": "string", "enum": ["granted", "withdrawn", "expired"],
                              "description": "expired: the browser ended the subscription "
                                             "(gone, rotated); withdrawn: the customer did."},
                    "text_version": {"type": "string"},
                    "granted_at": _TIME,
                    "ended_at": {"type": ["string", "null"], "format": "date-time"},
                    "reason": {"type": ["string", "null"]},
                },
            },
        },
    },
    "DeviceList": {
        "type": "object", "additionalProperties": False, "required": ["user_id", "devices"],
        "properties": {"user_id": {"type": "string"},
                       "devices": {"type": "array", "items": _ref("Device")}},
    },
    "Category": {
        "type": "object", "additionalProperties": False,
        "description": "One of WEBPUSH_CATEGORIES.",
        "required": ["name", "label", "description", "required", "default"],
        "properties": {
            "name": {"type": "string"},
            "label": {"type": "string"},
            "description": {"type": "string"},
            "required": {"type": "boolean", "description": "On while notifications are: "
                         "it cannot be turned off (order updates, say)."},
            "default": {"type": "boolean", "description": "Whether a customer who never "
                        "chose gets it (true for a required one)."},
        },
    },
    "Preferences": {
        "type": "object", "additionalProperties": False,
        "required": ["user_id", "preferences", "categories"],
        "properties": {
            "user_id": {"type": "string"},
            "preferences": {"type": "object", "additionalProperties": {"type": "boolean"},
                            "description": "Each category and whether the user gets it: "
                                           "their choice, else its default. Empty when "
                                           "categories are off."},
            "categories": {"type": "array", "items": _ref("Category"),
                           "description": "The categories to choose from; empty when "
                                          "categories are off (WEBPUSH_CATEGORIES is None)."},
        },
    },
    "ConversionRequest": {
        "type": "object", "additionalProperties": False, "required": ["user_id"],
        "properties": {
            "user_id": _USER_ID_ITEM,
            "value": {"anyOf": [
                {"type": "number", "minimum": 0, "exclusiveMaximum": 1e12},
                {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,4})?$"},
                {"type": "null"}],
                "description": "The order's amount: a number or, to be sure it is kept "
                               "exactly, a decimal string; at most 4 decimals. Needs "
                               "currency."},
            "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$",
                         "description": "ISO 4217, such as EUR or PLN; needs value."},
            "order_id": {"anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 200,
                 "pattern": "^[^\\u0000]*\\S[^\\u0000]*$"},
                {"type": "integer", "minimum": -MAX_ID - 1, "maximum": MAX_ID},
                {"type": "null"}],
                "description": "Your order's id: the same order counts once, however often "
                               "it is reported."},
            "at": {"type": ["string", "null"], "format": "date-time",
                   "description": "When the customer converted (RFC 3339 with an offset); "
                                  "now when absent. Not in the future."},
        },
    },
    "Conversion": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "attributed", "kind", "notification_id", "delivery_id", "order_id",
                     "duplicate", "replayed"],
        "properties": {
            "id": _ID,
            "attributed": {"type": "boolean"},
            "kind": {"type": ["string", "null"], "enum": ["direct", "influenced", None],
                     "description": "direct: the user clicked the notification within "
                                    "WEBPUSH_ATTRIBUTION_WINDOW before; influenced: it was "
                                    "displayed within WEBPUSH_INFLUENCE_WINDOW; null: "
                                    "neither (recorded, unattributed)."},
            "notification_id": {"anyOf": [_ID, {"type": "null"}]},
            "delivery_id": {"anyOf": [_ID, {"type": "null"}]},
            "order_id": {"type": ["string", "null"]},
            "duplicate": {"type": "boolean", "description": "The order was recorded before: "
                          "counted once, this is the first attribution."},
            "replayed": {"type": "boolean"},
        },
    },
    "Event": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "type", "created_at", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$",
                   "description": "Increasing; the cursor of the next page is the last id."},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "created_at": _TIME,
            "data": {"type": "object", "required": ["notification_id"],
                     "description": "notification_id, and as the type has them: user_id, "
                                    "delivery_id, subscription_id, status_code, reason, "
                                    "action, kind, order_id, value, currency, variant, "
                                    "language.",
                     "properties": {"notification_id": {"anyOf": [_ID, {"type": "null"}]}}},
        },
    },
    "PreferencesChange": {
        "type": "object", "additionalProperties": False, "required": ["preferences"],
        "properties": {
            "preferences": {"type": "object", "additionalProperties": {"type": "boolean"},
                            "description": "category -> true/false; categories left out "
                                           "keep their current choice."},
        },
    },
}

_STATS_EXAMPLE: dict[str, Any] = {
    "targeted_users": 4, "users_without_devices": 1, "opted_out": 1, "capped": 0,
    "deliveries": 3, "pending": 0, "held": 0, "sent": 3, "failed": 0, "gone": 0, "expired": 0,
    "skipped": 0, "displayed": 2, "clicked": 1, "closed": 0, "conversions": 1,
    "influenced_conversions": 1, "display_rate": 0.6667, "click_rate": 0.5,
    "click_through_rate": 0.3333, "conversion_rate": 0.3333, "expected_finish_at": None,
}
_NOTIFICATION_EXAMPLE: dict[str, Any] = {
    "id": 42, "status": "done", "title": "Flight LO123 boards at gate 12", "category": "travel",
    "urgency": "high", "ttl": 3600, "topic": "trip-42",
    "created_at": "2026-12-01T08:00:00+00:00", "send_at": None,
    "finished_at": "2026-12-01T08:00:03+00:00", "quiet_hours": None, "send_at_local": None,
    "rate_per_minute": None, "status_url": STATUS_URL,
    "stats": {**_STATS_EXAMPLE, "pruned": False, "revenue": {"EUR": "129.90"}, "variants": [],
              "failure_reasons": [],
              "by_platform": [{"platform": "Firefox desktop", "deliveries": 2, "sent": 2,
                               "displayed": 2, "clicked": 1}]},
    "users_opted_out": ["1045"],
}
_LISTED_EXAMPLE = {**{k: v for k, v in _NOTIFICATION_EXAMPLE.items() if k != "users_opted_out"},
                   "stats": _STATS_EXAMPLE}
_SEND_EXAMPLE = {
    "user_ids": ["1042", "1043", 1044], "title": "Flight LO123 boards at gate 12",
    "body": "Boarding closes 10:40.", "url": "/trips/42", "devices": "all", "ttl": 3600,
    "urgency": "high", "topic": "trip-42", "category": "travel",
}


def _json(schema: dict[str, Any], **examples: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema, "examples": {
        name: {"value": value} for name, value in examples.items()}}}


_NOTIFICATION_ID = {"name": "notification_id", "in": "path", "required": True, "schema": _ID,
                    "example": 42}
_USER_ID = {"name": "user_id", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}, "example": "1042"}
_PREFERENCES_EXAMPLE = {
    "user_id": "1042", "preferences": {"orders": True, "marketing": False, "news": True},
    "categories": [
        {"name": "orders", "label": "Your orders", "description": "Shipping and delivery.",
         "required": True, "default": True},
        {"name": "marketing", "label": "Offers", "description": "Sales and discounts.",
         "required": False, "default": False},
        {"name": "news", "label": "News", "description": "New in the shop.",
         "required": False, "default": False}]}


def _idempotency_key(description: str, example: str) -> dict[str, Any]:
    """The optional Idempotency-Key header of a POST (requests.idempotency_key's rules)."""
    return {"name": "Idempotency-Key", "in": "header", "required": False,
            "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                       "pattern": "^[!-~]+$"},
            "example": example}


def _paths() -> dict[str, Any]:
    return {
        "/openapi.json": {"get": {
            "operationId": "getOpenAPI", "summary": "This document.", "security": [],
            "responses": {"200": {"description": "The OpenAPI 3.1 document.", "content": {
                "application/json": {"schema": {"type": "object"}}}}},
        }},
        "/notifications": {
            "post": {
                "operationId": "createNotification",
                "summary": "Send one notification to users of yours (scope: send).",
                "description": "Stores and queues the notification; workers send it. Answers "
                               "at once with its id, its status URL and which users have no "
                               "consented device.",
                "parameters": [_idempotency_key(
                    "The same key with the same body answers the first notification again "
                    "(no second send); with another body, 409. Keys are scoped to the API "
                    "key.", "crm-campaign-2026-12-01-gate-change")],
                "requestBody": {"required": True, "content": _json(
                    _ref("NotificationRequest"), gate_change=_SEND_EXAMPLE,
                    scheduled={"user_ids": ["1042"], "title": "Your table is ready at 19:30",
                               "send_at": "2026-12-01T19:00:00+01:00", "ttl": 1800,
                               "devices": "latest", "data": {"booking": 981}},
                    own_gate_and_seat={
                        "recipients": [{"user_id": "1042", "vars": {"gate": "12", "seat": "14C"}},
                                       {"user_id": "1043", "vars": {"gate": "12", "seat": "3A"}}],
                        "title": "Flight {flight} boards at gate {gate}", "body": "Seat {seat}",
                        "vars": {"flight": "LO123"}, "urgency": "high"},
                    audience={"audience_id": 7, "title": "Winter sale: 20% off",
                              "category": "marketing"})},
                "responses": {
                    "202": {"description": "Accepted: stored and queued (or scheduled).",
                            "headers": {
                                "Location": {"description": "The status URL.", "required": True,
                                             "schema": {"type": "string"}},
                                "Idempotent-Replayed": {
                                    "description": "'true' when this answers an earlier "
                                                   "request with the same Idempotency-Key.",
                                    "schema": {"type": "string", "enum": ["true"]}}},
                            "content": _json(_ref("NotificationAccepted"), accepted={
                                "id": 42, "status": "queued", "status_url": STATUS_URL,
                                "created_at": "2026-12-01T08:00:00+00:00", "send_at": None,
                                "targeted_users": 3, "users_without_devices": ["1044"],
                                "replayed": False})},
                    **_errors("400", "401", "403", "409", "413", "422", "429",
                              e400="unknown_field,naive_time", e409="idempotency",
                              e413="users,payload,body", e422="urgency,missing_var"),
                },
            },
            "get": {
                "operationId": "listNotifications",
                "summary": "Notifications, newest first, with their funnels (scope: stats).",
                "description": "An empty parameter is the same as an absent one; parameters "
                               "not listed here are ignored.",
                "parameters": [
                    {"name": "since", "in": "query", "allowEmptyValue": True, "schema": _TIME_IN,
                     "description": "Created at or after this time.",
                     "example": "2026-12-01T00:00:00Z"},
                    {"name": "until", "in": "query", "allowEmptyValue": True, "schema": _TIME_IN,
                     "description": "Created before.", "example": "2026-12-02T00:00:00+01:00"},
                    {"name": "status", "in": "query", "allowEmptyValue": True,
                     "schema": {"type": "string", "enum": list(NOTIFICATION_STATUSES)},
                     "example": "done"},
                    {"name": "category", "in": "query", "allowEmptyValue": True,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                                "pattern": "^[^\\u0000]*$"}, "example": "travel"},
                    {"name": "page", "in": "query", "allowEmptyValue": True,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                "default": 1}, "example": 1},
                    {"name": "per_page", "in": "query", "allowEmptyValue": True,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                                "default": 25}, "example": 25},
                ],
                "responses": {
                    "200": {"description": "One page.", "content": _json(
                        _ref("NotificationList"), page={
                            "notifications": [_LISTED_EXAMPLE], "page": 1, "per_page": 25,
                            "total": 1, "next": None})},
                    **_errors("400", "401", "403", "429", e400="bad_filter"),
                },
            },
        },
        "/notifications/{notification_id}": {
            "parameters": [_NOTIFICATION_ID],
            "get": {
                "operationId": "getNotification",
                "summary": "Status and statistics (scope: stats; or send, for the key's own).",
                "description": "With users_opted_out: who had turned the category off when "
                               "the worker fanned the notification out (empty before).",
                "responses": {
                    "200": {"description": "The notification.",
                            "content": _json(_ref("Notification"), done=_NOTIFICATION_EXAMPLE)},
                    **_errors("401", "403", "404", "429", e404="missing"),
                },
            },
            "delete": {
                "operationId": "cancelNotification",
                "summary": "Cancel a notification this key created (scope: send).",
                "description": "Works while it is scheduled, queued or still sending: "
                               "deliveries not yet sent are skipped. Once done or cancelled, "
                               "409.",
                "responses": {
                    "200": {"description": "Cancelled.", "content": _json(
                        _ref("Notification"), cancelled={
                            **_NOTIFICATION_EXAMPLE, "status": "cancelled",
                            "send_at": "2026-12-01T19:00:00+00:00",
                            "stats": {**_NOTIFICATION_EXAMPLE["stats"], **{
                                k: 0 for k in _COUNTS},
                                "display_rate": None, "click_rate": None,
                                "click_through_rate": None, "by_platform": []},
                            "users_opted_out": []})},
                    **_errors("401", "403", "404", "409", "429", e404="missing",
                              e409="finished"),
                },
            },
        },
        "/audiences": {"post": {
            "operationId": "createAudience",
            "summary": "Upload an audience: your segment, stored for sending (scope: send).",
            "description": "The body is read as a stream and stored as it is read, up to "
                           "WEBPUSH_API_MAX_AUDIENCE_BYTES (200 MB by default; more is a 413 "
                           "and nothing is stored). text/csv: one user id a line, or a "
                           "header user_id,<var>,... whose other columns are each member's "
                           "vars (an empty cell is no value). application/x-ndjson: "
                           "{\"user_id\": ..., \"<var>\": ...} a line. A row that cannot be a "
                           "member is counted and the first ones shown; a user id repeated "
                           "counts once.",
            "parameters": [{"name": "name", "in": "query", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                            "description": "What people will call it.",
                            "example": "Passengers LO123 2026-12-01"}],
            "requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string"},
                             "example": "user_id,gate,seat\n1042,12,14C\n1043,12,3A\n"},
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": '{"user_id": "1042", "seat": "14C"}\n'}}},
            "responses": {
                "201": {"description": "Stored.", "headers": {
                    "Location": {"description": "The audience's URL.", "required": True,
                                 "schema": {"type": "string"}}},
                        "content": _json(_ref("AudienceCreated"), stored={
                            "id": 7, "name": "Passengers LO123 2026-12-01", "size": 298,
                            "created_at": "2026-12-01T07:00:00+00:00", "vars": ["gate", "seat"],
                            "rejected": {"count": 1, "duplicates": 1, "first": [
                                {"line": 57, "reason": "empty", "text": None}]}})},
                **_errors("400", "401", "403", "413", "422", "429", e400="unknown_field",
                          e413="audience", e422="audience_name"),
            },
        }},
        "/audiences/{audience_id}": {
            "parameters": [{"name": "audience_id", "in": "path", "required": True,
                            "schema": _AUDIENCE_ID_SCHEMA, "example": 7}],
            "get": {
                "operationId": "getAudience",
                "summary": "An audience's name, size and var names (scope: send).",
                "responses": {
                    "200": {"description": "The audience.", "content": _json(
                        _ref("Audience"), stored={
                            "id": 7, "name": "Passengers LO123 2026-12-01", "size": 298,
                            "created_at": "2026-12-01T07:00:00+00:00",
                            "vars": ["gate", "seat"]})},
                    **_errors("401", "403", "404", "429", e404="audience"),
                },
            },
            "delete": {
                "operationId": "deleteAudience",
                "summary": "Delete an audience and its members (scope: send).",
                "description": "409 while a notification to it has not been fanned out "
                               "(scheduled, or queued): cancel it first. Notifications sent "
                               "to it keep their figures.",
                "responses": {
                    "204": {"description": "Deleted."},
                    **_errors("401", "403", "404", "409", "429", e404="audience",
                              e409="audience_in_use"),
                },
            },
        },
        "/conversions": {
            "post": {
                "operationId": "recordConversion",
                "summary": "Report an order; it is attributed to the push that led to it "
                           "(scope: conversions).",
                "description": "Direct when the user clicked a push within "
                               "WEBPUSH_ATTRIBUTION_WINDOW before `at` (the latest click), "
                               "else influenced when one was displayed within "
                               "WEBPUSH_INFLUENCE_WINDOW, else unattributed. A direct "
                               "conversion's value adds to the notification's revenue. 201 "
                               "for a new conversion; 200 for an order_id recorded before "
                               "(counted once) or a replay.",
                "parameters": [_idempotency_key(
                    "The same key with the same body answers the first request again; "
                    "with another body, 409.", "order-10427")],
                "requestBody": {"required": True, "content": _json(
                    _ref("ConversionRequest"), order={
                        "user_id": "1042", "value": "129.90", "currency": "EUR",
                        "order_id": "10427", "at": "2026-12-01T09:12:00+01:00"})},
                "responses": {
                    "201": {"description": "Recorded now.", "content": _json(
                        _ref("Conversion"), direct={
                            "id": 311, "attributed": True, "kind": "direct",
                            "notification_id": 42, "delivery_id": 9071,
                            "order_id": "10427", "duplicate": False, "replayed": False})},
                    "200": {"description": "The order was recorded before, or a replay.",
                            "content": _json(_ref("Conversion"))},
                    **_errors("400", "401", "403", "409", "413", "422", "429",
                              e400="unknown_field,naive_time", e409="idempotency",
                              e413="body", e422="conversion"),
                },
            },
        },
        "/events": {
            "get": {
                "operationId": "exportEvents",
                "summary": "The event log as NDJSON, oldest first (scope: stats).",
                "description": "A line per event: each delivery's outcome (sent, failed, "
                               "gone, expired), each first displayed, clicked and closed, "
                               "each conversion and each notification done. A full page "
                               "carries Webpush-Next-Cursor: ask again with it as cursor.",
                "parameters": [
                    {"name": "cursor", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                     "description": "Webpush-Next-Cursor of the page before; absent: from "
                                    "the start."},
                    {"name": "since", "in": "query", "required": False, "schema": _TIME_IN,
                     "description": "Only events from this time on."},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                                "default": 10_000}}],
                "responses": {
                    "200": {"description": "NDJSON: one Event a line.",
                            "headers": {"Webpush-Next-Cursor": {
                                "description": "When the page is full: the cursor of the "
                                               "next one.", "required": False,
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
                            "content": {"application/x-ndjson": {"schema": _ref("Event")}}},
                    **_errors("400", "401", "403", "429", e400="naive_time"),
                },
            },
        },
        "/users/{user_id}/devices": {
            "get": {
                "operationId": "listUserDevices",
                "summary": "A user's devices as support may see them (scope: devices).",
                "parameters": [_USER_ID],
                "responses": {
                    "200": {"description": "Newest first; an unknown user has none.",
                            "content": _json(_ref("DeviceList"), one_device={
                                "user_id": "1042", "devices": [{
                                    "id": 7, "label": "Firefox on Linux",
                                    "push_service": "updates.push.services.mozilla.com",
                                    "added_at": "2026-11-02T10:00:00+00:00",
                                    "last_used_at": "2026-12-01T08:00:01+00:00",
                                    "active": True, "consent": {
                                        "state": "granted", "text_version": "1",
                                        "granted_at": "2026-11-02T10:00:00+00:00",
                                        "ended_at": None, "reason": None}}]})},
                    **_errors("400", "401", "403", "429", e400="bad_user_id"),
                },
            },
        },
        "/users/{user_id}/preferences": {
            "parameters": [_USER_ID],
            "get": {
                "operationId": "getUserPreferences",
                "summary": "A user's choice per category (scope: preferences).",
                "description": "A user who never chose has each category's default; with "
                               "categories off (WEBPUSH_CATEGORIES is None), preferences and "
                               "categories are empty.",
                "responses": {
                    "200": {"description": "The choices and the categories.",
                            "content": _json(_ref("Preferences"), chosen=_PREFERENCES_EXAMPLE,
                                             categories_off={"user_id": "1042",
                                                             "preferences": {},
                                                             "categories": []})},
                    **_errors("400", "401", "403", "429", e400="bad_user_id"),
                },
            },
            "put": {
                "operationId": "setUserPreferences",
                "summary": "Change a user's choices, as they gave them to you (scope: "
                           "preferences).",
                "description": "Each change is a row of the consent ledger with source "
                               "'api' and WEBPUSH_CONSENT_VERSION as its text version; a "
                               "choice that changes nothing adds none. A required category "
                               "cannot be turned off, a category must be configured, and "
                               "with categories off there is nothing to choose: each a 422 "
                               "invalid_preferences. Answers like GET.",
                "requestBody": {"required": True, "content": _json(
                    _ref("PreferencesChange"),
                    marketing_off={"preferences": {"marketing": False, "news": True}})},
                "responses": {
                    "200": {"description": "The choices after the change.",
                            "content": _json(_ref("Preferences"), chosen=_PREFERENCES_EXAMPLE)},
                    **_errors("400", "401", "403", "413", "422", "429",
                              e400="bad_user_id,not_a_choice", e413="body",
                              e422="required,unknown,off"),
                },
            },
        },
    }


def openapi_document(base_path: str = "/webpush/api/v1", *,
                     max_users: int = 10_000) -> dict[str, Any]:
    """The document, its server at ``base_path`` (the blueprint prefix + ``/api/v1``) and
    its id cap at ``max_users`` (WEBPUSH_API_MAX_USERS)."""
    doc: dict[str, Any] = copy.deepcopy({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "flask-webpush-targeted push API", "version": "1",
            "description": "Targeted Web Push for external systems (CRMs, operations, "
                           "ticketing). JSON in, JSON out; every error is "
                           "{\"error\": code, \"message\": text}. See docs/api.md.",
        },
        "servers": [{"url": base_path}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer", "bearerFormat": "wpk_<id>_<secret>",
                "description": "`flask webpush api-key create NAME --scope send` prints one, "
                               "once. Scopes: send, stats, devices, preferences, "
                               "conversions."}},
            "schemas": SCHEMAS,
        },
        "paths": _paths(),
    })
    for target in ("user_ids", "recipients"):
        doc["components"]["schemas"]["NotificationRequest"]["properties"][target][
            "maxItems"] = max_users
    return doc
