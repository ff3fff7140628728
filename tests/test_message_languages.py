"""A notification written in several languages: each device gets its own language's texts.

Real worker processes, the local push service (which decrypts), SQLite and PostgreSQL.
A device's language is what its browser said when it subscribed (``navigator.language``).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost

from flask_webpush_targeted.exceptions import InvalidNotification, PayloadTooLarge

TITLE = {"en": "Your parcel is on its way", "pl": "Twoja paczka jest w drodze"}
BODY = {"en": "Delivery tomorrow 9-12.", "pl": "Dostawa jutro 9-12."}
OPEN = {"en": "Track it", "pl": "Śledź przesyłkę"}


def subscribe_in(host: SendingHost, user_id: str, language: str | None) -> Any:
    """A subscription of ``user_id`` whose browser speaks ``language``."""
    sub = host.subscribe(user_id)
    S = host.webpush.models.Subscription
    with host.app.app_context():
        host.db.session.execute(sa.update(S).where(S.id == sub.id).values(language=language))
        host.db.session.commit()
    return sub


def received(host: SendingHost, sub: Any) -> dict[str, Any]:
    [push] = host.push_service.received_for(sub.endpoint)
    message: dict[str, Any] = push.notification()
    return message


def test_each_device_gets_its_own_language_and_stats_count_them(sending: SendingHost) -> None:
    devices = {"en-GB": subscribe_in(sending, "1", "en-GB"),
               "pl-PL": subscribe_in(sending, "2", "pl-PL"),
               "de-DE": subscribe_in(sending, "3", "de-DE"),
               None: subscribe_in(sending, "9", None)}
    with sending.app.app_context():
        nid = sending.webpush.notify_users(
            ["1", "2", "3", "9"], title=TITLE, body=BODY, url="/orders/7",
            actions=[{"action": "track", "title": OPEN}, {"action": "later", "title": "Later"}]).id
    sending.run_worker()
    got = {tag: received(sending, sub) for tag, sub in devices.items()}
    polish = got["pl-PL"]
    assert (polish["title"], polish["body"], polish["lang"]) == (TITLE["pl"], BODY["pl"], "pl")
    assert polish["actions"] == [{"action": "track", "title": OPEN["pl"]},
                                 {"action": "later", "title": "Later"}]
    # en-GB by its primary subtag; German and unknown ones get the default language's.
    for tag in ("en-GB", "de-DE", None):
        assert (got[tag]["title"], got[tag]["body"], got[tag]["lang"]) == (
            TITLE["en"], BODY["en"], "en"), tag
        assert got[tag]["actions"][0]["title"] == OPEN["en"]
    assert all("texts" not in message for message in got.values())
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
        assert stats["languages"] == {"en": 3, "pl": 1}
        assert stats["sent"] == 4
        polish_export = sending.webpush.export_user("2")["notifications_received"]
    assert [n["title"] for n in polish_export] == [TITLE["pl"]]
    languages = {d.user_id: d.language for d in sending.deliveries(nid)}
    assert languages == {"1": "en", "2": "pl", "3": "en", "9": "en"}


def test_one_text_for_everyone_claims_no_language(sending: SendingHost) -> None:
    sub = subscribe_in(sending, "1", "pl-PL")
    with sending.app.app_context():
        nid = sending.webpush.notify_user("1", title="Sale", body="Today only").id
    sending.run_worker()
    message = received(sending, sub)
    assert message["title"] == "Sale" and "lang" not in message
    with sending.app.app_context():
        assert sending.webpush.stats(nid)["languages"] == {}


def test_placeholders_are_filled_in_each_language(sending: SendingHost) -> None:
    en, pl = subscribe_in(sending, "1", "en-US"), subscribe_in(sending, "2", "pl")
    with sending.app.app_context():
        sending.webpush.notify_users(recipients=[
            {"user": "1", "vars": {"gate": "12"}}, {"user": "2", "vars": {"gate": "5"}}],
            title={"en": "Boarding at gate {gate}", "pl": "Wejście na pokład: bramka {gate}"},
            url="/trips")
    sending.run_worker()
    assert received(sending, en)["title"] == "Boarding at gate 12"
    assert received(sending, pl)["title"] == "Wejście na pokład: bramka 5"


def test_a_placeholder_without_a_value_in_one_language_is_refused(sending: SendingHost) -> None:
    with sending.app.app_context(), pytest.raises(InvalidNotification, match="seat"):
        sending.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"gate": "12"}}],
            title={"en": "Gate {gate}", "pl": "Bramka {gate}, miejsce {seat}"})


@pytest.mark.parametrize(("options", "words"), [
    ({"title": {"pl": "Cześć"}}, "default language 'en'"),
    ({"title": {"en": "Hi", "pl": ""}}, r"title\['pl'\] must be a non-empty"),
    ({"title": {"en": "Hi", "pl": 7}}, r"title\['pl'\] must be a non-empty"),
    ({"title": {"en": "Hi", "not a tag": "x"}}, "not a language tag"),
    ({"title": {"en": "Hi", "pl": "a", "PL": "b"}}, "given twice"),
    ({"title": {}}, "dict of 1 to"),
    ({"title": "Hi", "body": {"en": "x", "pl": "a\x00b"}}, "NUL"),
    ({"title": "Hi", "actions": [{"action": "a", "title": {"pl": "Otwórz"}}]},
     r"actions\[0\].title must have a text in the default language"),
])
def test_bad_texts_are_refused_naming_the_language(sending: SendingHost, options: dict[str, Any],
                                                   words: str) -> None:
    with sending.app.app_context(), pytest.raises(InvalidNotification, match=words):
        sending.webpush.notify_user("1", **options)


def test_the_size_limit_is_checked_in_every_language(sending: SendingHost) -> None:
    with sending.app.app_context(), pytest.raises(PayloadTooLarge, match="in 'pl'"):
        sending.webpush.notify_user("1", title="Hi", body={"en": "short", "pl": "ż" * 2000})


def test_the_default_language_is_a_setting(make_host: Any) -> None:
    host = make_host(WEBPUSH_DEFAULT_LANGUAGE="pl")
    en, other = subscribe_in(host, "1", "en"), subscribe_in(host, "2", "fr")
    with host.app.app_context():
        with pytest.raises(InvalidNotification, match="default language 'pl'"):
            host.webpush.notify_users(["1", "2"], title={"en": "Hi"})
        host.webpush.notify_users(["1", "2"], title={"pl": "Cześć", "en": "Hi"})
    host.run_worker()
    assert received(host, en)["title"] == "Hi"
    assert received(host, other)["title"] == "Cześć"


def test_the_push_api_takes_texts_by_language(sending: SendingHost) -> None:
    from test_crm_api import Api, assert_error

    api = Api(sending)
    key = api.key("send", "stats")
    en, pl = subscribe_in(sending, "1", "en-GB"), subscribe_in(sending, "2", "pl-PL")
    answer = api.send(key, {"user_ids": ["1", "2"], "title": TITLE, "body": BODY,
                            "actions": [{"action": "track", "title": OPEN}]})
    assert answer.status_code == 202, answer.body
    sending.run_worker()
    assert received(sending, en)["title"] == TITLE["en"]
    assert received(sending, pl)["actions"] == [{"action": "track", "title": OPEN["pl"]}]
    shown = api.call("GET", f"/webpush/api/v1/notifications/{answer.body['id']}", key)
    assert shown.body["stats"]["languages"] == {"en": 1, "pl": 1}
    for bad, words in (({"pl": "Cześć"}, "default language"), ({"en": 1}, "title"),
                       ([], "title")):
        refused = api.send(key, {"user_ids": ["1"], "title": bad})
        assert refused.status_code in (400, 422), refused.body
        assert words in refused.body["message"]
    assert_error(api.send(key, {"user_ids": ["1"], "title": "Hi", "body": {"en": 5}}),
                 400, "bad_request", "body")


def test_the_admin_page_shows_the_languages_and_each_title(sending: SendingHost) -> None:
    from conftest import admin_http

    subscribe_in(sending, "1", "en-GB")
    subscribe_in(sending, "2", "pl-PL")
    with sending.app.app_context():
        nid = sending.webpush.notify_users(["1", "2"], title=TITLE, body=BODY).id
    sending.run_worker()
    http = admin_http(sending)
    page = http.get(f"/webpush/admin/notifications/{nid}").text
    assert "By language" in page and "In other languages" in page
    assert f'<td class="webpush-text" lang="pl">{TITLE["pl"]}</td>' in page
    assert f'<td class="webpush-text" lang="en">{TITLE["en"]}</td>' in page
    polish = http.get(f"/webpush/admin/notifications/{nid}",
                      headers={"Accept-Language": "pl"}).text
    assert "Według języka" in polish and "Polski" in polish
    figures = http.get(f"/webpush/admin/notifications/{nid}.json").get_json()
    assert figures["stats"]["languages"] == {"en": 1, "pl": 1}
