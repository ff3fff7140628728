"""A real Firefox opts in on the example shop: consent, permission, subscription stored.

Firefox subscribes through the project's local push service (its push client
talks to it over WebSocket), so the whole opt-in runs offline for real.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from browser import customer_id, firefox_log_in, widget_state
from marionette_driver.by import By

pytestmark = pytest.mark.browser

def test_customer_opts_in_in_firefox_and_the_subscription_is_stored_for_them(
    firefox: Any, live_shop: Any, push_service: Any
) -> None:
    firefox_log_in(firefox, live_shop, "alice@example.com", "alice-pass")
    page = firefox.client
    assert live_shop.app.config["WEBPUSH_CONSENT_TEXT"]["en"] in page.find_element(
        By.CSS_SELECTOR, "[data-webpush-consent-text]").text
    assert widget_state(firefox, "off")["state"] == "off"

    enable = page.find_element(By.CSS_SELECTOR, "[data-webpush-enable]")
    page.find_element(By.CSS_SELECTOR, "[data-webpush-consent=notifications]").click()
    assert not enable.is_enabled(), "one consent must not be enough to turn notifications on"
    page.find_element(By.CSS_SELECTOR, "[data-webpush-consent=link_to_account]").click()
    assert enable.is_enabled()
    enable.click()
    result = widget_state(firefox, "on", "error", "denied", "unsupported")
    assert result["state"] == "on", result["status"]

    webpush = live_shop.app.extensions["webpush"]
    m = webpush.models
    with live_shop.app.app_context():
        alice = customer_id(live_shop, "alice@example.com")
        subs = webpush.db.session.scalars(
            sa.select(m.Subscription).where(m.Subscription.user_id == alice)).all()
        assert len(subs) == 1
        assert subs[0].endpoint.startswith(push_service.origin + "/push/")
        assert subs[0].label and subs[0].label.startswith("Firefox")
        assert push_service.subscription(subs[0].endpoint).is_browser
        ledger = webpush.db.session.scalars(
            sa.select(m.Consent).where(m.Consent.user_id == alice)).all()
        assert [(c.user_id, c.action, c.text_version, c.notifications, c.link_to_account)
                for c in ledger] == [(alice, "granted", "1", True, True)]

    # Reloading the page recognises this browser as already on.
    firefox.navigate(live_shop.url + "/account")
    assert widget_state(firefox, "on", "off")["state"] == "on"

    # Withdrawing from the widget revokes the device and unsubscribes the browser.
    page.find_element(By.CSS_SELECTOR, "[data-webpush-withdraw]").click()
    assert widget_state(firefox, "off", "error")["state"] == "off"
    with live_shop.app.app_context():
        sub = webpush.db.session.scalars(
            sa.select(m.Subscription).where(m.Subscription.user_id == alice)).one()
        assert sub.revoked_at is not None and sub.revoked_reason == "consent_withdrawn"
        actions = webpush.db.session.scalars(
            sa.select(m.Consent.action).where(m.Consent.user_id == alice)
            .order_by(m.Consent.id)).all()
        assert actions == ["granted", "withdrawn"]
