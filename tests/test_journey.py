"""The whole journey in real browsers, offline: opt-in on two devices, a targeted send from the
back-office, a short-lived send while one device is offline, consent withdrawn, a forged push.

Everything is real and runs on loopback: the example shop on a werkzeug server (its own SQLite
file and its own RQ queue), a ``flask webpush worker`` process started with the shop's
configuration in its environment, the local push service (HTTP for the worker, the Mozilla
Push WebSocket for the browsers), two headless Firefox profiles of the same customer (two
devices) and the administrator in headless Chromium. The steps are this module's tests, run
in file order; they share the state of one journey, so a failed step fails the ones after it.

Chromium's own service-worker check (a push delivered through DevTools, shown and counted)
lives in test_browser_tracking.py.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from browser import CHROMIUM_ARGS, firefox_log_in, output_dir, wait_until, widget_state
from conftest import (
    REDIS_URL,
    VAPID_PRIVATE,
    LiveServer,
    ShopWorker,
    empty_queue,
    make_example_shop,
    shop_environment,
)
from marionette_driver.by import By

from flask_webpush_targeted.testing.push_service import ACK_DECRYPTION_FAILED, ACK_DELIVERED

pytestmark = pytest.mark.browser

ALICE = ("alice@example.com", "alice-pass")
ADMIN = ("admin@example.com", "admin-pass")
SCOPE = "/webpush/"  # the extension's service worker scope


@dataclass
class Device:
    """One of the customer's browsers: a Firefox profile, and what the journey learns of it."""

    name: str
    firefox: Any
    subscription_id: int | None = None
    endpoint: str = ""
    uaid: str = ""

    def titles(self, shop: LiveServer) -> list[str]:
        """The titles of the notifications its service worker shows now."""
        if not self.firefox.client.get_url().startswith(shop.url):
            self.firefox.navigate(shop.url + "/")
        return [n["title"] for n in self.firefox.notifications(SCOPE)]


@dataclass
class Journey:
    shop: LiveServer
    worker: ShopWorker
    push_service: Any
    first: Device
    second: Device
    admin: Any  # a Playwright page in Chromium, logged in as the administrator
    done: set[int] = field(default_factory=set)  # the steps that passed
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> Any:
        return self.shop.app

    @property
    def webpush(self) -> Any:
        return self.shop.app.extensions["webpush"]

    def after(self, step: int) -> None:
        """Fail at once when an earlier step did not pass: this one builds on it."""
        missing = [s for s in range(1, step) if s not in self.done]
        if missing:
            pytest.fail(f"step {missing[0]} did not pass; this step builds on it", pytrace=False)

    # -- what the database says ------------------------------------------------------------

    def customer(self, email: str) -> str:
        from example_app.models import Customer

        with self.app.app_context():
            return str(self.webpush.db.session.scalar(
                sa.select(Customer.id).where(Customer.email == email)))

    def subscriptions(self, user_id: str) -> list[Any]:
        Sub = self.webpush.models.Subscription
        with self.app.app_context():
            rows = self.webpush.db.session.scalars(
                sa.select(Sub).where(Sub.user_id == user_id).order_by(Sub.id)).all()
            for row in rows:
                self.webpush.db.session.expunge(row)
            return list(rows)

    def consents(self, user_id: str) -> list[str]:
        C = self.webpush.models.Consent
        with self.app.app_context():
            return list(self.webpush.db.session.scalars(
                sa.select(C.action).where(C.user_id == user_id).order_by(C.id)).all())

    def deliveries(self, notification_id: int) -> dict[int, Any]:
        """The notification's deliveries by subscription id."""
        D = self.webpush.models.Delivery
        with self.app.app_context():
            rows = self.webpush.db.session.scalars(
                sa.select(D).where(D.notification_id == notification_id)).all()
            for row in rows:
                self.webpush.db.session.expunge(row)
            return {row.subscription_id: row for row in rows}

    def displayed_count(self) -> int:
        D = self.webpush.models.Delivery
        with self.app.app_context():
            return int(self.webpush.db.session.scalar(
                sa.select(sa.func.count()).where(D.displayed_at.is_not(None))) or 0)

    def stats(self, notification_id: int) -> dict[str, Any]:
        with self.app.app_context():
            return dict(self.webpush.stats(notification_id))

    def status(self, notification_id: int) -> str:
        with self.app.app_context():
            n = self.webpush.db.session.get(self.webpush.models.Notification, notification_id)
            return str(n.status)

    def describe(self, notification_id: int) -> str:
        """The deliveries' states, for failure messages."""
        return "; ".join(
            f"delivery {d.id} (device {sid}): {d.status} {d.status_code or ''} {d.reason or ''}"
            f" displayed_at={d.displayed_at}"
            for sid, d in sorted(self.deliveries(notification_id).items())) or "no deliveries"

    def notify(self, user_id: str, **kwargs: Any) -> int:
        with self.app.app_context():
            return int(self.webpush.notify_user(user_id, **kwargs).id)


# -- fixtures: one journey per module ----------------------------------------------------------


@pytest.fixture(scope="module")
def journey_shop(push_service: Any, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """A fresh example shop for the journey: its own SQLite file and its own RQ queue."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis does not answer at {REDIS_URL}: {exc}", pytrace=False)
    env = shop_environment(tmp_path_factory.mktemp("journey"), push_service,
                           secret_key=secrets.token_urlsafe(24),
                           queue=f"journey-{uuid.uuid4().hex[:8]}")
    server = LiveServer(make_example_shop(env))
    yield server, env
    server.stop()
    empty_queue(server.app)


@pytest.fixture(scope="module")
def journey_worker(journey_shop: tuple[LiveServer, dict[str, str]],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopWorker]:
    """``flask --app example_app webpush worker`` in its own process, on the shop's config.

    ``--simple`` runs jobs in the worker process: about 0.05 s from the call to the push
    instead of about 0.45 s with a forked work horse per job, which leaves step 4's
    1-second validity a safe margin on a busy 2-core CI machine.
    """
    log = tmp_path_factory.mktemp("journey-worker") / "worker.log"
    worker = ShopWorker(journey_shop[1], log, "--simple")
    yield worker
    worker.stop()


def _start_firefox(push_service: Any) -> Any:
    from flask_webpush_targeted.testing import FirefoxSession

    return FirefoxSession(push_service.websocket_url)


@pytest.fixture(scope="module")
def journey(journey_shop: tuple[LiveServer, dict[str, str]], journey_worker: ShopWorker,
            push_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    """Two Firefox profiles (the customer's two devices) and Chromium (the administrator),
    started side by side while the worker process starts."""
    from playwright.sync_api import sync_playwright

    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(_start_firefox, push_service) for _ in range(2)]
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    str(tmp_path_factory.mktemp("journey-chromium")),
                    executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS,
                    viewport={"width": 1000, "height": 900})
                try:
                    first, second = (future.result() for future in starting)
                    journey_worker.wait_ready()
                    yield Journey(journey_shop[0], journey_worker, push_service,
                                  Device("first", first), Device("second", second),
                                  context.new_page())
                finally:
                    context.close()
        finally:
            for future in starting:
                if future.exception() is None:
                    future.result().quit()


# -- the steps ---------------------------------------------------------------------------------


def opt_in(journey: Journey, device: Device) -> None:
    """Log in, read the consent text, tick both consents, enable; the widget says on."""
    shop, firefox = journey.shop, device.firefox
    firefox_log_in(firefox, shop, *ALICE)
    page = firefox.client
    consent_text = page.find_element(By.CSS_SELECTOR, "[data-webpush-consent-text]").text
    assert shop.app.config["WEBPUSH_CONSENT_TEXT"]["en"] in consent_text
    assert widget_state(firefox, "off", "on")["state"] == "off"
    enable = page.find_element(By.CSS_SELECTOR, "[data-webpush-enable]")
    assert not enable.is_enabled(), "enable must wait for both consents"
    for scope in ("notifications", "link_to_account"):
        page.find_element(By.CSS_SELECTOR, f"[data-webpush-consent={scope}]").click()
    assert enable.is_enabled()
    enable.click()
    result = widget_state(firefox, "on", "error", "denied", "unsupported")
    assert result["state"] == "on", result["status"]
    assert firefox.execute_script("return Notification.permission") == "granted"


def remember(journey: Journey, device: Device, subscription: Any) -> None:
    device.subscription_id, device.endpoint = subscription.id, subscription.endpoint
    channel = journey.push_service.subscription(subscription.endpoint)
    assert channel.is_browser, "the stored endpoint must be a channel the browser registered"
    device.uaid = str(channel.uaid)


def test_step1_the_customer_opts_in_on_the_account_page(journey: Journey) -> None:
    started = time.monotonic()
    opt_in(journey, journey.first)
    alice = journey.customer(ALICE[0])
    [sub] = journey.subscriptions(alice)
    assert sub.revoked_at is None and (sub.label or "").startswith("Firefox")
    assert sub.endpoint.startswith(journey.push_service.origin + "/push/")
    remember(journey, journey.first, sub)
    assert journey.consents(alice) == ["granted"]
    journey.notes["alice"] = alice
    journey.notes["timings"] = {"step1": time.monotonic() - started}
    journey.done.add(1)


def test_step2_the_same_customer_opts_in_on_a_second_device(journey: Journey) -> None:
    journey.after(2)
    started = time.monotonic()
    opt_in(journey, journey.second)
    alice = journey.notes["alice"]
    first, second = journey.subscriptions(alice)
    assert first.id == journey.first.subscription_id
    assert second.revoked_at is None and second.endpoint != first.endpoint
    remember(journey, journey.second, second)
    assert journey.first.uaid != journey.second.uaid, "two profiles, two push connections"
    assert {journey.first.uaid, journey.second.uaid} <= set(
        journey.push_service.connected_uaids())
    assert journey.consents(alice) == ["granted", "granted"]
    # Both devices are listed on the customer's devices page.
    firefox = journey.second.firefox
    firefox.navigate(journey.shop.url + "/webpush/devices")
    rows = firefox.client.find_elements(By.CSS_SELECTOR, "tr[data-subscription-id]")
    assert sorted(int(r.get_attribute("data-subscription-id")) for r in rows) == [
        first.id, second.id]
    journey.notes["timings"]["step2"] = time.monotonic() - started
    journey.done.add(2)


def admin_log_in(journey: Journey) -> None:
    page = journey.admin
    page.goto(journey.shop.url + "/login")
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("main form button[type=submit]")
    page.wait_for_url("**/account")


def figures(page: Any) -> dict[str, int]:
    """The package's stats page figures (``data-figure`` attributes)."""
    return {key: int(value) for key, value in page.eval_on_selector_all(
        "[data-figure]", "els => els.map(e => [e.dataset.figure, e.textContent.trim()])")
        if value.strip().isdigit()}


def test_step3_the_admin_sends_to_the_latest_device_only(journey: Journey) -> None:
    journey.after(3)
    started = time.monotonic()
    alice, page, shop = journey.notes["alice"], journey.admin, journey.shop
    title = "Your order has shipped"
    admin_log_in(journey)
    page.goto(shop.url + "/admin/send")
    page.check(f"input#user-{alice}")
    assert page.locator(f"input#user-{alice} >> xpath=ancestor::tr/td[4]").inner_text() == "2"
    page.check("input[name=devices][value=latest]")
    page.fill("input[name=title]", title)
    page.fill("textarea[name=body]", "Parcel 42 arrives tomorrow between 9 and 12.")
    page.fill("input[name=url]", "/products/1")
    page.click("#send-form button[type=submit]")
    page.wait_for_url("**/admin/notifications/*")
    nid = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    assert page.locator("[data-field=title]").inner_text() == title
    journey.notes["step3"] = nid

    # The worker fans out to the latest device only, sends; that browser shows and reports.
    second = journey.second

    def displayed() -> Any:
        # Both, in either order: the browser's beacon can come before the worker has
        # written the push service's answer down (the push reaches it first).
        rows = journey.deliveries(nid)
        row = rows.get(second.subscription_id)
        return (row is not None and row.displayed_at is not None and row.status == "sent"
                and rows)

    rows = wait_until(displayed, "the latest device never reported the notification displayed "
                      "and recorded sent", timeout=20)
    assert list(rows) == [second.subscription_id], "only the latest device is targeted"
    assert rows[second.subscription_id].status == "sent"
    assert rows[second.subscription_id].user_id == alice
    assert title in second.titles(shop)
    assert title not in journey.first.titles(shop)
    assert journey.push_service.received_for(journey.first.endpoint) == []
    [push] = journey.push_service.received_for(second.endpoint)
    assert [a.code for a in journey.push_service.acks
            if a.version == push.message_id] == [ACK_DELIVERED]

    # The figures: the shop's notification page, then the package's stats page.
    wait_until(lambda: journey.status(nid) == "done", "the notification never finished")
    page.goto(f"{shop.url}/admin/notifications/{nid}")
    assert page.locator("[data-stat=displayed] td").inner_text() == "1"
    assert page.locator("[data-stat=deliveries] td").inner_text() == "1"
    page.goto(f"{shop.url}/webpush/admin/notifications/{nid}")
    shown = figures(page)
    assert {k: shown.get(k) for k in ("targeted_users", "deliveries", "sent", "displayed")} == {
        "targeted_users": 1, "deliveries": 1, "sent": 1, "displayed": 1}
    page.screenshot(path=str(output_dir("journey") / "step3-stats.png"), full_page=True)
    stats = journey.stats(nid)
    assert (stats["deliveries"], stats["sent"], stats["displayed"]) == (1, 1, 1)
    journey.notes["timings"]["step3"] = time.monotonic() - started
    journey.done.add(3)


def test_step4_a_one_second_message_while_one_device_is_offline(journey: Journey) -> None:
    journey.after(4)
    started = time.monotonic()
    push_service, first, second = journey.push_service, journey.first, journey.second
    alice, shop = journey.notes["alice"], journey.shop
    title = "Flash sale: this second only"

    # The first device loses its push connection and cannot get it back for now.
    push_service.disconnect(first.uaid, refuse_reconnect=True)
    wait_until(lambda: first.uaid not in push_service.connected_uaids(),
               "the first device is still connected")
    nid = journey.notify(alice, title=title, body="Gone in a second.", devices="all", ttl=1)
    journey.notes["step4"] = nid
    sent_at = time.monotonic()

    def second_displayed() -> Any:
        row = journey.deliveries(nid).get(second.subscription_id)
        return row is not None and row.displayed_at is not None

    wait_until(second_displayed, "the online device never displayed the 1-second message",
               details=lambda: journey.describe(nid))
    assert title in second.titles(shop)
    wait_until(lambda: journey.status(nid) == "done", "the notification never finished")
    with shop.app.app_context():
        created = journey.webpush.db.session.get(journey.webpush.models.Notification,
                                                 nid).created_at
    online = journey.deliveries(nid)[second.subscription_id]
    journey.notes["step4 latency"] = {
        "sent": (online.sent_at - created).total_seconds(),
        "displayed": (online.displayed_at - created).total_seconds()}

    # Let the validity pass, then let the first device come back.
    time.sleep(max(0.0, sent_at + 1.5 - time.monotonic()))
    push_service.allow_reconnect(first.uaid)
    push_service.wait_for_connection(first.uaid, timeout=30)

    row = journey.deliveries(nid)[first.subscription_id]
    to_first = push_service.received_for(first.endpoint)
    journey.notes["step4 offline device"] = (row.status, [p.ttl for p in to_first])
    if row.status == "sent":  # accepted while the device was offline: the service dropped it
        [push] = to_first
        wait_until(lambda: any(d.message_id == push.message_id for d in push_service.dropped),
                   "the push service kept an expired message for the offline device")
        assert not [a for a in push_service.acks if a.version == push.message_id]
    else:  # the worker saw the validity had passed: never sent
        assert row.status == "expired" and to_first == []
    time.sleep(0.3)  # what the device would do with a message, it does within this
    assert title not in first.titles(shop)
    row = journey.deliveries(nid)[first.subscription_id]
    assert row.displayed_at is None
    stats = journey.stats(nid)
    assert (stats["deliveries"], stats["displayed"]) == (2, 1)
    journey.notes["timings"]["step4"] = time.monotonic() - started
    journey.done.add(4)


def test_step5_the_customer_withdraws_consent_and_a_new_send_reaches_nothing(
    journey: Journey,
) -> None:
    journey.after(5)
    started = time.monotonic()
    alice, shop, firefox = journey.notes["alice"], journey.shop, journey.first.firefox
    firefox.navigate(shop.url + "/webpush/devices")
    assert len(firefox.client.find_elements(By.CSS_SELECTOR, "tr[data-subscription-id]")) == 2
    firefox.client.find_element(By.CSS_SELECTOR, "form.webpush-withdraw button").click()
    wait_until(lambda: "done=withdrawn" in firefox.client.get_url(),
               "the devices page did not come back after withdrawing")
    assert "withdrawn" in firefox.client.find_element(
        By.CSS_SELECTOR, "[role=status]").text
    assert firefox.client.find_elements(By.CSS_SELECTOR, "tr[data-subscription-id]") == []
    subs = journey.subscriptions(alice)
    assert len(subs) == 2 and all(s.revoked_at is not None for s in subs)
    assert journey.consents(alice)[-1] == "withdrawn"

    requests_before = sum(journey.push_service.request_count(d.endpoint)
                          for d in (journey.first, journey.second))
    nid = journey.notify(alice, title="Nobody will see this", body="No device is linked.")
    wait_until(lambda: journey.status(nid) == "done", "the notification never finished")
    stats = journey.stats(nid)
    assert (stats["targeted_users"], stats["users_without_devices"], stats["deliveries"]) == (
        1, 1, 0)
    assert sum(journey.push_service.request_count(d.endpoint)
               for d in (journey.first, journey.second)) == requests_before
    # The administrator is told who was not reached.
    page = journey.admin
    page.goto(f"{shop.url}/admin/notifications/{nid}")
    assert "Alice" in page.locator("[data-field=without-devices]").inner_text()
    page.goto(f"{shop.url}/webpush/admin/notifications/{nid}")
    shown = figures(page)
    assert (shown["users_without_devices"], shown["deliveries"]) == (1, 0)
    journey.notes["timings"]["step5"] = time.monotonic() - started
    journey.done.add(5)


def test_step6_a_push_encrypted_for_other_keys_is_rejected_by_the_browser(
    journey: Journey,
) -> None:
    from pywebpush import webpush as pywebpush_send

    from flask_webpush_targeted.tracking import make_token, signing_key

    journey.after(6)
    started = time.monotonic()
    push_service, first, second, shop = (journey.push_service, journey.first, journey.second,
                                         journey.shop)
    assert not push_service.subscription(second.endpoint).gone  # Firefox still holds it
    # A real tracking token, for the delivery the offline device never displayed: had the
    # browser decrypted this push, its service worker would count that delivery displayed.
    target = journey.deliveries(journey.notes["step4"])[first.subscription_id]
    with shop.app.app_context():
        token = make_token(target.id, time.time() + 3600, signing_key())
    displayed_before = journey.displayed_count()

    def push(keys: dict[str, str], title: str) -> int:
        """POST a push for the second device's endpoint, encrypted for ``keys`` and signed
        with the shop's VAPID key (so the push service forwards it); the browser's ack code."""
        response = pywebpush_send(
            {"endpoint": second.endpoint, "keys": keys},
            json.dumps({"title": title, "body": "", "url": "/", "token": token}),
            vapid_private_key=VAPID_PRIVATE, vapid_claims={"sub": "mailto:journey@example.com"},
            ttl=60)
        assert response.status_code == 201, response.text
        message_id = response.headers["Location"].rsplit("/", 1)[-1]
        acks = wait_until(lambda: [a for a in push_service.acks if a.version == message_id],
                          f"the browser never acknowledged {title!r}")
        assert [a.uaid for a in acks] == [second.uaid]
        return int(acks[0].code)

    other = push_service.new_subscription()  # a key pair that is not the browser's
    assert push(other["keys"], "Encrypted for somebody else") == ACK_DECRYPTION_FAILED
    time.sleep(0.3)  # a beacon, had there been one, arrives well within this
    assert "Encrypted for somebody else" not in second.titles(shop)
    assert journey.displayed_count() == displayed_before
    assert journey.deliveries(journey.notes["step4"])[first.subscription_id].displayed_at is None

    # The control: the same push encrypted for the browser's own keys (as stored when it
    # subscribed) is decrypted, shown, and its token counted. So the token was good, and the
    # keys alone made the difference.
    [stored] = [s for s in journey.subscriptions(journey.notes["alice"])
                if s.id == second.subscription_id]
    assert push({"p256dh": stored.p256dh, "auth": stored.auth},
                "Encrypted for this browser") == ACK_DELIVERED
    wait_until(lambda: journey.displayed_count() == displayed_before + 1,
               "the control push was not counted displayed")
    assert "Encrypted for this browser" in second.titles(shop)
    journey.notes["timings"]["step6"] = time.monotonic() - started
    journey.done.add(6)
    print("journey step timings (s):", {k: round(v, 2)
                                          for k, v in journey.notes["timings"].items()},
          "step 4, offline device (status, TTLs):", journey.notes["step4 offline device"],
          "step 4, online device, seconds after the call:", journey.notes["step4 latency"])
