"""A real Firefox chooses categories: ticks one in the opt-in widget and opts in (the choice
and the browser's time zone are stored), changes another in the widget once notifications
are on (saved at once), then unticks the first on the devices page and saves.

The example shop runs with WEBPUSH_CATEGORIES set, on a real HTTP server; Firefox
subscribes through the project's local push service, offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from browser import customer_id, firefox_log_in, firefox_opt_in, wait_until, widget_state
from conftest import LiveServer, shop_environment
from flask import Flask
from marionette_driver.by import By

from flask_webpush_targeted.local_time import is_zone

pytestmark = pytest.mark.browser

CATEGORIES = {
    "orders": {"label": "Order updates", "description": "Your parcel's way to you.",
               "required": True},
    "marketing": {"label": "Offers and sales", "description": "A few a month, never at night."},
    "restock": {"label": "Back in stock", "description": "When a product you watch is back.",
                "default": True},
}


def shop_with_categories(env: dict[str, str]) -> Flask:
    """The example shop built from ``env`` with categories on, its tables and customers."""
    from example_app import create_app, db
    from example_app.models import seed

    with mock.patch.dict(os.environ, env):
        app = create_app({"WEBPUSH_CATEGORIES": CATEGORIES})
    with app.app_context():
        db.create_all()
        seed()
    return app


@pytest.fixture(scope="module")
def category_shop(push_service: Any, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[LiveServer]:
    """The example shop with categories, on a real HTTP server of its own."""
    env = shop_environment(tmp_path_factory.mktemp("category-shop"), push_service,
                           secret_key="category-shop")
    server = LiveServer(shop_with_categories(env))
    yield server
    server.stop()


def ledger(shop: LiveServer, user_id: str) -> list[tuple[Any, ...]]:
    """(action, scope, source) of the user's category rows, in order."""
    C = shop.app.extensions["webpush"].models.Consent
    with shop.app.app_context():
        return [tuple(r) for r in shop.app.extensions["webpush"].db.session.execute(
            sa.select(C.action, C.scope, C.source).where(
                C.user_id == user_id, C.scope.is_not(None)).order_by(C.id))]


def preferences(shop: LiveServer, user_id: str) -> dict[str, bool]:
    with shop.app.app_context():
        return shop.app.extensions["webpush"].preferences(user_id)  # type: ignore[no-any-return]


def test_firefox_ticks_a_category_at_opt_in_and_unticks_it_on_the_devices_page(
    firefox: Any, category_shop: LiveServer, push_service: Any,
) -> None:
    shop = category_shop
    firefox_log_in(firefox, shop, "alice@example.com", "alice-pass")
    page = firefox.client
    assert widget_state(firefox, "off")["state"] == "off"
    marketing = page.find_element(By.CSS_SELECTOR, "[data-webpush-category=marketing]")
    restock = page.find_element(By.CSS_SELECTOR, "[data-webpush-category=restock]")
    assert not marketing.is_selected() and restock.is_selected()
    assert page.find_elements(By.CSS_SELECTOR, "[data-webpush-category=orders]") == []
    assert "Order updates" in page.find_element(
        By.CSS_SELECTOR, "[data-webpush-required]").text

    marketing.click()
    firefox_opt_in(firefox)
    alice = customer_id(shop, "alice@example.com")
    assert preferences(shop, alice) == {"orders": True, "marketing": True, "restock": True}
    assert ledger(shop, alice) == [("granted", "category:marketing", "widget")]
    zone = firefox.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone")
    webpush = shop.app.extensions["webpush"]
    with shop.app.app_context():
        [sub] = webpush.store.user_subscriptions(alice)
        assert sub.endpoint.startswith(push_service.origin + "/push/")
        assert isinstance(sub.timezone, str) and sub.timezone
        assert is_zone(sub.timezone) and sub.timezone == zone

    # With notifications on, a box changed in the widget is saved at once.
    firefox.navigate(shop.url + "/account")
    assert widget_state(firefox, "on", "off")["state"] == "on"
    page.find_element(By.CSS_SELECTOR, "[data-webpush-category=restock]").click()
    wait_until(lambda: "saved" in firefox.execute_script(
        "return document.querySelector('[data-webpush-status]').textContent"),
        "the widget did not save the changed box")
    assert preferences(shop, alice) == {"orders": True, "marketing": True, "restock": False}
    assert ledger(shop, alice)[-1] == ("withdrawn", "category:restock", "widget")

    firefox.navigate(shop.url + "/webpush/devices")
    switch = page.find_element(By.CSS_SELECTOR, "form[data-webpush-preferences] "
                                                "[data-webpush-category=marketing]")
    required = page.find_element(By.CSS_SELECTOR, "form[data-webpush-preferences] "
                                                  "[data-webpush-category=orders]")
    assert switch.is_selected() and required.is_selected() and not required.is_enabled()
    assert not page.find_element(By.CSS_SELECTOR, "[data-webpush-category=restock]"
                                 ).is_selected()
    switch.click()
    assert not switch.is_selected()
    page.find_element(By.CSS_SELECTOR, "form[data-webpush-preferences] button[type=submit]"
                      ).click()
    wait_until(lambda: "done=saved" in page.get_url(), "the form did not come back saved")
    assert "Your choices are saved." in page.find_element(
        By.CSS_SELECTOR, ".webpush-message").text
    assert not page.find_element(By.CSS_SELECTOR, "[data-webpush-category=marketing]"
                                 ).is_selected()
    assert preferences(shop, alice) == {"orders": True, "marketing": False, "restock": False}
    assert ledger(shop, alice) == [("granted", "category:marketing", "widget"),
                                   ("withdrawn", "category:restock", "widget"),
                                   ("withdrawn", "category:marketing", "devices_page")]
