"""What shop staff see in the admin pages: customers' names, styled refusals, wrapped text,
plain words for statuses and topics, readable chart times, a confirmed cancel.

Every test runs on SQLite and on PostgreSQL with the real Redis; notifications are sent
for real (an RQ worker and the local push service); the layout is checked in headless
Chromium.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import LoggedInClient, SendingHost
from jinja2 import ChoiceLoader, DictLoader
from test_admin_views import ADMIN, allow_admins, assert_error_shape, notify, row

from flask_webpush_targeted.charts import readable_time
from flask_webpush_targeted.worker import make_worker

SHOTS = Path("/tmp/shots")
NAMES = {"1": "Ada Lovelace", "2": "=HYPERLINK(\"https://evil.example\")"}


def send(host: SendingHost, users: list[str], **kw: Any) -> int:
    nid = notify(host, users, **kw)
    make_worker(host.app, simple=True).work(burst=True)
    return nid


def admin_of(host: SendingHost) -> Any:
    allow_admins(host)
    return LoggedInClient(host.app, "9").http


@pytest.fixture
def named(sending: SendingHost) -> tuple[SendingHost, int, Any]:
    """Users 1 and 2 with a device each and a name from ``@webpush.user_display``; user 3
    without either; one notification sent to all three."""
    @sending.webpush.user_display
    def name_of(user_id: str) -> str | None:
        return NAMES.get(user_id)

    sending.subscribe("1", "Firefox on Linux")
    sending.subscribe("2", "Chrome on Android")
    return sending, send(sending, ["1", "2", "3"]), admin_of(sending)


# -- 1. customers by name ------------------------------------------------------------------


def test_user_display_names_customers_on_the_notification_and_customer_pages(
    named: tuple[SendingHost, int, Any],
) -> None:
    host, nid, admin = named
    html = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    by_user = {d.user_id: d for d in host.deliveries(nid)}
    assert row(html, "data-delivery-id", by_user["1"].id)[0] == "Ada Lovelace"
    assert f'href="{ADMIN}/users/1">Ada Lovelace</a>' in html  # still links by id
    page = admin.get(f"{ADMIN}/users/1").get_data(as_text=True)
    assert "<h1>Ada Lovelace <small>(customer 1)</small></h1>" in page
    assert "<title>Ada Lovelace</title>" in page
    # user 3 has no name: the id, as without a callback
    assert "<h1>Customer 3</h1>" in admin.get(f"{ADMIN}/users/3").get_data(as_text=True)
    assert admin.get(f"{ADMIN}/users/1.json").get_json()["customer"] == "Ada Lovelace"


def test_user_display_names_customers_in_the_exports_and_the_csv_stays_spreadsheet_safe(
    named: tuple[SendingHost, int, Any],
) -> None:
    _host, nid, admin = named
    text = admin.get(f"{ADMIN}/notifications/{nid}/deliveries.csv").get_data(as_text=True)
    rows = {r["user_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["1"]["customer"] == "Ada Lovelace"
    assert rows["2"]["customer"] == "'" + NAMES["2"]  # a formula name is text, not a formula
    deliveries = admin.get(f"{ADMIN}/notifications/{nid}/deliveries.json").get_json()
    assert {d["user_id"]: d["customer"] for d in deliveries["deliveries"]} == {
        "1": "Ada Lovelace", "2": NAMES["2"]}  # JSON is data: as the host named them


@pytest.mark.parametrize("answer", ["raise", 42, b"bytes", "", "   ", "Ada\ud800"])
def test_a_broken_user_display_falls_back_to_the_id_and_logs_once_per_page(
    sending: SendingHost, caplog: pytest.LogCaptureFixture, answer: Any,
) -> None:
    @sending.webpush.user_display
    def name_of(user_id: str) -> Any:
        if answer == "raise":
            raise LookupError(f"no customer {user_id}")
        return answer

    for user in ("1", "2"):
        sending.subscribe(user, f"Device of {user}")
    nid = send(sending, ["1", "2"])
    admin = admin_of(sending)
    empty = answer in ("", "   ")
    for path in (f"/notifications/{nid}", "/users/1", f"/notifications/{nid}/deliveries.csv",
                 f"/notifications/{nid}/deliveries.json", "/users/1.json"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "flask_webpush_targeted.views.admin"):
            response = admin.get(ADMIN + path)
        assert response.status_code == 200, path
        assert "Ada" not in response.get_data(as_text=True)
        warnings = [r for r in caplog.records if "user_display" in r.getMessage()]
        assert len(warnings) == (0 if empty else 1), path  # "": no name, not a bug
    csv_text = admin.get(f"{ADMIN}/notifications/{nid}/deliveries.csv").get_data(as_text=True)
    assert {r["user_id"]: r["customer"] for r in csv.DictReader(io.StringIO(csv_text))} == {
        "1": "1", "2": "2"}
    assert "<h1>Customer 1</h1>" in admin.get(f"{ADMIN}/users/1").get_data(as_text=True)


def test_the_example_shop_names_its_customers(sending: SendingHost) -> None:
    from example_app import create_app, db
    from example_app.models import Customer, seed

    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "SECRET_KEY": "k",
                      "WEBPUSH_REDIS_URL": sending.app.config["WEBPUSH_REDIS_URL"],
                      "WEBPUSH_VAPID_PRIVATE_KEY": sending.config["WEBPUSH_VAPID_PRIVATE_KEY"],
                      "WEBPUSH_VAPID_PUBLIC_KEY": sending.config["WEBPUSH_VAPID_PUBLIC_KEY"]})
    with app.test_request_context():
        db.create_all()
        seed()
        first = db.session.get(Customer, 1)
        assert first is not None
        display = app.extensions["webpush"]._user_display
        assert display("1") == first.name
        # ids that are no customer key: none of them is a name, none raises
        for user_id in ("999", "1" * 40, "²", "shop/42", "", "-1", "1\x00"):
            assert display(user_id) is None, user_id


# -- 2. refusals and missing notifications as pages --------------------------------------


def test_a_customer_gets_a_page_that_says_the_admin_is_for_staff(sending: SendingHost) -> None:
    nid = notify(sending, ["nobody"])
    allow_admins(sending)
    customer = LoggedInClient(sending.app, "1").http
    for path in ("/notifications", f"/notifications/{nid}", "/users/1",
                 f"/notifications/{nid}/deliveries.csv"):
        response = customer.get(ADMIN + path)
        html = response.get_data(as_text=True)
        assert response.status_code == 403 and response.mimetype == "text/html", path
        assert 'class="webpush-page"' in html and "<h1>Not for your account</h1>" in html
        assert "You may not see these statistics." in html and "webpush.css" in html
        assert 'href="/">← Back to the shop</a>' in html
        assert "Forbidden" not in html
    for path in ("/notifications.json", f"/notifications/{nid}.json", "/users/1.json"):
        response = customer.get(ADMIN + path)
        assert response.status_code == 403
        assert_error_shape(response, "forbidden")


def test_the_refusal_page_extends_the_hosts_base_template(sending: SendingHost) -> None:
    allow_admins(sending)
    packaged = sending.app.jinja_loader
    assert packaged is not None
    sending.app.jinja_loader = ChoiceLoader([DictLoader({"shop/base.html": (
        "<!doctype html><header id=shop-header>Acme</header>{% block content %}{% endblock %}")}),
        packaged])
    sending.app.config["WEBPUSH_BASE_TEMPLATE"] = "shop/base.html"
    html = LoggedInClient(sending.app, "1").http.get(f"{ADMIN}/notifications").get_data(
        as_text=True)
    assert "<header id=shop-header>Acme</header>" in html and "Not for your account" in html
    assert 'class="webpush-page"' not in html


def test_a_missing_notification_is_a_page_with_a_way_back(sending: SendingHost) -> None:
    admin = admin_of(sending)
    for path in ("/notifications/987654", "/notifications/987654/deliveries.csv"):
        response = admin.get(ADMIN + path)
        html = response.get_data(as_text=True)
        assert response.status_code == 404 and response.mimetype == "text/html", path
        assert "<h1>Not found</h1>" in html and "No notification has id 987654." in html
        assert f'href="{ADMIN}/notifications">← All notifications</a>' in html
    for path in ("/notifications/987654.json", "/notifications/987654/deliveries.json"):
        response = admin.get(ADMIN + path)
        assert response.status_code == 404
        assert_error_shape(response, "not_found")
    csrf = LoggedInClient(sending.app, "9")
    allow_admins(sending)
    response = csrf.http.post(f"{ADMIN}/notifications/987654/cancel",
                              data={"csrf_token": csrf.csrf})
    assert response.status_code == 404 and "<h1>Not found</h1>" in response.get_data(as_text=True)


# -- 4. words for statuses, topics, cancelled figures, chart times, cancelling -------------


def test_a_scheduled_notification_says_when_it_goes_out(sending: SendingHost) -> None:
    at = datetime.now(UTC) + timedelta(days=2)
    nid = notify(sending, ["nobody"], send_at=at)
    admin = admin_of(sending)
    words = f"Scheduled for {at:%Y-%m-%d %H:%M} UTC"
    html = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    assert f"<strong data-status>{words}</strong>" in html
    assert 'data-figure="users_without_devices"><small>known once sent</small>' in html
    listed = admin.get(f"{ADMIN}/notifications").get_data(as_text=True)
    assert row(listed, "data-notification-id", nid)[3] == words


def test_the_topic_the_extension_chose_reads_automatic(sending: SendingHost) -> None:
    automatic, chosen = notify(sending, ["nobody"]), notify(sending, ["nobody"], topic="trip-42")
    admin = admin_of(sending)
    assert sending.notification(automatic).topic == f"n{automatic}"
    page = admin.get(f"{ADMIN}/notifications/{automatic}").get_data(as_text=True)
    assert "<dd data-topic>automatic</dd>" in page and f">n{automatic}<" not in page
    page = admin.get(f"{ADMIN}/notifications/{chosen}").get_data(as_text=True)
    assert "<dd data-topic>trip-42</dd>" in page


def test_a_notification_cancelled_before_sending_shows_no_device_figures(
    sending: SendingHost,
) -> None:
    nid = notify(sending, ["1"], send_at=datetime.now(UTC) + timedelta(hours=1))
    with sending.app.app_context():
        sending.webpush.cancel(nid)
    html = admin_of(sending).get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    assert ('data-figure="users_without_devices"><small>not sent (cancelled)</small>'
            in html)


def test_the_chart_axis_reads_as_times_not_iso_strings(
    named: tuple[SendingHost, int, Any],
) -> None:
    _host, nid, admin = named
    html = admin.get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    svg = re.search(r"<svg.*?</svg>", html, re.DOTALL)
    assert svg
    assert not re.search(r"\d{4}-\d\d-\d\dT", svg.group(0))  # no raw ISO anywhere
    now = datetime.now(UTC)
    axis = re.findall(r'<text x="36" y="\d+" font-size="10">([^<]+)</text>', svg.group(0))
    assert axis and re.fullmatch(rf"{now.day} {now:%b} \d\d:\d\d UTC", axis[0])
    assert "(per minute): 2 sent" in svg.group(0)


def test_readable_time_shortens_times_of_the_same_day() -> None:
    assert readable_time("2026-12-01T14:00:00") == "1 Dec 14:00 UTC"
    assert readable_time("2026-12-01T14:05:00", since="2026-12-01T14:00:00") == "14:05 UTC"
    assert readable_time("2026-12-02T01:00:00", since="2026-12-01T14:00:00") == "2 Dec 01:00 UTC"
    assert readable_time("not a time") == "not a time"


def test_cancelling_asks_first_with_and_without_javascript(sending: SendingHost) -> None:
    nid = notify(sending, ["nobody"], send_at=datetime.now(UTC) + timedelta(hours=1))
    html = admin_of(sending).get(f"{ADMIN}/notifications/{nid}").get_data(as_text=True)
    form = re.search(r"<details class=\"webpush-cancel\">.*?</details>", html, re.DOTALL)
    assert form, "the cancel button is not behind a confirmation step"
    assert "<summary>Cancel this notification…</summary>" in form.group(0)
    assert f"onsubmit=\"return confirm('Cancel notification #{nid}?" in form.group(0)
    assert "data-cancel>Yes, cancel what is not sent yet</button>" in form.group(0)


# -- 3. long text wraps: measured in headless Chromium -----------------------------------


def serve_from(client: Any) -> Any:
    """A Playwright route handler answering every request with the Flask test client."""
    def handle(route: Any) -> None:
        url = route.request.url.removeprefix("http://shop.test")
        response = client.get(url)
        route.fulfill(status=response.status_code, body=response.get_data(),
                      headers={"content-type": response.content_type})
    return handle


WIDE = "W" * 200
LONG_BODY = ("Your-order-" * 60) + " and " + "x" * 300


def test_long_titles_and_bodies_wrap_inside_the_page_in_chromium(sending: SendingHost) -> None:
    from browser import CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    sending.subscribe("1", "D" * 120)
    nid = send(sending, ["1"], title=WIDE, body=LONG_BODY)
    notify(sending, ["nobody"], title="A short one")
    admin = admin_of(sending)
    SHOTS.mkdir(parents=True, exist_ok=True)
    backend = sending.app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.route("http://shop.test/**", serve_from(admin))
        page.goto(f"http://shop.test{ADMIN}/notifications")
        page.screenshot(path=str(SHOTS / f"staff-list-{backend}.png"), full_page=True)
        view = page.evaluate("document.documentElement.clientWidth")
        last = page.locator("table.webpush-table thead th").last.bounding_box()
        title = page.locator(f"tr[data-notification-id='{nid}'] td.webpush-title").bounding_box()
        assert last and title
        assert last["x"] + last["width"] <= view, "the Funnel column is pushed off the page"
        assert title["width"] < 420
        assert page.evaluate("document.documentElement.scrollWidth") <= view

        page.goto(f"http://shop.test{ADMIN}/notifications/{nid}")
        page.screenshot(path=str(SHOTS / f"staff-notification-{backend}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= view
        for selector in ("h1", ".webpush-details dd", "table.webpush-table"):
            for box in (b for b in (e.bounding_box() for e in page.locator(selector).all()) if b):
                assert box["x"] + box["width"] <= view, selector
        browser.close()


def test_the_refusal_page_and_the_cancel_step_in_chromium_without_javascript(
    sending: SendingHost,
) -> None:
    from browser import CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    nid = notify(sending, ["nobody"], send_at=datetime.now(UTC) + timedelta(hours=3))
    admin = admin_of(sending)
    customer = LoggedInClient(sending.app, "1").http
    SHOTS.mkdir(parents=True, exist_ok=True)
    backend = sending.app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 600}, java_script_enabled=False)
        page.route("http://shop.test/**", serve_from(customer))
        page.goto(f"http://shop.test{ADMIN}/notifications")
        page.screenshot(path=str(SHOTS / f"staff-403-{backend}.png"))
        assert page.locator("h1").inner_text() == "Not for your account"
        page.unroute("http://shop.test/**")
        page.route("http://shop.test/**", serve_from(admin))
        page.goto(f"http://shop.test{ADMIN}/notifications/{nid}")
        button = page.locator("button[data-cancel]")
        assert not button.is_visible()  # one click is not enough to cancel
        page.click("details.webpush-cancel summary")
        assert button.is_visible()
        page.screenshot(path=str(SHOTS / f"staff-cancel-{backend}.png"))
        browser.close()
