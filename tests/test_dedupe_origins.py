"""One origin function: WEBPUSH_EXTRA_PUSH_SERVICES, the endpoint policy when a
subscription is stored and the guard before each POST all compare ``web_origin``s, so
they admit and refuse the same endpoints whatever their spelling."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from flask_webpush_targeted.config import extra_push_origins
from flask_webpush_targeted.exceptions import InvalidSubscription
from flask_webpush_targeted.transport.endpoints import validate_endpoint
from flask_webpush_targeted.transport.guard import EndpointGuard, Route
from flask_webpush_targeted.transport.origins import web_origin

EXTRA = ["http://Push.Test:8080", "https://push.test:443", "http://[::1]:8765",
         "http://127.0.0.1:80/"]
ADMITTED = ["HTTP://PUSH.TEST:8080/a", "http://push.test:8080/a?x=1", "https://push.test/b",
            "https://PUSH.test:443/c", "http://[::1]:8765/d", "http://127.0.0.1/e",
            "http://127.0.0.1:80/f"]
REFUSED = ["http://push.test/x", "http://push.test:443/x", "https://push.test:8080/x",
           "https://push.test:8443/x", "http://[::1]/x", "http://[::1]:8766/x",
           "http://127.0.0.1:8080/x", "https://127.0.0.1/x", "https://push.test.evil/x",
           "http://localhost:8080/x"]


def no_dns(*_args: object, **_kwargs: object) -> list[tuple[object, ...]]:
    raise AssertionError("an extra origin is reached by name, a refused one not at all")


@pytest.fixture
def origins() -> frozenset[str]:
    return extra_push_origins({"WEBPUSH_EXTRA_PUSH_SERVICES": EXTRA})


def test_the_settings_are_spelled_as_web_origin_spells_them(origins: frozenset[str]) -> None:
    assert origins == {"http://push.test:8080", "https://push.test", "http://[::1]:8765",
                       "http://127.0.0.1"}
    assert origins == {web_origin(urlsplit(o)) for o in EXTRA}


@pytest.mark.parametrize("endpoint", ADMITTED)
def test_an_endpoint_at_an_extra_origin_is_admitted_when_stored_and_when_sent(
        origins: frozenset[str], endpoint: str) -> None:
    stored = validate_endpoint(endpoint, origins)
    assert web_origin(urlsplit(stored)) in origins
    guard = EndpointGuard(origins, resolve=no_dns)
    assert guard.route(endpoint) == Route()  # by name, no check of its addresses
    assert guard.route(stored) == Route()


@pytest.mark.parametrize("endpoint", REFUSED)
def test_an_endpoint_at_another_origin_is_refused_when_stored_and_when_sent(
        origins: frozenset[str], endpoint: str) -> None:
    with pytest.raises(InvalidSubscription) as refused:
        validate_endpoint(endpoint, origins)
    route = EndpointGuard(origins, resolve=no_dns).route(endpoint)
    assert route.refused == refused.value.message
