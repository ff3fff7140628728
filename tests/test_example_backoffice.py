"""The example shop's back-office: access control, the CRM-like filters, sending through
notify_users, idempotent double submits, validation, cancel, and one end-to-end send
through an in-process RQ worker to the local push service."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import REDIS_URL, VAPID_PRIVATE, VAPID_PUBLIC, csrf_of, log_in
from flask import Flask

from example_app import create_app, db, webpush
from example_app.models import Customer, Product

ADMIN = ("admin@example.com", "admin-pass")
ALICE = ("alice@example.com", "alice-pass")
PLACEHOLDER = "test-placeholder"


# -- fixtures and helpers ---------------------------------------------------------------------


def _empty_queue(app: Flask) -> None:
    """Delete every job of the app's queue, in the queue and in its registries."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from flask_webpush_targeted.redis_queue import REDIS_ERRORS, get_queue

    try:
        with app.app_context():
            queue = get_queue()
            for registry in (queue.scheduled_job_registry, queue.failed_job_registry,
                             queue.finished_job_registry, queue.started_job_registry,
                             queue.deferred_job_registry, queue.canceled_job_registry):
                for job_id in registry.get_job_ids():
                    registry.remove(job_id)
                    # Job ids are not per queue (webpush-fanout-<id>): delete only ours.
                    try:
                        job = Job.fetch(job_id, connection=queue.connection)
                    except NoSuchJobError:
                        continue
                    if job.origin == queue.name:
                        job.delete()
            queue.empty()
    except REDIS_ERRORS:
        pass  # the test pointed the app at a Redis that is down on purpose


def _start_notification_ids_at(app: Flask, first: int) -> None:
    """Make this test's notification ids unlikely to be another test's.

    The extension's fan-out job id is ``webpush-fanout-<notification id>``, global in
    Redis whatever WEBPUSH_QUEUE is, so two test databases that both start at id 1
    would share (and delete) each other's jobs when tests run at the same time.
    """
    N = webpush.models.Notification
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.session.execute(sa.text(
                "SELECT setval(pg_get_serial_sequence('webpush_notification', 'id'), :n, false)"),
                {"n": first})
        else:  # SQLite gives max(id) + 1: leave a placeholder just below
            db.session.add(N(id=first - 1, status="done", payload={"title": "placeholder"},
                             targeting={"user_ids": []}, ttl=0, idempotency_key=PLACEHOLDER))
        db.session.commit()


@pytest.fixture
def make_shop(db_url: str, redis_conn: Any) -> Iterator[Callable[..., Flask]]:
    """Build the example shop on the test database, with a queue of its own."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        from example_app.models import seed

        app = create_app({
            "TESTING": True, "SECRET_KEY": "backoffice-test", "SQLALCHEMY_DATABASE_URI": db_url,
            "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
            "WEBPUSH_REDIS_URL": REDIS_URL,
            "WEBPUSH_QUEUE": f"shop-backoffice-{uuid.uuid4().hex[:8]}", **config,
        })
        with app.app_context():
            db.create_all()
            seed()
        _start_notification_ids_at(app, secrets.randbelow(10**9) + 10**6)
        apps.append(app)
        return app

    yield make
    for app in apps:
        _empty_queue(app)
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.fixture
def shop(make_shop: Callable[..., Flask]) -> Flask:
    return make_shop()


def client_of(app: Flask, account: tuple[str, str] | None) -> Any:
    client = app.test_client()
    if account is not None:
        response = log_in(client, *account)
        assert response.status_code == 302
    return client


def ids_by_email(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {c.email: str(c.id) for c in db.session.scalars(sa.select(Customer))}


def product_id(app: Flask, prefix: str) -> int:
    with app.app_context():
        return db.session.execute(
            sa.select(Product.id).where(Product.name.startswith(prefix))).scalar_one()


def shown_customers(html: str) -> set[str]:
    return set(re.findall(r'name="user" value="(\d+)"', html))


def send_form(client: Any, path: str = "/admin/send") -> dict[str, Any]:
    """The form's hidden fields (CSRF token, one-time nonce) and sensible values."""
    response = client.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    nonce = re.search(r'name="nonce" value="([^"]+)"', html)
    assert nonce, "no nonce in the send form"
    return {"csrf_token": csrf_of(html), "nonce": nonce.group(1), "title": "Your order shipped",
            "body": "It arrives tomorrow.", "url": "/account", "devices": "all",
            "ttl": "3600", "ttl_custom": "", "urgency": "normal", "topic": "", "category": "",
            "when": "now", "send_at": "", "tz_offset": ""}


def notifications(app: Flask) -> list[Any]:
    N = webpush.models.Notification
    with app.app_context():
        rows = db.session.scalars(sa.select(N).where(sa.or_(
            N.idempotency_key.is_(None), N.idempotency_key != PLACEHOLDER)).order_by(N.id)).all()
        for row in rows:
            db.session.expunge(row)
        return list(rows)


def stat(html: str, key: str) -> int:
    match = re.search(rf'data-stat="{key}"><th>[^<]*</th><td>(\d+)</td>', html)
    assert match, f"no {key} row in the funnel"
    return int(match.group(1))


def queued_job_ids(app: Flask) -> list[str]:
    from flask_webpush_targeted.redis_queue import get_queue

    with app.app_context():
        return list(get_queue().job_ids)


def scheduled_job_ids(app: Flask) -> list[str]:
    from flask_webpush_targeted.redis_queue import get_queue

    with app.app_context():
        return list(get_queue().scheduled_job_registry.get_job_ids())


# -- access control ---------------------------------------------------------------------------


def test_every_page_is_for_administrators_only(shop: Flask) -> None:
    ids = ids_by_email(shop)
    with shop.app_context():
        n = webpush.notify_users([ids["alice@example.com"]], title="Hello",
                                 send_at=datetime(2099, 1, 1, tzinfo=UTC))
        nid = n.id
    pages = ["/admin/send", "/admin/notifications", f"/admin/notifications/{nid}"]
    cancel = f"/admin/notifications/{nid}/cancel"

    anonymous = client_of(shop, None)
    for page in pages:
        response = anonymous.get(page)
        assert response.status_code == 302 and "/login?next=" in response.location, page
    assert "/login" in anonymous.post(cancel).location

    customer = client_of(shop, ALICE)
    token = csrf_of(customer.get("/account").get_data(as_text=True))
    for page in pages:
        response = customer.get(page)
        assert response.status_code == 403, page
        assert "for the shop's administrators" in response.get_data(as_text=True)
    assert customer.post(cancel, data={"csrf_token": token}).status_code == 403
    assert notifications(shop)[0].status == "scheduled"

    admin = client_of(shop, ADMIN)
    for page in pages:
        assert admin.get(page).status_code == 200, page


def test_login_brings_the_admin_back_to_the_back_office(shop: Flask) -> None:
    client = shop.test_client()
    target = client.get("/admin/send").location
    token = csrf_of(client.get(target).get_data(as_text=True))
    response = client.post(target, data={"email": ADMIN[0], "password": ADMIN[1],
                                         "csrf_token": token})
    assert response.location == "/admin/send"


def test_the_header_links_the_back_office_for_admins_only(shop: Flask) -> None:
    assert "Back-office" in client_of(shop, ADMIN).get("/").get_data(as_text=True)
    assert "Back-office" not in client_of(shop, ALICE).get("/").get_data(as_text=True)
    assert "Back-office" not in client_of(shop, None).get("/").get_data(as_text=True)


def test_unknown_notification_is_404(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    assert admin.get("/admin/notifications/5").status_code == 404
    token = csrf_of(admin.get("/admin/send").get_data(as_text=True))
    assert admin.post("/admin/notifications/5/cancel",
                      data={"csrf_token": token}).status_code == 404


# -- the customer list ------------------------------------------------------------------------


def test_product_filter_shows_only_customers_who_ordered_it(shop: Flask) -> None:
    ids = ids_by_email(shop)
    admin = client_of(shop, ADMIN)
    everyone = shown_customers(admin.get("/admin/send").get_data(as_text=True))
    assert everyone == set(ids.values())

    flight = product_id(shop, "Flight")
    html = admin.get(f"/admin/send?product={flight}").get_data(as_text=True)
    assert shown_customers(html) == {ids["alice@example.com"], ids["bob@example.com"]}
    assert f'action="/admin/send?product={flight}"' in html  # the filter survives a re-render

    jacket = product_id(shop, "Rain jacket")
    html = admin.get(f"/admin/send?product={jacket}").get_data(as_text=True)
    assert shown_customers(html) == {ids["carol@example.com"]}


def test_date_filter_and_both_filters_on_the_same_order(shop: Flask) -> None:
    ids = ids_by_email(shop)
    admin = client_of(shop, ADMIN)
    html = admin.get("/admin/send?ordered_on=2026-11-05").get_data(as_text=True)
    assert shown_customers(html) == {ids["carol@example.com"]}
    html = admin.get("/admin/send?ordered_on=2026-12-31").get_data(as_text=True)
    assert shown_customers(html) == set() and "No customer matches." in html

    flight = product_id(shop, "Flight")
    html = admin.get(f"/admin/send?product={flight}&ordered_on=2026-11-21").get_data(as_text=True)
    assert shown_customers(html) == {ids["bob@example.com"]}
    # Alice ordered the flight (on the 20th) and something on the 2nd, never both at once.
    html = admin.get(f"/admin/send?product={flight}&ordered_on=2026-11-02").get_data(as_text=True)
    assert shown_customers(html) == set()


def test_invalid_filters_are_reported(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    response = admin.get("/admin/send?ordered_on=yesterday")
    assert response.status_code == 400
    assert "must be a date" in response.get_data(as_text=True)
    response = admin.get("/admin/send?product=999")
    assert response.status_code == 400
    assert "Unknown product" in response.get_data(as_text=True)


# -- sending ----------------------------------------------------------------------------------


def test_send_now_stores_one_notification_for_exactly_the_chosen_customers(shop: Flask) -> None:
    ids = ids_by_email(shop)
    admin = client_of(shop, ADMIN)
    chosen = [ids["alice@example.com"], ids["carol@example.com"]]
    data = send_form(admin) | {
        "user": chosen, "devices": "latest", "ttl": "604800", "urgency": "high",
        "topic": "order-42", "category": "orders"}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert response.location == f"/admin/notifications/{n.id}"
    assert sorted(n.targeting["user_ids"]) == sorted(chosen)
    assert n.targeting["devices"] == "latest"
    assert (n.ttl, n.urgency, n.topic, n.category) == (604800, "high", "order-42", "orders")
    assert n.send_at is None and n.status == "queued"
    assert n.payload["title"] == "Your order shipped"
    assert n.payload["body"] == "It arrives tomorrow." and n.payload["url"] == "/account"
    assert n.idempotency_key == f"backoffice-{data['nonce']}"
    assert queued_job_ids(shop) == [n.job_id] and n.job_id

    html = admin.get(response.location).get_data(as_text=True)
    assert "Your order shipped" in html and "It arrives tomorrow." in html
    assert "Alice Kowalska" in html and "Carol Wiśniewska" in html and "Bob Nowak" not in html
    assert stat(html, "targeted_users") == 2
    assert 'data-field="ttl">1 week<' in html and 'data-field="urgency">high<' in html
    assert 'data-action="cancel"' in html  # still queued


@pytest.mark.parametrize(("offset", "expected"), [
    ("120", datetime(2030, 6, 1, 7, 30, tzinfo=UTC)),   # Warsaw, summer time
    ("-300", datetime(2030, 6, 1, 14, 30, tzinfo=UTC)),  # UTC-5
    ("", datetime(2030, 6, 1, 9, 30, tzinfo=UTC)),      # no script: UTC
])
def test_send_at_is_an_aware_time_from_the_browsers_offset(shop: Flask, offset: str,
                                                            expected: datetime) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["bob@example.com"]], "when": "later",
                               "send_at": "2030-06-01T09:30", "tz_offset": offset,
                               "ttl": "custom", "ttl_custom": "5400"}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert n.send_at is not None and n.send_at.utcoffset() is not None
    assert n.send_at == expected
    assert n.status == "scheduled" and n.ttl == 5400
    assert scheduled_job_ids(shop) == [n.job_id] and n.job_id
    html = admin.get(response.location).get_data(as_text=True)
    assert expected.strftime("%Y-%m-%d %H:%M UTC") in html
    assert 'data-field="ttl">90 minutes<' in html


def test_a_double_submit_sends_once(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]]}
    first = admin.post("/admin/send", data=data)
    second = admin.post("/admin/send", data=data)

    assert first.status_code == second.status_code == 303
    assert first.location == second.location
    assert len(notifications(shop)) == 1
    assert len(queued_job_ids(shop)) == 1

    # A fresh form (a new nonce) is a new notification.
    again = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]]}
    assert admin.post("/admin/send", data=again).location != first.location
    assert len(notifications(shop)) == 2


@pytest.mark.parametrize(("change", "reason"), [
    ({"title": ""}, "Write a title."),
    ({"title": "   "}, "Write a title."),
    ({"url": "https://evil.example/login"}, "The link must be a page of this shop"),
    ({"url": "//evil.example/login"}, "The link must be a page of this shop"),
    ({"url": "javascript:alert(1)"}, "The link must be a page of this shop"),
    ({"topic": "bad topic!"}, "The topic must be 1 to 32 letters, digits, - or _"),
    ({"urgency": "urgent"}, "Choose an urgency from the list."),
    ({"ttl": "custom", "ttl_custom": str(29 * 86400)}, "validity period must be from 0 seconds"),
    ({"ttl": "custom", "ttl_custom": "soon"}, "validity period must be a whole number"),
    ({"user": []}, "Choose at least one customer."),
    ({"user": ["424242"]}, "Unknown customer id(s): 424242."),
    ({"when": "later", "send_at": ""}, "Choose the date and time to send at"),
    ({"when": "later", "send_at": "2020-01-01T10:00"}, "The send time has passed"),
    ({"when": "later", "send_at": "2030-01-01T10:00", "tz_offset": "9999"},
     "time zone offset is not valid"),
    ({"nonce": ""}, "no valid one-time key"),
])
def test_invalid_input_is_shown_with_the_form_kept_and_nothing_stored(
        shop: Flask, change: dict[str, Any], reason: str) -> None:
    ids = ids_by_email(shop)
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids["carol@example.com"]],
                               "body": "Kept <b>as typed</b>"} | change
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert reason in html.replace("&#39;", "'")
    assert "Kept &lt;b&gt;as typed&lt;/b&gt;</textarea>" in html  # input kept, escaped
    for user in data["user"]:
        if user in ids.values():
            assert re.search(rf'name="user" value="{user}" id="user-{user}" checked', html)
    if change.get("nonce") != "":
        assert f'name="nonce" value="{data["nonce"]}"' in html
    assert notifications(shop) == []
    assert queued_job_ids(shop) == [] and scheduled_job_ids(shop) == []


def test_the_form_needs_its_csrf_token(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]]}
    del data["csrf_token"]
    assert admin.post("/admin/send", data=data).status_code == 400
    assert admin.post("/admin/send", data=data | {"csrf_token": "forged"}).status_code == 400
    assert notifications(shop) == []


def test_queue_down_keeps_the_notification_and_says_so(make_shop: Callable[..., Flask]) -> None:
    shop = make_shop(WEBPUSH_REDIS_URL="redis://127.0.0.1:1/0")
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]]}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert response.location == f"/admin/notifications/{n.id}"
    assert n.status == "queued" and n.job_id is None
    html = admin.get(response.location).get_data(as_text=True)
    assert f"Notification {n.id} is stored" in html
    assert "will be sent when the queue is back" in html
    # Submitting again while Redis is down finds the same notification.
    assert admin.post("/admin/send", data=data).location == response.location
    assert len(notifications(shop)) == 1


# -- the notifications ------------------------------------------------------------------------


def test_cancel_a_scheduled_notification(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["bob@example.com"]], "when": "later",
                               "send_at": "2031-01-01T12:00", "tz_offset": "60"}
    page = admin.post("/admin/send", data=data).location
    html = admin.get(page).get_data(as_text=True)
    assert 'data-status="scheduled"' in html and 'data-action="cancel"' in html
    [n] = notifications(shop)
    cancel = f"/admin/notifications/{n.id}/cancel"

    assert admin.post(cancel).status_code == 400  # no CSRF token
    assert notifications(shop)[0].status == "scheduled"

    response = admin.post(cancel, data={"csrf_token": csrf_of(html)})
    assert response.status_code == 303
    assert response.location == f"{page}?done=cancelled"
    assert notifications(shop)[0].status == "cancelled"
    html = admin.get(response.location).get_data(as_text=True)
    assert 'data-status="cancelled"' in html and 'data-action="cancel"' not in html
    assert "nothing more of it will be sent" in html

    again = admin.post(cancel, data={"csrf_token": csrf_of(html)})
    assert again.location == f"{page}?done=not-cancelled"


def test_the_list_shows_the_newest_first_with_links(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    alice = ids_by_email(shop)["alice@example.com"]
    for title in ("First message", "Second message"):
        data = send_form(admin) | {"user": [alice], "title": title}
        assert admin.post("/admin/send", data=data).status_code == 303
    first, second = notifications(shop)
    html = admin.get("/admin/notifications").get_data(as_text=True)
    assert html.index("Second message") < html.index("First message")
    for n in (first, second):
        assert f'href="/admin/notifications/{n.id}"' in html


# -- end to end -------------------------------------------------------------------------------


def test_back_office_send_reaches_the_push_service(make_shop: Callable[..., Flask],
                                                   push_service: Any) -> None:
    """Back-office POST -> in-process RQ worker -> local push service decrypts the message."""
    from flask_webpush_targeted.worker import make_worker

    shop = make_shop(WEBPUSH_EXTRA_PUSH_SERVICES=[push_service.origin])
    ids = ids_by_email(shop)

    # Alice subscribes through the JSON API, as the widget does; Bob has no device.
    alice = client_of(shop, ALICE)
    account = alice.get("/account").get_data(as_text=True)
    token = re.search(r'data-csrf-token="([^"]+)"', account)
    assert token
    subscription = push_service.new_subscription()
    response = alice.post("/webpush/subscriptions", headers={"X-CSRF-Token": token.group(1)},
                          json={"subscription": subscription,
                                "consent": {"notifications": True, "link_to_account": True,
                                            "text_version": "1"}})
    assert response.status_code == 201

    admin = client_of(shop, ADMIN)
    title, body = "Gate 12 — boarding at 10:40", "Zażółć gęślą jaźń: your flight is on time."
    data = send_form(admin) | {"user": [ids["alice@example.com"], ids["bob@example.com"]],
                               "title": title, "body": body, "url": "/products/3",
                               "urgency": "high", "ttl": "3600"}
    response = admin.post("/admin/send", data=data)
    assert response.status_code == 303
    page = response.location

    make_worker(shop, simple=True).work(burst=True)

    [push] = push_service.wait_for(1, endpoint_or_id=subscription, timeout=10)
    message = push.notification()
    assert (message["title"], message["body"], message["url"]) == (title, body, "/products/3")
    assert message["token"]
    assert push.urgency == "high" and 0 < push.ttl <= 3600

    html = admin.get(page).get_data(as_text=True)
    assert 'data-status="done"' in html
    assert stat(html, "targeted_users") == 2
    assert stat(html, "users_without_devices") == 1
    assert stat(html, "deliveries") == 1
    assert stat(html, "sent") == 1
    assert stat(html, "pending") == stat(html, "failed") == stat(html, "expired") == 0
    assert 'data-field="without-devices">Bob Nowak<' in html
    assert 'data-action="cancel"' not in html


# -- categories, quiet hours, local time, pace ------------------------------------------------


def rules_of(html: str) -> dict[str, str]:
    """The notification page's rules: data-rule -> words."""
    return {k: v.replace("&#39;", "'") for k, v in re.findall(
        r'data-rule="([\w-]+)">([^<]*)<', html)}


def test_the_form_offers_the_configured_categories_order_updates_first(shop: Flask) -> None:
    html = client_of(shop, ADMIN).get("/admin/send").get_data(as_text=True)
    select = re.search(r'<select name="category">(.*?)</select>', html, re.DOTALL)
    assert select, "no category select"
    options = re.findall(r'<option value="(\w+)" ?(selected)?>([^<]*)<', select.group(1))
    assert options == [("orders", "selected", "Order updates (always sent)"),
                       ("offers", "", "Offers and discounts"), ("news", "", "News")]
    assert 'name="quiet_hours"' in html and 'name="rate_per_minute"' in html
    assert 'name="send_at_local"' in html and 'value="local"' in html


def test_send_with_a_category_stores_it_and_shows_its_label_and_figures(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]],
                               "category": "offers", "title": "Winter sale"}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert n.category == "offers" and n.quiet_hours is None
    html = admin.get(response.location).get_data(as_text=True)
    rules = rules_of(html)
    assert rules["category"] == "Offers and discounts"
    assert rules["quiet-hours"] == ("As set for the category: nothing from 21:00 to 08:00 in "
                                    "each customer's time zone")
    # an optional category with a cap: both figures apply; nothing is held yet
    assert stat(html, "opted_out") == 0 and stat(html, "capped") == 0
    assert 'data-stat="held"' not in html


def test_order_updates_have_no_quiet_hours_and_no_opt_out_figures(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["bob@example.com"]]}
    response = admin.post("/admin/send", data=data)
    [n] = notifications(shop)
    assert n.category == "orders"  # the select's default: the required category
    html = admin.get(response.location).get_data(as_text=True)
    assert rules_of(html) == {"category": "Order updates",
                              "quiet-hours": "None for this category"}
    assert 'data-stat="opted_out"' not in html and 'data-stat="capped"' not in html


@pytest.mark.parametrize(("choice", "stored", "words"), [
    ("", None, "As set for the category: nothing from 21:00 to 08:00"),
    ("keep", True, "Kept: nothing from 21:00 to 08:00"),
    ("ignore", False, "Ignored: sent at any hour"),
])
def test_send_with_each_quiet_hours_choice(shop: Flask, choice: str, stored: bool | None,
                                           words: str) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["carol@example.com"]],
                               "category": "news", "quiet_hours": choice}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert n.quiet_hours is stored and n.category == "news"
    assert rules_of(admin.get(response.location).get_data(as_text=True))[
        "quiet-hours"].startswith(words)


def test_send_at_a_local_time_stores_it_and_says_so(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["alice@example.com"]],
                               "category": "offers", "when": "local", "send_at_local": "09:00",
                               # a send-at time left in the other field is not used
                               "send_at": "2030-06-01T09:30"}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert n.send_at_local == "09:00" and n.send_at is None and n.status == "queued"
    html = admin.get(response.location).get_data(as_text=True)
    assert rules_of(html)["send-at-local"] == "Sent at 09:00 in each customer's time zone"


def test_send_with_a_rate_per_minute_stores_it_and_says_the_pace(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["bob@example.com"]],
                               "rate_per_minute": "60"}
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 303
    [n] = notifications(shop)
    assert n.rate_per_minute == 60
    html = admin.get(response.location).get_data(as_text=True)
    assert rules_of(html)["rate"] == "At most 60 a minute"  # no finish time before it sends


@pytest.mark.parametrize(("change", "reason"), [
    ({"when": "local", "send_at_local": "25:00"}, "The time of day must be like 09:30"),
    ({"when": "local", "send_at_local": "9am"}, "The time of day must be like 09:30"),
    ({"when": "local", "send_at_local": "09:00\x00"}, "The time of day must be like 09:30"),
    ({"when": "local", "send_at_local": ""}, "Choose the time of day to send at"),
    ({"category": "promo"}, "Choose a category from the list."),
    ({"quiet_hours": "maybe"}, "Choose how quiet hours apply"),
    ({"rate_per_minute": "0"}, "The rate per minute must be a whole number from 1 to 1,000,000"),
    ({"rate_per_minute": "9" * 5000}, "The rate per minute must be a whole number from 1"),
    ({"rate_per_minute": "fast"}, "The rate per minute must be a whole number"),
    ({"rate_per_minute": "٣"}, "The rate per minute must be a whole number"),
])
def test_a_bad_local_time_or_rule_is_shown_on_the_form_and_nothing_stored(
        shop: Flask, change: dict[str, Any], reason: str) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["carol@example.com"]]} | change
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 400
    html = response.get_data(as_text=True)
    errors = re.findall(r'<p class="error" role="alert">([^<]*)</p>', html)
    assert len(errors) == 1 and reason in errors[0].replace("&#39;", "'"), errors
    if change.get("when") == "local":  # the choice is kept on the form
        assert 'value="local" checked' in html
    assert notifications(shop) == []
    assert queued_job_ids(shop) == [] and scheduled_job_ids(shop) == []


def test_the_new_form_fields_never_answer_5xx(shop: Flask) -> None:
    from fuzz_strategies import fuzz_settings, nasty_text, url_quoted
    from hypothesis import given
    from hypothesis import strategies as st

    admin = client_of(shop, ADMIN)
    base = send_form(admin) | {"user": ids_by_email(shop)["alice@example.com"]}

    @given(field=st.sampled_from(["category", "quiet_hours", "send_at_local",
                                  "rate_per_minute", "when"]),
           value=nasty_text(), when=st.sampled_from(["now", "local", "later"]))
    @fuzz_settings()
    def check(field: str, value: str, when: str) -> None:
        fields = base | {"when": when, "send_at_local": "09:00",
                         "nonce": secrets.token_urlsafe(24)} | {field: value}
        # percent-encoded by hand: a lone surrogate reaches the server as invalid UTF-8
        body = "&".join(f"{k}={url_quoted(str(v))}" for k, v in fields.items())
        response = admin.post("/admin/send", data=body.encode(),
                              content_type="application/x-www-form-urlencoded")
        assert response.status_code in (303, 400), (field, value, response.status_code)

    check()


def test_customers_who_turned_the_category_off_are_named_and_not_sent_to(
        make_shop: Callable[..., Flask], push_service: Any) -> None:
    from flask_webpush_targeted.worker import make_worker

    shop = make_shop(WEBPUSH_EXTRA_PUSH_SERVICES=[push_service.origin])
    ids = ids_by_email(shop)
    endpoints = {}
    for account in (ALICE, ("bob@example.com", "bob-pass")):
        client = client_of(shop, account)
        token = re.search(r'data-csrf-token="([^"]+)"',
                          client.get("/account").get_data(as_text=True))
        assert token
        endpoints[account[0]] = subscription = push_service.new_subscription()
        assert client.post("/webpush/subscriptions", headers={"X-CSRF-Token": token.group(1)},
                           json={"subscription": subscription,
                                 "consent": {"notifications": True, "link_to_account": True,
                                             "text_version": "1"}}).status_code == 201
    with shop.app_context():  # news is off until a customer turns it on: Bob does
        webpush.set_preferences(ids["bob@example.com"], {"news": True})

    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids["alice@example.com"], ids["bob@example.com"]],
                               "category": "news", "quiet_hours": "ignore",
                               "title": "New in the shop"}
    page = admin.post("/admin/send", data=data).location
    make_worker(shop, simple=True).work(burst=True)

    [push] = push_service.wait_for(1, endpoint_or_id=endpoints["bob@example.com"], timeout=10)
    assert push.notification()["title"] == "New in the shop"
    assert push_service.received_for(endpoints["alice@example.com"]["endpoint"]) == []
    html = admin.get(page).get_data(as_text=True)
    assert stat(html, "opted_out") == 1 and stat(html, "sent") == 1
    assert stat(html, "deliveries") == 1
    assert 'data-field="opted-out">Alice Kowalska<' in html


# -- orders and A/B tests ---------------------------------------------------------------------


def subscribe_through_the_widgets_api(shop: Flask, account: tuple[str, str],
                                      push_service: Any) -> tuple[Any, dict[str, Any]]:
    """A logged-in customer's client and the subscription it stored, as the widget does."""
    client = client_of(shop, account)
    token = re.search(r'data-csrf-token="([^"]+)"', client.get("/account").get_data(as_text=True))
    assert token
    subscription = push_service.new_subscription()
    response = client.post("/webpush/subscriptions", headers={"X-CSRF-Token": token.group(1)},
                           json={"subscription": subscription,
                                 "consent": {"notifications": True, "link_to_account": True,
                                             "text_version": "1"}})
    assert response.status_code == 201
    return client, subscription


def test_an_ab_test_from_the_back_office_and_an_order_after_a_click_show_on_its_page(
        make_shop: Callable[..., Flask], push_service: Any) -> None:
    """Back-office A/B send -> worker -> push service; a click, then a purchase in the shop:
    the notification's page shows both wordings, the order and its revenue."""
    from flask_webpush_targeted.worker import make_worker

    shop = make_shop(WEBPUSH_EXTRA_PUSH_SERVICES=[push_service.origin])
    ids = ids_by_email(shop)
    customers = {}
    for account in (ALICE, ("bob@example.com", "bob-pass"), ("carol@example.com", "carol-pass")):
        customers[account[0]] = subscribe_through_the_widgets_api(shop, account, push_service)
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": list(ids[e] for e in customers),
                               "title": "Rain jackets: 20% off", "title_b": "Stay dry this week",
                               "body_b": "", "url": "/products/2"}
    response = admin.post("/admin/send", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)
    page = response.location
    make_worker(shop, simple=True).work(burst=True)

    titles = {}
    for email, (_client, subscription) in customers.items():
        [push] = push_service.wait_for(1, endpoint_or_id=subscription, timeout=10)
        message = push.notification()
        titles[email] = message["title"]
        assert message["title"] in ("Rain jackets: 20% off", "Stay dry this week")
    alice, _ = customers["alice@example.com"]
    [push] = push_service.received_for(customers["alice@example.com"][1])
    assert alice.get(urlsplit(push.notification()["navigate"]).path).status_code == 302  # a click
    product = alice.get("/products/2").get_data(as_text=True)
    bought = alice.post("/products/2/buy", data={"csrf_token": csrf_of(product)})
    assert bought.status_code == 200 and "It followed notification" in bought.get_data(
        as_text=True)

    html = admin.get(page).get_data(as_text=True)
    assert 'data-variants' in html
    assert "Rain jackets: 20% off" in html and "Stay dry this week" in html
    orders = html[html.index("data-orders"):]
    assert "1 order after a click" in orders and "PLN499.00" in orders
    listing = admin.get("/admin/notifications").get_data(as_text=True)
    assert "PLN499.00" in listing and "(A/B)" in listing
    with shop.app_context():
        [n] = [n for n in notifications(shop) if n.variants]
        variants = webpush.stats(n.id)["variants"]
    won = variants[["Rain jackets: 20% off", "Stay dry this week"].index(
        titles["alice@example.com"])]
    assert won["conversions"] == 1 and won["revenue"] == {"PLN": "499.00"}


def test_buying_needs_a_login_and_its_csrf_token(shop: Flask) -> None:
    anonymous = shop.test_client()
    assert anonymous.post("/products/1/buy").status_code in (302, 401)
    alice = client_of(shop, ALICE)
    assert alice.post("/products/1/buy", data={}).status_code == 400
    with shop.app_context():
        C = webpush.models.Conversion
        assert db.session.scalar(sa.select(sa.func.count()).select_from(C)) == 0
