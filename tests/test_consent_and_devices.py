"""The consent ledger, withdrawal (JSON and form), the devices page, the opt-in widget,
template overrides, and the service worker and static files."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import VAPID_PUBLIC, LoggedInClient, make_subscription
from flask import Flask

from flask_webpush_targeted import WebPush, signals
from flask_webpush_targeted.subscriptions import SubscriptionStore

WITHDRAW = "/webpush/consent/withdraw"
DEVICES = "/webpush/devices"


# -- helpers -------------------------------------------------------------------------------


def subs(app: Flask, webpush: WebPush) -> dict[int, Any]:
    """id -> (user_id, revoked_at, revoked_reason), read in a fresh session."""
    Sub = webpush.models.Subscription
    with app.app_context():
        return {s.id: (s.user_id, s.revoked_at, s.revoked_reason)
                for s in webpush.db.session.scalars(sa.select(Sub))}


def ledger_rows(app: Flask, webpush: WebPush) -> list[tuple[Any, ...]]:
    """Every column of every consent row, in id order, read in a fresh session."""
    table = webpush.models.Consent.__table__
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(
            sa.select(table).order_by(table.c.id))]


def ledger(app: Flask, webpush: WebPush) -> list[tuple[Any, ...]]:
    C = webpush.models.Consent
    with app.app_context():
        return [tuple(r) for r in webpush.db.session.execute(
            sa.select(C.user_id, C.action, C.reason, C.subscription_id).order_by(C.id))]


class Tags(HTMLParser):
    """Collects (tag, attrs) of every start tag."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs: str | None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags
                if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def device_ids_on_page(html: str) -> set[int]:
    return {int(i) for i in re.findall(r'data-subscription-id="(\d+)"', html)}


# -- the consent ledger and withdrawal -----------------------------------------------------


def test_consent_ledger_is_append_only(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    a = client.subscribe(make_subscription()).get_json()["id"]
    b = client.subscribe(make_subscription()).get_json()["id"]
    granted = ledger_rows(app, webpush)
    assert [(r[1], r[2], r[3]) for r in granted] == [("1", a, "granted"), ("1", b, "granted")]

    client.delete(f"/webpush/subscriptions/{a}")
    after_revoke = ledger_rows(app, webpush)
    assert after_revoke[:2] == granted and len(after_revoke) == 3

    assert client.post_json(WITHDRAW, {}).status_code == 200
    after_withdraw = ledger_rows(app, webpush)
    assert after_withdraw[:3] == after_revoke and len(after_withdraw) == 4
    assert ledger(app, webpush) == [("1", "granted", None, a), ("1", "granted", None, b),
                                    ("1", "withdrawn", "device_revoked", a),
                                    ("1", "withdrawn", "user", None)]


def test_json_withdraw_revokes_all_the_users_devices_and_adds_a_ledger_row(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    mine = [client.subscribe(make_subscription()).get_json()["id"] for _ in range(3)]
    client.delete(f"/webpush/subscriptions/{mine[2]}")  # already revoked: stays as it was
    theirs = other_client.subscribe(make_subscription()).get_json()["id"]
    before = subs(app, webpush)
    events: list[Any] = []
    with signals.subscription_revoked.connected_to(
            lambda sender, **kw: events.append((kw["subscription"].id, kw["reason"])), app), \
            signals.consent_withdrawn.connected_to(
                lambda sender, **kw: events.append(("withdrawn", kw["user_id"])), app):
        resp = client.post_json(WITHDRAW, {})
    assert resp.status_code == 200
    assert resp.get_json() == {"withdrawn": True, "devices_revoked": 2}
    after = subs(app, webpush)
    for sid in mine[:2]:
        assert after[sid][1] is not None and after[sid][2] == "consent_withdrawn"
    assert after[mine[2]] == before[mine[2]]
    assert after[theirs] == before[theirs] and after[theirs][1] is None
    assert ledger(app, webpush)[-1] == ("1", "withdrawn", "user", None)
    assert sorted(events, key=str) == sorted(
        [(mine[0], "consent_withdrawn"), (mine[1], "consent_withdrawn"), ("withdrawn", "1")],
        key=str)
    assert client.http.get(DEVICES).status_code == 200
    assert device_ids_on_page(client.http.get(DEVICES).get_data(as_text=True)) == set()


def test_json_withdraw_needs_csrf_and_login(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    client.subscribe(make_subscription())
    before = (subs(app, webpush), ledger_rows(app, webpush))
    resp = client.http.post(WITHDRAW, json={})
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "csrf_failed"
    resp = app.test_client().post(WITHDRAW, json={}, headers={"X-CSRF-Token": client.csrf})
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "login_required"
    assert (subs(app, webpush), ledger_rows(app, webpush)) == before


def test_withdraw_is_one_transaction_a_failing_ledger_insert_rolls_back_the_revocation(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [client.subscribe(make_subscription()).get_json()["id"] for _ in range(2)]
    ledger_before = ledger_rows(app, webpush)
    Sub = webpush.models.Subscription
    seen_in_transaction: list[int] = []

    def failing_ledger(self: SubscriptionStore, user_id: str, action: str, **kw: Any) -> None:
        # the bulk update has run in this transaction: prove it, then fail
        seen_in_transaction.append(self.db.session.scalar(
            sa.select(sa.func.count()).select_from(Sub).where(Sub.revoked_at.is_not(None))))
        raise RuntimeError("ledger insert failed")

    monkeypatch.setattr(SubscriptionStore, "_ledger", failing_ledger)
    with pytest.raises(RuntimeError, match="ledger insert failed"):
        client.post_json(WITHDRAW, {})
    assert seen_in_transaction == [2]
    # read in a fresh session: the revocation was never committed
    assert all(row[1] is None for row in subs(app, webpush).values())
    assert sorted(subs(app, webpush)) == sorted(ids)
    assert ledger_rows(app, webpush) == ledger_before


def test_form_withdraw_from_the_devices_page_redirects_303_with_done_message(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sid = client.subscribe(make_subscription()).get_json()["id"]
    resp = client.http.post(WITHDRAW, data={"csrf_token": client.csrf})
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/webpush/devices?done=withdrawn"
    assert subs(app, webpush)[sid][2] == "consent_withdrawn"
    page = client.http.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Your consent is withdrawn" in page
    assert device_ids_on_page(page) == set()


@pytest.mark.parametrize("token", [None, "forged"])
def test_form_withdraw_without_the_token_is_a_400_html_page_and_changes_nothing(
        app: Flask, webpush: WebPush, client: LoggedInClient, token: str | None) -> None:
    client.subscribe(make_subscription())
    before = (subs(app, webpush), ledger_rows(app, webpush))
    resp = client.http.post(WITHDRAW, data={} if token is None else {"csrf_token": token})
    assert resp.status_code == 400
    assert resp.mimetype == "text/html"
    assert "reload the devices page" in resp.get_data(as_text=True)
    assert (subs(app, webpush), ledger_rows(app, webpush)) == before


# -- the devices page ----------------------------------------------------------------------


def test_devices_page_redirects_an_anonymous_visitor_to_the_hosts_login(
        make_app: Callable[..., Any]) -> None:
    app, _, _ = make_app()
    http = app.test_client()
    for resp in (http.get(DEVICES), http.post(f"{DEVICES}/1/revoke"),
                 http.post(WITHDRAW, data={"csrf_token": "x"})):
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")


def test_devices_page_lists_own_active_devices_with_label_added_and_last_used(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    laptop = client.subscribe(make_subscription(), device_label="Work laptop").get_json()["id"]
    phone = client.subscribe(make_subscription(), device_label="Phone").get_json()["id"]
    old = client.subscribe(make_subscription(), device_label="Old tablet").get_json()["id"]
    client.delete(f"/webpush/subscriptions/{old}")
    other_client.subscribe(make_subscription(), device_label="Somebody else's PC")

    resp = client.http.get(DEVICES)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert device_ids_on_page(html) == {laptop, phone}
    assert "Work laptop" in html and "Phone" in html
    assert "Old tablet" not in html and "Somebody else" not in html
    with app.app_context():
        row = webpush.db.session.get(webpush.models.Subscription, laptop)
        added, last_used = row.created_at, row.last_seen_at
    assert f'<time datetime="{added.isoformat()}">' in html
    assert f'<time datetime="{last_used.isoformat()}">' in html
    assert added.strftime("%Y-%m-%d %H:%M UTC") in html
    forms = Tags(html).find("input", name="csrf_token")
    assert forms and all(f["value"] == client.csrf for f in forms)


def test_devices_page_revoke_own_device_is_303_and_revokes_it(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    keep = client.subscribe(make_subscription()).get_json()["id"]
    drop = client.subscribe(make_subscription()).get_json()["id"]
    resp = client.http.post(f"{DEVICES}/{drop}/revoke", data={"csrf_token": client.csrf})
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/webpush/devices?done=revoked"
    state = subs(app, webpush)
    assert state[drop][1] is not None and state[drop][2] == "device_revoked"
    assert state[keep][1] is None
    assert ledger(app, webpush)[-1] == ("1", "withdrawn", "device_revoked", drop)
    page = client.http.get(resp.headers["Location"]).get_data(as_text=True)
    assert "The device was removed" in page and device_ids_on_page(page) == {keep}


def test_devices_page_revoke_of_another_users_device_is_a_404_html_page(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    theirs = other_client.subscribe(make_subscription()).get_json()["id"]
    before = (subs(app, webpush), ledger_rows(app, webpush))
    for sid in (theirs, theirs + 1000):
        resp = client.http.post(f"{DEVICES}/{sid}/revoke", data={"csrf_token": client.csrf})
        assert resp.status_code == 404
        assert resp.mimetype == "text/html"
    assert (subs(app, webpush), ledger_rows(app, webpush)) == before


@pytest.mark.parametrize("sid", [2**31, 2**63, 10**30])
def test_devices_page_revoke_of_an_id_beyond_the_column_is_a_404_html_page(
        app: Flask, webpush: WebPush, client: LoggedInClient, sid: int) -> None:
    # <int:...> in the route takes any size; the database refused the query (a 500).
    client.subscribe(make_subscription())
    before = (subs(app, webpush), ledger_rows(app, webpush))
    resp = client.http.post(f"{DEVICES}/{sid}/revoke", data={"csrf_token": client.csrf})
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "You have no device with this id." in resp.get_data(as_text=True)
    assert (subs(app, webpush), ledger_rows(app, webpush)) == before


def test_devices_page_revoke_without_csrf_is_400_and_changes_nothing(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sid = client.subscribe(make_subscription()).get_json()["id"]
    before = (subs(app, webpush), ledger_rows(app, webpush))
    for data in ({}, {"csrf_token": "forged"}):
        resp = client.http.post(f"{DEVICES}/{sid}/revoke", data=data)
        assert resp.status_code == 400 and resp.mimetype == "text/html"
    assert (subs(app, webpush), ledger_rows(app, webpush)) == before


# -- the opt-in widget ---------------------------------------------------------------------


def test_widget_renders_consent_text_version_token_key_checkboxes_and_disabled_button(
        make_app: Callable[..., Any]) -> None:
    text = 'We send order news & offers to <this> browser, "linked" to you.'
    app, _, _ = make_app(WEBPUSH_CONSENT_TEXT=text, WEBPUSH_CONSENT_VERSION="2024-06")
    client = LoggedInClient(app, "1")
    resp = client.http.get("/widget")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "We send order news &amp; offers to &lt;this&gt; browser" in html  # escaped
    assert "<this>" not in html
    assert "2024-06" in html
    tags = Tags(html)
    [section] = [a for t, a in tags.tags if t == "section" and "data-webpush-optin" in a]
    assert section["data-csrf-token"] == client.csrf
    assert section["data-vapid-key"] == VAPID_PUBLIC
    assert section["data-consent-version"] == "2024-06"
    assert section["data-sw-url"] == "/webpush/sw.js"
    assert section["data-sw-scope"] == "/webpush/"
    boxes = [a for t, a in tags.tags if t == "input" and a.get("type") == "checkbox"]
    assert sorted(a["data-webpush-consent"] or "" for a in boxes) == [
        "link_to_account", "notifications"]
    assert all("checked" not in a for a in boxes)
    [enable] = [a for t, a in tags.tags if t == "button" and "data-webpush-enable" in a]
    assert "disabled" in enable
    assert tags.find("script", src="/webpush/static/webpush/webpush.js")
    assert tags.find("link", href="/webpush/static/webpush/webpush.css")
    # the version the widget shows is the one the API accepts
    assert client.subscribe(make_subscription(), version="2024-06").status_code == 201


def test_widget_in_the_conftest_host_shows_the_default_consent_text(
        app: Flask, client: LoggedInClient) -> None:
    html = client.http.get("/widget").get_data(as_text=True)
    assert app.config["WEBPUSH_CONSENT_TEXT"]["en"] in html  # the English of the default
    assert f'data-csrf-token="{client.csrf}"' in html


# -- template overrides and the host's base template ---------------------------------------


def test_host_template_folder_overrides_the_widget_and_the_devices_page(
        make_app: Callable[..., Any], tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    (folder / "webpush").mkdir(parents=True)
    (folder / "webpush" / "optin.html").write_text(
        '<div id="shop-optin" data-key="{{ vapid_public_key }}">{{ consent_text }}'
        "|{{ consent_version }}|{{ csrf_token }}</div>")
    (folder / "webpush" / "devices.html").write_text(
        '<ul id="shop-devices">{% for s in subscriptions %}<li>{{ s.label }}</li>'
        "{% endfor %}</ul>")
    app, _, _ = make_app(template_folder=folder, WEBPUSH_CONSENT_TEXT="Shop words")
    client = LoggedInClient(app, "1")
    client.subscribe(make_subscription(), device_label="Kitchen tablet")

    widget = client.http.get("/widget").get_data(as_text=True)
    assert f'<div id="shop-optin" data-key="{VAPID_PUBLIC}">Shop words|1|{client.csrf}</div>' \
        in widget
    assert "data-webpush-optin" not in widget
    devices = client.http.get(DEVICES).get_data(as_text=True)
    assert devices == '<ul id="shop-devices"><li>Kitchen tablet</li></ul>'


def test_base_template_setting_makes_the_devices_page_extend_the_hosts_layout(
        make_app: Callable[..., Any], tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "shop_base.html").write_text(
        "<html><body><header>ACME SHOP HEADER</header>"
        "<main>{% block content %}{% endblock %}</main></body></html>")
    app, _, _ = make_app(template_folder=folder, WEBPUSH_BASE_TEMPLATE="shop_base.html")
    client = LoggedInClient(app, "1")
    client.subscribe(make_subscription(), device_label="Kitchen tablet")
    html = client.http.get(DEVICES).get_data(as_text=True)
    assert html.startswith("<html><body><header>ACME SHOP HEADER</header><main>")
    assert "Kitchen tablet" in html and "Withdraw my consent" in html
    assert 'class="webpush-page"' not in html  # the packaged layout is not used


def test_devices_page_uses_the_packaged_layout_by_default(
        app: Flask, client: LoggedInClient) -> None:
    html = client.http.get(DEVICES).get_data(as_text=True)
    assert 'class="webpush-page"' in html and "<title>My devices</title>" in html


# -- service worker, static files, key -----------------------------------------------------


def test_service_worker_is_served_with_its_headers_and_all_handlers(app: Flask) -> None:
    resp = app.test_client().get("/webpush/sw.js")
    assert resp.status_code == 200
    assert resp.mimetype == "application/javascript"
    assert resp.headers["Service-Worker-Allowed"] == app.config["WEBPUSH_SW_SCOPE"] == "/webpush/"
    assert resp.headers["Cache-Control"] == "no-cache"
    js = resp.get_data(as_text=True)
    assert f'"{VAPID_PUBLIC}"' in js
    assert "{{" not in js and "{%" not in js
    chunks = re.split(r"self\.addEventListener\(", js)
    handlers = {re.match(r"'(\w+)'", c).group(1): c for c in chunks[1:]  # type: ignore[union-attr]
                if re.match(r"'(\w+)'", c)}
    for event in ("push", "notificationclick", "notificationclose", "pushsubscriptionchange"):
        assert event in handlers, event
        assert "event.waitUntil(" in handlers[event], event
    assert "showNotification(" in handlers["push"]
    assert "/webpush/subscriptions/rotate" in js


@pytest.mark.parametrize(("path", "mimetype", "needle"), [
    ("/webpush/static/webpush/webpush.js", ("text/javascript", "application/javascript"),
     "pushManager.subscribe"),
    ("/webpush/static/webpush/webpush.css", ("text/css",), ".webpush-optin"),
])
def test_client_script_and_styles_are_served(
        app: Flask, path: str, mimetype: tuple[str, ...], needle: str) -> None:
    resp = app.test_client().get(path)
    assert resp.status_code == 200
    assert resp.mimetype in mimetype
    assert needle in resp.get_data(as_text=True)
    resp.close()


def test_vapid_public_key_route_returns_the_configured_key(app: Flask) -> None:
    resp = app.test_client().get("/webpush/vapid-public-key")
    assert resp.status_code == 200
    assert resp.get_json() == {"public_key": app.config["WEBPUSH_VAPID_PUBLIC_KEY"]}
