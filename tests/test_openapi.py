"""The OpenAPI document of the push API matches the code.

Every route under ``/api/v1`` is described and everything described is routed; every
schema is valid JSON Schema 2020-12 and every example validates; and a property-based
test (hypothesis) sends generated requests, well-formed and not, to every operation
on SQLite and PostgreSQL and finds no 5xx and no answer outside the document. It also
holds the document to its word: a request its schemas accept is never refused as
malformed (400), and one they refuse is never accepted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from conftest import SendingHost
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from jsonschema import Draft202012Validator
from openapi_check import BASE, DOC, check_answer, errors_of
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flask_webpush_targeted.push_api.keys import create_key
from flask_webpush_targeted.push_api.openapi import openapi_document

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# -- the document against the routes -----------------------------------------------------------


def test_the_served_document_is_openapi_3_1_with_the_prefix_as_server(app: Any) -> None:
    response = app.test_client().get(f"{BASE}/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.get_json()
    assert doc == openapi_document(BASE)
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": BASE}]
    assert "Set-Cookie" not in response.headers


def test_the_document_follows_the_prefix_and_the_id_cap_of_the_config(db_url: str) -> None:
    from hostapp import make_host_app

    app, _db, _webpush = make_host_app(db_url, WEBPUSH_URL_PREFIX="/shop/push",
                                       WEBPUSH_API_MAX_USERS=500)
    doc = app.test_client().get("/shop/push/api/v1/openapi.json").get_json()
    assert doc["servers"] == [{"url": "/shop/push/api/v1"}]
    schema = doc["components"]["schemas"]["NotificationRequest"]
    assert schema["properties"]["user_ids"]["maxItems"] == 500


def test_every_api_route_is_described_and_every_description_is_routed(app: Any) -> None:
    routed = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(f"{BASE}/"):
            continue
        path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule.rule.removeprefix(BASE))
        routed |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    described = {(path, method) for path, method, _ in _operations(DOC)}
    assert routed == described
    assert len(routed) == 13


def test_operations_have_unique_ids_and_document_their_errors() -> None:
    ids = [op["operationId"] for _, _, op in _operations(DOC)]
    assert len(ids) == len(set(ids))
    for path, method, op in _operations(DOC):
        if op.get("security") == []:
            continue
        assert {"401", "403", "429"} <= set(op["responses"]), (path, method)
        for status, response in op["responses"].items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


def test_every_schema_is_valid_json_schema_2020_12_and_every_ref_resolves() -> None:
    schemas = [node["schema"] for node in _walk(DOC) if isinstance(node, dict)
               and isinstance(node.get("schema"), dict)]
    schemas += list(DOC["components"]["schemas"].values())
    assert len(schemas) > 20
    for schema in schemas:
        Draft202012Validator.check_schema(schema)
    refs = {node["$ref"] for node in _walk(DOC) if isinstance(node, dict) and "$ref" in node}
    registry = Registry().with_resource("urn:doc", Resource(DOC, DRAFT202012))
    resolver = registry.resolver(base_uri="urn:doc")
    for ref in refs:
        assert resolver.lookup(ref).contents, ref


def _examples() -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example value) for every example in the document."""
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            where = f"{method.upper()} {path}"
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                if "example" in param:
                    yield f"{where} {param['name']}", param["schema"], param["example"]
            bodies = [("request", op["requestBody"])] if "requestBody" in op else []
            bodies += list(op["responses"].items())
            for status, holder in bodies:
                for media in holder.get("content", {}).values():
                    for name, example in media.get("examples", {}).items():
                        yield f"{where} {status} {name}", media["schema"], example["value"]


def test_every_example_validates_against_its_schema() -> None:
    examples = list(_examples())
    assert len(examples) > 30
    for where, schema, value in examples:
        assert not errors_of(schema, value), (where, errors_of(schema, value))


def test_the_schemas_do_reject_what_they_should() -> None:
    request = {"$ref": "#/components/schemas/NotificationRequest"}
    ok = {"user_ids": ["1"], "title": "Hi"}
    assert not errors_of(request, ok)
    for bad in ({**ok, "colour": 1}, {**ok, "send_at": "2026-12-01T09:00:00"},
                {**ok, "ttl": "60"}, {"title": "Hi"}, {**ok, "user_ids": ["1"] * 10_001}):
        assert errors_of(request, bad), bad


# -- the property-based test -------------------------------------------------------------------

URGENCIES = ["very-low", "low", "normal", "high"]


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12)
                    | st.floats(allow_nan=False, allow_infinity=False), _nested, max_leaves=8)
OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
TIMES = st.one_of(
    st.datetimes(timezones=OFFSETS).map(lambda d: d.isoformat()),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2100, 1, 1),
                 timezones=OFFSETS).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: refused
    st.text(max_size=30),
)
URLS = st.sampled_from(["/trips/42", "https://shop.example/a", "https://evil.example/",
                        "//evil.example", "http://[::1", "", "javascript:alert(1)", "/" * 3000])
NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
#: values the document accepts, field by field (null among them: "not given")
VALID: dict[str, st.SearchStrategy[Any]] = {
    "user_ids": st.lists(st.one_of(st.sampled_from(["1", "2", "u/3", "x" * 255, 2**63 - 1,
                                                    -(2**63), 0, 1.0]),
                                   NAMES, st.integers(-(2**63), 2**63 - 1)),
                         min_size=1, max_size=4),
    "title": NAMES.filter(str.strip),
    "body": st.one_of(st.none(), st.text(max_size=100)),
    "url": st.sampled_from([None, "/trips/42", "https://shop.example/a", "", "/"]),
    "devices": st.one_of(st.sampled_from([None, "all", "latest"]),
                         st.lists(st.integers(1, 3), min_size=1, max_size=2)),
    "ttl": st.one_of(st.none(), st.sampled_from([0, 1, 2_419_200, 3600.0]),
                     st.integers(0, 2_419_200)),
    "urgency": st.sampled_from([None, *URGENCIES]),
    "topic": st.one_of(st.none(), st.sampled_from(["a", "Z" * 32, "trip-42_x"]),
                       st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)),
    "send_at": st.one_of(st.none(), st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=OFFSETS)
        .map(lambda d: d.isoformat())),
    "category": st.one_of(st.none(), NAMES, st.just("c" * 64)),
    "icon": st.sampled_from([None, "/icon.png", "https://shop.example/icon.png"]),
    "image": st.sampled_from([None, "/image.png"]),
    "badge": st.sampled_from([None, "/badge.png"]),
    "tag": st.one_of(st.none(), NAMES, st.just("t" * 64)),
    "actions": st.one_of(st.none(), st.lists(st.fixed_dictionaries(
        {"action": st.text(max_size=5), "title": st.text(max_size=5)},
        optional={"icon": st.text(max_size=5)}), max_size=2)),
    "data": JSON,
    "require_interaction": st.one_of(st.none(), st.booleans()),
    "silent": st.one_of(st.none(), st.booleans()),
}
#: values that are wrong in shape or in value, field by field
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "user_ids": st.one_of(
        st.lists(st.one_of(st.text(max_size=260), st.integers(-(2**64), 2**64),
                           st.just("a\x00")), max_size=4), JSON),
    "title": st.one_of(st.text(max_size=3), st.just("   "), JSON),
    "body": st.one_of(st.text(min_size=3500, max_size=4200), JSON),
    "url": st.one_of(URLS, st.text(max_size=20), JSON),
    "devices": st.one_of(st.sampled_from(["newest", ""]),
                         st.lists(st.integers(-5, 2**64), max_size=3), JSON),
    "ttl": st.one_of(st.integers(-10, 3_000_000), st.floats(-1, 1e7, allow_nan=False), JSON),
    "urgency": st.one_of(st.sampled_from(["asap", "HIGH"]), JSON),
    "topic": st.one_of(st.text(max_size=40), JSON),
    "send_at": st.one_of(TIMES, JSON),
    "category": st.one_of(st.text(max_size=70), st.just("a\x00b"), JSON),
    "icon": st.one_of(URLS, JSON), "image": URLS, "badge": URLS,
    "tag": st.one_of(st.text(max_size=70), JSON),
    "actions": st.one_of(st.lists(st.fixed_dictionaries(
        {"action": st.text(max_size=5), "title": st.one_of(st.text(max_size=5), JSON)},
        optional={"icon": JSON, "extra": JSON}), max_size=3), JSON),
    "data": st.text(min_size=3900, max_size=4000),
    "require_interaction": JSON,
    "silent": JSON,
    "vars": st.one_of(st.dictionaries(st.text(max_size=5), JSON, max_size=3), JSON),
    "audience_id": st.one_of(st.integers(-5, 2**64), JSON),
    "recipients": st.one_of(st.lists(st.fixed_dictionaries(
        {"user_id": st.one_of(st.text(max_size=5), JSON)},
        optional={"vars": JSON, "extra": JSON}), max_size=3), JSON),
}
VAR_NAMES = st.sampled_from(["gate", "seat", "flight", "0", "a b", "_x"])
VAR_VALUES = st.one_of(st.text(max_size=8), st.integers(-10**6, 10**6), st.floats(
    allow_nan=False, allow_infinity=False), st.just("a\x00"), st.none(), st.booleans())
TEMPLATES = st.sampled_from(["Gate {gate}", "Seat {seat} {{ok}}", "{flight}", "{0.__class__}",
                             "{gate!r}", "{gate:>9}", "broken {", "broken }", "plain"])
#: bodies to recipients or an audience, with vars: templates filled or refused
TEMPLATED = st.fixed_dictionaries(
    {"title": TEMPLATES},
    optional={"vars": st.dictionaries(VAR_NAMES, VAR_VALUES, max_size=3),
              "body": TEMPLATES, "url": st.sampled_from(["/t/{gate}", "/{seat}", "/x"])},
).flatmap(lambda base: st.one_of(
    st.fixed_dictionaries({"recipients": st.lists(st.fixed_dictionaries(
        {"user_id": st.sampled_from(["1", "2", "3", 4])},
        optional={"vars": st.one_of(st.none(), st.dictionaries(VAR_NAMES, VAR_VALUES,
                                                                max_size=3))}),
        min_size=1, max_size=3)}).map(lambda t: {**base, **t}),
    st.fixed_dictionaries({"audience_id": st.one_of(st.integers(1, 3), st.integers(
        2**31, 2**63 - 1))}).map(lambda t: {**base, **t}),
    st.fixed_dictionaries({"user_ids": st.just(["1"]), "audience_id": st.just(1)}).map(
        lambda t: {**base, **t}),
))
OPTIONAL = {k: v for k, v in VALID.items() if k not in ("user_ids", "title")}
WELL_FORMED = st.fixed_dictionaries({"user_ids": VALID["user_ids"], "title": VALID["title"]},
                                    optional=OPTIONAL)


@st.composite
def _one_field_wrong(draw: Any) -> dict[str, Any]:
    body = draw(WELL_FORMED)
    name = draw(st.sampled_from([*WRONG, *["unknown"] * 4]))
    if draw(st.booleans()) and name in ("user_ids", "title"):
        del body[name]
    else:
        body[name] = draw(WRONG.get(name, JSON))
    return body


BODIES = st.one_of(
    WELL_FORMED, WELL_FORMED, _one_field_wrong(), _one_field_wrong(), TEMPLATED,
    st.fixed_dictionaries({}, optional={**VALID, **WRONG, "unknown": JSON}),
    JSON,
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=210)
IDEMPOTENCY = st.one_of(st.none(), st.sampled_from(["order-1", "order-2"]), HEADER_TEXT)
KEYS = st.sampled_from(["all"] * 6 + ["send", "stats", "devices", "revoked", "forged", None])
#: WEBPUSH_FUZZ_EXAMPLES=2000 for a longer hunt than the suite's
EXAMPLES = int(os.environ.get("WEBPUSH_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Fuzz:
    """A host with keys of every kind, answering generated requests."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.http = host.app.test_client()
        m = host.webpush.models
        with host.app.app_context():
            self.keys: dict[str | None, str | None] = {
                scope: create_key(host.db, m, scope, [scope])[1]
                for scope in ("send", "stats", "devices")}
            self.keys["all"] = create_key(host.db, m, "all", ["send", "stats", "devices"])[1]
            revoked, self.keys["revoked"] = create_key(host.db, m, "old", ["send", "stats"])
            revoked.revoked_at = datetime.now(UTC)
            host.db.session.commit()
        self.keys["forged"] = "wpk_1_" + "F" * 43
        self.keys[None] = None
        self.subscription = host.subscribe("1", "Phone")
        host.subscribe("2", "Laptop")
        for key in ("send", "all"):  # notifications 1 and 2, one per key; 3 from Python
            self.call("POST", f"{BASE}/notifications", key, json={"user_ids": ["1"], "title": "x"})
        with host.app.app_context():
            host.webpush.notify_user("2", title="From the back office")
            # audience 1, with vars: what TEMPLATED's bodies send to
            host.webpush.create_audience([{"user": "1", "vars": {"gate": "3"}}, "2"],
                                         name="fuzz")

    def call(self, method: str, path: str, key: str | None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if self.keys[key] is not None:
            headers["Authorization"] = f"Bearer {self.keys[key]}"
        response = self.http.open(path, method=method, headers=headers, **kw)
        assert response.status_code < 500, response.get_data(as_text=True)
        check_answer(method, path, response)
        if currently_in_test_context():
            event(f"{method} {response.status_code}")
            if response.status_code in (400, 422):
                event(response.get_json()["message"][:50])
        return response


@pytest.fixture
def fuzz(make_host: Callable[..., SendingHost]) -> Fuzz:
    return Fuzz(make_host(WEBPUSH_API_RATE_LIMIT=100_000))


def _authorized(key: str | None, *scopes: str) -> bool:
    return key == "all" or key in scopes


@settings(SETTINGS, max_examples=EXAMPLES * 5 // 3)
@given(body=BODIES, idempotency=IDEMPOTENCY, key=st.one_of(st.just("all"), KEYS))
def test_property_create_notification_answers_as_documented(
    fuzz: Fuzz, body: Any, idempotency: str | None, key: str | None,
) -> None:
    headers = {} if idempotency is None else {"Idempotency-Key": idempotency}
    response = fuzz.call("POST", f"{BASE}/notifications", key, data=json.dumps(body),
                         headers={**headers, "Content-Type": "application/json"})
    if not _authorized(key, "send"):
        assert response.status_code in (401, 403)
        return
    post = DOC["paths"]["/notifications"]["post"]
    valid = not errors_of(post["requestBody"]["content"]["application/json"]["schema"], body)
    header_valid = idempotency is None or not errors_of(post["parameters"][0]["schema"],
                                                        idempotency)
    event(f"schema-valid body: {valid}, header: {header_valid}")
    if valid and header_valid:
        assert response.status_code in (202, 409, 413, 422), response.get_json()
    elif not valid:
        assert response.status_code != 202, body


QUERY = st.dictionaries(st.sampled_from(["since", "until", "status", "category", "page",
                                         "per_page", "other"]),
                        st.one_of(TIMES, st.sampled_from(["done", "queued", "sent", "0", "1",
                                                          "25", "101", "007", "+5", "-1", ""]),
                                  st.integers(0, 10**12).map(str), HEADER_TEXT),
                        max_size=4)


def _query_value(name: str, text: str) -> Any:
    """A query string value as its schema sees it (integers are written in digits)."""
    if name in ("page", "per_page") and re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


@SETTINGS
@given(query=QUERY, key=KEYS)
def test_property_list_notifications_answers_as_documented(
    fuzz: Fuzz, query: dict[str, str], key: str | None,
) -> None:
    response = fuzz.call("GET", f"{BASE}/notifications?{urlencode(query)}", key)
    if not _authorized(key, "stats"):
        assert response.status_code in (401, 403)
        return
    params = {p["name"]: p["schema"] for p in DOC["paths"]["/notifications"]["get"]["parameters"]}
    valid = all(errors_of(params[name], _query_value(name, value)) == []
                for name, value in query.items() if name in params and value != "")
    assert response.status_code == (200 if valid else 400), (query, response.get_json())


IDS = st.one_of(st.integers(1, 4).map(str), st.integers(-(10**20), 10**20).map(str),
                st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
                        min_size=1, max_size=25)
                .filter(lambda s: s not in (".", "..")))


@SETTINGS
@given(raw_id=IDS, method=st.sampled_from(["GET", "DELETE"]), key=KEYS)
def test_property_one_notification_answers_as_documented(
    fuzz: Fuzz, raw_id: str, method: str, key: str | None,
) -> None:
    response = fuzz.call(method, f"{BASE}/notifications/{quote(raw_id, safe='')}", key)
    if not _authorized(key, "send", "stats") or (method == "DELETE"
                                                and not _authorized(key, "send")):
        assert response.status_code in (401, 403)


USER_PATHS = st.text(min_size=1, max_size=300).filter(
    # what a path can address: no empty or dot segment (werkzeug merges "//")
    lambda s: not {"", ".", ".."} & set(s.split("/")))


@SETTINGS
@given(user_id=USER_PATHS, key=KEYS)
def test_property_user_devices_answers_as_documented(
    fuzz: Fuzz, user_id: str, key: str | None,
) -> None:
    response = fuzz.call("GET", f"{BASE}/users/{quote(user_id, safe='/')}/devices", key)
    if not _authorized(key, "devices"):
        assert response.status_code in (401, 403)
        return
    valid = len(user_id) <= 255 and "\x00" not in user_id
    assert response.status_code == (200 if valid else 400)
    if valid:
        assert response.get_json()["user_id"] == user_id


AUDIENCE_LINES = st.one_of(
    st.sampled_from([b"user_id", b"user_id,gate,seat", b"1", b"2,12,14C", b"", b"\xff\xfe",
                     b"a\x00b", b"x" * 300, b'"q,1"', b"1,2,3,4", b'{"user_id": "9"}',
                     b'{"user_id": 1.5}', b'{"user_id": "7", "gate": "A"}', b"[1]",
                     b'{"user_id": "7", "bad name": 1}', b"user_id,0bad"]),
    st.binary(max_size=40))
AUDIENCE_BODIES = st.lists(AUDIENCE_LINES, max_size=6).map(lambda lines: b"\n".join(lines))
AUDIENCE_TYPES = st.sampled_from(["text/csv", "text/csv; charset=utf-8", "application/x-ndjson",
                                  "application/json", "text/plain", ""])
AUDIENCE_NAMES = st.one_of(st.none(), st.sampled_from(["LO123", "", " ", "n" * 201]),
                           st.text(max_size=10))


@SETTINGS
@given(body=AUDIENCE_BODIES, kind=AUDIENCE_TYPES, name=AUDIENCE_NAMES, key=KEYS)
def test_property_create_audience_answers_as_documented(
    fuzz: Fuzz, body: bytes, kind: str, name: str | None, key: str | None,
) -> None:
    query = "" if name is None else "?" + urlencode({"name": name})
    response = fuzz.call("POST", f"{BASE}/audiences{query}", key, data=body,
                         headers={"Content-Type": kind} if kind else {})
    if not _authorized(key, "send"):
        assert response.status_code in (401, 403)
        return
    if response.status_code == 201:
        answer = response.get_json()
        lines = [line for line in body.split(b"\n")]
        # every line is a member, a header, a duplicate or a rejected row
        assert answer["size"] + answer["rejected"]["count"] + answer["rejected"][
            "duplicates"] <= len(lines)
        got = fuzz.call("GET", f"{BASE}/audiences/{answer['id']}", key)
        assert got.get_json() == {k: v for k, v in answer.items() if k != "rejected"}


@SETTINGS
@given(raw=st.one_of(st.integers(-5, 2**64).map(str), st.sampled_from(["1", "01", "x", "1.0",
                                                                          "%00", "\u0661"])),
       method=st.sampled_from(["GET", "DELETE"]), key=KEYS)
def test_property_one_audience_answers_as_documented(
    fuzz: Fuzz, raw: str, method: str, key: str | None,
) -> None:
    response = fuzz.call(method, f"{BASE}/audiences/{quote(raw, safe='')}", key)
    if not _authorized(key, "send"):
        assert response.status_code in (401, 403)
