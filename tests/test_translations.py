"""The package in English and Polish: the Polish catalog is complete and compiled, extraction
finds nothing it lacks, the language of a request is chosen in the documented order, the
templates leave a host's own gettext globals alone, and every page a person sees comes out
in Polish with no English msgid left in it."""

from __future__ import annotations

import html as html_module
import re
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from conftest import LoggedInClient, make_subscription
from flask import Flask, render_template_string
from flask_sqlalchemy import SQLAlchemy
from hostapp import make_host_app

from flask_webpush_targeted import WebPush, i18n
from flask_webpush_targeted.config import DEFAULT_CONSENT_TEXT
from flask_webpush_targeted.views.admin import duration_words
from flask_webpush_targeted.views.widget import WIDGET_STRINGS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_webpush_targeted"
TRANSLATIONS = PACKAGE / "translations"
POT = TRANSLATIONS / "messages.pot"
PL_PO = TRANSLATIONS / "pl" / "LC_MESSAGES" / "messages.po"
PL_MO = TRANSLATIONS / "pl" / "LC_MESSAGES" / "messages.mo"
POLISH = {"Accept-Language": "pl-PL,pl;q=0.9,en;q=0.5"}
#: words of English that no Polish page of the package has (the test data is Polish too)
ENGLISH_WORDS = re.compile(
    r"\b(the|and|of|your|my|this|is|are|was|not|yet|sent|device|devices|notification|"
    r"notifications|customer|page|status|remove|withdraw|consent|browser|unknown|desktop|"
    r"mobile)\b", re.IGNORECASE)
#: Polish categories, as a Polish shop configures them
CATEGORIES = {
    "orders": {"label": "Zamówienia", "required": True,
               "description": "Potwierdzenia i wysyłka Twoich zamówień."},
    "offers": {"label": "Promocje", "description": "Wyprzedaże i kody rabatowe."},
}


def catalog(path: Path) -> Any:
    with path.open("rb") as fh:
        return read_po(fh, locale="pl" if path != POT else None)


def messages(cat: Any) -> dict[Any, Any]:
    """msgid -> translation; a plural's as tuples (a read .mo has lists)."""
    def key(value: Any) -> Any:
        return tuple(value) if isinstance(value, (list, tuple)) else value
    return {key(m.id): key(m.string) for m in cat if m.id}


# -- the catalog --------------------------------------------------------------------------


def test_every_polish_msgid_is_translated_none_fuzzy_and_placeholders_kept() -> None:
    po = catalog(PL_PO)
    assert po.num_plurals == 3 and not po.fuzzy
    untranslated, fuzzy = [], []
    for m in po:
        if not m.id:
            continue
        strings = m.string if isinstance(m.string, tuple) else (m.string,)
        if m.pluralizable:
            assert len(strings) == 3, f"{m.id!r}: Polish has three plural forms"
        if not all(s.strip() for s in strings):
            untranslated.append(m.id)
        if m.fuzzy:
            fuzzy.append(m.id)
    assert not untranslated, f"untranslated: {untranslated}"
    assert not fuzzy, f"fuzzy: {fuzzy}"
    # Babel's own checks: the same %(name)s placeholders in every translation.
    problems = [(m.id, [str(e) for e in errors]) for m, errors in po.check()]
    assert not problems, problems
    # Real Polish: its letters are there.
    text = " ".join(s for v in messages(po).values()
                    for s in (v if isinstance(v, tuple) else (v,)))
    assert set("ąćęłńóśźż") <= set(text), set("ąćęłńóśźż") - set(text)


def test_the_committed_mo_is_the_compiled_po() -> None:
    po = catalog(PL_PO)
    compiled = BytesIO()
    write_mo(compiled, po)
    compiled.seek(0)
    with PL_MO.open("rb") as fh:
        committed = read_mo(fh)
    assert messages(committed) == messages(read_mo(compiled)), (
        "messages.mo is stale: run pybabel compile -d flask_webpush_targeted/translations")


def test_extraction_finds_no_msgid_missing_from_the_pot_or_the_po(tmp_path: Path) -> None:
    out = tmp_path / "messages.pot"
    CommandLineInterface().run(["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"),
                                "-o", str(out), str(ROOT)])
    extracted = set(messages(catalog(out)))
    assert len(extracted) > 200  # the templates and the Python both found
    pot, po = set(messages(catalog(POT))), set(messages(catalog(PL_PO)))
    assert not extracted - pot, f"not in messages.pot (run the update steps): {extracted - pot}"
    assert not extracted - po, f"not in the Polish catalog: {extracted - po}"
    assert not pot - extracted, f"messages.pot has msgids the code no longer has: {pot - extracted}"


def test_the_widget_script_texts_are_those_the_server_translates() -> None:
    script = (PACKAGE / "static" / "webpush" / "webpush.js").read_text()
    used = set(re.findall(r"\bt\('(\w+)'", script)) - {"error_"}
    assert used, "the script reads no text of the blob"
    assert used <= set(WIDGET_STRINGS), used - set(WIDGET_STRINGS)
    unused = {k for k in WIDGET_STRINGS if not k.startswith("error_")} - used
    assert not unused, f"texts the script never shows: {unused}"
    assert "'error_' + body.error" in script  # the error_* ones, by the server's error code


def test_templates_call_only_the_packages_own_gettext_names() -> None:
    for path in (PACKAGE / "templates").rglob("*.html"):
        text = path.read_text()
        assert "{% trans" not in text, path
        assert not re.search(r"(?<![\w.])(_|gettext|ngettext)\(", text), path


# -- the language of a request ------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, SQLAlchemy, WebPush]]]:
    """Host apps on SQLite (the languages do not depend on the database)."""
    made: list[tuple[Flask, SQLAlchemy]] = []

    def factory(**config: Any) -> tuple[Flask, SQLAlchemy, WebPush]:
        app, db, webpush = make_host_app(f"sqlite:///{tmp_path / f'{len(made)}.db'}", **config)
        with app.app_context():
            db.create_all()
        made.append((app, db))
        return app, db, webpush

    yield factory
    for app, db in made:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def language_of(app: Flask, **headers: str) -> str:
    with app.test_request_context(headers=headers):
        return i18n.current_language()


def test_accept_language_picks_polish_or_falls_back_to_the_default(
        host: Callable[..., Any]) -> None:
    app, _, _ = host()
    assert language_of(app, **{"Accept-Language": "pl-PL,pl;q=0.9"}) == "pl"
    assert language_of(app, **{"Accept-Language": "de-DE,pl;q=0.5"}) == "pl"  # the best it has
    assert language_of(app, **{"Accept-Language": "en-GB,pl;q=0.5"}) == "en"
    assert language_of(app, **{"Accept-Language": "de-DE"}) == "en"
    assert language_of(app) == "en"
    polish_default, _, _ = host(WEBPUSH_DEFAULT_LANGUAGE="pl",
                                WEBPUSH_CONSENT_TEXT={"pl": "Zgadzam się."})
    assert language_of(polish_default, **{"Accept-Language": "de-DE"}) == "pl"
    with polish_default.app_context():  # outside a request: the default language
        assert i18n.current_language() == "pl"
    assert i18n.current_language() == "en"  # no app at all


def test_the_locale_selector_comes_first_then_flask_babel_then_accept_language(
        host: Callable[..., Any]) -> None:
    from flask_babel import Babel

    app, _, webpush = host()
    chosen: dict[str, str | None] = {"babel": "pl", "ours": None}
    Babel(app, locale_selector=lambda: chosen["babel"])  # the real Flask-Babel
    english = {"Accept-Language": "en"}
    assert language_of(app, **english) == "pl"  # Flask-Babel's locale over the header

    @webpush.locale_selector
    def ours() -> str | None:
        return chosen["ours"]

    assert ours() is None  # the decorator hands the function back
    assert language_of(app, **english) == "pl"  # None from ours: Flask-Babel decides
    chosen["ours"] = "en-GB"
    assert language_of(app, **english) == "en"  # ours decides
    chosen["babel"], chosen["ours"] = "pt_BR", None
    assert language_of(app, **{"Accept-Language": "pl"}) == "en"  # Babel said Portuguese
    chosen["ours"] = "pl-PL"
    with app.test_request_context(headers=english):
        assert i18n.gettext("Remove") == "Usuń"
        assert i18n.requested_language() == "pl-PL"


def test_a_locale_selector_that_raises_lets_the_next_source_decide(
        host: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    app, _, webpush = host()

    @webpush.locale_selector
    def broken() -> str | None:
        raise LookupError("the host's bug")

    assert language_of(app, **{"Accept-Language": "pl"}) == "pl"
    assert "locale_selector raised" in caplog.text


def test_a_hosts_own_gettext_globals_stay_the_hosts(host: Callable[..., Any]) -> None:
    from flask_babel import Babel

    bare, _, _ = host()
    assert "_" not in bare.jinja_env.globals and "gettext" not in bare.jinja_env.globals
    app, _, _ = host()
    Babel(app, locale_selector=lambda: "pl")  # Flask-Babel's globals, the host's catalog
    assert app.jinja_env.globals["gettext"] is not i18n.gettext
    with app.test_request_context():
        out = render_template_string(
            "{{ webpush_gettext('Remove') }}|{{ webpush_ngettext('%(num)s day', "
            "'%(num)s days', 5) }}|{{ webpush_language() }}|{{ _('Remove') }}")
    # The package's words in Polish; the host's own _ still looks in the host's (empty)
    # catalog, not the package's.
    assert out == "Usuń|5 dni|pl|Remove"


def test_durations_take_the_polish_plural_forms(host: Callable[..., Any]) -> None:
    app, _, _ = host()
    with app.test_request_context(headers=POLISH):
        assert [duration_words(s) for s in (60, 120, 300, 3600, 7200, 79200, 1209600, 90)] == [
            "1 minuta", "2 minuty", "5 minut", "1 godzina", "2 godziny", "22 godziny",
            "2 tygodnie", "90 sekund"]
        assert duration_words(12 * 3600) == "12 godzin"  # 12-14 take the third form
    assert duration_words(3600) == "1 hour"  # no request: English


# -- every page in Polish -----------------------------------------------------------------


def english_pieces() -> list[str]:
    """The catalog's English texts, cut at their placeholders, that a Polish page must not
    show: every piece of a few letters or more that the Polish translations do not share."""
    po = catalog(PL_PO)
    polish = " ".join(s for v in messages(po).values()
                      for s in (v if isinstance(v, tuple) else (v,)))
    pieces = set()
    for m in po:
        for text in (m.id if isinstance(m.id, tuple) else (m.id,)):
            for piece in re.split(r"%\(\w+\)s|[#←→…:;,.()]", text):
                piece = piece.strip()
                if len(piece) >= 4 and piece not in polish and piece not in {"JSON", "HTTPS"}:
                    pieces.add(piece)
    return sorted(pieces, key=len, reverse=True)


def visible_text(page: str) -> str:
    """The text a person reads on ``page`` (no script, no markup), unescaped."""
    page = re.sub(r"<script\b.*?</script>", " ", page, flags=re.DOTALL)
    page = re.sub(r"<style\b.*?</style>", " ", page, flags=re.DOTALL)
    titles = " ".join(re.findall(r'(?:title|aria-label)="([^"]*)"', page))
    return html_module.unescape(re.sub(r"<[^>]+>", " ", page) + " " + titles)


def assert_polish(page: str, where: str) -> None:
    text = visible_text(page)
    left = [p for p in english_pieces() if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text)]
    assert not left, f"{where}: English left: {left}"
    words = ENGLISH_WORDS.findall(text)
    assert not words, f"{where}: English words {words} in {text!r}"


@pytest.fixture
def polish_shop(host: Callable[..., Any]) -> tuple[Flask, WebPush, int]:
    """A shop with Polish categories, a customer with a device and a notification sent to
    it, and an administrator (user 9) allowed the statistics."""
    app, db, webpush = host(WEBPUSH_CATEGORIES=CATEGORIES)

    @webpush.stats_access
    def admins(user: Any) -> bool:
        return bool(user.is_admin)

    customer = LoggedInClient(app, "1")
    answer = customer.subscribe(make_subscription(), device_label="Telefon Ani",
                                language="pl-PL", categories={"offers": True})
    assert answer.status_code == 201, answer.get_json()
    with app.app_context():
        nid = webpush.notify_users(["1"], title="Paczka jest w drodze", body="Dotrze w czwartek.",
                                   url="/", category="orders").id
    return app, webpush, int(nid)


def test_the_widget_devices_page_and_admin_pages_are_all_polish(
        polish_shop: tuple[Flask, WebPush, int]) -> None:
    app, _, nid = polish_shop
    customer = LoggedInClient(app, "1")
    admin = LoggedInClient(app, "9")
    stranger = LoggedInClient(app, "2")
    pages = {
        "widget": customer.http.get("/widget", headers=POLISH),
        "devices": customer.http.get("/webpush/devices", headers=POLISH),
        "devices after saving": customer.http.get("/webpush/devices?done=saved", headers=POLISH),
        "notifications": admin.http.get("/webpush/admin/notifications", headers=POLISH),
        "notification": admin.http.get(f"/webpush/admin/notifications/{nid}", headers=POLISH),
        "customer": admin.http.get("/webpush/admin/users/1", headers=POLISH),
        "refused": stranger.http.get("/webpush/admin/notifications", headers=POLISH),
        "missing": admin.http.get("/webpush/admin/notifications/999", headers=POLISH),
        "bad filter": admin.http.get("/webpush/admin/notifications?since=x", headers=POLISH),
        "expired form": customer.http.post("/webpush/consent/withdraw", headers=POLISH),
        "no such device": customer.http.post("/webpush/devices/999/revoke", headers=POLISH,
                                              data={"csrf_token": customer.csrf}),
    }
    expected = {"refused": 403, "missing": 404, "bad filter": 400, "expired form": 400,
                "no such device": 404}
    for where, response in pages.items():
        assert response.status_code == expected.get(where, 200), where
        page = response.get_data(as_text=True)
        assert_polish(page, where)
    devices = pages["devices"].get_data(as_text=True)
    assert "Urządzenia, które otrzymują moje powiadomienia" in devices
    assert "Polski (Polska)" in devices  # the device's language, named in Polish
    assert '<html lang="pl">' in devices
    assert "Twoje wybory zostały zapisane." in pages["devices after saving"].get_data(as_text=True)
    notification = pages["notification"].get_data(as_text=True)
    assert "Liczby odświeżają się same co 3 sekundy" in notification
    assert "confirm('Anulowa\\u0107 powiadomienie nr 1?" in notification  # JSON-escaped
    assert "1 powiadomienie." in pages["notifications"].get_data(as_text=True)


def test_the_widget_carries_the_polish_script_texts_and_consent_text(
        polish_shop: tuple[Flask, WebPush, int]) -> None:
    app, _, _ = polish_shop
    customer = LoggedInClient(app, "2")
    page = customer.http.get("/widget", headers=POLISH).get_data(as_text=True)
    blob = re.search(r'<script type="application/json" data-webpush-strings>(.*?)</script>',
                     page, re.DOTALL)
    assert blob
    import json

    strings = json.loads(blob.group(1))
    assert set(strings) == set(WIDGET_STRINGS)
    assert strings["timeout"].startswith(
        "Ta przeglądarka nie otrzymała odpowiedzi od swojej usługi push w ciągu %(seconds)s s.")
    assert DEFAULT_CONSENT_TEXT["pl"] in html_module.unescape(page)
    assert 'data-consent-language="pl"' in page and 'lang="pl"' in page
    english = customer.http.get("/widget", headers={"Accept-Language": "en-US"})
    text = english.get_data(as_text=True)
    assert DEFAULT_CONSENT_TEXT["en"] in html_module.unescape(text)
    assert 'data-consent-language="en"' in text and "Turn on notifications" in text
