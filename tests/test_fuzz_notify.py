"""Fuzzing the public functions host code calls: notify_user(s), cancel, stats,
get_notification, export_user, forget_user.

Arguments come from fuzz_strategies (surrogates, NUL, huge integers, NaN, extreme
dates, deep nesting, wrong types). Whatever they are, only the package's own
``WebPushError`` subclasses may escape, and a refused call stores nothing. Runs on
SQLite and PostgreSQL with the real Redis; the concrete inputs that once escaped as
another exception are kept below as regression tests.
"""

from __future__ import annotations

import contextlib
import math
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import empty_queue
from flask import Flask
from fuzz_strategies import (
    SPECIAL_TEXT,
    extreme_datetimes,
    fuzz_settings,
    hashable,
    huge_integers,
    json_values,
    nasty_floats,
    nasty_text,
    wrong_types,
)
from hypothesis import given
from hypothesis import strategies as st

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.exceptions import (
    InvalidArgument,
    InvalidNotification,
    InvalidUserId,
    NotificationNotFound,
    WebPushError,
)


class HostUser:
    """A Flask-Login user whose get_id() returns whatever the host stored."""

    def __init__(self, user_id: Any) -> None:
        self.user_id = user_id

    def get_id(self) -> Any:
        return self.user_id


@pytest.fixture
def shop(make_app: Any) -> Any:
    """(app, webpush) with a site URL, a queue of its own (emptied after the test)."""
    import uuid

    app, _db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                 WEBPUSH_QUEUE=f"webpush-fuzz-{uuid.uuid4().hex[:8]}")
    yield app, webpush
    empty_queue(app)


def text_or_wrong() -> st.SearchStrategy[Any]:
    return st.one_of(nasty_text(), wrong_types())


def texts_by_language() -> st.SearchStrategy[Any]:
    """A text in several languages: good and bad tags, good and bad texts."""
    # Keys of a dict: hashable ones only (a set or a list cannot be one).
    tags = st.one_of(st.sampled_from(["en", "pl", "pl-PL", "EN", "zh-Hant-TW", "x" * 36, "", 7,
                                      None, 1.5, True, b"pl"]), nasty_text())
    return st.dictionaries(tags, st.one_of(st.just("Cześć"), text_or_wrong()), max_size=4)


def titles() -> st.SearchStrategy[Any]:
    return st.one_of(st.just("Sale"), text_or_wrong(), texts_by_language(),
                     st.just({"en": "Sale", "pl": "Wyprzedaż"}))


def urls() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(["/orders/7", "https://shop.example/p?x=1", "/i.png"]),
                     st.sampled_from(SPECIAL_TEXT), text_or_wrong())


def user_values() -> st.SearchStrategy[Any]:
    one = st.one_of(st.sampled_from(["1", "2", 1, "nobody"]), nasty_text(), huge_integers(),
                    wrong_types())
    return st.one_of(one, one.map(HostUser))


OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "body": st.one_of(text_or_wrong(), texts_by_language()),
    "url": urls(), "icon": urls(), "image": urls(), "badge": urls(),
    "tag": text_or_wrong(),
    "actions": st.one_of(
        st.lists(st.dictionaries(st.sampled_from(["action", "title", "icon", "x"]),
                                 st.one_of(urls(), text_or_wrong(), texts_by_language()),
                                 max_size=4), max_size=3),
        wrong_types()),
    "data": st.one_of(json_values(), wrong_types()),
    "ttl": st.one_of(huge_integers(), nasty_floats(), wrong_types(),
                     st.sampled_from([timedelta.max, timedelta.min, timedelta(days=-1),
                                      timedelta(seconds=0.5), timedelta(hours=1)])),
    "urgency": st.one_of(st.sampled_from(["very-low", "low", "normal", "high"]),
                         text_or_wrong()),
    "topic": text_or_wrong(),
    "send_at": st.one_of(extreme_datetimes(), wrong_types()),
    "idempotency_key": text_or_wrong(),
    "category": text_or_wrong(),
    "devices": st.one_of(st.sampled_from(["all", "latest"]), st.lists(huge_integers(), max_size=3),
                         text_or_wrong()),
    "require_interaction": st.one_of(st.booleans(), wrong_types()),
    "silent": st.one_of(st.booleans(), wrong_types()),
    "quiet_hours": st.one_of(st.none(), st.booleans(), wrong_types()),
    "send_at_local": st.one_of(st.sampled_from(["09:00", "23:59", "24:00", "9:00", "09:60"]),
                               text_or_wrong()),
    "rate_per_minute": st.one_of(huge_integers(), nasty_floats(), wrong_types()),
    "variants": st.one_of(
        st.none(),
        st.lists(st.dictionaries(
            st.sampled_from(["title", "body", "url", "weight", "actions", "data", "colour"]),
            st.one_of(titles(), urls(), huge_integers(), nasty_floats(), json_values(),
                      wrong_types()), max_size=3), max_size=6),
        wrong_types()),
    "test_share": st.one_of(st.none(), st.sampled_from([0.2, 0.0, 1.0, -0.5]), nasty_floats(),
                            huge_integers(), wrong_types()),
    "winner_after": st.one_of(st.none(), huge_integers(), nasty_floats(), wrong_types(),
                              st.sampled_from([timedelta.max, timedelta(hours=2),
                                               timedelta(seconds=-1)])),
    "winner_by": st.one_of(st.sampled_from(["clicks", "conversions", "opens"]), text_or_wrong()),
    "vars": st.one_of(
        st.dictionaries(hashable(st.one_of(st.sampled_from(["gate", "seat", "0", "a b", "_"]),
                                           nasty_text(), wrong_types())),
                        st.one_of(nasty_text(), huge_integers(), nasty_floats(), json_values(),
                                  wrong_types()), max_size=3),
        wrong_types()),
}


def test_every_option_of_notify_users_is_fuzzed() -> None:
    from dataclasses import fields

    from flask_webpush_targeted.notifications import NotificationOptions

    assert {f.name for f in fields(NotificationOptions)} - {"title"} == set(OPTIONS)


def counts(app: Flask, webpush: WebPush) -> tuple[int, int]:
    m = webpush.models
    with app.app_context():
        return tuple(webpush.db.session.scalar(sa.select(sa.func.count()).select_from(t))
                     for t in (m.Notification, m.Delivery))  # type: ignore[return-value]


@given(users=st.one_of(st.lists(user_values(), max_size=4), wrong_types()),
       title=titles(),
       options=st.fixed_dictionaries({}, optional=OPTIONS))
@fuzz_settings(4)
def test_fuzz_notify_users_raises_only_webpush_errors(
        shop: Any, users: Any, title: Any, options: dict[str, Any]) -> None:
    app, webpush = shop
    before = counts(app, webpush)
    with app.app_context():
        try:
            n = webpush.notify_users(users, title=title, **options)
        except WebPushError:
            webpush.db.session.rollback()
            stored = False
        else:
            stored = True
            assert isinstance(webpush.stats(n.id), dict)
            webpush.cancel(n.id)
    if not stored:
        assert counts(app, webpush) == before  # a refused call stores nothing


@given(user=user_values(), title=titles(),
       url=urls())
@fuzz_settings()
def test_fuzz_notify_user_raises_only_webpush_errors(
        shop: Any, user: Any, title: Any, url: Any) -> None:
    app, webpush = shop
    with app.app_context():
        try:
            webpush.notify_user(user, title=title, url=url)
        except WebPushError:
            webpush.db.session.rollback()


@given(notification_id=st.one_of(huge_integers(), wrong_types()))
@fuzz_settings(2)
def test_fuzz_cancel_stats_and_get_notification(shop: Any, notification_id: Any) -> None:
    app, webpush = shop
    with app.app_context():
        for call in (webpush.cancel, webpush.stats, webpush.get_notification):
            try:
                call(notification_id)
            except WebPushError:
                webpush.db.session.rollback()


@given(older_than=st.one_of(st.timedeltas(), wrong_types()))
@fuzz_settings()
def test_fuzz_prune(shop: Any, older_than: Any) -> None:
    app, webpush = shop
    with app.app_context():
        try:
            webpush.prune(older_than)
        except WebPushError:
            webpush.db.session.rollback()


@given(user=user_values())
@fuzz_settings(2)
def test_fuzz_export_and_forget_user(shop: Any, user: Any) -> None:
    app, webpush = shop
    with app.app_context():
        for call in (webpush.export_user, webpush.forget_user):
            try:
                call(user)
            except WebPushError:
                webpush.db.session.rollback()


# -- inputs that escaped as another exception, kept as regression tests ------------------------


@pytest.mark.parametrize("user", ["a\x00b", "\ud800", None, 1.5, b"1", HostUser(None),
                                  HostUser("x\x00"),
                                  pytest.param(10**5000, id="an-int-of-5000-digits")])
def test_export_and_forget_user_refuse_an_unstorable_user_with_invalid_user_id(
        shop: Any, user: Any) -> None:
    # NUL reached PostgreSQL (DataError), a surrogate the encoder (UnicodeEncodeError),
    # None a TypeError, an int of 5,000 digits str()'s ValueError.
    app, webpush = shop
    with app.app_context():
        for call in (webpush.export_user, webpush.forget_user):
            with pytest.raises(InvalidUserId):
                call(user)
    assert issubclass(InvalidUserId, ValueError)  # what host code caught before


@pytest.mark.parametrize("notification_id", [2**63, 2**70, -(2**63) - 1, 0, -1, "x", None,
                                             1.0, True])
def test_cancel_stats_and_get_refuse_an_id_no_notification_can_have(
        shop: Any, notification_id: Any) -> None:
    # Beyond 64 bits the database raised (OverflowError on SQLite, DataError on
    # PostgreSQL); "x" was a DataError on PostgreSQL.
    app, webpush = shop
    with app.app_context():
        for call in (webpush.cancel, webpush.stats, webpush.get_notification):
            with pytest.raises(NotificationNotFound):
                call(notification_id)


@pytest.mark.parametrize("older_than", [timedelta.max, timedelta(days=-1), 30, None])
def test_prune_refuses_a_period_it_cannot_use(shop: Any, older_than: Any) -> None:
    # timedelta.max overflowed (OverflowError), 30 or None was a TypeError, and a
    # negative period pruned every finished notification.
    app, webpush = shop
    with app.app_context(), pytest.raises(InvalidArgument, match="older_than"):
        webpush.prune(older_than)


@pytest.mark.parametrize("ttl", [math.inf, -math.inf, math.nan])
def test_a_ttl_that_is_not_finite_is_invalid(shop: Any, ttl: float) -> None:
    # int(inf) raised OverflowError and int(nan) ValueError.
    app, webpush = shop
    with app.app_context(), pytest.raises(InvalidNotification, match="ttl"):
        webpush.notify_users(["1"], title="Sale", ttl=ttl)
    assert counts(app, webpush) == (0, 0)


CATEGORIES = {"orders": {"label": "Order updates", "required": True},
              "offers": {"label": "Offers", "cap": (2, timedelta(days=1))}}


@pytest.fixture
def shop_with_categories(make_app: Any) -> Any:
    """(app, webpush) with categories and quiet hours on."""
    import uuid

    app, _db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                 WEBPUSH_QUEUE=f"webpush-fuzz-{uuid.uuid4().hex[:8]}",
                                 WEBPUSH_CATEGORIES=CATEGORIES,
                                 WEBPUSH_QUIET_HOURS=("21:00", "08:00"))
    yield app, webpush
    empty_queue(app)


@given(user=user_values(),
       choices=st.one_of(
           st.dictionaries(hashable(st.one_of(st.sampled_from(["orders", "offers"]),
                                              text_or_wrong())),
                           st.one_of(st.booleans(), json_values(), wrong_types()), max_size=3),
           wrong_types()),
       source=st.one_of(st.sampled_from(["host", "api", "widget"]), text_or_wrong()))
@fuzz_settings(4)
def test_fuzz_preferences_raise_only_webpush_errors(shop_with_categories: Any, user: Any,
                                                    choices: Any, source: Any) -> None:
    app, webpush = shop_with_categories
    with app.app_context():
        try:
            after = webpush.set_preferences(user, choices, source=source)
        except WebPushError:
            webpush.db.session.rollback()
        else:
            assert after == webpush.preferences(user)
            assert after["orders"] is True
        with contextlib.suppress(WebPushError):
            webpush.preferences(user)


@given(users=st.lists(user_values(), min_size=1, max_size=3),
       options=st.fixed_dictionaries({}, optional={
           "category": st.one_of(st.sampled_from(["orders", "offers", None]), text_or_wrong()),
           "quiet_hours": OPTIONS["quiet_hours"], "send_at_local": OPTIONS["send_at_local"],
           "rate_per_minute": OPTIONS["rate_per_minute"], "send_at": OPTIONS["send_at"]}))
@fuzz_settings(4)
def test_fuzz_notify_with_categories_raises_only_webpush_errors(
        shop_with_categories: Any, users: list[Any], options: dict[str, Any]) -> None:
    app, webpush = shop_with_categories
    with app.app_context():
        try:
            n = webpush.notify_users(users, title="Sale", **options)
        except WebPushError:
            webpush.db.session.rollback()
        else:
            assert n.category in CATEGORIES
            webpush.cancel(n.id)
