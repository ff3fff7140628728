"""The opt-in widget in real headless Chromium, which cannot reach its push service here:
``pushManager.subscribe`` never settles offline (docs/browser-testing.md). The widget gives
up after its timeout and says what happened and what to do, instead of "Subscribing this
browser…" forever; nothing is stored."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from browser import customer_id


def subscriptions_of(shop: Any, email: str) -> int:
    user = customer_id(shop, email)
    webpush = shop.app.extensions["webpush"]
    with shop.app.app_context():
        Sub = webpush.models.Subscription
        return int(webpush.db.session.scalar(sa.select(sa.func.count()).select_from(Sub)
                                             .where(Sub.user_id == user)))


def test_a_subscription_that_never_comes_ends_in_a_message_that_says_what_to_do(
        chromium: Any, live_shop: Any) -> None:
    before = subscriptions_of(live_shop, "bob@example.com")  # other tests' browsers too
    chromium.grant_permissions(["notifications"], origin=live_shop.url)
    page = chromium.new_page()
    page.goto(live_shop.url + "/login")
    page.fill("input[name=email]", "bob@example.com")
    page.fill("input[name=password]", "bob-pass")
    page.click("main form button[type=submit]")
    page.wait_for_url("**/account")
    page.wait_for_selector("[data-webpush-optin][data-state=off]")
    # The page's own timeout, shortened: the default is 20 seconds.
    page.evaluate("document.querySelector('[data-webpush-optin]').dataset.subscribeTimeout"
                  " = '1500'")
    page.check("[data-webpush-consent=notifications]")
    page.check("[data-webpush-consent=link_to_account]")
    page.click("[data-webpush-enable]")
    page.wait_for_selector("[data-webpush-optin][data-state=error]", timeout=15_000)
    status = page.inner_text("[data-webpush-status]")
    assert "no answer from its push service in 1.5 seconds" in status
    assert "connection to the internet" in status and "Nothing was saved" in status
    assert subscriptions_of(live_shop, "bob@example.com") == before
    page.close()
