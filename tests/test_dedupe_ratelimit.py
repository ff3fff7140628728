"""The one rate limiter (``ratelimit.check_rate_limit``): a fixed window of a minute
counted in Redis, Retry-After the seconds left in it, and a Redis outage lets requests
through (logged only when the caller asks)."""

from __future__ import annotations

import logging
import secrets
import types
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_webpush_targeted import ratelimit
from flask_webpush_targeted.exceptions import RateLimited

#: 30.5 s into a minute
NOW = 29_000_000 * 60 + 30.5


def at(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: now))


def test_the_request_over_the_limit_is_refused_with_the_seconds_left_in_its_minute(
        app: Flask, redis_conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"webpush:test-rate:{secrets.token_hex(8)}"
    at(monkeypatch, NOW)
    with app.app_context():
        ratelimit.check_rate_limit(prefix, 2, "slow down")
        ratelimit.check_rate_limit(prefix, 2, "slow down")
        with pytest.raises(RateLimited) as refused:
            ratelimit.check_rate_limit(prefix, 2, "slow down")
    assert (refused.value.message, refused.value.retry_after) == ("slow down", 30)
    key = f"{prefix}:{int(NOW // 60)}"
    assert int(redis_conn.get(key)) == 3  # the refused request counts too
    assert 60 < redis_conn.ttl(key) <= 120
    redis_conn.delete(key)


def test_the_count_starts_again_with_the_next_minute(
        app: Flask, redis_conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"webpush:test-rate:{secrets.token_hex(8)}"
    with app.app_context():
        at(monkeypatch, NOW)
        ratelimit.check_rate_limit(prefix, 1, "slow down")
        at(monkeypatch, NOW + 29)  # the last second of the same minute: Retry-After 1
        with pytest.raises(RateLimited) as refused:
            ratelimit.check_rate_limit(prefix, 1, "slow down")
        assert refused.value.retry_after == 1
        at(monkeypatch, NOW + 30)
        ratelimit.check_rate_limit(prefix, 1, "slow down")
    redis_conn.delete(*(f"{prefix}:{int(NOW // 60) + i}" for i in (0, 1)))


@pytest.mark.parametrize("warning", [None, "limit not checked"])
def test_without_redis_every_request_goes_through_and_is_logged_if_asked(
        make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture,
        warning: str | None) -> None:
    app, _db, _webpush = make_app(WEBPUSH_REDIS_URL="redis://127.0.0.1:1/0")
    with app.app_context(), caplog.at_level(logging.WARNING, "flask_webpush_targeted"):
        for _ in range(3):
            ratelimit.check_rate_limit("webpush:test-rate:down", 1, "slow down",
                                       outage_warning=warning)
    logged = [r.getMessage() for r in caplog.records if r.name == "flask_webpush_targeted"]
    assert logged == ([] if warning is None else [warning] * 3)
