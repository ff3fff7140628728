"""Hostile probes of the declarative payloads, the click route and texts in several languages.

Each guards a property an attacker or an odd input tried: open redirects, counting twice or
another's delivery, forged tokens, texts and tags of every odd shape, sizes in one language,
a setting changed while a notification waits. Real worker processes, the local
push service, SQLite and PostgreSQL, as in test_declarative.py and test_message_languages.py.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import SendingHost
from test_message_languages import subscribe_in as _subscribe_in

from flask_webpush_targeted.exceptions import InvalidNotification, PayloadTooLarge
from flask_webpush_targeted.transport.origins import web_origin

SITE = "https://shop.example"


def _message(host: SendingHost, sub: Any) -> dict[str, Any]:
    [push] = host.push_service.received_for(sub.endpoint)
    message: dict[str, Any] = push.notification()
    return message


def _click_path(host: SendingHost, sub: Any) -> str:
    """The click route's path of the one message ``sub`` received (either format)."""
    message = _message(host, sub)
    if "navigate" in message:
        return urlsplit(message["navigate"]).path
    return f"{host.config.get('WEBPUSH_URL_PREFIX', '/webpush')}/c/{message['token']}"


def _clicked(host: SendingHost, nid: int) -> int:
    with host.app.app_context():
        return int(host.webpush.stats(nid)["clicked"])


# -- the click route: where it leads ------------------------------------------------------------

HOSTILE_VALUES = ["//evil.example", "/\\evil.example", "\\\\evil.example", "\t//evil.example",
                  "@evil.example", "%2F%2Fevil.example", "https://evil.example/x",
                  "javascript:alert(1)", "..", "../../..//evil.example", "\r\nLocation: x",
                  "evil.example:443", "?x=//evil.example#//evil.example", "\u3002evil"]


@pytest.mark.parametrize("template", ["/{p}/go?next={p}&w={w}#{p}",
                                      "https://shop.example:443/{p}?{w}#{p}"])
def test_hostile_vars_in_url_placeholders_never_lead_off_site(sending: SendingHost,
                                                              template: str) -> None:
    """Values of recipients' and the notification's vars, in the path, the query and the
    fragment of the URL, percent-encoded: the click lands on the site every time."""
    users = [str(i) for i in range(len(HOSTILE_VALUES))]
    subs = {uid: sending.subscribe(uid) for uid in users}
    with sending.app.app_context():
        nid = sending.webpush.notify_users(
            recipients=[{"user": uid, "vars": {"p": value}}
                        for uid, value in zip(users, HOSTILE_VALUES, strict=True)],
            vars={"w": "//evil.example/\\"}, title="Your trip",
            url=template).id
    sending.run_worker()
    http = sending.app.test_client()
    for uid, sub in subs.items():
        answer = http.get(_click_path(sending, sub))
        assert answer.status_code == 302
        where = urlsplit(answer.headers["Location"])
        assert web_origin(where) == SITE, answer.headers
        assert where.path.startswith("/") and not where.path.startswith("//")
        assert "\\" not in answer.headers["Location"] and "\t" not in answer.headers["Location"]
        assert "\n" not in answer.headers["Location"], uid
    assert _clicked(sending, nid) == len(users)


@pytest.mark.parametrize("url", [
    "//evil.example/x", "/\\evil.example", "/\t/evil.example", "https://evil.example/",
    "https://shop.example@evil.example/", "https://shop.example:443@evil.example/",
    "http://shop.example/", "https:evil.example", "https://shop.example\u00ad/",
    "https://shop.example./", "javascript:alert(1)", "{p}", "https://{p}/",
    "https://shop.example{p}"])
def test_urls_off_the_site_are_refused_when_sent(sending: SendingHost, url: str) -> None:
    with sending.app.app_context(), pytest.raises(InvalidNotification):
        sending.webpush.notify_users(recipients=[{"user": "1", "vars": {"p": "evil.example"}}],
                                     title="T", url=url)


def test_without_site_url_the_host_header_picks_where_a_click_lands(make_host: Any) -> None:
    """WEBPUSH_SITE_URL unset (allowed with the legacy format): the click route's Location
    is relative ("/sale"), resolved by the browser against the URL it asked for, so no
    ``Host: evil.example`` a request makes up (through a proxy that forwards any Host, a
    cache that ignores no-store) decides where a click lands."""
    host = make_host(WEBPUSH_PAYLOAD_FORMAT="legacy", WEBPUSH_SITE_URL=None)
    sub = host.subscribe("1")
    with host.app.app_context():
        host.webpush.notify_user("1", title="Sale", url="/sale")
    host.run_worker()
    answer = host.app.test_client().get(_click_path(host, sub),
                                        headers={"Host": "evil.example"})
    assert answer.status_code == 302
    assert "evil.example" not in answer.headers["Location"], answer.headers["Location"]


@pytest.mark.parametrize("site", ["https://shop.example#", "https://shop.example?",
                                  "https://shop.example/", "HTTPS://Shop.Example:443"])
def test_a_site_url_with_an_empty_fragment_or_query_is_refused_or_clicks_still_land(
        make_host: Any, site: str) -> None:
    """WEBPUSH_SITE_URL "https://shop.example#" (or "...?", an empty fragment or query
    that urlsplit reads as nothing) is refused at init_app; other spellings of the origin
    (a trailing "/", upper case, the default port) are accepted, and a click lands on
    https://shop.example/sale, not glued to the setting as written ("...#/sale")."""
    try:
        host = make_host(WEBPUSH_SITE_URL=site)
    except Exception:  # noqa: BLE001 - refused at init_app: fine
        return
    sub = host.subscribe("1")
    with host.app.app_context():
        host.webpush.notify_user("1", title="Sale", url="/sale")
    host.run_worker()
    assert _message(host, sub)["navigate"].startswith(f"{SITE}/webpush/c/")
    answer = host.app.test_client().get(_click_path(host, sub))
    where = urlsplit(answer.headers["Location"])
    assert (web_origin(where), where.path, where.query, where.fragment) == (
        SITE, "/sale", "", ""), answer.headers["Location"]


# -- the click route: counting ------------------------------------------------------------------


def test_racing_clicks_replays_and_beacons_count_one_click(sending: SendingHost) -> None:
    sub = sending.subscribe("1")
    with sending.app.app_context():
        nid = sending.webpush.notify_user(
            "1", title="Sale", url="/sale",
            actions=[{"action": "cart", "title": "Cart"}, {"action": "later", "title": "Later"}]).id
    sending.run_worker()
    path = _click_path(sending, sub)
    token = _message(sending, sub)["token"]
    answers: list[int] = []

    def click(suffix: str) -> None:
        answers.append(sending.app.test_client().get(path + suffix).status_code)

    threads = [threading.Thread(target=click, args=(s,))
               for s in ["?action=cart", "?action=later", "", "?action=x"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [302] * len(threads)
    beacon = sending.app.test_client().post(
        "/webpush/events", json={"token": token, "event": "clicked", "action": "later"})
    assert beacon.status_code == 200 and beacon.get_json()["counted"] is False
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
    assert (stats["clicked"], stats["displayed"]) == (1, 1)
    [delivery] = sending.deliveries(nid)
    assert delivery.action in ("cart", "later", None)


def test_a_token_counts_only_its_own_delivery(sending: SendingHost) -> None:
    a, b = sending.subscribe("1"), sending.subscribe("2")
    with sending.app.app_context():
        nid = sending.webpush.notify_users(["1", "2"], title="Sale", url="/sale").id
    sending.run_worker()
    http = sending.app.test_client()
    path = _click_path(sending, a)
    # The token with bytes flipped, doubled, truncated, with the other's MAC, in odd paths.
    other = _message(sending, b)["token"]
    token = _message(sending, a)["token"]
    data, mac = token.split(".")
    odd = [f"{data}.{other.split('.')[1]}", f"{other.split('.')[0]}.{mac}", token + token,
           token[:-1], f"{data}..{mac}", f"{data}.{mac}/x", token.upper(),
           "/" * 3000, "%" * 100, "..%2F..%2Fevil", "\u00e9" * 500]
    for bad in odd:
        answer = http.get(f"/webpush/c/{bad}")
        assert answer.status_code in (302, 404), (bad[:40], answer.status_code)
        if answer.status_code == 302:
            assert answer.headers["Location"] == f"{SITE}/", bad[:40]
    assert _clicked(sending, nid) == 0
    http.get(path)
    assert {d.user_id: d.clicked_at is not None for d in sending.deliveries(nid)} == {
        "1": True, "2": False}


# -- texts in several languages -----------------------------------------------------------------

TITLE = {"en": "Your parcel is on its way", "pl": "Twoja paczka jest w drodze"}


def test_the_default_language_at_send_time_is_the_notifications_own(make_host: Any) -> None:
    """WEBPUSH_DEFAULT_LANGUAGE changed between notify_users and sending (a scheduled send,
    a queued backlog across a deploy): the stored payload keeps the language its default
    texts are in, so an English device of a notification written in English and Polish
    still gets the English text, and the delivery and the stats say "en"."""
    host = make_host()
    en, pl = _subscribe_in(host, "1", "en-GB"), _subscribe_in(host, "2", "pl-PL")
    with host.app.app_context():
        nid = host.webpush.notify_users(["1", "2"], title=TITLE, url="/orders").id
    host.run_worker(WEBPUSH_DEFAULT_LANGUAGE="pl")
    assert _message(host, pl)["title"] == TITLE["pl"]
    got = _message(host, en)
    assert (got["title"], got.get("lang")) == (TITLE["en"], "en")
    with host.app.app_context():
        assert host.webpush.stats(nid)["languages"] == {"en": 1, "pl": 1}


def test_a_device_is_matched_by_script_before_the_primary_language() -> None:
    """RFC 4647 lookup drops subtags one at a time ("zh-Hant-TW" -> "zh-Hant" -> "zh"): a
    device in Traditional Chinese of a notification in "zh-Hans" and "zh-Hant" gets
    "zh-Hant", not whichever Chinese comes first; the same for "sr-Latn-RS"."""
    from flask_webpush_targeted.localized import language_for

    payload = {"title": "Hi", "default_language": "en",
               "texts": {"zh-Hans": {"title": "简体"}, "zh-Hant": {"title": "繁體"}}}
    assert language_for(payload, "zh-Hant-TW") == "zh-Hant"
    serbian = {"title": "Hi", "default_language": "en",
               "texts": {"sr-Cyrl": {"title": "Ћао"}, "sr-Latn": {"title": "Ćao"}}}
    assert language_for(serbian, "sr-Latn-RS") == "sr-Latn"


def test_a_language_given_only_in_an_action_is_not_claimed_for_the_title(
        sending: SendingHost) -> None:
    """Title and body written in English and German, one action title also in Polish: a
    Polish device gets the English title and body (there is no Polish one) with the
    Polish button, and ``lang``, its delivery and the stats say "en": ``lang`` is the
    language of the title and body (Notification API), which a screen reader reads them
    in."""
    pl = _subscribe_in(sending, "1", "pl-PL")
    with sending.app.app_context():
        nid = sending.webpush.notify_user(
            "1", title={"en": "Hello", "de": "Hallo"}, body={"en": "Body", "de": "Text"},
            actions=[{"action": "open", "title": {"en": "Open", "pl": "Otwórz"}}]).id
    sending.run_worker()
    got = _message(sending, pl)
    assert (got["title"], got["body"], got["actions"][0]["title"]) == ("Hello", "Body", "Otwórz")
    assert got["lang"] == "en", got
    with sending.app.app_context():
        assert sending.webpush.stats(nid)["languages"] == {"en": 1}


def test_stored_languages_of_any_shape_get_a_text_and_stats_add_up(sending: SendingHost) -> None:
    """Devices with odd stored languages (edited by hand, older rows), one failing once,
    one gone: each sent delivery gets a text of the notification, and the languages the
    stats count add up to what was sent."""
    stored = {"1": "PL", "2": "pl-pl", "3": "", "4": "x" * 35, "5": "-", "6": "pl_PL",
              "7": "zh-hant-tw", "8": None, "9": "de-DE"}
    subs = {uid: _subscribe_in(sending, uid, language) for uid, language in stored.items()}
    sending.push_service.respond(subs["5"].endpoint, 500, times=1)
    gone = _subscribe_in(sending, "2", "pl")
    sending.push_service.mark_gone(gone.endpoint)
    with sending.app.app_context():
        nid = sending.webpush.notify_users(
            list(stored), title={**TITLE, "ZH-hant": "繁體"}, body={"en": "b", "pl": "ciało"},
            actions=[{"action": "a", "title": "A"},
                     {"action": "b", "title": {"en": "B", "pl": "Bę"}}],
            url="/orders").id
    sending.run_worker()
    sending.run_worker()  # the retry of "5"
    titles = {uid: (_message(sending, sub)["title"], _message(sending, sub)["lang"])
              for uid, sub in subs.items()
              if sending.push_service.received_for(sub.endpoint)}
    assert titles["1"] == titles["2"] == (TITLE["pl"], "pl")
    assert titles["7"] == ("繁體", "zh-Hant")
    for uid in ("3", "4", "6", "8", "9"):
        assert titles[uid] == (TITLE["en"], "en"), uid
    with sending.app.app_context():
        stats = sending.webpush.stats(nid)
    assert sum(stats["languages"].values()) == stats["sent"]
    assert stats["sent"] == sum(1 for d in sending.deliveries(nid) if d.status == "sent")
    assert {d.language for d in sending.deliveries(nid) if d.status != "sent"} == {None}


def test_a_placeholder_in_one_language_only_and_hostile_vars_in_texts(
        sending: SendingHost) -> None:
    en, pl = _subscribe_in(sending, "1", "en"), _subscribe_in(sending, "2", "pl")
    value = '"}],"texts":{"en":{"title":"pwned"}},"x":"{gate}'
    with sending.app.app_context():
        sending.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"name": value}},
                        {"user": "2", "vars": {"name": "Ola"}}],
            title={"en": "Hello", "pl": "Cześć {name}"}, body={"en": "{name}", "pl": "x"},
            url="/")
    sending.run_worker()
    assert (_message(sending, en)["title"], _message(sending, en)["body"]) == ("Hello", value)
    assert _message(sending, pl)["title"] == "Cześć Ola"
    assert "texts" not in _message(sending, en)


@pytest.mark.parametrize(("options", "error"), [
    ({"title": {"en": "Hi", "texts": "x", "pl": "Cz"}, "data": {"texts": 1}}, None),
    ({"title": "Hi", "body": {"en": "x", "pl": "ż" * 1200, "de": "ok"}}, None),
    ({"title": "Hi", "body": {"en": "x", "de": "ok", "pl": "ż" * 2000}}, "in 'pl'"),
    ({"title": {"en": "Hi", **{f"a{c}": "x" for c in "bcdefghijklmnopqrstuvwxy"},
                **{f"b{c}": "x" for c in "bcdefghijklmnopqrstuvwxy"}, "zz": "z"}}, None),
    ({"title": {"en": "Hi", **{f"a{c}": "x" for c in "bcdefghijklmnopqrstuvwxyz"}},
      "body": {"en": "b", **{f"b{c}": "y" for c in "bcdefghijklmnopqrstuvwxyz"}}},
     "at most 50"),
    ({"title": {"en": "Hi", "pl": "Cz", "PL": "Cz"}}, "twice"),
    ({"title": {"en": "Hi", "pl-pl": "a"}, "body": {"en": "b", "pl-PL": "c"}}, None),
    ({"title": "Hi", "actions": [{"action": "a", "title": {"en": "A", "pl": ["x"]}}]},
     r"actions\[0\]\.title\['pl'\]"),
    ({"title": "Hi", "actions": ({"action": "a", "title": {"en": "A", "pl": "B"}},)},
     "actions must be a list"),
])
def test_odd_texts_are_taken_or_refused_cleanly(sending: SendingHost, options: dict[str, Any],
                                                error: str | None) -> None:
    with sending.app.app_context():
        if error is None:
            n = sending.webpush.notify_user("1", **options)
            assert set(n.payload) >= {"title", "body", "url"}
        else:
            with pytest.raises((InvalidNotification, PayloadTooLarge), match=error):
                sending.webpush.notify_user("1", **options)


def test_the_push_api_refuses_nested_and_odd_texts(sending: SendingHost) -> None:
    from test_crm_api import Api

    api = Api(sending)
    key = api.key("send", "stats")
    for title in ({"en": {"x": "y"}}, {"en": "Hi", "pl": ["x"]}, {"en": "Hi", "pl": None},
                  {"en": "Hi", "pl": 1}, {}, {"": "x", "en": "Hi"}, {"en": "Hi", "e n": "x"},
                  {"en": "Hi", "pl": "Cz", "PL": "Cz"}, ["en", "Hi"], True):
        answer = api.send(key, {"user_ids": ["1"], "title": title})
        assert answer.status_code in (400, 422), (title, answer.status_code, answer.body)
    for actions in ([{"action": "a", "title": {"en": {"x": 1}}}],
                    [{"action": "a", "title": {"en": "A"}, "texts": {"pl": "x"}}],
                    [{"action": {"en": "a"}, "title": "A"}]):
        answer = api.send(key, {"user_ids": ["1"], "title": "Hi", "actions": actions})
        assert answer.status_code in (400, 422), (actions, answer.body)
    answer = api.send(key, {"user_ids": ["1"], "title": "Hi", "texts": {"pl": {"title": "x"}}})
    assert answer.status_code == 400


def test_exports_and_admin_pages_show_each_customers_language(sending: SendingHost) -> None:
    from conftest import admin_http

    _subscribe_in(sending, "1", "en"), _subscribe_in(sending, "2", "pl")
    with sending.app.app_context():
        nid = sending.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"n": "Ann"}}, {"user": "2", "vars": {"n": "Ola"}}],
            title={"en": "Hi {n}", "pl": "Cześć {n}"}, url="/").id
    sending.run_worker()
    with sending.app.app_context():
        assert [n["title"] for n in sending.webpush.export_user("2")[
            "notifications_received"]] == ["Cześć Ola"]
        assert [n["title"] for n in sending.webpush.export_user("1")[
            "notifications_received"]] == ["Hi Ann"]
    http = admin_http(sending)
    page = http.get(f"/webpush/admin/notifications/{nid}")
    assert page.status_code == 200, page.text[:2000]
    assert "Cześć Ola" in page.text and "Hi Ann" in page.text
    user_page = http.get("/webpush/admin/users/2")
    assert user_page.status_code == 200 and "Cześć Ola" in user_page.text
    csv = http.get(f"/webpush/admin/notifications/{nid}/deliveries.csv")
    assert csv.status_code == 200 and "Cześć Ola" in csv.text and "Hi Ann" in csv.text


def test_an_audience_whose_longest_value_overflows_one_language_only_is_refused(
        sending: SendingHost) -> None:
    """The audience's summary (longest value per var) is checked in every language: the
    Polish text, longer, overflows with the longest member's value; the English fits."""
    from flask_webpush_targeted.audiences import store_audience
    from flask_webpush_targeted.payload import MAX_PLAINTEXT

    with sending.app.app_context():
        audience, _ = store_audience(
            sending.db, sending.webpush.models,
            [(1, "1", {"n": "A"}, None), (2, "2", {"n": "ż" * 900}, None)], name="big")
        title = {"en": "Hi {n}", "pl": "Cześć {n}"}
        with pytest.raises(InvalidNotification, match="'pl'"):
            sending.webpush.notify_users(audience=audience.id, title=title,
                                         body={"en": "short", "pl": "ą" * 1000})
        nid = sending.webpush.notify_users(audience=audience.id, title=title,
                                           body={"en": "short", "pl": "ą" * 500}).id
    assert nid
    subs = {"1": _subscribe_in(sending, "1", "pl"), "2": _subscribe_in(sending, "2", "pl")}
    sending.run_worker()
    for uid, sub in subs.items():
        [push] = sending.push_service.received_for(sub.endpoint)
        assert push.ok and len(push.payload) <= MAX_PLAINTEXT, uid
        assert push.notification()["title"].startswith("Cześć "), uid


def test_a_head_request_is_not_a_click(sending: SendingHost) -> None:
    """Flask answers HEAD with the GET view: a HEAD of the click URL (a link checker, a
    preview, a proxy's probe) redirects the same way and counts nothing; only a GET by a
    browser is a person clicking."""
    sub = sending.subscribe("1")
    with sending.app.app_context():
        nid = sending.webpush.notify_user("1", title="Sale", url="/sale").id
    sending.run_worker()
    answer = sending.app.test_client().head(_click_path(sending, sub))
    assert answer.status_code == 302
    assert _clicked(sending, nid) == 0


def test_the_legacy_format_says_the_language_too(make_host: Any) -> None:
    """docs/api.md: "The message then says its language (lang)", in the legacy format too:
    a Polish device gets Polish text with ``lang``, which the service worker passes on to
    showNotification."""
    host = make_host(WEBPUSH_PAYLOAD_FORMAT="legacy")
    pl = _subscribe_in(host, "1", "pl-PL")
    with host.app.app_context():
        host.webpush.notify_user("1", title=TITLE, url="/")
    host.run_worker()
    got = _message(host, pl)
    assert got["title"] == TITLE["pl"] and "texts" not in got
    assert got.get("lang") == "pl", got


def test_switching_to_declarative_with_a_full_legacy_message_queued(make_host: Any) -> None:
    """docs/design.md: "the format can change while messages of the other are still
    queued". A message that fit the legacy format when notify_users checked it, sent after
    the switch to "declarative" (or to a longer WEBPUSH_SITE_URL / URL prefix), is ~110
    bytes past the limit: its delivery ends failed with a reason that says why, never left
    "sending" and claimed (an error in one message fails that message, and is recorded)."""
    from flask_webpush_targeted.payload import MAX_PLAINTEXT, message_format
    from flask_webpush_targeted.tracking import MAX_TOKEN_LENGTH

    host = make_host(WEBPUSH_PAYLOAD_FORMAT="legacy")
    sub = host.subscribe("1")
    base = {"title": "T", "body": "", "url": "/", "tag": "webpush-" + "9" * 20}
    with host.app.app_context():
        room = MAX_PLAINTEXT - len(message_format().encoder(base)("x" * MAX_TOKEN_LENGTH))
        nid = host.webpush.notify_user("1", title="T", body="b" * room).id
    done = host.run_worker(WEBPUSH_PAYLOAD_FORMAT="declarative")
    [delivery] = host.deliveries(nid)
    received = host.push_service.received_for(sub.endpoint)
    # What should happen: sent (in the format it was checked in, or after a re-check), or a
    # final failure saying why; never a message past the limit, nor a worker error.
    assert delivery.status in ("sent", "failed"), (delivery.status, delivery.reason,
                                                   done.stderr[-2000:])
    for push in received:
        assert len(push.payload or b"") <= MAX_PLAINTEXT
