"""Languages in the subscription flow: the browser's ``language`` stored on its subscription,
the consent text in several languages, and the ledger keeping which one the customer read."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import LoggedInClient, make_subscription
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from hostapp import make_host_app

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.config import DEFAULT_CONSENT_TEXT, consent_texts
from flask_webpush_targeted.exceptions import ConfigurationError

TEXTS = {"en": "I agree, in English.", "pl": "Zgadzam się, po polsku.", "de-AT": "Ich stimme zu."}


def consent(version: str = "1", **extra: Any) -> dict[str, Any]:
    return {"notifications": True, "link_to_account": True, "text_version": version, **extra}


def stored(app: Flask, db: SQLAlchemy, webpush: WebPush) -> tuple[Any, Any]:
    """The newest subscription and the newest ledger row."""
    m = webpush.models
    with app.app_context():
        sub = db.session.scalars(
            sa.select(m.Subscription).order_by(m.Subscription.id.desc())).first()
        row = db.session.scalars(sa.select(m.Consent).order_by(m.Consent.id.desc())).first()
        db.session.expunge_all()
        return sub, row


@pytest.mark.parametrize(("sent", "kept"), [
    ("pl-PL", "pl-PL"), ("pl-pl", "pl-PL"), ("EN", "en"), ("zh-hant-tw", "zh-Hant-TW"),
    ("de", "de"),
])
def test_the_browsers_language_is_stored_normalized(app: Flask, db: SQLAlchemy,
                                                    webpush: WebPush, client: LoggedInClient,
                                                    sent: str, kept: str) -> None:
    answer = client.subscribe(make_subscription(), language=sent)
    assert answer.status_code == 201, answer.get_json()
    sub, _ = stored(app, db, webpush)
    assert sub.language == kept
    with app.app_context():
        assert webpush.export_user("1")["devices"][0]["language"] == kept


def test_without_a_language_the_subscription_has_none_and_keeps_one_it_had(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient) -> None:
    subscription = make_subscription()
    assert client.subscribe(subscription).status_code == 201
    assert stored(app, db, webpush)[0].language is None
    assert client.subscribe(subscription, language="pl").status_code == 200
    assert client.subscribe(subscription).status_code == 200  # a refresh that did not say
    assert stored(app, db, webpush)[0].language == "pl"


@pytest.mark.parametrize("bad", ["pl_PL", "polski!", "", "p", "x" * 36, 7, True, ["pl"],
                                 {"tag": "pl"}, "pl--PL", "pl-"])
def test_a_malformed_language_is_a_400_that_says_what_to_send(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient, bad: Any) -> None:
    answer = client.subscribe(make_subscription(), language=bad)
    assert answer.status_code == 400
    body = answer.get_json()
    assert body["error"] == "bad_request" and "'language'" in body["message"]
    assert "BCP 47" in body["message"]
    assert stored(app, db, webpush)[0] is None  # nothing stored


def test_the_ledger_records_the_language_of_the_consent_text_shown(
        make_app: Any) -> None:
    app, db, webpush = make_app(WEBPUSH_CONSENT_TEXT=TEXTS)
    client = LoggedInClient(app, "1")
    body = {"subscription": make_subscription(), "consent": consent(language="de-at"),
            "language": "de-AT"}
    answer = client.post_json("/webpush/subscriptions", body)
    assert answer.status_code == 201, answer.get_json()
    _, row = stored(app, db, webpush)
    assert (row.action, row.language, row.text_version) == ("granted", "de-AT", "1")
    with app.app_context():
        assert webpush.export_user("1")["consents"][-1]["language"] == "de-AT"


def test_one_consent_version_covers_every_language(make_app: Any) -> None:
    app, db, webpush = make_app(WEBPUSH_CONSENT_TEXT=TEXTS, WEBPUSH_CONSENT_VERSION="2026-12")
    client = LoggedInClient(app, "1")
    for language in ("en", "pl"):
        answer = client.post_json("/webpush/subscriptions", {
            "subscription": make_subscription(), "consent": consent("2026-12", language=language)})
        assert answer.status_code == 201, answer.get_json()
        assert stored(app, db, webpush)[1].language == language
    stale = client.post_json("/webpush/subscriptions", {
        "subscription": make_subscription(), "consent": consent("1", language="pl")})
    assert stale.status_code == 403 and stale.get_json()["error"] == "consent_required"


def test_a_consent_language_with_no_text_is_a_400_and_an_absent_one_is_none(
        make_app: Any) -> None:
    app, db, webpush = make_app(WEBPUSH_CONSENT_TEXT=TEXTS)
    client = LoggedInClient(app, "1")
    for bad in ("fr", "pl_PL", 3):
        answer = client.post_json("/webpush/subscriptions", {
            "subscription": make_subscription(), "consent": consent(language=bad)})
        assert answer.status_code == 400, bad
        assert "consent.language" in answer.get_json()["message"]
    assert stored(app, db, webpush)[0] is None
    assert client.subscribe(make_subscription()).status_code == 201  # an older client
    assert stored(app, db, webpush)[1].language is None


def test_the_widget_shows_the_text_of_the_customers_language_and_says_which(
        make_app: Any) -> None:
    app, _, _ = make_app(WEBPUSH_CONSENT_TEXT=TEXTS)
    client = LoggedInClient(app, "1")
    for header, language in (("de-AT,de;q=0.9", "de-AT"), ("de-DE", "de-AT"),
                             ("pl", "pl"), ("fr-FR", "en"), ("", "en")):
        html = client.http.get("/widget", headers={"Accept-Language": header}).get_data(
            as_text=True)
        assert f'data-consent-language="{language}"' in html, header
        assert TEXTS[language] in html.replace("&#39;", "'"), header
        others = [text for key, text in TEXTS.items() if key != language]
        assert not any(text in html for text in others), header


def test_a_single_consent_text_is_the_default_languages(make_app: Any) -> None:
    app, db, webpush = make_app(WEBPUSH_CONSENT_TEXT="Our own words.")
    client = LoggedInClient(app, "1")
    html = client.http.get("/widget", headers={"Accept-Language": "pl"}).get_data(as_text=True)
    assert "Our own words." in html and 'data-consent-language="en"' in html
    answer = client.post_json("/webpush/subscriptions", {
        "subscription": make_subscription(), "consent": consent(language="en")})
    assert answer.status_code == 201
    assert stored(app, db, webpush)[1].language == "en"


@pytest.mark.parametrize(("text", "words"), [
    ({"pl": "Zgadzam się."}, "must have a text in WEBPUSH_DEFAULT_LANGUAGE 'en'"),
    ({"en": "Yes.", "pl": "  "}, "WEBPUSH_CONSENT_TEXT['pl'] must be a non-empty string"),
    ({"en": "Yes.", "pl": None}, "WEBPUSH_CONSENT_TEXT['pl'] must be a non-empty string"),
    ({"en": "Yes.", "polski!": "Tak."}, "'polski!' is not a language tag"),
    ({"en": "Yes.", 5: "Tak."}, "'5' is not a language tag"),
    ({"en": "Yes.", "EN": "Yes."}, "has the language 'EN' twice"),
    ({}, "must have a text in WEBPUSH_DEFAULT_LANGUAGE"),
    ("", "non-empty"),
    (["en", "Yes"], "non-empty string, or a dict"),
])
def test_a_consent_text_dict_is_validated(text: Any, words: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_host_app("sqlite://", WEBPUSH_CONSENT_TEXT=text)
    assert words in str(raised.value)
    assert "WEBPUSH_CONSENT_TEXT" in str(raised.value)


def test_the_default_consent_text_is_in_english_and_polish() -> None:
    assert set(DEFAULT_CONSENT_TEXT) == {"en", "pl"}
    assert "wycofać tę zgodę" in DEFAULT_CONSENT_TEXT["pl"]
    app, _, _ = make_host_app("sqlite://", WEBPUSH_CONSENT_TEXT={"pl": "Tak.", "en-GB": "Yes."},
                              WEBPUSH_DEFAULT_LANGUAGE="pl")
    assert consent_texts(app.config) == {"pl": "Tak.", "en-GB": "Yes."}
    other, _, _ = make_host_app("sqlite://")
    other.config["WEBPUSH_CONSENT_TEXT"]["pl"] = "Zmienione."  # one app's change stays its own
    assert DEFAULT_CONSENT_TEXT["pl"] != "Zmienione."
