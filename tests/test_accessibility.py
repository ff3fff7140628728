"""Accessibility in real headless Chromium: axe-core (bundled by axe-playwright-python) over
the opt-in widget, the devices page and the admin pages of the live example shop, and the
opt-in done with the keyboard alone. A serious or critical axe violation fails the test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from browser import output_dir

pytestmark = pytest.mark.browser

#: axe impacts that fail a page; "minor" and "moderate" ones are reported by axe only
FAILING_IMPACTS = ("serious", "critical")
#: how many Tab presses may pass before the widget's first consent box has focus
MAX_TABS = 40
#: customers of the live shop whom no other test uses: one with a device, one never opted in
WITH_DEVICE = ("a11y-device@example.com", "a11y-device-pass", "Ada Device")
KEYBOARD = ("a11y-keyboard@example.com", "a11y-keyboard-pass", "Kim Keyboard")
ADMIN = ("admin@example.com", "admin-pass")

#: the focused element: what it is, and whether Chromium draws a focus indicator on it
FOCUSED = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return {
    tag: el.tagName.toLowerCase(), type: el.type || '', text: el.textContent.trim(),
    consent: el.dataset.webpushConsent || '', category: el.dataset.webpushCategory || '',
    enable: el.hasAttribute('data-webpush-enable'), checked: !!el.checked,
    visible: el.matches(':focus-visible') &&
      (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0
       || style.boxShadow !== 'none'),
  };
}"""
#: every data-state the widget takes from now on, in order
RECORD_STATES = """() => {
  const root = document.querySelector('[data-webpush-optin]');
  window.__states = [];
  new MutationObserver(() => window.__states.push(root.dataset.state))
    .observe(root, {attributes: true, attributeFilter: ['data-state']});
}"""


def shop_customer(shop: Any, email: str, password: str, name: str) -> str:
    """The id of a customer of the live shop, added on first use."""
    from example_app import db
    from example_app.models import Customer, _hash

    with shop.app.app_context():
        found = db.session.scalar(sa.select(Customer).where(Customer.email == email))
        if found is None:
            found = Customer(email=email, name=name, password_hash=_hash(password),
                             is_admin=False)
            db.session.add(found)
            db.session.commit()
        return str(found.id)


def log_in(chromium: Any, shop: Any, email: str, password: str) -> Any:
    """A new page logged in to the example shop, on the account page."""
    page = chromium.new_page()
    page.goto(shop.url + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/account")
    return page


def serious_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, serious and critical ones only."""
    from axe_playwright_python.sync_playwright import Axe

    response = Axe().run(page).response
    assert response["testEngine"]["name"] == "axe-core", response.get("testEngine")
    return [v for v in response["violations"] if v["impact"] in FAILING_IMPACTS]


def described(violations: list[dict[str, Any]]) -> str:
    """Each violation's id, impact, help text and the selectors of the elements at fault."""
    return "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"])
        for v in violations)


def assert_accessible(page: Any) -> None:
    """Fail with axe-core's serious and critical violations on the page, if any."""
    violations = serious_violations(page)
    assert not violations, f"{page.url}:\n{described(violations)}"


@pytest.fixture(scope="module")
def with_device(live_shop: Any, push_service: Any) -> dict[str, Any]:
    """A customer with a device and a notification to it: the devices page has a row, the
    admin pages a notification with a delivery and a customer with a device."""
    from conftest import SendingHost

    user = shop_customer(live_shop, *WITH_DEVICE)
    webpush = live_shop.app.extensions["webpush"]
    minter = type("Minter", (), {"app": live_shop.app, "webpush": webpush, "db": webpush.db,
                                 "push_service": push_service})()
    SendingHost.subscribe(minter, user, "Chromium (accessibility test)")
    with live_shop.app.app_context():
        # With a recipient's vars: the notification page has its column of filled titles.
        nid = webpush.notify_users(recipients=[{"user": user, "vars": {"day": "Thursday"}}],
                                   title="Parcel on its way", body="Arrives {day}.",
                                   url="/").id
    return {"user": user, "nid": int(nid)}


@pytest.fixture(params=["shop layout", "package layout"])
def layout(request: pytest.FixtureRequest, live_shop: Any) -> Iterator[str]:
    """The pages inside the shop's base.html, then inside the package's own layout.html
    (what a host without WEBPUSH_BASE_TEMPLATE gets); the shop's setting is restored."""
    config = live_shop.app.config
    saved = config["WEBPUSH_BASE_TEMPLATE"]
    if request.param == "package layout":
        config["WEBPUSH_BASE_TEMPLATE"] = None
    yield str(request.param)
    config["WEBPUSH_BASE_TEMPLATE"] = saved


def test_account_page_with_the_opt_in_widget_has_no_serious_violation(
        chromium: Any, live_shop: Any) -> None:
    shop_customer(live_shop, *KEYBOARD)
    chromium.grant_permissions(["notifications"], origin=live_shop.url)
    page = log_in(chromium, live_shop, *KEYBOARD[:2])
    page.wait_for_selector("[data-webpush-optin][data-state=off]")
    assert page.locator("[data-webpush-category]").count() > 0  # the categories are checked too
    assert_accessible(page)
    page.close()


def test_devices_page_has_no_serious_violation(chromium: Any, live_shop: Any,
                                               with_device: dict[str, Any], layout: str) -> None:
    page = log_in(chromium, live_shop, *WITH_DEVICE[:2])
    page.goto(live_shop.url + "/webpush/devices")
    assert (page.locator("body.webpush-page").count() == 1) == (layout == "package layout")
    assert page.locator("[data-subscription-id]").count() == 1  # the table, not "no device"
    assert page.locator("[data-webpush-preferences]").count() == 1
    assert_accessible(page)
    page.close()


@pytest.mark.parametrize(("path", "shown"), [
    ("/webpush/admin/", "Parcel on its way"),  # redirected to the list of notifications
    ("/webpush/admin/notifications/{nid}", "Parcel on its way"),
    ("/webpush/admin/users/{user}", WITH_DEVICE[2]),
])
def test_admin_page_has_no_serious_violation(chromium: Any, live_shop: Any,
                                             with_device: dict[str, Any], path: str,
                                             shown: str, layout: str) -> None:
    page = log_in(chromium, live_shop, *ADMIN)
    url = path.format(**with_device)
    response = page.goto(live_shop.url + url)
    assert response.ok, (url, response.status)
    assert (page.locator("body.webpush-page").count() == 1) == (layout == "package layout")
    assert shown in page.inner_text("main")
    if "notifications/" in path:
        assert page.locator("th", has_text="Title").count() == 1  # each recipient's title
    shot = re.sub(r"[^a-z]+", "-", f"{path} {layout}").strip("-")
    page.screenshot(path=str(output_dir("accessibility") / f"{shot}.png"), full_page=True)
    assert_accessible(page)
    page.close()


def tab(page: Any) -> dict[str, Any]:
    """Press Tab; the element that has focus then."""
    page.keyboard.press("Tab")
    return page.evaluate(FOCUSED)  # type: ignore[no-any-return]


def test_the_widget_is_operated_with_the_keyboard_alone(chromium: Any, live_shop: Any) -> None:
    shop_customer(live_shop, *KEYBOARD)
    chromium.grant_permissions(["notifications"], origin=live_shop.url)
    page = log_in(chromium, live_shop, *KEYBOARD[:2])
    page.wait_for_selector("[data-webpush-optin][data-state=off]")
    # The page's own timeout, shortened: offline, Chromium's subscription never completes.
    page.evaluate("document.querySelector('[data-webpush-optin]').dataset.subscribeTimeout"
                  " = '1500'")
    page.evaluate(RECORD_STATES)

    # From the top of the page, Tab reaches the first consent box (the shop's header first).
    focused = tab(page)
    for _ in range(MAX_TABS):
        if focused["consent"]:
            break
        focused = tab(page)
    assert focused["consent"] == "notifications", focused
    assert focused["visible"], f"no visible focus on {focused}"
    page.keyboard.press("Space")
    assert page.is_checked("[data-webpush-consent=notifications]")
    assert page.is_disabled("[data-webpush-enable]")  # one consent is not enough

    focused = tab(page)
    assert focused["consent"] == "link_to_account", focused
    assert focused["visible"], f"no visible focus on {focused}"
    page.keyboard.press("Space")
    assert page.is_checked("[data-webpush-consent=link_to_account]")
    assert page.is_enabled("[data-webpush-enable]")

    # Then the optional categories, in the order shown, then the button.
    categories = page.eval_on_selector_all("[data-webpush-category]",
                                           "els => els.map(e => e.dataset.webpushCategory)")
    for name in categories:
        focused = tab(page)
        assert focused["category"] == name, (name, focused)
        assert focused["visible"], f"no visible focus on {focused}"
    focused = tab(page)
    assert focused["enable"] and focused["text"] == "Turn on notifications", focused
    assert focused["visible"], f"no visible focus on {focused}"

    page.keyboard.press("Enter")
    page.wait_for_selector("[data-webpush-optin][data-state=error]", timeout=15_000)
    states = page.evaluate("window.__states")
    assert states[0] == "working" and states[-1] == "error", states
    status = page.inner_text("[data-webpush-status]")
    assert "no answer from its push service in 1.5 seconds" in status, status
    # The error state, its colours included, is accessible too.
    assert_accessible(page)

    # Past the button (withdrawal is hidden: nothing to withdraw) comes the devices link.
    focused = tab(page)
    assert focused["tag"] == "a" and focused["text"] == "My devices", focused
    assert focused["visible"], f"no visible focus on {focused}"
    page.close()
