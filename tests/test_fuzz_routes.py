"""Fuzzing every browser-facing route and every admin route with its query parameters.

Through the Flask test client, on SQLite and PostgreSQL: bodies, query strings, path ids
and headers drawn from fuzz_strategies (surrogates, NUL, huge integers, NaN, extreme
dates, JSON nested 10,000 deep, wrong types). Nothing may answer 5xx; a JSON route's 4xx
carries the error shape ``{"error": code, "message": text}``; an HTML page's 4xx is a page.
The concrete inputs that once broke a route are kept below as regression tests.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from conftest import FCM, LoggedInClient, make_subscription
from flask import Flask
from fuzz_strategies import (
    fuzz_settings,
    id_segment,
    json_body_text,
    json_values,
    latin1_header,
    nasty_text,
    query_value,
    url_quoted,
)
from hypothesis import given
from hypothesis import strategies as st

from flask_webpush_targeted.tracking import make_token

ADMIN = "/webpush/admin"
ADMIN_FILTERS = ("page", "per_page", "since", "until", "status", "category")


def check(response: Any, json_route: bool) -> None:
    """No 5xx; the JSON error shape on a JSON route's 4xx; a page on an HTML route's."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (response.status_code, text[:500])
    if 400 <= response.status_code < 500:
        if json_route:
            assert response.is_json, (response.status_code, text[:300])
            body = response.get_json()
            assert set(body) == {"error", "message"}, body
            assert isinstance(body["error"], str) and isinstance(body["message"], str), body
            assert body["error"] and body["message"], body
        else:
            assert text.strip(), response.status_code


@pytest.fixture
def site(make_app: Any) -> dict[str, Any]:
    """An app whose administrators may see statistics, one device of customer 1 and one
    notification; logged-in clients of the customer and of the administrator."""
    app, _db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                 WEBPUSH_EVENTS_RATE_LIMIT=1_000_000)

    @webpush.stats_access
    def can_see_stats(user: Any) -> bool:
        return bool(user.is_admin)

    customer, admin = LoggedInClient(app, "1"), LoggedInClient(app, "9")
    subscription = make_subscription()
    assert customer.subscribe(subscription).status_code == 201
    with app.app_context():
        from datetime import UTC, datetime, timedelta

        nid = webpush.notify_users(["1", "nobody"], title="Sale",
                                   send_at=datetime.now(UTC) + timedelta(days=1),
                                   actions=[{"action": "open", "title": "Open"}]).id
        # A delivery as the worker writes it, so events can carry a valid token.
        sub_id = webpush.store.user_subscriptions("1")[0].id
        delivery = webpush.models.Delivery(notification_id=nid, subscription_id=sub_id,
                                           user_id="1", status="sent", attempts=1,
                                           sent_at=datetime.now(UTC))
        webpush.db.session.add(delivery)
        webpush.db.session.commit()
        token = make_token(delivery.id, time.time() + 3600)
    return {"app": app, "customer": customer, "admin": admin, "subscription": subscription,
            "nid": nid, "token": token}


FORM = "application/x-www-form-urlencoded"


def form(**fields: str) -> str:
    """A form body as a browser sends it: every value percent-encoded from UTF-8 bytes."""
    return "&".join(f"{k}={url_quoted(v)}" for k, v in fields.items())


def post_raw(client: LoggedInClient, url: str, body: bytes, **headers: str) -> Any:
    return client.http.post(url, data=body, headers={
        "X-CSRF-Token": client.csrf, "Content-Type": "application/json", **headers})


def with_leaf(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``base`` with the value at ``path`` (keys of nested objects) replaced."""
    result = copy.deepcopy(base)
    node = result
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return result


def leaf_mutations(base: dict[str, Any], paths: list[tuple[str, ...]]) -> st.SearchStrategy[bytes]:
    """A well-formed body with one field, at any depth, given a bad value."""
    return st.builds(with_leaf, st.just(base), st.sampled_from(paths), json_values()).map(
        lambda v: json.dumps(v).encode())


def subscribe_body() -> dict[str, Any]:
    return {"subscription": make_subscription(), "device_label": "Kitchen tablet",
            "consent": {"notifications": True, "link_to_account": True, "text_version": "1"}}


SUBSCRIBE_PATHS = [("subscription",), ("subscription", "endpoint"), ("subscription", "keys"),
                   ("subscription", "keys", "p256dh"), ("subscription", "keys", "auth"),
                   ("subscription", "expirationTime"), ("consent",),
                   ("consent", "text_version"), ("consent", "notifications"), ("device_label",)]


# -- the subscription flow ---------------------------------------------------------------------


@given(body=st.one_of(json_body_text(subscribe_body()),
                      leaf_mutations(subscribe_body(), SUBSCRIBE_PATHS)),
       user_agent=latin1_header())
@fuzz_settings(2)
def test_fuzz_subscribe(site: dict[str, Any], body: bytes, user_agent: str) -> None:
    check(post_raw(site["customer"], "/webpush/subscriptions", body, **{
        "User-Agent": user_agent}), json_route=True)


def rotate_body() -> dict[str, Any]:
    return {"old": {"endpoint": FCM + "old", "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
            "subscription": make_subscription()}


@given(body=st.one_of(json_body_text(rotate_body()), leaf_mutations(rotate_body(), [
    ("old",), ("old", "endpoint"), ("old", "auth"), ("subscription",),
    ("subscription", "endpoint"), ("subscription", "keys")])))
@fuzz_settings()
def test_fuzz_rotate(site: dict[str, Any], body: bytes) -> None:
    # The service worker's route: no session, no CSRF token.
    response = site["app"].test_client().post("/webpush/subscriptions/rotate", data=body,
                                              content_type="application/json")
    check(response, json_route=True)


@given(subscription_id=id_segment(), query=query_value())
@fuzz_settings()
def test_fuzz_revoke_routes(site: dict[str, Any], subscription_id: str, query: str) -> None:
    customer = site["customer"]
    check(customer.delete(f"/webpush/subscriptions/{subscription_id}"), json_route=True)
    check(customer.http.post(f"/webpush/devices/{subscription_id}/revoke?x={query}",
                             data={"csrf_token": customer.csrf}), json_route=False)


@given(query=query_value(), user_agent=latin1_header(), token=nasty_text())
@fuzz_settings()
def test_fuzz_devices_page_and_withdrawal(site: dict[str, Any], query: str, user_agent: str,
                                          token: str) -> None:
    customer = site["customer"]
    check(customer.http.get(f"/webpush/devices?done={query}"), json_route=False)
    check(customer.http.get(f"/webpush/subscriptions?x={query}"), json_route=True)
    check(customer.http.post("/webpush/consent/withdraw", data=form(csrf_token=token),
                             content_type=FORM, headers={"User-Agent": user_agent}),
          json_route=False)
    check(customer.post_json("/webpush/consent/withdraw", {},
                             headers={"User-Agent": user_agent}), json_route=True)
    # and subscribe again, so the next example has a device to act on
    assert customer.subscribe(make_subscription()).status_code == 201


@given(query=query_value())
@fuzz_settings(0.5)
def test_fuzz_routes_without_input_ignore_a_query(site: dict[str, Any], query: str) -> None:
    http = site["app"].test_client()
    check(http.get(f"/webpush/sw.js?{query}"), json_route=False)
    check(http.get(f"/webpush/vapid-public-key?{query}={query}"), json_route=True)


# -- tracking events -----------------------------------------------------------------------


def event_body() -> dict[str, Any]:
    return {"token": "AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA", "event": "clicked",
            "action": "open"}


@given(body=st.one_of(json_body_text(event_body()), leaf_mutations(event_body(), [
    ("token",), ("event",), ("action",)])), valid_token=st.booleans())
@fuzz_settings(2)
def test_fuzz_events(site: dict[str, Any], body: bytes, valid_token: bool) -> None:
    if valid_token:  # the token of a real delivery, so the values reach the database
        body = body.replace(event_body()["token"].encode(), site["token"].encode())
    response = site["app"].test_client().post("/webpush/events", data=body,
                                              content_type="application/json")
    check(response, json_route=True)


# -- the administrators' views ---------------------------------------------------------------


def admin_query() -> st.SearchStrategy[str]:
    return st.dictionaries(st.sampled_from(ADMIN_FILTERS), query_value(), max_size=4).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()))


@given(query=admin_query())
@fuzz_settings(2)
def test_fuzz_admin_lists(site: dict[str, Any], query: str) -> None:
    http = site["admin"].http
    check(http.get(f"{ADMIN}/?{query}"), json_route=False)
    check(http.get(f"{ADMIN}/notifications?{query}"), json_route=False)
    check(http.get(f"{ADMIN}/notifications.json?{query}"), json_route=True)


@given(nid=st.one_of(id_segment(), st.just("own")), query=admin_query())
@fuzz_settings(2)
def test_fuzz_admin_notification_pages(site: dict[str, Any], nid: str, query: str) -> None:
    admin = site["admin"]
    nid = str(site["nid"]) if nid == "own" else nid
    base = f"{ADMIN}/notifications/{nid}"
    check(admin.http.get(f"{base}?{query}"), json_route=False)
    check(admin.http.get(f"{base}.json?{query}"), json_route=True)
    check(admin.http.get(f"{base}/deliveries.json?{query}"), json_route=True)
    response = admin.http.get(f"{base}/deliveries.csv?{query}")
    check(response, json_route=False)
    response.close()  # streamed


@given(nid=id_segment(), token=nasty_text())
@fuzz_settings()
def test_fuzz_admin_cancel(site: dict[str, Any], nid: str, token: str) -> None:
    admin = site["admin"]
    check(admin.http.post(f"{ADMIN}/notifications/{nid}/cancel",
                          data=form(csrf_token=token), content_type=FORM), json_route=False)
    check(admin.http.post(f"{ADMIN}/notifications/{nid}/cancel",
                          data={"csrf_token": admin.csrf}), json_route=False)


@given(user_id=st.one_of(nasty_text(), st.just("1")).filter(lambda u: u not in ("", ".")))
@fuzz_settings()
def test_fuzz_admin_user_pages(site: dict[str, Any], user_id: str) -> None:
    # "/" in an id ends the segment (a 404 of the host): quoted, as a link would be.
    quoted = url_quoted(user_id)
    http = site["admin"].http
    check(http.get(f"{ADMIN}/users/{quoted}"), json_route=False)
    check(http.get(f"{ADMIN}/users/{quoted}.json"), json_route=True)


def test_the_fuzzers_valid_token_reaches_the_database(site: dict[str, Any]) -> None:
    # Without this, the events fuzzer might only ever meet the token check.
    response = site["app"].test_client().post("/webpush/events", json={
        "token": site["token"], "event": "clicked", "action": "open"})
    assert response.status_code == 200 and response.get_json() == {"counted": True}


# -- inputs the fuzzers found, kept as regression tests ----------------------------------------


@pytest.mark.parametrize("event", [["clicked"], {"kind": "clicked"}, 1, None, True])
def test_an_event_name_that_is_not_a_string_is_a_400(app: Flask, event: Any) -> None:
    # A list or an object as the event name raised TypeError (unhashable): a 500.
    response = app.test_client().post("/webpush/events", json={
        "token": "AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA", "event": event})
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000,
                                  '{"a":' * 5000 + "1" + "}" * 5000])
def test_json_nested_10000_deep_is_refused_by_every_json_route(make_app: Any, text: str) -> None:
    # With a limit that lets such a body in, the parser's RecursionError was a 500.
    roomy, _db, _webpush = make_app(WEBPUSH_MAX_REQUEST_BYTES=100_000)
    customer = LoggedInClient(roomy, "1")
    for url in ("/webpush/subscriptions", "/webpush/subscriptions/rotate", "/webpush/events"):
        response = post_raw(customer, url, text.encode())
        assert response.status_code == 400, (url, response.get_data(as_text=True)[:200])
        assert response.get_json()["error"] == "bad_request"


# -- the click route ---------------------------------------------------------------------------


@given(token=st.one_of(id_segment(), nasty_text().map(url_quoted)), action=query_value(),
       valid_token=st.booleans())
@fuzz_settings(2)
def test_fuzz_click_route(site: dict[str, Any], token: str, action: str,
                          valid_token: bool) -> None:
    # Whatever the path and query, a person's click ends on the site: a redirect to one of
    # its pages, never an error page and never another origin.
    path = site["token"] if valid_token else token
    response = site["app"].test_client().get(f"/webpush/c/{path}?action={action}")
    check(response, json_route=False)
    if response.status_code != 404:  # a path werkzeug cannot route (an empty one) is a 404
        assert response.status_code == 302, response.status_code
        assert response.headers["Location"].startswith("https://shop.example/")
