"""Declarative Web Push (the default format) and the click route ``GET <prefix>/c/<token>``.

The messages are the ones a real worker sent through the local push service, which
decrypts them; ``webkit_parse`` reads them with the rules of WebKit's parser
(NotificationJSONParser.cpp), which Safari 18.4 uses to show a push without running the
service worker.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import SendingHost

from flask_webpush_targeted.exceptions import ConfigurationError, PayloadTooLarge
from flask_webpush_targeted.tracking import make_token, read_token

SITE = "https://shop.example"


class NotDeclarative(ValueError):
    """What WebKit's parser refuses (it then hands the message to the service worker)."""


def _absolute_url(value: Any, name: str) -> str:
    # The parser has no base URL: only an absolute http(s) URL is a URL to it.
    if not isinstance(value, str):
        raise NotDeclarative(f"{name} is not a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotDeclarative(f"{name} is not an absolute URL: {value!r}")
    return value


def webkit_parse(message: Any) -> dict[str, Any]:
    """The notification WebKit would show for ``message``, by its parser's rules."""
    if not isinstance(message, dict):
        raise NotDeclarative("the message is not a JSON object")
    magic = message.get("web_push")
    if type(magic) is not int or magic != 8030:
        raise NotDeclarative("web_push is not the number 8030")
    note = message.get("notification")
    if not isinstance(note, dict):
        raise NotDeclarative("notification is not an object")
    title = note.get("title")
    if not isinstance(title, str) or not title:
        raise NotDeclarative("title is required and must be a non-empty string")
    shown = {"title": title, "navigate": _absolute_url(note.get("navigate"), "navigate")}
    for name in ("body", "lang", "tag"):
        if name in note:
            if not isinstance(note[name], str):
                raise NotDeclarative(f"{name} is not a string")
            shown[name] = note[name]
    if "dir" in note and note["dir"] not in ("auto", "ltr", "rtl"):
        raise NotDeclarative("dir is not auto, ltr or rtl")
    if "icon" in note:
        shown["icon"] = _absolute_url(note["icon"], "icon")
    for name in ("silent", "mutable"):
        if name in note:
            if not isinstance(note[name], bool):
                raise NotDeclarative(f"{name} is not a boolean")
            shown[name] = note[name]
    if "app_badge" in note and (isinstance(note["app_badge"], bool)
                                or not isinstance(note["app_badge"], (int, float))):
        raise NotDeclarative("app_badge is not a number")
    if "data" in note:
        shown["data"] = note["data"]
    return shown


def test_the_rules_refuse_what_webkit_refuses() -> None:
    good = {"web_push": 8030, "notification": {"title": "T", "navigate": f"{SITE}/"}}
    assert webkit_parse(good)["title"] == "T"
    for bad in ({**good, "web_push": "8030"}, {**good, "web_push": True},
                {"web_push": 8030}, {**good, "notification": {"title": "", "navigate": SITE}},
                {**good, "notification": {"title": "T", "navigate": "/relative"}},
                {**good, "notification": {"title": "T", "navigate": SITE, "mutable": "yes"}},
                {**good, "notification": {"title": "T", "navigate": SITE, "icon": "/i.png"}},
                {**good, "notification": {"title": "T", "navigate": SITE, "app_badge": "1"}}):
        with pytest.raises(NotDeclarative):
            webkit_parse(bad)


def _send(host: SendingHost, user: str = "1", **options: Any) -> tuple[int, Any]:
    sub = host.subscribe(user)
    with host.app.app_context():
        nid = host.webpush.notify_user(user, **options).id
    host.run_worker()
    [push] = host.push_service.received_for(sub.endpoint)
    return nid, push


def test_a_sent_message_is_declarative_by_webkit_rules(sending: SendingHost) -> None:
    nid, push = _send(
        sending, title="Flight LO123 boards at gate 12", body="Boarding closes 10:40.",
        url="/trips/42?x=1", icon="/static/icon.png", image="/img.png", badge="/b.png",
        tag="trip", actions=[{"action": "open", "title": "Open"}], data={"trip": 42},
        require_interaction=True, silent=True)
    shown = webkit_parse(push.json())
    [delivery] = sending.deliveries(nid)
    token = shown["data"]["token"]
    assert shown["navigate"] == f"{SITE}/webpush/c/{token}"
    with sending.app.app_context():
        assert read_token(token) == delivery.id
    assert (shown["title"], shown["body"], shown["tag"], shown["icon"]) == (
        "Flight LO123 boards at gate 12", "Boarding closes 10:40.", "trip",
        f"{SITE}/static/icon.png")
    assert shown["silent"] is True and shown["mutable"] is True
    # What the declarative format has no place for, the service worker reads from data.
    assert shown["data"]["url"] == "/trips/42?x=1"
    assert shown["data"]["actions"] == [{"action": "open", "title": "Open"}]
    assert shown["data"]["data"] == {"trip": 42}
    assert (shown["data"]["image"], shown["data"]["badge"]) == ("/img.png", "/b.png")
    assert shown["data"]["require_interaction"] is True
    assert "lang" not in shown  # one text for everyone: no language is claimed


def test_the_legacy_format_keeps_the_package_json(make_host: Any) -> None:
    host = make_host(WEBPUSH_PAYLOAD_FORMAT="legacy")
    _nid, push = _send(host, title="Hello", url="/p/1")
    message = push.json()
    assert "web_push" not in message and message["title"] == "Hello"
    assert message["url"] == "/p/1" and message["token"]


def test_the_size_limit_is_checked_on_the_format_that_is_sent(make_host: Any) -> None:
    from flask_webpush_targeted.payload import MAX_PLAINTEXT, message_format
    from flask_webpush_targeted.tracking import MAX_TOKEN_LENGTH

    declarative, legacy = make_host(), make_host(WEBPUSH_PAYLOAD_FORMAT="legacy")
    base = {"title": "T", "body": "", "url": "/", "tag": "webpush-" + "9" * 20}
    token = "x" * MAX_TOKEN_LENGTH
    with declarative.app.app_context():
        room = MAX_PLAINTEXT - len(message_format().encoder(base)(token))
    with legacy.app.app_context():
        legacy_room = MAX_PLAINTEXT - len(message_format().encoder(base)(token))
    assert legacy_room > room  # the declarative wrapper and the click URL take bytes
    body = "b" * (room + 1)  # fits the legacy format, not the declarative one
    with legacy.app.app_context():
        assert legacy.webpush.notify_user("1", title="T", body=body)
    with declarative.app.app_context(), pytest.raises(PayloadTooLarge):
        declarative.webpush.notify_user("1", title="T", body=body)


def test_declarative_needs_the_site_url_and_says_how_to_choose(make_app: Any) -> None:
    with pytest.raises(ConfigurationError, match="WEBPUSH_SITE_URL must be set.*legacy"):
        make_app(WEBPUSH_SITE_URL=None)
    app, _db, _webpush = make_app(WEBPUSH_SITE_URL=None, WEBPUSH_PAYLOAD_FORMAT="legacy")
    assert app.config["WEBPUSH_PAYLOAD_FORMAT"] == "legacy"
    for bad in ({"WEBPUSH_PAYLOAD_FORMAT": "json"},
                {"WEBPUSH_SITE_URL": "https://shop.example/path"},
                {"WEBPUSH_SITE_URL": "shop.example"}, {"WEBPUSH_DEFAULT_LANGUAGE": "english!"}):
        with pytest.raises(ConfigurationError):
            make_app(**bad)


# -- the click route ------------------------------------------------------------------------


def _counts(host: SendingHost, nid: int) -> tuple[int, int]:
    with host.app.app_context():
        stats = host.webpush.stats(nid)
    return stats["clicked"], stats["displayed"]


def test_a_click_counts_once_and_lands_on_the_notification_url(sending: SendingHost) -> None:
    nid, push = _send(sending, title="Sale", url="/sale?from=push",
                      actions=[{"action": "cart", "title": "Cart"}])
    navigate = push.notification()["navigate"]
    http = sending.app.test_client()
    path = urlsplit(navigate).path
    answer = http.get(path + "?action=cart")
    assert answer.status_code == 302 and answer.headers["Location"] == f"{SITE}/sale?from=push"
    assert answer.headers["Cache-Control"] == "no-store"
    assert _counts(sending, nid) == (1, 1)  # a click proves the notification was shown
    again = http.get(path)
    assert again.status_code == 302 and again.headers["Location"] == f"{SITE}/sale?from=push"
    assert _counts(sending, nid) == (1, 1)
    [delivery] = sending.deliveries(nid)
    assert delivery.clicked_at is not None and delivery.action == "cart"


def test_an_action_the_notification_did_not_offer_is_not_kept(sending: SendingHost) -> None:
    nid, push = _send(sending, title="Sale", url="/sale")
    path = urlsplit(push.notification()["navigate"]).path
    sending.app.test_client().get(path + "?action=" + "x" * 500)
    [delivery] = sending.deliveries(nid)
    assert delivery.clicked_at is not None and delivery.action is None


def test_forged_expired_and_unknown_tokens_go_to_the_root_and_count_nothing(
        sending: SendingHost) -> None:
    nid, push = _send(sending, title="Sale", url="/sale")
    token = push.notification()["token"]
    [delivery] = sending.deliveries(nid)
    with sending.app.app_context():
        expired = make_token(delivery.id, time.time() - 1)
        unknown = make_token(delivery.id + 10_000, time.time() + 3600)
    data, mac = token.split(".")
    forged = f"{data}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    http = sending.app.test_client()
    for bad in (forged, expired, unknown, "nonsense", "a/b/c", "%00", "x" * 5000, "%ED%B3%BF"):
        answer = http.get(f"/webpush/c/{bad}")
        assert answer.status_code == 302, bad
        assert answer.headers["Location"] == f"{SITE}/", bad
    assert _counts(sending, nid) == (0, 0)


def test_a_stored_url_off_the_site_leads_to_the_root(sending: SendingHost) -> None:
    nid, push = _send(sending, title="Sale", url="/sale")
    N = sending.webpush.models.Notification
    http = sending.app.test_client()
    path = urlsplit(push.notification()["navigate"]).path
    for off_site in ("//evil.example/x", "https://evil.example/", "/\\evil.example",
                     "https://shop.example@evil.example/", "javascript:alert(1)"):
        with sending.app.app_context():
            n = sending.db.session.get(N, nid)
            n.payload = {**n.payload, "url": off_site}  # edited by hand, past every check
            sending.db.session.commit()
        answer = http.get(path)
        assert answer.headers["Location"] == f"{SITE}/", off_site


def test_each_recipient_lands_on_their_own_url(sending: SendingHost) -> None:
    subs = {uid: sending.subscribe(uid) for uid in ("1", "2")}
    with sending.app.app_context():
        nid = sending.webpush.notify_users(recipients=[
            {"user": "1", "vars": {"trip": "LO 123"}}, {"user": "2", "vars": {"trip": "/evil"}}],
            title="Your trip", url="/trips/{trip}").id
    sending.run_worker()
    http = sending.app.test_client()
    landed = {}
    for uid, sub in subs.items():
        [push] = sending.push_service.received_for(sub.endpoint)
        landed[uid] = http.get(urlsplit(push.notification()["navigate"]).path).headers["Location"]
    assert landed == {"1": f"{SITE}/trips/LO%20123", "2": f"{SITE}/trips/%2Fevil"}
    assert _counts(sending, nid) == (2, 2)


def test_the_click_route_is_on_the_prefix_and_the_service_worker_knows_it(
        make_app: Any) -> None:
    app, _db, _webpush = make_app(WEBPUSH_URL_PREFIX="/shop/push")
    script = app.test_client().get("/shop/push/sw.js").text
    assert 'const CLICK_URL = "/shop/push/c/";' in script
    answer = app.test_client().get("/shop/push/c/nonsense")
    assert answer.status_code == 302 and answer.headers["Location"] == f"{SITE}/"


def test_past_the_rate_limit_a_click_still_lands_but_is_not_counted(make_host: Any) -> None:
    host = make_host(WEBPUSH_EVENTS_RATE_LIMIT=2)
    sub = host.subscribe("1")
    with host.app.app_context():
        nids = [host.webpush.notify_user("1", title=f"Sale {i}", url=f"/sale/{i}").id
                for i in range(3)]
    host.run_worker()
    pushes = sorted(host.push_service.received_for(sub.endpoint),
                    key=lambda p: p.notification()["title"])
    http = host.app.test_client()
    answers = [http.get(urlsplit(p.notification()["navigate"]).path) for p in pushes]
    # A person clicking is never shown an error: past the limit the browser still goes to
    # the page, and the click is not counted.
    assert [a.headers["Location"] for a in answers] == [f"{SITE}/sale/{i}" for i in range(3)]
    assert [_counts(host, nid)[0] for nid in nids] == [1, 1, 0]


def test_a_received_push_reads_either_format_in_one_shape() -> None:
    import json

    from flask_webpush_targeted.testing.push_service import ReceivedPush

    def push(message: Any) -> ReceivedPush:
        return ReceivedPush("s", "https://push.example/s", 60, None, None, {}, b"",
                            json.dumps(message).encode(), 201, 0.0)

    legacy = {"title": "T", "url": "/", "token": "t"}
    assert push(legacy).notification() == legacy
    declared = {"web_push": 8030, "notification": {
        "title": "T", "navigate": f"{SITE}/webpush/c/t", "lang": "pl",
        "data": {"url": "/", "token": "t"}}}
    assert push(declared).notification() == {
        "title": "T", "navigate": f"{SITE}/webpush/c/t", "lang": "pl", "url": "/", "token": "t"}
    # Not the package's: as it came.
    for other in ([1, 2], {"web_push": 8031, "notification": {"title": "T"}}, "text"):
        assert push(other).notification() == other
