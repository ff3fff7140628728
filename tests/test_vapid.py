"""VAPID as push services check it: a subject the config accepts signs for real (py_vapid's
own rules, and what Apple refuses, are refused at init_app with the reason), and the
``aud`` claim is the endpoint's RFC 6454 origin, whatever case and port it is written with."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import make_host_app
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC
from py_vapid import Vapid02

from flask_webpush_targeted import ConfigurationError
from flask_webpush_targeted.testing import LocalPushService
from flask_webpush_targeted.transport.b64url import b64url_decode
from flask_webpush_targeted.transport.guard import EndpointGuard
from flask_webpush_targeted.transport.origins import origin_of
from flask_webpush_targeted.transport.sender import Message, PushResult, PushSender
from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key

MEMORY_DB = "sqlite://"
KEY = load_vapid_private_key(VAPID_PRIVATE)


def claims_of(authorization: str) -> dict[str, Any]:
    """The claims of a ``vapid t=<jwt>,k=<key>`` header, after checking its signature."""
    assert Vapid02.verify(authorization), authorization
    token = authorization.split("t=", 1)[1].split(",", 1)[0]
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


# -- WEBPUSH_VAPID_SUBJECT -----------------------------------------------------------------

ACCEPTED = [
    ("mailto:ops@shop.example", "mailto:ops@shop.example"),
    ("mailto:first.last+push@mail.shop.example", "mailto:first.last+push@mail.shop.example"),
    ("MAILTO:Ops@Shop.Example", "mailto:Ops@shop.example"),
    ("https://shop.example", "https://shop.example"),
    ("https://Shop.Example", "https://shop.example"),
    # py_vapid signs no path, not even "/": the lone trailing slash is dropped, meaning
    # the same site (RFC 3986 §6.2.3).
    ("https://shop.example/", "https://shop.example"),
    ("https://xn--shp-una.example", "https://xn--shp-una.example"),
    ("https://push-contact.shop-example.co.uk", "https://push-contact.shop-example.co.uk"),
]


@pytest.mark.parametrize(("subject", "signed_as"), ACCEPTED)
def test_an_accepted_subject_passes_init_app_and_signs_for_real(
        subject: str, signed_as: str) -> None:
    app, _, _ = make_host_app(MEMORY_DB, WEBPUSH_VAPID_SUBJECT=subject)
    headers = VapidHeaders(KEY, app.config["WEBPUSH_VAPID_SUBJECT"])
    claims = claims_of(headers.header("https://fcm.googleapis.com"))
    assert claims["sub"] == signed_as
    assert claims["aud"] == "https://fcm.googleapis.com"


REFUSED = [
    ("https://shop.example/contact", "path"),
    ("https://shop.example/?from=push", "path"),
    ("https://shop.example#push", "path"),
    ("https://shop.example:8443", "port"),
    ("https://ops@shop.example", "user name"),
    ("mailto:ops@shop", "not a domain name"),
    ("mailto:ops@shop.", "not a domain name"),
    ("mailto:ops@-shop.example", "not a domain name"),
    ("mailto:ops@shop.example?subject=push", "not a domain name"),
    ("mailto:mailto:ops@shop.example", "mailto: twice"),
    ("mailto:ops", "no email address"),
    ("mailto:", "no email address"),
    ("mailto:@shop.example", "no email address"),
    ("mailto:a@b@shop.example", "before the '@'"),
    ("mailto: ops@shop.example", "space"),
    ("mailto:ops@shop.example ", "space"),
    ("mailto:ops@shop.example\n", "space"),
    ("https://shop example", "space"),
    ("mailto:ops@localhost", "localhost"),
    ("https://localhost", "localhost"),
    ("https://push.localhost", "localhost"),
    ("https://shop.local", "localhost"),
    ("https://127.0.0.1", "loopback"),
    ("https://10.0.0.7", "private"),
    ("mailto:ops@192.168.1.2", "private"),
    ("https://[::1]", "IPv6"),
    ("mailto:ops@8.8.8.8", "write a domain"),
    ("https://shöp.example", "xn--"),
    ("http://shop.example", "not https"),
    ("http://shop.example/contact", "not https"),
    ("ops@shop.example", "without mailto:"),
    ("tel:+331234", "neither"),
    ("https://", "no host"),
    ("", "not set"),
    (None, "not set"),
    (42, "not a string"),
]


@pytest.mark.parametrize(("subject", "why"), REFUSED)
def test_a_subject_that_would_not_sign_or_that_apple_refuses_fails_init_app_saying_why(
        subject: Any, why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_host_app(MEMORY_DB, WEBPUSH_VAPID_SUBJECT=subject)
    message = str(info.value)
    assert message.startswith(f"WEBPUSH_VAPID_SUBJECT {subject!r} ")
    assert why in message
    assert "e.g. 'mailto:ops@shop.example' or 'https://shop.example'" in message


def test_the_sender_refuses_a_subject_init_app_would_refuse() -> None:
    # The worker builds its VapidHeaders from the same setting: never a sender that
    # fails at every signature.
    with pytest.raises(ConfigurationError, match="path"):
        VapidHeaders(KEY, "https://shop.example/contact")


# -- aud: the RFC 6454 origin ---------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "origin"), [
    ("https://FCM.googleapis.com:443/fcm/send/x", "https://fcm.googleapis.com"),
    ("HTTPS://fcm.googleapis.com/fcm/send/x", "https://fcm.googleapis.com"),
    ("https://web.push.apple.com:8443/Q", "https://web.push.apple.com:8443"),
    ("http://127.0.0.1:80/push/1", "http://127.0.0.1"),
    ("http://127.0.0.1:443/push/1", "http://127.0.0.1:443"),
    ("http://127.0.0.1:08765/push/1", "http://127.0.0.1:8765"),
    ("http://[::1]:8765/push/1", "http://[::1]:8765"),
    ("https://[2001:DB8::1]:443/push/1", "https://[2001:db8::1]"),
])
def test_the_origin_is_rfc_6454s(endpoint: str, origin: str) -> None:
    assert origin_of(endpoint) == origin


def test_the_signed_aud_is_the_origin_without_case_or_default_port() -> None:
    headers = VapidHeaders(KEY, "mailto:ops@shop.example")
    claims = claims_of(headers.header(origin_of("https://FCM.googleapis.com:443/fcm/send/x")))
    assert claims["aud"] == "https://fcm.googleapis.com"


@pytest.mark.parametrize("spelling", ["HTTP://127.0.0.1:{port}", "http://127.0.0.1:0{port}"])
def test_the_push_service_accepts_the_aud_of_an_endpoint_however_it_is_written(
        spelling: str) -> None:
    service = LocalPushService().start()  # it checks aud == its origin, http://127.0.0.1:N
    try:
        sub = service.new_subscription(VAPID_PUBLIC)
        port = service.origin.rsplit(":", 1)[1]
        endpoint = spelling.format(port=port) + "/push/" + sub["endpoint"].rsplit("/", 1)[1]
        push = PushSender(VapidHeaders(KEY, "mailto:ops@shop.example"),
                          EndpointGuard([service.origin]), timeout=(2.0, 2.0), concurrency=2,
                          per_origin=1)
        results: dict[Any, PushResult] = {}
        try:
            push.send_many([Message(1, endpoint, sub["keys"]["p256dh"], sub["keys"]["auth"],
                                    b"hi", 60, "normal", None)], results.update, 1)
        finally:
            push.close()
        assert results[1].outcome == "sent", results[1]
        [received] = service.received
        assert claims_of(received.headers["authorization"])["aud"] == service.origin
    finally:
        service.stop()
