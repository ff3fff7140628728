"""Checking requests and answers of the push API against its OpenAPI document."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker

from flask_webpush_targeted.exceptions import BadRequestError
from flask_webpush_targeted.push_api.openapi import openapi_document
from flask_webpush_targeted.push_api.requests import parse_rfc3339

BASE = "/webpush/api/v1"
DOC = openapi_document(BASE)
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time")
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        parse_rfc3339(value, "value")
    except BadRequestError:
        return False
    return True


@FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


def validator(schema: dict[str, Any], doc: dict[str, Any] = DOC) -> Draft202012Validator:
    """A 2020-12 validator of ``schema`` whose ``#/components/...`` refs resolve in ``doc``."""
    return Draft202012Validator({**schema, "components": doc["components"]},
                                format_checker=FORMATS)


def errors_of(schema: dict[str, Any], value: Any) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty when it validates)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(schema).iter_errors(value)]


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{user_id\}", ".+").replace(r"\{notification_id\}", "[^/]+")
    pattern = pattern.replace(r"\{audience_id\}", "[^/]+")
    return re.compile(pattern)


_TEMPLATES = [(t, _template_regex(t)) for t in DOC["paths"]]


def template_of(path: str) -> str:
    """The document's path template that a request path (with the API prefix) falls under."""
    local = urlsplit(path).path.removeprefix(BASE)
    for template, regex in _TEMPLATES:
        if regex.fullmatch(local):
            return template
    raise AssertionError(f"{path} is under no documented path")


def check_answer(method: str, path: str, response: Any) -> dict[str, Any] | None:
    """Assert the answer is one the document describes for this operation; return its JSON."""
    template = template_of(path)
    operation = DOC["paths"][template][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method} {path} answered {status}, undocumented: {response.get_data(as_text=True)}")
    documented = operation["responses"][status]
    for header, spec in documented.get("headers", {}).items():
        if spec.get("required"):
            assert header in response.headers, f"{method} {path} {status} lacks {header}"
        if header in response.headers:
            value: Any = response.headers[header]
            if spec["schema"].get("type") == "integer" and value.isdigit():
                value = int(value)
            problems = errors_of(spec["schema"], value)
            assert not problems, f"{method} {path} {status} {header}: {problems}"
    if "content" not in documented:
        return None
    if response.mimetype == "application/x-ndjson":
        # One document per line, each an instance of the line's schema: the lines come back.
        schema = documented["content"]["application/x-ndjson"]["schema"]
        lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
        for line in lines:
            problems = errors_of(schema, line)
            assert not problems, f"{method} {path} {status}: {problems}\n{line}"
        return {"lines": lines}
    assert response.mimetype == "application/json", response.mimetype
    body = response.get_json()
    schema = documented["content"]["application/json"]["schema"]
    problems = errors_of(schema, body)
    assert not problems, f"{method} {path} {status}: {problems}\n{body}"
    return body
