"""The push API's preferences routes and the notification options of categories.

``GET`` and ``PUT /users/{id}/preferences`` (scope ``preferences``): the round trip and
its consent-ledger row, required and unknown categories, categories off, user ids as the
devices route takes them, malformed bodies, and both routes fuzzed. Then the options
``quiet_hours``, ``send_at_local`` and ``rate_per_minute`` in ``POST notifications`` and
the opted-out users in the answers, through a real worker. On SQLite and PostgreSQL with
the real Redis; every answer is checked against the OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from fuzz_strategies import fuzz_settings, json_body_text, json_values, nasty_text
from hypothesis import given
from hypothesis import strategies as st
from openapi_check import BASE, check_answer

from flask_webpush_targeted.push_api.keys import SCOPES, create_key

NOTIFICATIONS = f"{BASE}/notifications"
CATEGORIES = {
    "orders": {"label": "Your orders", "description": "Shipping and delivery.",
               "required": True},
    "marketing": {"label": "Offers", "description": "Sales and discounts."},
    "news": {"label": "News", "default": True},
}


class Api:
    """A client of the push API on a SendingHost; every answer is checked against the doc."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.http = host.app.test_client()

    def key(self, *scopes: str, name: str = "crm") -> str:
        with self.host.app.app_context():
            return create_key(self.host.db, self.host.webpush.models, name,
                              scopes or SCOPES)[1]

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        response: Any = self.http.open(path, method=method, headers=headers, **kw)
        assert response.status_code < 500, response.get_data(as_text=True)
        response.body = check_answer(method, path, response)
        if response.status_code >= 400:  # every error says what and why
            assert response.body["error"] and response.body["message"].strip()
        return response

    def ledger(self) -> list[Any]:
        C = self.host.webpush.models.Consent
        with self.host.app.app_context():
            rows = self.host.db.session.scalars(
                sa.select(C).where(C.scope.like("category:%")).order_by(C.id)).all()
            return [(r.user_id, r.scope, r.action, r.source, r.text_version) for r in rows]


def prefs(user_id: str) -> str:
    # A lone surrogate travels as its UTF-8 bytes, as a client that sends it would write it.
    quoted = quote(user_id.encode("utf-8", "surrogatepass"), safe="/")
    return f"{BASE}/users/{quoted}/preferences"


def has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def assert_error(response: Any, status: int, error: str, *words: str) -> None:
    assert (response.status_code, response.body["error"]) == (status, error), response.body
    for word in words:
        assert word in response.body["message"], response.body


@pytest.fixture
def api(make_host: Callable[..., SendingHost]) -> Api:
    return Api(make_host(WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_CONSENT_VERSION="2026-11",
                         WEBPUSH_API_RATE_LIMIT=100_000))


@pytest.fixture
def plain(make_host: Callable[..., SendingHost]) -> Api:
    """Categories off (WEBPUSH_CATEGORIES None, the default)."""
    return Api(make_host(WEBPUSH_API_RATE_LIMIT=100_000))


# -- GET and PUT --------------------------------------------------------------------------------


def test_get_shows_the_defaults_and_the_categories_to_choose_from(api: Api) -> None:
    response = api.call("GET", prefs("1042"), api.key("preferences"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.body == {
        "user_id": "1042",
        "preferences": {"orders": True, "marketing": False, "news": True},
        "categories": [
            {"name": "orders", "label": "Your orders", "description": "Shipping and delivery.",
             "required": True, "default": True},
            {"name": "marketing", "label": "Offers", "description": "Sales and discounts.",
             "required": False, "default": False},
            {"name": "news", "label": "News", "description": "", "required": False,
             "default": True}]}


def test_a_put_then_get_round_trip_writes_one_ledger_row_with_source_api(api: Api) -> None:
    key = api.key("preferences")
    put = api.call("PUT", prefs("1042"), key, json={"preferences": {"marketing": True}})
    assert put.status_code == 200
    assert put.body["preferences"] == {"orders": True, "marketing": True, "news": True}
    assert api.call("GET", prefs("1042"), key).body == put.body
    assert api.ledger() == [("1042", "category:marketing", "granted", "api", "2026-11")]
    # The same choice again, and a default made explicit, change nothing: no new row.
    again = api.call("PUT", prefs("1042"), key,
                     json={"preferences": {"marketing": True, "news": True, "orders": True}})
    assert again.status_code == 200 and again.body == put.body
    assert len(api.ledger()) == 1
    off = api.call("PUT", prefs("1042"), key, json={"preferences": {"news": False}})
    assert off.body["preferences"] == {"orders": True, "marketing": True, "news": False}
    assert api.ledger()[1] == ("1042", "category:news", "withdrawn", "api", "2026-11")
    # Another user's choices are their own.
    assert api.call("GET", prefs("1043"), key).body["preferences"]["marketing"] is False


def test_a_required_category_cannot_be_turned_off(api: Api) -> None:
    key = api.key("preferences")
    refused = api.call("PUT", prefs("1042"), key,
                       json={"preferences": {"marketing": True, "orders": False}})
    assert_error(refused, 422, "invalid_preferences", "orders", "required")
    assert api.ledger() == []  # nothing of the refused request is applied
    assert api.call("GET", prefs("1042"), key).body["preferences"]["marketing"] is False


def test_an_unknown_category_is_refused_with_the_known_ones(api: Api) -> None:
    refused = api.call("PUT", prefs("1042"), api.key("preferences"),
                       json={"preferences": {"deals": True}})
    assert_error(refused, 422, "invalid_preferences", "deals", "orders, marketing, news")
    assert api.ledger() == []


def test_with_categories_off_get_is_empty_and_put_is_422(plain: Api) -> None:
    key = plain.key("preferences")
    got = plain.call("GET", prefs("1042"), key)
    assert got.status_code == 200
    assert got.body == {"user_id": "1042", "preferences": {}, "categories": []}
    bodies: list[dict[str, Any]] = [{"preferences": {}}, {"preferences": {"marketing": True}}]
    for body in bodies:
        assert_error(plain.call("PUT", prefs("1042"), key, json=body), 422,
                     "invalid_preferences", "WEBPUSH_CATEGORIES")
    assert plain.ledger() == []


# -- keys and scopes ----------------------------------------------------------------------------


def test_a_key_without_the_preferences_scope_gets_403(api: Api) -> None:
    others = api.key("send", "stats", "devices")
    body = {"preferences": {"marketing": True}}
    assert_error(api.call("GET", prefs("1042"), others), 403, "insufficient_scope",
                 "'preferences'", "--scope preferences")
    assert_error(api.call("PUT", prefs("1042"), others, json=body), 403,
                 "insufficient_scope", "'preferences'")
    assert_error(api.call("PUT", prefs("1042"), json=body), 401, "api_key_required")
    assert_error(api.call("GET", prefs("1042"), "wpk_1_" + "F" * 43), 401, "invalid_api_key")
    assert api.ledger() == []
    # ... and a preferences key reaches nothing else.
    only = api.key("preferences", name="prefs")
    assert_error(api.call("GET", f"{BASE}/users/1042/devices", only), 403,
                 "insufficient_scope")
    assert_error(api.call("GET", NOTIFICATIONS, only), 403, "insufficient_scope")


def test_the_cli_creates_a_preferences_key(api: Api) -> None:
    created = api.host.app.test_cli_runner().invoke(
        args=["webpush", "api-key", "create", "crm-prefs", "--scope", "preferences"])
    assert created.exit_code == 0, created.output
    assert "scope(s) preferences" in created.stderr
    key = created.stdout.strip()
    assert api.call("GET", prefs("1"), key).status_code == 200


# -- user ids and bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["u/42", "nobody", "x" * 255, "émile", "1 2", "a\nb"])
def test_user_ids_are_taken_like_the_devices_route(api: Api, user_id: str) -> None:
    key = api.key("preferences", "devices")
    devices = api.call("GET", f"{BASE}/users/{quote(user_id, safe='/')}/devices", key)
    got = api.call("GET", prefs(user_id), key)
    assert devices.status_code == got.status_code == 200
    assert got.body["user_id"] == devices.body["user_id"] == user_id
    put = api.call("PUT", prefs(user_id), key, json={"preferences": {"marketing": True}})
    assert put.status_code == 200 and put.body["user_id"] == user_id
    assert api.ledger() == [(user_id, "category:marketing", "granted", "api", "2026-11")]


@pytest.mark.parametrize("path", ["x" * 256, "a%00b"])
def test_bad_user_ids_get_400_like_the_devices_route(api: Api, path: str) -> None:
    key = api.key("preferences", "devices")
    assert_error(api.call("GET", f"{BASE}/users/{path}/devices", key), 400, "bad_request")
    assert_error(api.call("GET", f"{BASE}/users/{path}/preferences", key), 400, "bad_request",
                 "255")
    assert_error(api.call("PUT", f"{BASE}/users/{path}/preferences", key,
                          json={"preferences": {}}), 400, "bad_request", "255")


@pytest.mark.parametrize(("data", "words"), [
    (b"", ["JSON"]),
    (b"[]", ["object"]),
    (b'"marketing"', ["object"]),
    (b'{"preferences": {"marketing": true}, "user_id": "1"}', ["Unknown field", "user_id"]),
    (b"{}", ["preferences is required"]),
    (b'{"preferences": null}', ["preferences is required"]),
    (b'{"preferences": ["marketing"]}', ["preferences is required"]),
    (b'{"preferences": {"marketing": "on"}}', ["true or false"]),
    (b'{"preferences": {"marketing": 1}}', ["true or false"]),
    (b'{"preferences": {"marketing": null}}', ["true or false"]),
    (b'{"preferences": {"marketing": true, "marketing": false}}', ["twice"]),
    (b'{"preferences": {"marketing": NaN}}', ["JSON"]),
    (b'{"preferences": {"marketing": tru', ["JSON"]),
    (b"\xff\xfe", ["JSON"]),
])
def test_malformed_bodies_get_400_with_a_reason(api: Api, data: bytes,
                                                words: list[str]) -> None:
    response = api.call("PUT", prefs("1042"), api.key("preferences"), data=data,
                        headers={"Content-Type": "application/json"})
    assert_error(response, 400, "bad_request", *words)
    assert api.ledger() == []


def test_a_body_not_declared_as_json_or_too_large_is_refused(
    make_host: Callable[..., SendingHost],
) -> None:
    small = Api(make_host(WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_API_MAX_REQUEST_BYTES=64))
    key = small.key("preferences")
    body = json.dumps({"preferences": {"marketing": True}})
    assert_error(small.call("PUT", prefs("1"), key, data=body,
                            headers={"Content-Type": "text/plain"}), 400, "bad_request",
                 "Content-Type")
    big = json.dumps({"preferences": {"marketing": True, "news": True, "x": "y" * 64}})
    assert_error(small.call("PUT", prefs("1"), key, data=big,
                            headers={"Content-Type": "application/json"}), 413, "too_large")
    assert small.ledger() == []


# -- fuzzing ------------------------------------------------------------------------------------

USER_PATHS = st.one_of(nasty_text(300), st.sampled_from(["1042", "u/42", "a%2Fb"])).filter(
    # what a path can address: no empty or dot segment (werkzeug merges "//")
    lambda s: bool(s) and not {"", ".", ".."} & set(s.split("/")))
VALID_BODY = {"preferences": {"marketing": True, "news": False}}
CHOICES = st.dictionaries(st.one_of(st.sampled_from(sorted(CATEGORIES)), nasty_text(12)),
                          st.one_of(st.booleans(), json_values(3)), max_size=4)


@given(user_id=USER_PATHS, key=st.sampled_from(["preferences", "devices", None]))
@fuzz_settings()
def test_fuzz_get_preferences(api: Api, user_id: str, key: str | None) -> None:
    keys = api.host.app.config.setdefault("FUZZ_KEYS", {})
    if key is not None and key not in keys:
        keys[key] = api.key(key, name=key)
    response = api.call("GET", prefs(user_id), keys.get(key))
    if key != "preferences":
        assert response.status_code in (401, 403)
        return
    if response.status_code == 200:
        assert set(response.body["preferences"]) == set(CATEGORIES)
    if has_surrogate(user_id):  # not UTF-8: the server reads what the bytes decode to
        assert response.status_code in (200, 400)
        return
    valid = len(user_id) <= 255 and "\x00" not in user_id
    assert response.status_code == (200 if valid else 400), response.body
    if valid:
        assert response.body["user_id"] == user_id


@given(user_id=USER_PATHS, data=st.one_of(
    json_body_text(VALID_BODY), st.builds(lambda c: json.dumps({"preferences": c}).encode(),
                                          CHOICES)))
@fuzz_settings(2)
def test_fuzz_put_preferences(api: Api, user_id: str, data: bytes) -> None:
    key = api.host.app.config.get("FUZZ_KEY")
    if key is None:
        key = api.host.app.config["FUZZ_KEY"] = api.key("preferences")
    response = api.call("PUT", prefs(user_id), key, data=data,
                        headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.body
    if response.status_code == 200:
        assert response.body["preferences"]["orders"] is True  # required stays on


# -- the notification options and the opted-out users ---------------------------------------


def test_the_send_options_of_categories_are_taken_and_shown(api: Api) -> None:
    key = api.key()
    body = {"user_ids": ["1"], "title": "Sale", "category": "marketing", "quiet_hours": False,
            "send_at_local": "09:30", "rate_per_minute": 600.0}
    sent = api.call("POST", NOTIFICATIONS, key, json=body)
    assert sent.status_code == 202, sent.body
    shown = api.call("GET", sent.body["status_url"], key).body
    assert (shown["quiet_hours"], shown["send_at_local"], shown["rate_per_minute"]) == (
        False, "09:30", 600)
    nulls = api.call("POST", NOTIFICATIONS, key, json={
        "user_ids": ["1"], "title": "Sale", "quiet_hours": None, "send_at_local": None,
        "rate_per_minute": None})
    assert nulls.status_code == 202  # null: not given
    assert api.call("GET", nulls.body["status_url"], key).body["category"] == "orders"


@pytest.mark.parametrize(("options", "status", "words"), [
    ({"rate_per_minute": "60"}, 400, ["rate_per_minute must be an integer"]),
    ({"rate_per_minute": 1.5}, 400, ["rate_per_minute must be an integer"]),
    ({"rate_per_minute": True}, 400, ["rate_per_minute must be an integer"]),
    ({"rate_per_minute": 0}, 422, ["1 to 1,000,000"]),
    ({"rate_per_minute": 1_000_001}, 422, ["1 to 1,000,000"]),
    ({"rate_per_minute": 10**30}, 422, ["1 to 1,000,000"]),
    ({"quiet_hours": "yes"}, 400, ["quiet_hours must be true or false"]),
    ({"quiet_hours": True}, 422, ["WEBPUSH_QUIET_HOURS"]),
    ({"send_at_local": 930}, 400, ["send_at_local must be a string"]),
    ({"send_at_local": "9:30"}, 422, ["HH:MM"]),
    ({"send_at_local": "24:00"}, 422, ["HH:MM"]),
    ({"send_at_local": "09:30", "send_at": "2030-01-01T09:00:00Z"}, 422, ["exclude"]),
    ({"category": "deals"}, 422, ["WEBPUSH_CATEGORIES"]),
])
def test_bad_send_options_get_400_or_422(api: Api, options: dict[str, Any], status: int,
                                         words: list[str]) -> None:
    response = api.call("POST", NOTIFICATIONS, api.key(),
                        json={"user_ids": ["1"], "title": "Sale", **options})
    assert response.status_code == status, response.body
    for word in words:
        assert word in response.body["message"], response.body


def test_users_opted_out_are_known_after_fan_out_and_counted(api: Api) -> None:
    key = api.key()
    for user in ("1", "2", "3"):
        api.host.subscribe(user, "Firefox")
    api.call("PUT", prefs("1"), key, json={"preferences": {"marketing": True}})
    sent = api.call("POST", NOTIFICATIONS, key, json={
        "user_ids": ["1", "2", "3", "4"], "title": "Sale", "category": "marketing"})
    assert sent.status_code == 202 and "users_opted_out" not in sent.body
    before = api.call("GET", sent.body["status_url"], key).body
    assert before["users_opted_out"] == [] and before["stats"]["opted_out"] == 0
    api.host.run_worker()
    after = api.call("GET", sent.body["status_url"], key).body
    assert after["status"] == "done"
    assert sorted(after["users_opted_out"]) == ["2", "3"]
    figures = after["stats"]
    assert (figures["opted_out"], figures["capped"], figures["held"]) == (2, 0, 0)
    assert figures["sent"] == 1 and figures["expected_finish_at"] is None
    listed = api.call("GET", NOTIFICATIONS, key).body["notifications"][0]
    assert listed["stats"]["opted_out"] == 2 and "users_opted_out" not in listed
