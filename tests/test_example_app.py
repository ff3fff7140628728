"""The example shop: seeded accounts, login, the account page with the widget, devices."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import REDIS_URL, VAPID_PRIVATE, VAPID_PUBLIC, csrf_of, log_in, make_subscription
from flask import Flask

from example_app import create_app, db
from example_app.models import DEMO_USERS, seed


@pytest.fixture
def shop(db_url: str) -> Iterator[Flask]:
    app = create_app({
        "TESTING": True, "SECRET_KEY": "shop-test", "SQLALCHEMY_DATABASE_URI": db_url,
        "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
        "WEBPUSH_REDIS_URL": REDIS_URL,
    })
    with app.app_context():
        db.create_all()
        seed()
    yield app
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def test_seeded_customers_and_admin_can_log_in(shop: Flask) -> None:
    for email, _name, password, _admin in DEMO_USERS:
        client = shop.test_client()
        response = log_in(client, email, password)
        assert response.status_code == 302 and response.location.endswith("/account")


def test_wrong_password_is_refused_with_a_message(shop: Flask) -> None:
    response = log_in(shop.test_client(), "alice@example.com", "nope")
    assert response.status_code == 200
    assert "Wrong email or password." in response.get_data(as_text=True)


def test_login_without_csrf_token_is_refused(shop: Flask) -> None:
    client = shop.test_client()
    client.get("/login")
    response = client.post("/login", data={"email": "alice@example.com",
                                           "password": "alice-pass"})
    assert response.status_code == 400


def test_login_never_redirects_off_site(shop: Flask) -> None:
    client = shop.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=//evil.example/", data={
        "email": "alice@example.com", "password": "alice-pass", "csrf_token": token})
    assert response.location.endswith("/account")


@pytest.mark.parametrize("target", [
    "/%09/evil.example/",  # a browser drops the tab: //evil.example/
    "/%0a/evil.example/", "/%0d%0a/evil.example/", "/%5cevil.example/", "%5c%5cevil.example/",
    "/%5c/evil.example/", "%20//evil.example/", "https://evil.example/", "javascript:alert(1)",
    "/%00/evil.example/",
])
def test_login_refuses_next_targets_a_browser_would_take_off_site(
        shop: Flask, target: str) -> None:
    client = shop.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(f"/login?next={target}", data={
        "email": "alice@example.com", "password": "alice-pass", "csrf_token": token})
    assert response.status_code == 302 and response.location == "/account", response.location


def test_login_follows_a_local_next_path(shop: Flask) -> None:
    client = shop.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=/products/2%3Fcolour%3Dred", data={
        "email": "alice@example.com", "password": "alice-pass", "csrf_token": token})
    assert response.status_code == 302 and response.location == "/products/2?colour=red"


def test_product_pages_are_public(shop: Flask) -> None:
    client = shop.test_client()
    assert "Rain jacket" in client.get("/").get_data(as_text=True)
    assert client.get("/products/2").status_code == 200
    assert client.get("/products/999").status_code == 404


def test_account_page_needs_login_and_shows_the_optin_widget(shop: Flask) -> None:
    client = shop.test_client()
    assert "/login" in client.get("/account").location
    log_in(client, "alice@example.com", "alice-pass")
    html = client.get("/account").get_data(as_text=True)
    assert "data-webpush-optin" in html
    assert shop.config["WEBPUSH_CONSENT_TEXT"]["en"] in html
    assert f'data-vapid-key="{VAPID_PUBLIC}"' in html


def test_devices_page_wears_the_shops_look_and_lists_the_device(shop: Flask) -> None:
    client = shop.test_client()
    log_in(client, "bob@example.com", "bob-pass")
    html = client.get("/account").get_data(as_text=True)
    token = re.search(r'data-csrf-token="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    response = client.post("/webpush/subscriptions", headers={"X-CSRF-Token": token}, json={
        "subscription": make_subscription(),
        "consent": {"notifications": True, "link_to_account": True, "text_version": "1"}})
    assert response.status_code == 201
    page = client.get("/webpush/devices").get_data(as_text=True)
    assert "Example shop" in page  # the shop's base template
    assert f'data-subscription-id="{response.get_json()["id"]}"' in page


def test_logout_needs_the_form_token(shop: Flask) -> None:
    client = shop.test_client()
    log_in(client, "carol@example.com", "carol-pass")
    assert client.post("/logout").status_code == 400
    token = csrf_of(client.get("/account").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert "/login" in client.get("/account").location
