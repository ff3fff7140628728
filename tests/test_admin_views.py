"""The administrators' statistics views under /webpush/admin: access, list, detail, exports.

Access is deny-by-default: the host registers ``@webpush.stats_access``. Figures come
from notifications sent for real (an RQ worker, the local push service, events posted
with the pushes' tokens). Every test runs on SQLite and on PostgreSQL with the real Redis.
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import LoggedInClient, SendingHost
from jinja2 import FileSystemLoader

from flask_webpush_targeted.worker import make_worker

ADMIN = "/webpush/admin"


def allow_admins(host: SendingHost) -> None:
    @host.webpush.stats_access
    def can_see_stats(user: Any) -> bool:
        return bool(user.is_admin)


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Your order has shipped")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def assert_error_shape(response: Any, error: str) -> None:
    assert response.is_json, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["error"] == error and body["message"]


def cells(row_html: str) -> list[str]:
    """The text of a table row's cells."""
    return [re.sub(r"<[^>]+>|\s+", " ", c).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.DOTALL)]


def row(html: str, attribute: str, value: int) -> list[str]:
    match = re.search(rf'<tr {attribute}="{value}">(.*?)</tr>', html, re.DOTALL)
    assert match, f"no row {attribute}={value}"
    return cells(match.group(1))


def listed_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-notification-id="(\d+)"', html)]


# -- access control -----------------------------------------------------------------------

ROUTES = [  # method, path, JSON?, what an administrator gets
    ("GET", "/", False, 302),
    ("GET", "/notifications", False, 200),
    ("GET", "/notifications.json", True, 200),
    ("GET", "/notifications/{nid}", False, 200),
    ("GET", "/notifications/{nid}.json", True, 200),
    ("GET", "/notifications/{nid}/deliveries.csv", False, 200),
    ("GET", "/notifications/{nid}/deliveries.json", True, 200),
    ("POST", "/notifications/{nid}/cancel", False, 303),
    ("GET", "/users/1", False, 200),
    ("GET", "/users/1.json", True, 200),
]


@pytest.mark.parametrize(("method", "path", "is_json", "admin_status"), ROUTES,
                         ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_admin_route_is_for_administrators_only_and_denied_by_default(
    sending: SendingHost, method: str, path: str, is_json: bool, admin_status: int,
) -> None:
    sending.subscribe("1", "Firefox on Linux")
    nid = notify(sending, ["1"], send_at=datetime.now(UTC) + timedelta(hours=1))
    url = ADMIN + path.format(nid=nid)
    app = sending.app
    admin, customer = LoggedInClient(app, "9"), LoggedInClient(app, "1")

    def call(http: Any, csrf: str = "") -> Any:
        if method == "POST":
            return http.post(url, data={"csrf_token": csrf})
        return http.get(url)

    def refused(response: Any, status: int, error: str) -> None:
        assert response.status_code == status
        if is_json:
            assert_error_shape(response, error)

    # no stats_access callback registered: nobody, not even the administrator
    refused(call(admin.http, admin.csrf), 403, "forbidden")
    allow_admins(sending)
    anonymous = call(app.test_client())
    if is_json:
        refused(anonymous, 401, "login_required")
    else:
        assert anonymous.status_code == 302
        assert urlsplit(anonymous.headers["Location"]).path == "/login"
    refused(call(customer.http, customer.csrf), 403, "forbidden")
    assert sending.notification(nid).status == "scheduled"  # nothing refused changed anything
    assert call(admin.http, admin.csrf).status_code == admin_status


def test_the_access_test_above_covers_every_admin_route(app: Any) -> None:
    # A new admin view is then refused to everyone but administrators by the test above,
    # which it would not be by its own code without @stats_access_required.
    admin = {(method, rule.rule.removeprefix(ADMIN)) for rule in app.url_map.iter_rules()
             if rule.endpoint.startswith("webpush.admin")
             for method in rule.methods - {"HEAD", "OPTIONS"}}
    tested = {(method, re.sub(r"\{nid\}", "<int:nid>", path).replace(
        "/users/1", "/users/<webpush_user_id:user_id>")) for method, path, _, _ in ROUTES}
    assert admin == tested




def test_the_list_is_newest_first_paginated_and_filtered(sending: SendingHost) -> None:
    allow_admins(sending)
    # notifications to a user without devices are stored all the same: a cheap long list
    ids = [notify(sending, ["nobody"], title=f"Message {i}",
                  category="travel" if i % 2 == 0 else "promo") for i in range(27)]
    scheduled = notify(sending, ["nobody"], title="Later",
                       send_at=datetime.now(UTC) + timedelta(days=1))
    with sending.app.app_context():
        sending.webpush.cancel(ids[0])
        old = sending.db.session.get(sending.webpush.models.Notification, ids[1])
        old.created_at = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
        sending.db.session.commit()
    newest_first = [scheduled, *ids[:1:-1], ids[0], ids[1]]
    admin = LoggedInClient(sending.app, "9").http

    first = admin.get(f"{ADMIN}/notifications").get_data(as_text=True)
    assert listed_ids(first) == newest_first[:25]
    assert "28 notifications" in first and "Page 1 of 2" in first
    assert "page=2" in first  # the link to the older page
    second = admin.get(f"{ADMIN}/notifications?page=2").get_data(as_text=True)
    assert listed_ids(second) == newest_first[25:] and "Page 2 of 2" in second
    as_json = admin.get(f"{ADMIN}/notifications.json?page=2").get_json()
    assert as_json["total"] == 28 and as_json["page"] == 2
    assert [n["id"] for n in as_json["notifications"]] == newest_first[25:]

    travel = [i for i in newest_first if i in ids[::2]]
    for query, expected in [
        ("status=scheduled", [scheduled]),
        ("status=cancelled", [ids[0]]),
        ("category=travel", travel),
        ("category=travel&status=queued", [i for i in travel if i != ids[0]]),
        ("since=2025-01-01&until=2025-02-01", [ids[1]]),
        ("until=2025-02-01", [ids[1]]),
        ("since=2025-02-01", [i for i in newest_first if i != ids[1]]),
    ]:
        html = admin.get(f"{ADMIN}/notifications?{query}").get_data(as_text=True)
        assert listed_ids(html) == expected[:25], query
        found = admin.get(f"{ADMIN}/notifications.json?{query}&per_page=100").get_json()
        assert [n["id"] for n in found["notifications"]] == expected, query
        assert found["total"] == len(expected)
    for query in ("status=bogus", "since=yesterday", "until=2025-13-45"):
        assert admin.get(f"{ADMIN}/notifications?{query}").status_code == 400, query
        response = admin.get(f"{ADMIN}/notifications.json?{query}")
        assert response.status_code == 400, query
        assert_error_shape(response, "bad_request")


# -- one notification sent for real ------------------------------------------------------


@dataclass
class Delivered:
    """A notification to users 1 (sent, displayed, clicked), 2 (410: gone) and 3 (no device)."""

    host: SendingHost
    nid: int
    admin: Any

    def page(self, path: str) -> str:
        response = self.admin.get(ADMIN + path.format(nid=self.nid))
        assert response.status_code == 200
        return str(response.get_data(as_text=True))

    def by_user(self) -> dict[str, Any]:
        return {d.user_id: d for d in self.host.deliveries(self.nid)}


@pytest.fixture
def delivered(sending: SendingHost) -> Delivered:
    allow_admins(sending)
    kept = sending.subscribe("1", "Firefox on Linux")
    gone = sending.subscribe("2", "Chrome on Android")
    sending.push_service.respond(gone.endpoint, 410)
    nid = notify(sending, ["1", "2", "3"], title="Flight LO123 boards at gate 12",
                 body="Boarding closes 10:40.", url="/trips/42", ttl=3600, topic="trip-42",
                 category="travel")
    make_worker(sending.app, simple=True).work(burst=True)
    token = sending.push_service.received_for(kept.endpoint)[0].notification()["token"]
    events = sending.app.test_client(use_cookies=False)
    address = "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))
    for event in ("displayed", "clicked"):
        assert events.post("/webpush/events", json={"token": token, "event": event},
                           environ_base={"REMOTE_ADDR": address}).get_json()["counted"]
    return Delivered(sending, nid, LoggedInClient(sending.app, "9").http)


def test_each_list_row_shows_its_funnel_numbers(delivered: Delivered) -> None:
    # status, category, targeted, sent, displayed, clicked, not sent (failed + gone + expired)
    assert row(delivered.page("/notifications"), "data-notification-id", delivered.nid)[3:10] == [
        "done", "travel", "3", "1", "1", "1", "1"]


def test_the_notification_page_shows_funnel_reasons_devices_chart_payload_and_schedule(
    delivered: Delivered,
) -> None:
    html = delivered.page("/notifications/{nid}")
    figures = dict(re.findall(r'data-figure="(\w+)">([^<]*)<', html))
    assert figures == {
        "targeted_users": "3", "users_without_devices": "1", "deliveries": "2", "sent": "1",
        "displayed": "1", "clicked": "1", "closed": "0", "pending": "0", "failed": "0",
        "gone": "1", "expired": "0", "skipped": "0", "conversions": "0",
        "influenced_conversions": "0"}
    reasons = re.search(r"Why some were not sent.*?</table>", html, re.DOTALL)
    assert reasons and cells(reasons.group(0))[:2] == ["gone", "410"]
    deliveries = delivered.by_user()
    kept, gone = (row(html, "data-delivery-id", deliveries[u].id) for u in ("1", "2"))
    assert kept[:5] == ["1", "Firefox on Linux", "sent", "201", "1"]
    assert all(kept[5:8]) and not kept[8]  # sent, displayed, clicked times; never closed
    assert gone[:4] == ["2", "Chrome on Android", gone[2], "410"] and gone[2].startswith("gone")
    # the time series: inline SVG drawn on the server, nothing to fetch or run
    svg = re.search(r"<svg.*?</svg>", html, re.DOTALL)
    assert svg, "no inline <svg> chart"
    titles = re.findall(r"<title>[^<]*: (\d+ \w+)</title>", svg.group(0))
    assert {"1 sent", "1 displayed", "1 clicked"} <= set(titles)
    assert "<script" not in html.lower()
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert all(link.startswith("/") for link in re.findall(r'(?:src|href|action)="([^"]*)"', html))
    # payload and schedule
    for text in ("Flight LO123 boards at gate 12", "Boarding closes 10:40.", "/trips/42",
                 "travel", "trip-42", 'data-validity="3600">1 hour<', "at once"):
        assert text in html
    assert "/cancel" not in html  # done: nothing left to cancel


def test_a_scheduled_notification_can_be_cancelled_from_its_page_with_the_csrf_token(
    sending: SendingHost,
) -> None:
    allow_admins(sending)
    send_at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    nid = notify(sending, ["1"], title="Check-in opens tomorrow", send_at=send_at)
    admin = LoggedInClient(sending.app, "9").http
    html = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    assert send_at.strftime("%Y-%m-%d %H:%M:%S UTC") in html
    assert f'action="{ADMIN}/notifications/{nid}/cancel"' in html
    [token] = re.findall(r'name="csrf_token" value="([^"]+)"', html)
    url = f"{ADMIN}/notifications/{nid}/cancel"
    assert admin.post(url).status_code == 400
    assert admin.post(url, data={"csrf_token": "not-the-token"}).status_code == 400
    assert sending.notification(nid).status == "scheduled"
    done = admin.post(url, data={"csrf_token": token})
    assert done.status_code == 303
    assert urlsplit(done.headers["Location"]).path == f"{ADMIN}/notifications/{nid}"
    assert sending.notification(nid).status == "cancelled"
    after = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    assert "/cancel" not in after and "<strong data-status>cancelled</strong>" in after


def test_the_deliveries_csv_is_an_attachment_with_one_row_per_delivery(
    delivered: Delivered,
) -> None:
    response = delivered.admin.get(f"{ADMIN}/notifications/{delivered.nid}/deliveries.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert ".csv" in response.headers["Content-Disposition"]
    reader = csv.DictReader(io.StringIO(response.get_data(as_text=True)))
    assert reader.fieldnames is not None
    assert {"id", "user_id", "device", "status", "status_code", "reason", "attempts", "sent_at",
            "displayed_at", "clicked_at", "closed_at"} <= set(reader.fieldnames)
    rows = {r["user_id"]: r for r in reader}
    assert {u: (r["device"], r["status"], r["status_code"]) for u, r in rows.items()} == {
        "1": ("Firefox on Linux", "sent", "201"), "2": ("Chrome on Android", "gone", "410")}
    assert rows["1"]["clicked_at"] and not rows["1"]["closed_at"] and not rows["2"]["sent_at"]


def test_the_json_views_have_the_documented_shapes(delivered: Delivered) -> None:
    nid, get = delivered.nid, delivered.admin.get
    listing = get(f"{ADMIN}/notifications.json").get_json()
    assert set(listing) == {"total", "page", "per_page", "notifications"}
    assert listing["total"] == 1 and listing["per_page"] == 25
    [item] = listing["notifications"]
    assert {"id", "status", "category", "payload", "ttl", "send_at", "created_at",
            "funnel"} <= set(item)
    assert item["funnel"]["sent"] == 1 and item["payload"]["url"] == "/trips/42"

    one = get(f"{ADMIN}/notifications/{nid}.json").get_json()
    assert set(one) == {"notification", "stats", "time_series"}
    with delivered.host.app.app_context():
        assert one["stats"] == delivered.host.webpush.stats(nid)
    assert one["notification"]["users_without_devices"] == ["3"]
    assert [sum(p[k] for p in one["time_series"]) for k in ("sent", "displayed", "clicked")] == [
        1, 1, 1]

    deliveries = get(f"{ADMIN}/notifications/{nid}/deliveries.json").get_json()
    assert deliveries["total"] == 2 and deliveries["page"] == 1 and deliveries["per_page"] == 100
    assert {(d["user_id"], d["status"], d["status_code"]) for d in deliveries["deliveries"]} == {
        ("1", "sent", 201), ("2", "gone", 410)}

    history = get(f"{ADMIN}/users/1.json").get_json()
    assert history["user_id"] == "1"
    [entry] = history["history"]
    assert (entry["notification_id"], entry["title"], entry["status"], entry["device"]) == (
        nid, "Flight LO123 boards at gate 12", "sent", "Firefox on Linux")

    missing = get(f"{ADMIN}/notifications/{nid + 1000}.json")
    assert missing.status_code == 404
    assert_error_shape(missing, "not_found")


def test_the_user_page_lists_the_customers_devices_and_deliveries(delivered: Delivered) -> None:
    html = delivered.page("/users/1")
    assert "Firefox on Linux" in html and ">active<" in html
    assert f"#{delivered.nid} Flight LO123 boards at gate 12" in html and ">sent<" in html
    gone = delivered.page("/users/2")
    assert "Chrome on Android" in gone and "revoked (gone)" in gone
    assert delivered.page("/users/3").count("No device.") == 1


def use_host_templates(host: SendingHost, folder: Any, templates: dict[str, str]) -> None:
    """Give the host app a templates folder of its own holding ``templates``."""
    for name, text in templates.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    host.app.jinja_loader = FileSystemLoader(str(folder))


def test_the_pages_extend_the_hosts_base_template_when_set(
    delivered: Delivered, tmp_path: Any,
) -> None:
    use_host_templates(delivered.host, tmp_path / "templates", {"shop/base.html": (
        "<!doctype html><html><body><header id=shop-header>Acme Shop</header>"
        "{% block content %}{% endblock %}</body></html>")})
    delivered.host.app.config["WEBPUSH_BASE_TEMPLATE"] = "shop/base.html"
    for path, content in [("/notifications", "<h1>Notifications</h1>"),
                          ("/notifications/{nid}", "Flight LO123 boards at gate 12"),
                          ("/users/1", "<h1>Customer 1</h1>")]:
        html = delivered.page(path)
        assert "<header id=shop-header>Acme Shop</header>" in html and content in html
        assert 'class="webpush-page"' not in html  # not the packaged layout


def test_a_host_template_overrides_the_packaged_list(delivered: Delivered, tmp_path: Any) -> None:
    use_host_templates(delivered.host, tmp_path / "templates", {
        "webpush/admin/notifications.html": (
            '{% extends "webpush/layout.html" %}{% block content %}<h1>Acme back office</h1>'
            "{% for item in items %}<p class=acme-row>{{ item.notification.payload.title }}: "
            "{{ item.funnel.sent }} sent</p>{% endfor %}{% endblock %}")})
    html = delivered.page("/notifications")
    assert "<h1>Acme back office</h1>" in html
    assert "<p class=acme-row>Flight LO123 boards at gate 12: 1 sent</p>" in html
    assert "data-notification-id" not in html
    assert "data-figure" in delivered.page("/notifications/{nid}")  # the others stay packaged


# -- bad input in URLs and query strings: a 4xx, never a 500 ---------------------------------


@pytest.fixture
def admin_host(host: Any) -> Any:
    """The small host app (no worker needed) with administrators allowed and one notification
    to a user without devices; (app, notification id, logged-in admin client)."""
    app, _db, webpush = host

    @webpush.stats_access
    def can_see_stats(user: Any) -> bool:
        return bool(user.is_admin)

    with app.app_context():
        nid = webpush.notify_users(["nobody"], title="Sale",
                                   send_at=datetime.now(UTC) + timedelta(days=1)).id
    return app, nid, LoggedInClient(app, "9")


BEYOND_64_BITS = "99999999999999999999999"


@pytest.mark.parametrize("path", [
    f"/notifications/{BEYOND_64_BITS}", f"/notifications/{BEYOND_64_BITS}.json",
    f"/notifications/{BEYOND_64_BITS}/deliveries.json",
    f"/notifications/{BEYOND_64_BITS}/deliveries.csv",
])
def test_notification_ids_beyond_64_bits_are_not_found(admin_host: Any, path: str) -> None:
    _app, _nid, admin = admin_host
    response = admin.http.get(ADMIN + path)
    assert response.status_code == 404
    if path.endswith(".json"):
        assert_error_shape(response, "not_found")
    cancelled = admin.http.post(f"{ADMIN}/notifications/{BEYOND_64_BITS}/cancel",
                                data={"csrf_token": admin.csrf})
    assert cancelled.status_code == 404


@pytest.mark.parametrize("query", [
    "page=99999999999999999999", "page=100001",
    "since=0001-01-01T00:00:00%2B05:00", "until=9999-12-31T23:00:00-05:00",
    "since=1900-01-01", "category=sale%00",
])
def test_filters_out_of_range_are_a_400_with_the_error_shape(admin_host: Any, query: str) -> None:
    _app, nid, admin = admin_host
    html = admin.http.get(f"{ADMIN}/notifications?{query}")
    # the admin layout's error page, in the administrator's language
    assert html.status_code == 400
    assert "<h1>This could not be done</h1>" in html.get_data(as_text=True)
    response = admin.http.get(f"{ADMIN}/notifications.json?{query}")
    assert response.status_code == 400
    assert_error_shape(response, "bad_request")
    if query.startswith("page"):
        assert admin.http.get(f"{ADMIN}/notifications/{nid}?{query}").status_code == 400
        deliveries = admin.http.get(f"{ADMIN}/notifications/{nid}/deliveries.json?{query}")
        assert deliveries.status_code == 400
        assert_error_shape(deliveries, "bad_request")


def test_per_page_is_capped_and_the_answer_says_the_size_used(admin_host: Any) -> None:
    from flask_webpush_targeted.views.admin import MAX_DELIVERIES_PER_PAGE, MAX_PER_PAGE

    _app, nid, admin = admin_host
    for asked in ("1000000", "99999999999999999999"):
        listed = admin.http.get(f"{ADMIN}/notifications.json?per_page={asked}")
        assert listed.status_code == 200 and listed.get_json()["per_page"] == MAX_PER_PAGE == 100
        rows = admin.http.get(f"{ADMIN}/notifications/{nid}/deliveries.json?per_page={asked}")
        assert rows.status_code == 200
        assert rows.get_json()["per_page"] == MAX_DELIVERIES_PER_PAGE == 1000
    assert admin.http.get(f"{ADMIN}/notifications.json?per_page=7").get_json()["per_page"] == 7


@pytest.mark.parametrize("user_id", ["a%00b", "x" * 256])
def test_a_user_id_that_cannot_be_stored_is_a_400_on_the_user_pages(
    admin_host: Any, user_id: str,
) -> None:
    _app, _nid, admin = admin_host
    assert admin.http.get(f"{ADMIN}/users/{user_id}").status_code == 400
    response = admin.http.get(f"{ADMIN}/users/{user_id}.json")
    assert response.status_code == 400
    assert_error_shape(response, "bad_request")


def test_a_user_id_with_a_slash_reaches_the_user_pages(admin_host: Any) -> None:
    # Found by the route fuzzer: "/" ended the id's segment, the JSON URL fell to the
    # host's HTML 404. The push API's user id converter is used here too.
    _app, _nid, admin = admin_host
    response = admin.http.get(f"{ADMIN}/users/shop%2F42.json")
    assert response.status_code == 200 and response.get_json()["user_id"] == "shop/42"
    assert admin.http.get(f"{ADMIN}/users/shop%2F42").status_code == 200


# -- categories, preferences, quiet hours, caps and pace ------------------------------------

OFFERS = {"orders": {"label": "Order updates", "required": True, "quiet_hours": None},
          "offers": {"label": "Offers and discounts", "cap": (1, timedelta(days=1))}}


def night_zone() -> str:
    """An Etc/GMT zone where it is about 01:00 now: inside quiet hours 21:00-08:00."""
    offset = (1 - datetime.now(UTC).hour) % 24
    offset -= 24 if offset > 14 else 0
    # Etc/GMT-8 is UTC+8: the sign is POSIX's, the reverse of ISO 8601's
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def fan_out_only(host: SendingHost, nid: int) -> None:
    """Run the fan-out job in this process, leaving the batches it enqueues unsent."""
    from flask_webpush_targeted.jobs import fan_out

    with host.app.app_context():
        fan_out(nid)


def test_the_notification_page_shows_opted_out_capped_held_and_its_rules_in_words(
    make_host: Any,
) -> None:
    host = make_host(WEBPUSH_CATEGORIES=OFFERS, WEBPUSH_QUIET_HOURS=("21:00", "08:00"))
    allow_admins(host)
    for user in ("1", "2", "3"):
        host.subscribe(user, "Firefox on Linux", timezone=night_zone())
    with host.app.app_context():
        for user in ("1", "3"):  # user 2 never turns offers on: off by default
            host.webpush.set_preferences(user, {"offers": True})
    # User 3 has had the day's one offer already (sent at night: quiet hours ignored).
    first = notify(host, ["3"], title="Yesterday's offer", category="offers", quiet_hours=False)
    make_worker(host.app, simple=True).work(burst=True)
    assert host.notification(first).status == "done"
    nid = notify(host, ["1", "2", "3"], title="Winter sale", category="offers",
                 quiet_hours=True)
    fan_out_only(host, nid)

    admin = LoggedInClient(host.app, "9").http
    html = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    figures = dict(re.findall(r'data-figure="(\w+)">([^<]*)<', html))
    assert (figures["opted_out"], figures["capped"], figures["held"]) == ("1", "1", "1")
    assert "Held for quiet hours" in html and "Opted out (turned the category off)" in html
    assert "Not sent: frequency cap of the category" in html and "data-releases" in html
    rules = dict(re.findall(r'data-rule="(\w+)">([^<]*)<', html))
    assert rules == {
        "category": "Offers and discounts",
        "quiet_hours": "Kept: nothing is sent from 21:00 to 08:00 in each customer&#39;s time "
                       "zone"}
    listing = admin.get(f"{ADMIN}/notifications").get_data(as_text=True)
    assert row(listing, "data-notification-id", nid)[4] == "Offers and discounts"
    deliveries = admin.get(f"{ADMIN}/notifications/{nid}/deliveries.json").get_json()
    due = [d["user_id"] for d in deliveries["deliveries"] if d["due_at"]]
    assert due == ["1"] and html.count("data-due") == 1  # the held one says when it is due

    one = admin.get(f"{ADMIN}/notifications/{nid}.json").get_json()
    assert one["notification"]["users_opted_out"] == ["2"]
    assert (one["notification"]["opted_out_count"], one["notification"]["capped_count"]) == (
        1, 1)
    assert sum(one["notification"]["holds"].values()) == 1
    assert (one["stats"]["opted_out"], one["stats"]["capped"], one["stats"]["held"]) == (1, 1, 1)
    assert one["stats"]["expected_finish_at"] is None  # not throttled
    assert one["notification"]["quiet_hours"] is True


def test_a_throttled_local_time_notification_says_its_pace_and_expected_finish(
    make_host: Any,
) -> None:
    host = make_host(WEBPUSH_QUIET_HOURS=("21:00", "08:00"))
    allow_admins(host)
    for user in ("1", "2"):
        host.subscribe(user, "Firefox on Linux")
    nid = notify(host, ["1", "2"], title="Sale", quiet_hours=False, rate_per_minute=60)
    later = notify(host, ["1"], title="Good morning", send_at_local="09:00")
    admin = LoggedInClient(host.app, "9").http

    queued = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    rules = dict(re.findall(r'data-rule="(\w+)">([^<]*)<', queued))
    assert rules == {"quiet_hours": "Ignored: sent at any hour",
                     "rate_per_minute": "At most 60 a minute"}  # no finish before it sends
    fan_out_only(host, nid)
    sending = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    pace = dict(re.findall(r'data-rule="(\w+)">([^<]*)<', sending))["rate_per_minute"]
    assert re.fullmatch(r"At most 60 a minute; expected to finish at "
                        r"(\d{4}-\d\d-\d\d )?\d\d:\d\d UTC", pace), pace
    with host.app.app_context():
        finish = datetime.fromisoformat(host.webpush.stats(nid)["expected_finish_at"])
    assert timedelta(0) < finish - datetime.now(UTC) <= timedelta(minutes=2 / 60, seconds=5)

    html = admin.get(f"{ADMIN}/notifications/{later}").get_data(as_text=True)
    rules = dict(re.findall(r'data-rule="(\w+)">([^<]*)<', html))
    assert rules == {
        "quiet_hours": "As set for the site: nothing is sent from 21:00 to 08:00 in each "
                       "customer&#39;s time zone",
        "send_at_local": "Sent at 09:00 in each customer&#39;s time zone"}
    assert 'data-figure="held"' not in html and 'data-figure="opted_out"' not in html
