"""One definition of a notification's options: notify_users, the push API's body and its
OpenAPI document all follow ``notifications.NotificationOptions``."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import pytest

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.exceptions import BadRequestError
from flask_webpush_targeted.notifications import NotificationOptions
from flask_webpush_targeted.push_api.openapi import openapi_document
from flask_webpush_targeted.push_api.requests import FIELDS, OPTION_KINDS, parse_notification

#: the one option the push API takes as a header (Idempotency-Key), not in the body
HEADER_ONLY = {"idempotency_key"}
#: who gets it, besides the positional users: not options of the message
TARGETING = ("audience", "recipients")
#: the body's fields that say who gets it
API_TARGETING = {"user_ids", "audience_id", "recipients"}


def test_notify_users_takes_exactly_the_options_keywords_with_their_defaults() -> None:
    params = inspect.signature(WebPush.notify_users).parameters
    keywords = {name: p.default for name, p in params.items()
                if p.kind is p.KEYWORD_ONLY and name not in TARGETING}
    assert [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY][:2] == list(TARGETING)
    options = {f.name: (inspect.Parameter.empty if f.default is MISSING else f.default)
               for f in fields(NotificationOptions)}
    assert keywords == options
    assert list(keywords) == list(options)  # the same order, for the reader of both


def test_notify_user_names_the_same_defaults_for_the_keywords_it_spells_out() -> None:
    params = inspect.signature(WebPush.notify_user).parameters
    options = {f.name: f.default for f in fields(NotificationOptions)}
    for name in ("body", "url", "devices"):
        assert params[name].default == options[name], name


def test_the_api_body_takes_every_option_but_the_idempotency_key_header() -> None:
    names = {f.name for f in fields(NotificationOptions)}
    assert set(OPTION_KINDS) == names - HEADER_ONLY
    assert set(FIELDS) == {*API_TARGETING, *OPTION_KINDS}
    with pytest.raises(BadRequestError, match=r"Unknown field\(s\): idempotency_key\."):
        parse_notification({"user_ids": ["1"], "title": "t", "idempotency_key": "k"}, 10)


def test_the_openapi_request_documents_exactly_the_fields_the_api_reads() -> None:
    doc = openapi_document("/webpush/api/v1", max_users=10)
    properties = doc["components"]["schemas"]["NotificationRequest"]["properties"]
    assert set(properties) == FIELDS


def test_each_json_kind_is_checked_as_the_openapi_document_types_it() -> None:
    doc = openapi_document("/webpush/api/v1", max_users=10)
    properties = doc["components"]["schemas"]["NotificationRequest"]["properties"]
    simple = {"string": "string", "boolean": "boolean", "integer": "integer"}
    for name, kind in OPTION_KINDS.items():
        if kind in simple:
            schema = properties[name]
            types = [s.get("type") for s in schema.get("anyOf", [schema])]
            assert simple[kind] in types, (name, kind, schema)
