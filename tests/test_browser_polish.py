"""The package in Polish in real headless Chromium (its locale pl-PL: ``Accept-Language`` and
``navigator.language``): the opt-in widget and its script's texts, the devices page and the
admin pages show no English msgid, pass axe-core, and are left as screenshots in
test-output/polish/."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from browser import CHROMIUM_ARGS, output_dir
from conftest import LiveServer, SendingHost, admin_http
from flask import render_template_string
from test_accessibility import assert_accessible
from test_translations import CATEGORIES, ENGLISH_WORDS, english_pieces

pytestmark = pytest.mark.browser

#: the host's own page around the widget: a Polish shop's account page
ACCOUNT_PAGE = """<!doctype html>
<html lang="pl"><head><meta charset="utf-8"><title>Moje konto</title></head>
<body><main><h1>Moje konto</h1>{{ webpush_optin() }}</main></body></html>"""


@pytest.fixture(scope="module")
def shop(push_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Polish shop on a real HTTP server: a customer (user 1) with two devices, one of them
    removed, a notification sent to them by a real worker, and an administrator (user 9)."""
    folder = tmp_path_factory.mktemp("polish-shop")
    host = SendingHost(f"sqlite:///{folder / 'shop.db'}", push_service,
                       WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_DEFAULT_LANGUAGE="pl")
    host.app.add_url_rule("/konto", "konto", lambda: render_template_string(ACCOUNT_PAGE))
    admin_http(host)  # registers @stats_access: administrators only
    phone = host.subscribe("1", "Telefon Ani")
    old = host.subscribe("1", "Stary laptop")
    with host.app.app_context():
        models = host.webpush.models
        host.db.session.execute(sa.update(models.Subscription)
                                .where(models.Subscription.id == phone.id)
                                .values(language="pl-PL"))
        host.db.session.commit()
        host.webpush.store.revoke("1", old.id)
        # Written in Polish and German: the pages show the languages and each title.
        nid = host.webpush.notify_users(
            ["1"], title={"pl": "Paczka jest w drodze", "de": "Ihr Paket ist unterwegs"},
            body={"pl": "Dotrze w czwartek.", "de": "Kommt am Donnerstag."}, url="/",
            category="orders").id
        # An A/B test with an order after a click: the page shows the variants and revenue.
        vid = host.webpush.notify_users(
            ["1", "3"], title="Paczka", url="/", category="orders", variants=[
                {"title": "Paczka jest w drodze – A"}, {"title": "Paczka jest w drodze – B"}])
        vid = int(vid.id)
    host.subscribe("3", "Laptop Jana")
    host.run_worker()
    with host.app.app_context():
        D = host.webpush.models.Delivery
        first = host.db.session.scalar(sa.select(D.id).where(D.notification_id == vid,
                                                             D.user_id == "1"))
        from flask_webpush_targeted.tracking import record_event

        record_event(host.db, host.webpush.models, first, "clicked")
        host.webpush.record_conversion("1", value="129.90", currency="PLN", order_id="Z-1")
    server = LiveServer(host.app)
    server.nid = int(nid)
    server.vid = vid
    yield server
    server.stop()
    host.close()


@pytest.fixture(scope="module")
def chromium_pl() -> Iterator[Any]:
    """Headless Debian Chromium in Polish: its pages' locale (Accept-Language,
    navigator.language), and its own where the chromium-l10n locales are installed (a date
    field's format)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="webpush-chromium-pl-"), executable_path="/usr/bin/chromium",
            headless=True, args=[*CHROMIUM_ARGS, "--lang=pl-PL"],
            viewport={"width": 1000, "height": 900}, locale="pl-PL")
        yield context
        context.close()


def logged_in(chromium: Any, shop: Any, user_id: str) -> Any:
    page = chromium.new_page()
    page.goto(f"{shop.url}/login/{user_id}")
    return page


def assert_no_english(text: str, where: str) -> None:
    """No English msgid of the catalog and no English word in what the page shows."""
    left = [p for p in english_pieces() if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text)]
    assert not left, f"{where}: English left: {left}\n{text}"
    words = ENGLISH_WORDS.findall(text)
    assert not words, f"{where}: English words {words}\n{text}"


def shot(page: Any, name: str, element: str | None = None) -> None:
    path = output_dir("polish") / f"{name}.png"
    if element:
        page.locator(element).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)


def test_the_widget_speaks_polish_from_the_server_and_the_script(chromium_pl: Any,
                                                                  shop: Any) -> None:
    chromium_pl.grant_permissions(["notifications"], origin=shop.url)
    page = logged_in(chromium_pl, shop, "2")  # a customer who never opted in
    assert page.evaluate("navigator.language") == "pl-PL"
    page.goto(shop.url + "/konto")
    page.wait_for_selector("[data-webpush-optin][data-state=off]")
    widget = "[data-webpush-optin]"
    status = page.inner_text("[data-webpush-status]")
    assert status.startswith("Powiadomienia są wyłączone w tej przeglądarce."), status
    text = page.inner_text(widget)
    assert "Zgadzam się na otrzymywanie powiadomień z tego sklepu" in text  # the consent
    assert page.get_attribute(widget, "lang") == "pl"
    assert page.get_attribute(widget, "data-consent-language") == "pl"
    assert_no_english(text, "widget")
    shot(page, "widget", widget)
    assert_accessible(page)

    # The script's texts: ticking a box, then turning on (offline, Chromium never gets an
    # answer from its push service: the page's timeout, shortened, says so in Polish).
    page.evaluate("document.querySelector('[data-webpush-optin]').dataset.subscribeTimeout"
                  " = '1500'")
    page.check("[data-webpush-consent=notifications]")
    page.check("[data-webpush-consent=link_to_account]")
    page.click("[data-webpush-enable]")
    page.wait_for_selector("[data-webpush-optin][data-state=error]", timeout=15_000)
    status = page.inner_text("[data-webpush-status]")
    assert status.startswith("Ta przeglądarka nie otrzymała odpowiedzi od swojej usługi push "
                             "w ciągu 1.5 s."), status
    assert_no_english(page.inner_text(widget), "widget after the timeout")
    shot(page, "widget-timeout", widget)
    assert_accessible(page)
    page.close()


def test_the_devices_page_is_polish(chromium_pl: Any, shop: Any) -> None:
    page = logged_in(chromium_pl, shop, "1")
    page.goto(shop.url + "/webpush/devices")
    assert page.get_attribute("html", "lang") == "pl"
    text = page.inner_text("main")
    assert "Urządzenia, które otrzymują moje powiadomienia" in text
    assert "Telefon Ani" in text and "Polski (Polska)" in text
    assert "Zapisz moje wybory" in text and "Wycofaj moją zgodę" in text
    assert_no_english(text + " " + page.title(), "devices page")
    shot(page, "devices")
    assert_accessible(page)
    page.close()


@pytest.mark.parametrize(("path", "shown"), [
    ("/webpush/admin/notifications", "2 powiadomienia."),
    ("/webpush/admin/notifications/{nid}", "Według języka"),
    ("/webpush/admin/users/1", "wyłączone (usunięte przez klienta)"),
    ("/webpush/admin/notifications/{vid}", "129,90\xa0zł"),
])
def test_the_admin_pages_are_polish(chromium_pl: Any, shop: Any, path: str, shown: str) -> None:
    page = logged_in(chromium_pl, shop, "9")
    response = page.goto(shop.url + path.format(nid=shop.nid, vid=shop.vid))
    assert response.ok, response.status
    text = page.inner_text("main")
    assert shown in text, text
    assert "Paczka jest w drodze" in text
    titles = " ".join(page.eval_on_selector_all(
        "[title], [aria-label], svg title",
        "els => els.map(e => e.getAttribute('title') || e.getAttribute('aria-label')"
        " || e.textContent)"))
    assert_no_english(f"{text} {titles} {page.title()}", path)
    # Longer Polish words still fit the page: nothing wider than the window.
    view = page.evaluate("document.documentElement.clientWidth")
    for table in page.locator("table.webpush-table").all():
        box = table.bounding_box()
        assert box and box["x"] + box["width"] <= view, (path, box, view)
    shot(page, "admin-" + (re.sub(r"[^a-z]+", "-", path.split("/admin/")[1]).strip("-")
                           or "index") + ("-variants" if "vid" in path else ""))
    assert_accessible(page)
    page.close()


@pytest.mark.parametrize(("user", "path", "status", "shown"), [
    ("9", "/webpush/admin/notifications/999", 404, "Nie ma powiadomienia o identyfikatorze 999."),
    ("2", "/webpush/admin/notifications", 403, "Nie masz dostępu do tych statystyk."),
])
def test_the_error_pages_are_polish(chromium_pl: Any, shop: Any, user: str, path: str,
                                    status: int, shown: str) -> None:
    page = logged_in(chromium_pl, shop, user)
    response = page.goto(shop.url + path)
    assert response.status == status
    text = page.inner_text("main")
    assert shown in text, text
    assert_no_english(f"{text} {page.title()}", path)
    shot(page, f"error-{status}")
    assert_accessible(page)
    page.close()
