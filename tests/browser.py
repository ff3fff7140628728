"""Helpers shared by the browser tests: driving the example shop in Firefox and Chromium."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

WAIT_FOR_STATE = """
const [wanted, done] = [arguments[0], arguments[arguments.length - 1]];
const root = document.querySelector('[data-webpush-optin]');
const started = Date.now();
(function poll() {
  const state = root.dataset.state;
  if (wanted.includes(state) || Date.now() - started > 15000) {
    done({state: state, status: root.querySelector('[data-webpush-status]').textContent});
  } else {
    setTimeout(poll, 50);
  }
})();
"""

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def output_dir(name: str) -> Path:
    """Where a browser test leaves screenshots: $WEBPUSH_TEST_OUTPUT or test-output/."""
    root = Path(os.environ.get("WEBPUSH_TEST_OUTPUT",
                               Path(__file__).resolve().parent.parent / "test-output"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def firefox_log_in(firefox: Any, shop: Any, email: str, password: str) -> None:
    """Log in to the example shop in Firefox and land on the account page."""
    from marionette_driver.by import By

    firefox.navigate(shop.url + "/login")
    firefox.client.find_element(By.CSS_SELECTOR, "input[name=email]").send_keys(email)
    firefox.client.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
    firefox.client.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    wait_until(lambda: "/account" in firefox.client.get_url(), "login did not reach the account")


def widget_state(firefox: Any, *wanted: str) -> dict[str, str]:
    """Wait until the opt-in widget reaches one of ``wanted`` states; return state and text."""
    return firefox.execute_async_script(WAIT_FOR_STATE, [list(wanted)],  # type: ignore[no-any-return]
                                        timeout=20)


def firefox_opt_in(firefox: Any) -> None:
    """On the account page: tick both consents, enable, and wait for the widget to say on."""
    from marionette_driver.by import By

    assert widget_state(firefox, "off", "on")["state"] in ("off", "on")
    for scope in ("notifications", "link_to_account"):
        box = firefox.client.find_element(By.CSS_SELECTOR, f"[data-webpush-consent={scope}]")
        if not box.is_selected():
            box.click()
    firefox.client.find_element(By.CSS_SELECTOR, "[data-webpush-enable]").click()
    result = widget_state(firefox, "on", "error", "denied", "unsupported")
    assert result["state"] == "on", result["status"]


def customer_id(shop: Any, email: str) -> str:
    """The example shop's id string of a customer."""
    from example_app import db
    from example_app.models import Customer

    with shop.app.app_context():
        return str(db.session.scalar(sa.select(Customer.id).where(Customer.email == email)))


def wait_until(check: Any, message: str, timeout: float = 15.0, *,
               details: Any = None) -> Any:
    """Poll ``check`` until it returns something true; fail with ``message`` after timeout
    (followed by what ``details()`` returns then, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message if details is None else f"{message}: {details()}")
        time.sleep(0.05)
