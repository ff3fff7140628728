"""The categories a customer receives, in the browser's parts: the opt-in widget's boxes,
the devices page's switches, and ``POST|PUT /webpush/preferences`` (the page's form, or
JSON), on SQLite and PostgreSQL, fuzzed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import LoggedInClient, make_subscription
from flask import Flask
from fuzz_strategies import fuzz_settings, json_body_text, json_values, latin1_header, nasty_text
from fuzz_strategies import url_quoted as quoted
from hypothesis import given
from hypothesis import strategies as st
from test_consent_and_devices import Tags

from flask_webpush_targeted import WebPush

PREFERENCES = "/webpush/preferences"
DEVICES = "/webpush/devices"
FORM = "application/x-www-form-urlencoded"
CATEGORIES = {
    "orders": {"label": "Order updates", "description": "Your parcel's way to you.",
               "required": True},
    "marketing": {"label": "Offers and sales", "description": "A few a month, never at night."},
    "restock": {"label": "Back in stock", "description": "When a product you watch is back.",
                "default": True},
}
Host = tuple[Flask, Any, WebPush]


@pytest.fixture
def shop(make_app: Callable[..., Host]) -> Host:
    """A host app with three categories: one required, one off and one on by default."""
    return make_app(WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_CONSENT_VERSION="2026-11")


def ledger(app: Flask, webpush: WebPush) -> list[tuple[Any, ...]]:
    """(user_id, action, scope, source, notifications, text_version) of every ledger row."""
    C = webpush.models.Consent
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(
            sa.select(C.user_id, C.action, C.scope, C.source, C.notifications,
                      C.text_version).order_by(C.id))]


def stored(app: Flask, webpush: WebPush) -> set[tuple[str, str, bool]]:
    """Every stored choice: (user_id, category, enabled)."""
    P = webpush.models.Preference
    with app.app_context():
        return {tuple(r) for r in webpush.db.session.execute(
            sa.select(P.user_id, P.category, P.enabled))}


def prefs(app: Flask, webpush: WebPush, user_id: str) -> dict[str, bool]:
    with app.app_context():
        return webpush.preferences(user_id)


def choose(app: Flask, webpush: WebPush, user_id: str, **choices: bool) -> None:
    """The host sets choices (source "host"), as a starting point of a test."""
    with app.app_context():
        webpush.set_preferences(user_id, choices)


def put_json(client: LoggedInClient, body: Any, **headers: str) -> Any:
    return client.http.put(PREFERENCES, json=body,
                           headers={"X-CSRF-Token": client.csrf, **headers})


def save_form(client: LoggedInClient, *ticked: str, token: str | None = None) -> Any:
    data: dict[str, Any] = {"csrf_token": client.csrf if token is None else token}
    if ticked:
        data["categories"] = list(ticked)
    return client.http.post(PREFERENCES, data=data)


# -- the opt-in widget ---------------------------------------------------------------------


def test_widget_shows_optional_categories_as_boxes_ticked_by_default_and_required_as_a_line(
        shop: Host) -> None:
    app, _, _ = shop
    client = LoggedInClient(app, "1")
    html = client.http.get("/widget").get_data(as_text=True)
    tags = Tags(html)
    boxes = {a["data-webpush-category"]: a for a in tags.find("input", type="checkbox")
             if "data-webpush-category" in a}
    assert set(boxes) == {"marketing", "restock"}  # no box for the required category
    assert "checked" not in boxes["marketing"] and "checked" in boxes["restock"]
    assert "Offers and sales" in html and "A few a month, never at night." in html
    assert "Back in stock" in html
    assert "you always get: Order updates." in " ".join(html.split())
    [section] = [a for t, a in tags.tags if t == "section" and "data-webpush-optin" in a]
    assert section["data-preferences-url"] == PREFERENCES
    # the consent boxes and buttons the client script finds are all still there
    assert len(tags.find("input", data_webpush_consent="notifications")) == 1
    assert len(tags.find("input", data_webpush_consent="link_to_account")) == 1
    assert tags.find("button", data_webpush_enable=None)
    assert tags.find("button", data_webpush_withdraw=None)


def test_widget_without_categories_has_no_category_parts(app: Flask) -> None:
    html = LoggedInClient(app, "1").http.get("/widget").get_data(as_text=True)
    assert "data-webpush-category" not in html
    assert "data-preferences-url" not in html
    assert "webpush-categories" not in html and "always get" not in html


def test_widget_ticks_what_the_customer_chose_not_the_defaults(shop: Host) -> None:
    app, _, webpush = shop
    choose(app, webpush, "1", marketing=True, restock=False)
    tags = Tags(LoggedInClient(app, "1").http.get("/widget").get_data(as_text=True))
    [marketing] = tags.find("input", data_webpush_category="marketing")
    [restock] = tags.find("input", data_webpush_category="restock")
    assert "checked" in marketing and "checked" not in restock
    # another customer still sees the defaults
    tags = Tags(LoggedInClient(app, "2").http.get("/widget").get_data(as_text=True))
    assert "checked" not in tags.find("input", data_webpush_category="marketing")[0]


def test_widget_opt_in_with_categories_and_time_zone_stores_both(shop: Host) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = client.subscribe(make_subscription(), version="2026-11", timezone="Europe/Warsaw",
                            categories={"marketing": True, "restock": True})
    assert resp.status_code == 201, resp.get_json()
    assert prefs(app, webpush, "1") == {"orders": True, "marketing": True, "restock": True}
    with app.app_context():
        [sub] = webpush.store.user_subscriptions("1")
        assert sub.timezone == "Europe/Warsaw"
    assert [r for r in ledger(app, webpush) if r[2] is not None] == [
        ("1", "granted", "category:marketing", "widget", True, "2026-11")]


# -- the devices page ----------------------------------------------------------------------


def test_devices_page_shows_a_switch_per_category_required_ones_checked_and_disabled(
        shop: Host) -> None:
    app, _, webpush = shop
    choose(app, webpush, "1", marketing=True)
    client = LoggedInClient(app, "1")
    html = client.http.get(DEVICES).get_data(as_text=True)
    assert "What I receive" in html
    tags = Tags(html)
    [form] = tags.find("form", action=PREFERENCES)
    assert form["method"] == "post"
    switches = {a["value"]: a for a in tags.find("input", type="checkbox", name="categories")}
    assert set(switches) == {"orders", "marketing", "restock"}
    assert "checked" in switches["orders"] and "disabled" in switches["orders"]
    assert "comes with notifications" in html
    assert "checked" in switches["marketing"] and "disabled" not in switches["marketing"]
    assert "checked" in switches["restock"] and "disabled" not in switches["restock"]
    for name, switch in switches.items():
        assert switch["data-webpush-category"] == name
        assert [a for t, a in tags.tags if t == "label" and a.get("for") == switch["id"]], \
            f"{name}'s switch has no label"
    assert client.csrf in {a["value"] for a in tags.find("input", name="csrf_token")}


def test_devices_page_without_categories_has_no_preferences_section(
        app: Flask, client: LoggedInClient) -> None:
    html = client.http.get(DEVICES).get_data(as_text=True)
    assert "What I receive" not in html and PREFERENCES not in html


def test_saving_the_form_turns_marketing_off_with_one_ledger_row_from_the_devices_page(
        shop: Host) -> None:
    app, _, webpush = shop
    choose(app, webpush, "1", marketing=True)
    before = ledger(app, webpush)
    client = LoggedInClient(app, "1")
    # the page as a browser sends it: marketing unticked, restock left ticked
    resp = client.http.post(PREFERENCES, data={"csrf_token": client.csrf,
                                               "categories": ["restock"]},
                            headers={"User-Agent": "Firefox/153.0"})
    assert resp.status_code == 303
    assert resp.headers["Location"] == f"{DEVICES}?done=saved"
    assert prefs(app, webpush, "1") == {"orders": True, "marketing": False, "restock": True}
    after = ledger(app, webpush)
    assert after[:len(before)] == before
    assert after[len(before):] == [
        ("1", "withdrawn", "category:marketing", "devices_page", False, "2026-11")]
    C = webpush.models.Consent
    with app.app_context():
        row = webpush.db.session.scalars(sa.select(C).order_by(C.id.desc())).first()
        assert row is not None and row.user_agent == "Firefox/153.0"
    page = client.http.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Your choices are saved." in page
    [marketing] = Tags(page).find("input", value="marketing")
    assert "checked" not in marketing


def test_a_category_absent_from_the_form_is_turned_off(shop: Host) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    assert save_form(client).status_code == 303  # nothing ticked
    assert prefs(app, webpush, "1") == {"orders": True, "marketing": False, "restock": False}
    assert [r[2] for r in ledger(app, webpush)] == ["category:restock"]  # marketing was off


@pytest.mark.parametrize("token", [None, "forged"])
def test_form_without_the_csrf_token_is_a_400_page_and_stores_nothing(
        shop: Host, token: str | None) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    data = {"categories": "marketing"} | ({} if token is None else {"csrf_token": token})
    resp = client.http.post(PREFERENCES, data=data)
    assert resp.status_code == 400 and resp.mimetype == "text/html"
    assert "reload the devices page" in resp.get_data(as_text=True)
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


def test_json_without_the_csrf_header_is_a_400_and_stores_nothing(shop: Host) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = client.http.put(PREFERENCES, json={"categories": {"marketing": True}})
    assert resp.status_code == 400 and resp.get_json()["error"] == "csrf_failed"
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


def test_turning_a_required_category_off_is_refused(shop: Host) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = put_json(client, {"categories": {"orders": False, "marketing": True}})
    assert resp.status_code == 422
    assert resp.get_json()["error"] == "invalid_preferences"
    assert "required" in resp.get_json()["message"]
    assert stored(app, webpush) == set() and ledger(app, webpush) == []
    # The form cannot send a required category as off: absent, it stays on.
    assert save_form(client, "marketing").status_code == 303
    assert prefs(app, webpush, "1")["orders"] is True
    assert not [r for r in ledger(app, webpush) if r[2] == "category:orders"]


@pytest.mark.parametrize("fields", [
    {"categories": ["marketing", "newsletter"]},  # a category this site does not have
    {"categories": "Marketing"},
    {"categories": "marketing\x00"},
    {"marketing": "on"},  # a field the form does not have
    {"categories": "restock", "is_admin": "1"},
])
def test_form_with_an_unknown_category_or_field_is_a_400_page_and_stores_nothing(
        shop: Host, fields: dict[str, Any]) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = client.http.post(PREFERENCES, data={"csrf_token": client.csrf, **fields})
    assert resp.status_code == 400 and resp.mimetype == "text/html"
    assert "reload the devices page" in resp.get_data(as_text=True)
    assert "\x00" not in resp.get_data(as_text=True)
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


@pytest.mark.parametrize("body", [
    {"categories": {"newsletter": True}},
    {"categories": {"marketing": "yes"}},
    {"categories": {"marketing": 1}},
    {"categories": ["marketing"]},
])
def test_json_with_an_unknown_category_or_a_bad_value_is_a_422_and_stores_nothing(
        shop: Host, body: dict[str, Any]) -> None:
    app, _, webpush = shop
    resp = put_json(LoggedInClient(app, "1"), body)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"] == "invalid_preferences"
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


@pytest.mark.parametrize("body", [{}, {"marketing": True},
                                  {"categories": {}, "source": "host"}, [], "x"])
def test_json_of_another_shape_is_a_400(shop: Host, body: Any) -> None:
    app, _, webpush = shop
    resp = put_json(LoggedInClient(app, "1"), body)
    assert resp.status_code == 400 and resp.get_json()["error"] == "bad_request"
    assert stored(app, webpush) == set()


@pytest.mark.parametrize("method", ["put", "post"])
def test_json_saves_what_it_names_and_answers_every_preference(shop: Host, method: str) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = getattr(client.http, method)(PREFERENCES, json={"categories": {"marketing": True}},
                                        headers={"X-CSRF-Token": client.csrf})
    assert resp.status_code == 200
    # restock is not named: it keeps its default (JSON changes only what it names)
    assert resp.get_json() == {"preferences": {"orders": True, "marketing": True,
                                               "restock": True}}
    assert prefs(app, webpush, "1") == resp.get_json()["preferences"]
    assert ledger(app, webpush) == [
        ("1", "granted", "category:marketing", "devices_page", True, "2026-11")]


def test_json_from_the_widget_is_recorded_as_the_widgets(shop: Host) -> None:
    app, _, webpush = shop
    resp = put_json(LoggedInClient(app, "1"),
                    {"categories": {"restock": False}, "source": "widget"})
    assert resp.status_code == 200
    assert ledger(app, webpush) == [
        ("1", "withdrawn", "category:restock", "widget", False, "2026-11")]


@pytest.mark.parametrize("source", ["host", "api", "", None, ["widget"]])
def test_json_may_not_name_a_servers_source(shop: Host, source: Any) -> None:
    app, _, webpush = shop
    resp = put_json(LoggedInClient(app, "1"),
                    {"categories": {"restock": False}, "source": source})
    assert resp.status_code == 400 and "source" in resp.get_json()["message"]
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


def test_with_categories_off_the_route_refuses_the_form_and_json(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    resp = save_form(client, "marketing")
    assert resp.status_code == 400 and "no categories" in resp.get_data(as_text=True)
    resp = put_json(client, {"categories": {"marketing": True}})
    assert resp.status_code == 422 and resp.get_json()["error"] == "invalid_preferences"
    assert ledger(app, webpush) == []


def test_a_logged_out_visitor_gets_the_login_page_and_json_a_401(shop: Host) -> None:
    app, _, webpush = shop
    http = app.test_client()
    for resp in (http.post(PREFERENCES, data={"csrf_token": "x", "categories": "marketing"}),
                 http.post(PREFERENCES)):
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")
    resp = http.put(PREFERENCES, json={"categories": {"marketing": True}})
    assert resp.status_code == 401 and resp.get_json()["error"] == "login_required"
    assert stored(app, webpush) == set() and ledger(app, webpush) == []


def test_saving_never_touches_another_customers_preferences(shop: Host) -> None:
    app, _, webpush = shop
    choose(app, webpush, "2", marketing=True, restock=False)
    theirs = (prefs(app, webpush, "2"), [r for r in ledger(app, webpush) if r[0] == "2"])
    client = LoggedInClient(app, "1")
    assert save_form(client, "marketing").status_code == 303
    assert put_json(client, {"categories": {"marketing": False, "restock": True}}
                    ).status_code == 200
    assert (prefs(app, webpush, "2"), [r for r in ledger(app, webpush) if r[0] == "2"]) == theirs
    assert {u for u, _, _ in stored(app, webpush)} == {"1", "2"}
    assert prefs(app, webpush, "1") == {"orders": True, "marketing": False, "restock": True}


# -- fuzzing -------------------------------------------------------------------------------


def check(response: Any, json_route: bool) -> None:
    """No 5xx; a JSON route's 4xx is the error shape, a page's 4xx is a page."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (response.status_code, text[:500])
    if 400 <= response.status_code < 500:
        if json_route:
            assert response.is_json, (response.status_code, text[:300])
            body = response.get_json()
            assert set(body) == {"error", "message"} and body["error"] and body["message"], body
        else:
            assert text.strip(), response.status_code


def form_fields() -> st.SearchStrategy[list[tuple[str, str]]]:
    """Form fields: the page's own names with bad values, and bad names."""
    names = st.one_of(st.sampled_from(["categories", "csrf_token", "orders", ""]), nasty_text(12))
    values = st.one_of(st.sampled_from(list(CATEGORIES) + ["on", "true", "MARKETING"]),
                       nasty_text())
    return st.lists(st.tuples(names, values), max_size=6)


@given(fields=form_fields(), keep_token=st.booleans(), user_agent=latin1_header())
@fuzz_settings()
def test_fuzz_the_preferences_form(shop: Host, fields: list[tuple[str, str]],
                                   keep_token: bool, user_agent: str) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    pairs = ([("csrf_token", client.csrf)] if keep_token else []) + fields
    body = "&".join(f"{quoted(k)}={quoted(v)}" for k, v in pairs)
    resp = client.http.post(PREFERENCES, data=body, content_type=FORM,
                            headers={"User-Agent": user_agent})
    check(resp, json_route=False)
    assert resp.status_code in (303, 400, 413), resp.status_code
    assert {u for u, _, _ in stored(app, webpush)} <= {"1"}
    assert prefs(app, webpush, "1")["orders"] is True


def preference_body() -> dict[str, Any]:
    return {"categories": {"marketing": False, "restock": True}, "source": "widget"}


@given(body=st.one_of(
    json_body_text(preference_body()),
    st.dictionaries(st.one_of(st.sampled_from(list(CATEGORIES)), nasty_text(12)),
                    json_values(), max_size=4).map(
        lambda c: json.dumps({"categories": c}).encode())),
    method=st.sampled_from(["put", "post"]), user_agent=latin1_header())
@fuzz_settings()
def test_fuzz_the_preferences_json(shop: Host, body: bytes, method: str,
                                   user_agent: str) -> None:
    app, _, webpush = shop
    client = LoggedInClient(app, "1")
    resp = getattr(client.http, method)(PREFERENCES, data=body, headers={
        "X-CSRF-Token": client.csrf, "Content-Type": "application/json",
        "User-Agent": user_agent})
    check(resp, json_route=True)
    assert resp.status_code in (200, 400, 413, 422), resp.status_code
    assert {u for u, _, _ in stored(app, webpush)} <= {"1"}
    assert prefs(app, webpush, "1")["orders"] is True
