"""A new customer's and a new operator's first hour: withdrawal offered and recorded only
when there is consent to withdraw (one ledger row per withdrawal, even for a double click),
``flask webpush send`` refusing a past --send-at and naming the users it cannot reach, and a
validity of 0 seconds warned about in the CLI, the library's log and the example back-office.

On SQLite and PostgreSQL (every ``app`` fixture runs on both), with the real Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import LoggedInClient, empty_queue, make_subscription
from flask import Flask

# The example shop's fixtures and helpers, shared with its own tests.
from test_example_backoffice import (  # noqa: F401
    ADMIN,
    client_of,
    ids_by_email,
    make_shop,
    notifications,
    send_form,
    shop,
)

from flask_webpush_targeted import WebPush, signals
from flask_webpush_targeted.subscriptions import SubscriptionStore

WITHDRAW = "/webpush/consent/withdraw"
DEVICES = "/webpush/devices"


def ledger(app: Flask, webpush: WebPush, user_id: str = "1") -> list[tuple[Any, ...]]:
    """The user's two-part consent rows: (action, reason), in order."""
    C = webpush.models.Consent
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(
            sa.select(C.action, C.reason).where(C.user_id == user_id, C.scope.is_(None))
            .order_by(C.id))]


# -- 1a. withdrawing: nothing to withdraw, one row per withdrawal ------------------------------


def test_json_withdraw_without_consent_writes_no_row_and_says_there_was_nothing(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    seen: list[str] = []
    with signals.consent_withdrawn.connected_to(
            lambda sender, **kw: seen.append(kw["user_id"]), app):
        resp = client.post_json(WITHDRAW, {})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["withdrawn"] is False and body["devices_revoked"] == 0
    assert "nothing to withdraw" in body["message"]
    assert ledger(app, webpush) == [] and seen == []


def test_form_withdraw_without_consent_writes_no_row_and_the_page_says_so(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    resp = client.http.post(WITHDRAW, data={"csrf_token": client.csrf})
    assert resp.status_code == 303
    assert resp.headers["Location"] == f"{DEVICES}?done=nothing"
    page = client.http.get(resp.headers["Location"]).get_data(as_text=True)
    assert "there was nothing to withdraw" in page
    assert "Your consent is withdrawn" not in page
    assert ledger(app, webpush) == []


def test_a_repeated_withdrawal_adds_no_second_row(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    client.subscribe(make_subscription())
    first = client.post_json(WITHDRAW, {}).get_json()
    second = client.http.post(WITHDRAW, data={"csrf_token": client.csrf})
    third = client.post_json(WITHDRAW, {}).get_json()
    assert first == {"withdrawn": True, "devices_revoked": 1}
    assert second.headers["Location"] == f"{DEVICES}?done=nothing"
    assert third["withdrawn"] is False and third["devices_revoked"] == 0
    assert ledger(app, webpush) == [("granted", None), ("withdrawn", "user")]


def test_after_every_device_was_removed_there_is_nothing_left_to_withdraw(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    ids = [client.subscribe(make_subscription()).get_json()["id"] for _ in range(2)]
    for sid in ids:
        assert client.http.post(f"{DEVICES}/{sid}/revoke",
                                data={"csrf_token": client.csrf}).status_code == 303
    before = ledger(app, webpush)
    assert client.post_json(WITHDRAW, {}).get_json()["withdrawn"] is False
    assert ledger(app, webpush) == before


def test_a_consent_whose_only_device_expired_is_still_withdrawn_and_recorded(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    # The push service said the device is gone: the consent itself was never withdrawn.
    sid = client.subscribe(make_subscription()).get_json()["id"]
    Sub = webpush.models.Subscription
    with app.app_context():
        webpush.db.session.execute(sa.update(Sub).where(Sub.id == sid).values(
            revoked_at=datetime.now(UTC), revoked_reason="gone"))
        webpush.db.session.commit()
    assert client.post_json(WITHDRAW, {}).get_json() == {"withdrawn": True,
                                                         "devices_revoked": 0}
    assert ledger(app, webpush) == [("granted", None), ("withdrawn", "user")]


def test_two_withdrawals_at_the_same_time_write_one_row_and_one_signal(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A double click that reaches the server twice: the second waits for the first."""
    ids = [client.subscribe(make_subscription()).get_json()["id"] for _ in range(2)]
    real_ledger = SubscriptionStore._ledger

    def slow_ledger(self: SubscriptionStore, *args: Any, **kw: Any) -> None:
        time.sleep(0.5)  # hold the first withdrawal's transaction open while the other comes
        real_ledger(self, *args, **kw)

    monkeypatch.setattr(SubscriptionStore, "_ledger", slow_ledger)
    clients = [client, LoggedInClient(app, "1")]
    start = threading.Barrier(2)
    answers: list[Any] = [None, None]

    def withdraw(i: int) -> None:
        start.wait()
        answers[i] = clients[i].post_json(WITHDRAW, {}).get_json()

    seen: list[str] = []
    with signals.consent_withdrawn.connected_to(
            lambda sender, **kw: seen.append(kw["user_id"]), app):
        threads = [threading.Thread(target=withdraw, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(a["withdrawn"] for a in answers) == [False, True], answers
    assert sorted(a["devices_revoked"] for a in answers) == [0, len(ids)]
    assert ledger(app, webpush) == [("granted", None)] * 2 + [("withdrawn", "user")]
    assert seen == ["1"]


# -- 1b. withdrawal offered only with consent to withdraw -------------------------------------


def withdraw_button(html: str) -> str:
    start = html.index("<button type=\"button\" data-webpush-withdraw")
    return html[start:html.index(">", start) + 1]


def test_the_widget_hides_withdrawal_until_the_customer_has_a_device(
        app: Flask, client: LoggedInClient) -> None:
    assert " hidden" in withdraw_button(client.http.get("/widget").get_data(as_text=True))
    client.subscribe(make_subscription())
    assert " hidden" not in withdraw_button(client.http.get("/widget").get_data(as_text=True))


def test_the_devices_page_offers_withdrawal_only_with_a_device(
        app: Flask, client: LoggedInClient) -> None:
    assert "webpush-withdraw" not in client.http.get(DEVICES).get_data(as_text=True)
    sid = client.subscribe(make_subscription()).get_json()["id"]
    assert 'class="webpush-withdraw"' in client.http.get(DEVICES).get_data(as_text=True)
    client.http.post(f"{DEVICES}/{sid}/revoke", data={"csrf_token": client.csrf})
    assert "webpush-withdraw" not in client.http.get(DEVICES).get_data(as_text=True)


# -- 2 and 3. flask webpush send ---------------------------------------------------------------


@pytest.fixture
def cli(make_app: Callable[..., Any]) -> Iterator[tuple[Flask, WebPush, Any]]:
    app, _db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                 WEBPUSH_QUEUE=f"webpush-first-{uuid.uuid4().hex[:8]}")
    yield app, webpush, app.test_cli_runner()
    empty_queue(app)


def send(runner: Any, *args: str) -> Any:
    result = runner.invoke(args=["webpush", "send", "--title", "Sale", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.output, repr(result.exception))
    return result


def stored(app: Flask, webpush: WebPush) -> list[Any]:
    N = webpush.models.Notification
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(sa.select(N.id, N.ttl))]


@pytest.mark.parametrize("when", [
    datetime.now(UTC) - timedelta(minutes=5), datetime(2020, 1, 1, 9, tzinfo=UTC),
    datetime.now(UTC) - timedelta(seconds=1),
])
def test_send_refuses_a_send_at_in_the_past_with_exit_code_2(
        cli: tuple[Flask, WebPush, Any], when: datetime) -> None:
    app, webpush, runner = cli
    result = send(runner, "--user", "1", "--send-at", when.isoformat())
    assert result.exit_code == 2, result.output
    assert "--send-at" in result.output and "is in the past" in result.output
    assert "leave --send-at out to send now" in result.output
    assert stored(app, webpush) == []


def test_send_takes_a_send_at_in_the_future(cli: tuple[Flask, WebPush, Any]) -> None:
    app, webpush, runner = cli
    later = (datetime.now(UTC) + timedelta(hours=2)).astimezone(
        datetime.now().astimezone().tzinfo)
    result = send(runner, "--user", "1", "--send-at", later.isoformat())
    assert result.exit_code == 0, result.output
    assert "scheduled" in result.output and len(stored(app, webpush)) == 1


def test_send_names_the_users_without_devices_and_those_never_subscribed(
        cli: tuple[Flask, WebPush, Any]) -> None:
    app, webpush, runner = cli
    LoggedInClient(app, "1").subscribe(make_subscription())
    gone = LoggedInClient(app, "2")
    gone.delete(f"/webpush/subscriptions/{gone.subscribe(make_subscription()).get_json()['id']}")
    result = send(runner, "--user", "1", "--user", "2", "--user", "3", "--user", 'x, "y"')
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Notification ") and lines[0].endswith("for 4 user(s).")
    assert lines[1] == '3 user(s) without devices: ["2", "3", "x, \\"y\\""]'
    assert lines[2] == ('2 of them with no subscription at all (unknown to web push): '
                        '["3", "x, \\"y\\""]')


def test_send_with_ttl_0_warns_on_stderr_and_still_sends(
        cli: tuple[Flask, WebPush, Any]) -> None:
    app, webpush, runner = cli
    result = send(runner, "--user", "1", "--ttl", "0")
    assert result.exit_code == 0, result.output
    assert "Warning: --ttl 0" in result.stderr and "offline" in result.stderr
    assert "Warning" not in result.stdout
    assert [ttl for _id, ttl in stored(app, webpush)] == [0]
    quiet = send(runner, "--user", "1", "--ttl", "60")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_notify_users_with_ttl_0_logs_a_warning(
        cli: tuple[Flask, WebPush, Any], caplog: pytest.LogCaptureFixture) -> None:
    app, webpush, _runner = cli
    with app.app_context(), caplog.at_level(logging.WARNING, "flask_webpush_targeted"):
        webpush.notify_users(["1"], title="Now or never", ttl=0)
        webpush.notify_users(["1"], title="Today", ttl=timedelta(hours=1))
    warnings = [r for r in caplog.records if r.name == "flask_webpush_targeted"
                and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ttl" in warnings[0].getMessage()
    assert "offline" in warnings[0].getMessage()


# -- 3. the example back-office ---------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "warned"), [("0", True), ("60", False)])
def test_backoffice_warns_on_the_notification_page_after_a_send_valid_for_0_seconds(
        shop: Flask, seconds: str, warned: bool) -> None:  # noqa: F811
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["bob@example.com"]],
                               "ttl": "custom", "ttl_custom": seconds}
    response = admin.post("/admin/send", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)
    [n] = notifications(shop)
    assert n.ttl == int(seconds)
    html = admin.get(response.location).get_data(as_text=True)
    assert ('data-warning="ttl-zero"' in html) is warned
    if warned:
        assert "offline at the moment it is sent never gets it" in html


# -- 1. the widget in a real Firefox --------------------------------------------------------

FIRST_HOUR = ("first-hour@example.com", "first-hour-pass")
#: counts the page's requests to the withdrawal URL (window.fetch wrapped)
COUNT_WITHDRAW_REQUESTS = """
window.__withdrawRequests = 0;
const realFetch = window.fetch;
window.fetch = function (url, options) {
  if (String(url).includes('/consent/withdraw')) window.__withdrawRequests += 1;
  return realFetch.apply(window, arguments);
};
"""


def new_customer(live_shop: Any) -> str:
    """A customer of the live shop whom no other test uses: never opted in."""
    from example_app import db
    from example_app.models import Customer, _hash

    with live_shop.app.app_context():
        found = db.session.scalar(sa.select(Customer).where(Customer.email == FIRST_HOUR[0]))
        if found is None:
            found = Customer(email=FIRST_HOUR[0], name="First Hour",
                             password_hash=_hash(FIRST_HOUR[1]), is_admin=False)
            db.session.add(found)
            db.session.commit()
        return str(found.id)


@pytest.mark.browser
def test_firefox_widget_offers_withdrawal_only_after_opt_in_and_a_double_click_sends_one(
        firefox: Any, live_shop: Any, push_service: Any) -> None:
    from browser import firefox_log_in, firefox_opt_in, widget_state
    from marionette_driver.by import By

    customer = new_customer(live_shop)
    firefox_log_in(firefox, live_shop, *FIRST_HOUR)
    page = firefox.client
    assert widget_state(firefox, "off")["state"] == "off"

    def button() -> Any:
        return page.find_element(By.CSS_SELECTOR, "[data-webpush-withdraw]")

    assert not button().is_displayed(), "withdrawal offered to a customer who never consented"

    firefox_opt_in(firefox)
    assert button().is_displayed()

    # Two clicks in the same instant: the second finds the button busy and sends nothing.
    # sandbox=None: in the page's own scope, where the widget's script calls fetch
    page.execute_script(COUNT_WITHDRAW_REQUESTS, sandbox=None)
    page.execute_script("const b = document.querySelector('[data-webpush-withdraw]');"
                        "b.click(); b.click();", sandbox=None)
    result = widget_state(firefox, "off", "error")
    assert result["state"] == "off", result["status"]
    assert "Your consent is withdrawn" in result["status"]
    assert not button().is_displayed()
    time.sleep(0.5)  # a second request, had one been sent, has landed by now
    assert page.execute_script("return window.__withdrawRequests;", sandbox=None) == 1
    webpush = live_shop.app.extensions["webpush"]
    assert ledger(live_shop.app, webpush, customer) == [("granted", None),
                                                        ("withdrawn", "user")]
    firefox.navigate(live_shop.url + "/account")
    assert widget_state(firefox, "off")["state"] == "off"
    assert not button().is_displayed()
