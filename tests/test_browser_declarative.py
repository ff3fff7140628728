"""The service worker reads a Declarative Web Push message in real Firefox and Chromium.

Firefox: the whole path (subscribe, encrypted push through the local push service's
WebSocket, decryption, the worker's push handler, the displayed beacon). Chromium cannot
subscribe offline, so the same service worker gets the decrypted declarative message
through the DevTools protocol. Neither browser lets a test click a system notification
headless: each follows the URL the notification opens when clicked (its ``navigate``, the
click route the worker opens too), which counts the click and lands on the page.
"""

from __future__ import annotations

from typing import Any

import pytest
from browser import customer_id, firefox_log_in, firefox_opt_in, wait_until
from test_browser_tracking import _deliveries, _Minter, devtools_push, run_jobs

from flask_webpush_targeted.tracking import read_token

pytestmark = pytest.mark.browser

SHOWN = """
const done = arguments[arguments.length - 1];
navigator.serviceWorker.getRegistration(arguments[0])
  .then((r) => r ? r.getNotifications() : [])
  .then((list) => done(list.map((n) => ({title: n.title, body: n.body, tag: n.tag,
    url: n.data && n.data.url, navigate: n.data && n.data.navigate,
    declarative: !!(n.data && n.data.declarative)}))))
  .catch((e) => done(String(e)));
"""


def _figures(shop: Any, nid: int) -> tuple[int, int, int]:
    webpush = shop.app.extensions["webpush"]
    with shop.app.app_context():
        stats = webpush.stats(nid)
    return stats["sent"], stats["displayed"], stats["clicked"]


def test_firefox_shows_a_declarative_push_and_its_click_lands_on_the_page(
    firefox: Any, live_shop: Any, push_service: Any,
) -> None:
    firefox_log_in(firefox, live_shop, "bob@example.com", "bob-pass")
    firefox_opt_in(firefox)
    bob = customer_id(live_shop, "bob@example.com")
    webpush = live_shop.app.extensions["webpush"]
    assert live_shop.app.config["WEBPUSH_PAYLOAD_FORMAT"] == "declarative"
    with live_shop.app.app_context():
        nid = webpush.notify_user(bob, title="Declared: your parcel", body="Tomorrow 9-12.",
                                  url="/products/2", tag="declared-parcel").id
    run_jobs(live_shop)
    [delivery] = _deliveries(live_shop, nid)
    # The message went to Firefox encrypted, through the push service's WebSocket: what
    # the worker read of it shows in the notification it made.
    wait_until(lambda: _figures(live_shop, nid)[1], "no displayed beacon from Firefox")
    [shown] = [n for n in firefox.execute_async_script(SHOWN, ["/webpush/"], timeout=10)
               if n["tag"] == "declared-parcel"]
    navigate = shown.pop("navigate")
    assert shown == {"title": "Declared: your parcel", "body": "Tomorrow 9-12.",
                     "tag": "declared-parcel", "url": "/products/2", "declarative": True}
    prefix = f"{live_shop.url}/webpush/c/"
    assert navigate.startswith(prefix)
    with live_shop.app.app_context():
        assert read_token(navigate[len(prefix):]) == delivery.id
    firefox.navigate(navigate)
    wait_until(lambda: firefox.execute_script("return location.href") == (
        live_shop.url + "/products/2"), "the click route did not land on the page")
    assert _figures(live_shop, nid) == (1, 1, 1)
    assert delivery.user_id == bob


def test_chromium_shows_a_declarative_push_and_its_click_lands_on_the_page(
    chromium: Any, live_shop: Any, push_service: Any,
) -> None:
    from conftest import SendingHost

    carol = customer_id(live_shop, "carol@example.com")
    webpush = live_shop.app.extensions["webpush"]
    minted = SendingHost.subscribe(_Minter(live_shop, push_service), carol, "Chromium (test)")
    try:
        _chromium_declarative(chromium, live_shop, push_service, carol)
    finally:  # the live shop is shared: carol keeps the devices she had
        with live_shop.app.app_context():
            webpush.store.revoke(carol, minted.id)


def _chromium_declarative(chromium: Any, live_shop: Any, push_service: Any, carol: str) -> None:
    webpush = live_shop.app.extensions["webpush"]
    with live_shop.app.app_context():
        nid = webpush.notify_user(carol, title="Declared: gate change", body="Now gate 14.",
                                  url="/products/3", tag="declared-gate").id
    run_jobs(live_shop)
    received = [r for r in push_service.received
                if r.payload and r.notification().get("tag") == "declared-gate"][-1]
    navigate = received.json()["notification"]["navigate"]

    page = devtools_push(chromium, live_shop, "carol@example.com", "carol-pass",
                         received.payload.decode())

    def displayed() -> int:
        page.wait_for_timeout(50)
        return _figures(live_shop, nid)[1]

    wait_until(displayed, "Chromium's service worker did not report displayed")
    shown = page.evaluate("navigator.serviceWorker.getRegistration('/webpush/')"
                          ".then(r => r.getNotifications()).then(l => l.map(n => ({"
                          "title: n.title, url: n.data.url, declarative: n.data.declarative})))")
    assert {"title": "Declared: gate change", "url": "/products/3", "declarative": True} in shown
    page.goto(navigate)
    assert page.url == live_shop.url + "/products/3"
    assert _figures(live_shop, nid) == (1, 1, 1)
