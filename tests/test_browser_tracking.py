"""Real service workers report what happened, and the figures reach stats() and the admin pages.

Firefox: the whole path for real (subscribe, encrypted push through the local push
service's WebSocket, decryption, showNotification, displayed beacon).
Chromium: cannot subscribe offline, so the same service worker gets a push through
the DevTools protocol (plaintext: this proves the worker's behaviour, not encryption),
and Chromium renders the admin pages for screenshots.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from browser import (
    customer_id,
    firefox_log_in,
    firefox_opt_in,
    output_dir,
    wait_until,
)

from flask_webpush_targeted.worker import make_worker

pytestmark = pytest.mark.browser

GET_NOTIFICATIONS = """
const done = arguments[arguments.length - 1];
navigator.serviceWorker.getRegistration(arguments[0])
  .then((r) => r ? r.getNotifications() : [])
  .then((list) => done(list.map(
    (n) => ({title: n.title, body: n.body, url: n.data && n.data.url}))))
  .catch((e) => done(String(e)));
"""


def run_jobs(shop: Any) -> None:
    """Work off the shop's queue with a real RQ worker in this process."""
    make_worker(shop.app, simple=True).work(burst=True)


def test_firefox_service_worker_shows_the_push_and_reports_displayed(
    firefox: Any, live_shop: Any, push_service: Any,
) -> None:
    firefox_log_in(firefox, live_shop, "bob@example.com", "bob-pass")
    firefox_opt_in(firefox)
    bob = customer_id(live_shop, "bob@example.com")
    webpush = live_shop.app.extensions["webpush"]
    with live_shop.app.app_context():
        nid = webpush.notify_user(bob, title="Your parcel is on its way",
                                  body="Delivery tomorrow 9-12.", url="/products/1").id
    run_jobs(live_shop)

    def displayed() -> Any:
        with live_shop.app.app_context():
            return webpush.stats(nid)["displayed"]

    wait_until(displayed, "the service worker's displayed beacon never arrived")
    shown = firefox.execute_async_script(GET_NOTIFICATIONS, ["/webpush/"], timeout=10)
    assert {"title": "Your parcel is on its way", "body": "Delivery tomorrow 9-12.",
            "url": "/products/1"} in shown
    with live_shop.app.app_context():
        stats = webpush.stats(nid)
    assert (stats["sent"], stats["displayed"], stats["clicked"]) == (1, 1, 0)
    assert push_service.acks and push_service.acks[-1].code == 100


def chromium_log_in(page: Any, shop: Any, email: str, password: str) -> None:
    page.goto(shop.url + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/account")


def test_chromium_service_worker_shows_a_devtools_push_and_reports_displayed(
    chromium: Any, live_shop: Any, push_service: Any,
) -> None:
    from conftest import SendingHost

    carol = customer_id(live_shop, "carol@example.com")
    webpush = live_shop.app.extensions["webpush"]
    # A real delivery for carol: a subscription minted by the push service, sent through it.
    SendingHost.subscribe(_Minter(live_shop, push_service), carol, "Chromium (test)")
    with live_shop.app.app_context():
        nid = webpush.notify_user(carol, title="Gate change", body="Now gate 14.", url="/").id
    run_jobs(live_shop)
    [delivery] = [d for d in _deliveries(live_shop, nid)]
    payload = [r for r in push_service.received if r.payload and r.notification().get("title")
               == "Gate change"][-1].payload.decode()

    page = devtools_push(chromium, live_shop, "carol@example.com", "carol-pass", payload)

    def displayed() -> Any:
        page.wait_for_timeout(50)
        with live_shop.app.app_context():
            return webpush.stats(nid)["displayed"]

    wait_until(displayed, "Chromium's service worker did not report displayed")
    titles = page.evaluate("navigator.serviceWorker.getRegistration('/webpush/')"
                           ".then(r => r.getNotifications()).then(l => l.map(n => n.title))")
    assert "Gate change" in titles
    assert delivery.user_id == carol


def devtools_push(chromium: Any, shop: Any, email: str, password: str, payload: str) -> Any:
    """Log the customer in to Chromium, wait for the shop's service worker, and hand it
    ``payload`` (decrypted plaintext) as a push through the DevTools protocol; the page."""
    chromium.grant_permissions(["notifications"], origin=shop.url)
    page = chromium.new_page()
    chromium_log_in(page, shop, email, password)
    page.wait_for_function("navigator.serviceWorker.getRegistration('/webpush/')"
                           ".then(r => !!(r && r.active))")
    cdp = chromium.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda event: registrations.extend(event["registrations"]))
    cdp.send("ServiceWorker.enable")
    # Playwright's sync client dispatches CDP events only while it waits on the browser.
    wait_until(lambda: page.wait_for_timeout(50) or [
        r for r in registrations if r["scopeURL"].endswith("/webpush/")],
        "no service worker registration reported by DevTools")
    registration = [r for r in registrations if r["scopeURL"].endswith("/webpush/")][0]
    cdp.send("ServiceWorker.deliverPushMessage", {
        "origin": shop.url + "/", "registrationId": registration["registrationId"],
        "data": payload})
    return page


def test_chromium_renders_the_admin_pages_and_refuses_a_customer(
    chromium: Any, live_shop: Any,
) -> None:
    webpush = live_shop.app.extensions["webpush"]
    with live_shop.app.app_context():
        nid = webpush.db.session.scalar(sa.select(sa.func.max(webpush.models.Notification.id)))
        if nid is None:
            nid = webpush.notify_users(["1"], title="A message for the screenshot").id
    shots = output_dir("admin-screenshots")

    customer = chromium.browser.new_context() if chromium.browser else None
    page = (customer or chromium).new_page()
    chromium_log_in(page, live_shop, "alice@example.com", "alice-pass")
    response = page.goto(live_shop.url + "/webpush/admin/notifications")
    assert response is not None and response.status == 403
    page.context.clear_cookies()

    page.goto(live_shop.url + "/login")
    chromium_log_in(page, live_shop, "admin@example.com", "admin-pass")
    response = page.goto(live_shop.url + "/webpush/admin/notifications")
    assert response is not None and response.status == 200
    assert page.locator(f"tr[data-notification-id='{nid}']").count() == 1
    page.screenshot(path=str(shots / "notifications.png"), full_page=True)
    response = page.goto(f"{live_shop.url}/webpush/admin/notifications/{nid}")
    assert response is not None and response.status == 200
    assert page.locator("svg.webpush-chart, .webpush-empty").count() >= 1
    page.screenshot(path=str(shots / "notification.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "notification-phone.png"), full_page=True)
    assert (shots / "notification.png").stat().st_size > 10_000
    page.close()


class _Minter:
    """Just what SendingHost.subscribe needs, for the live shop's app."""

    def __init__(self, shop: Any, push_service: Any) -> None:
        self.app = shop.app
        self.webpush = shop.app.extensions["webpush"]
        self.db = self.webpush.db
        self.push_service = push_service


def _deliveries(shop: Any, nid: int) -> list[Any]:
    webpush = shop.app.extensions["webpush"]
    D = webpush.models.Delivery
    with shop.app.app_context():
        rows = webpush.db.session.scalars(sa.select(D).where(D.notification_id == nid)).all()
        for row in rows:
            webpush.db.session.expunge(row)
        return list(rows)
