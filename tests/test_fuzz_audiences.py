"""Fuzzing what audiences and per-recipient vars add: ``create_audience``, ``get_audience``,
``delete_audience``, ``notify_users(audience=..., recipients=..., vars=...)``, the file
readers, and ``flask webpush audience ...`` / ``send --audience --var``.

Whatever the input, only the package's ``WebPushError`` subclasses escape a public
function, a refused call stores nothing, and a command ends with exit code 0, 1 or 2
and a message, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import empty_queue
from fuzz_strategies import (
    fuzz_settings,
    hashable,
    huge_integers,
    json_values,
    nasty_floats,
    nasty_text,
)
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_cli import arg, run

from flask_webpush_targeted.audience_files import csv_rows, ndjson_rows
from flask_webpush_targeted.exceptions import WebPushError


@pytest.fixture
def shop(make_app: Any) -> Any:
    app, _db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                 WEBPUSH_QUEUE=f"webpush-fuzz-{uuid.uuid4().hex[:8]}")
    with app.app_context():
        webpush.create_audience([{"user": "1", "vars": {"gate": "3"}}, "2"], name="fixed")
    yield app, webpush
    empty_queue(app)


def wrong() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), huge_integers(), nasty_floats(), nasty_text(),
                     st.binary(max_size=5), json_values())


def var_maps() -> st.SearchStrategy[Any]:
    return st.one_of(st.dictionaries(hashable(st.one_of(st.sampled_from(["gate", "seat", "0", "_"]),
                                                        nasty_text(), wrong())),
                                     st.one_of(nasty_text(), wrong()), max_size=3), wrong())


def recipients() -> st.SearchStrategy[Any]:
    one = st.one_of(st.fixed_dictionaries({"user": st.one_of(st.sampled_from(["1", "2"]),
                                                             wrong())},
                                          optional={"vars": var_maps(), "extra": wrong()}),
                    wrong())
    return st.one_of(st.lists(one, max_size=3), wrong())


TEMPLATES = st.one_of(st.sampled_from(["Gate {gate}", "{seat}{gate}", "{{x}}", "{0.__class__}",
                                       "{gate!s}", "{gate:^999999}", "{", "}", "{{{gate}}}"]),
                      nasty_text())


def counts(app: Any, webpush: Any) -> tuple[int, ...]:
    m = webpush.models
    with app.app_context():
        return tuple(webpush.db.session.scalar(sa.select(sa.func.count()).select_from(t))
                     for t in (m.Notification, m.Audience, m.AudienceMember))


@given(items=st.one_of(st.lists(st.one_of(nasty_text(), huge_integers(), wrong(),
                                          st.fixed_dictionaries({"user": wrong()},
                                                                optional={"vars": var_maps()})),
                                max_size=4), wrong()),
       name=st.one_of(st.just("Segment"), nasty_text(), wrong()))
@fuzz_settings(3)
def test_fuzz_create_audience_raises_only_webpush_errors(shop: Any, items: Any,
                                                         name: Any) -> None:
    app, webpush = shop
    before = counts(app, webpush)
    with app.app_context():
        try:
            audience = webpush.create_audience(items, name=name)
        except WebPushError:
            webpush.db.session.rollback()
            assert counts(app, webpush) == before
        else:
            assert audience.size <= len(items)


@given(audience_id=st.one_of(huge_integers(), wrong()))
@fuzz_settings(2)
def test_fuzz_get_and_delete_audience(shop: Any, audience_id: Any) -> None:
    app, webpush = shop
    with app.app_context():
        for call in (webpush.get_audience, webpush.delete_audience):
            try:
                call(audience_id)
            except WebPushError:
                webpush.db.session.rollback()


@given(target=st.one_of(
    st.fixed_dictionaries({"recipients": recipients()}),
    st.fixed_dictionaries({"audience": st.one_of(st.sampled_from([1, 2, 0, -1]), wrong())}),
    st.fixed_dictionaries({"users": st.just(["1"]), "audience": st.just(1)})),
       title=TEMPLATES, body=st.one_of(st.just(""), TEMPLATES),
       url=st.sampled_from([None, "/t/{gate}", "{gate}", "https://shop.example/{seat}"]),
       values=st.one_of(st.none(), var_maps()))
@fuzz_settings(4)
def test_fuzz_notify_with_vars_raises_only_webpush_errors(
        shop: Any, target: dict[str, Any], title: Any, body: Any, url: Any,
        values: Any) -> None:
    app, webpush = shop
    before = counts(app, webpush)
    with app.app_context():
        try:
            n = webpush.notify_users(title=title, body=body, url=url, vars=values, **target)
        except WebPushError:
            webpush.db.session.rollback()
            assert counts(app, webpush) == before
        else:
            webpush.cancel(n.id)


@given(data=st.binary(max_size=300), limit=st.integers(1, 400))
@fuzz_settings(2)
def test_fuzz_the_file_readers_only_report_or_refuse(data: bytes, limit: int) -> None:
    for reader in (csv_rows, ndjson_rows):
        try:
            rows = list(reader(io.BytesIO(data), limit))
        except WebPushError:
            continue
        for line, user_id, vars_, reason in rows:
            assert line >= 1
            # a row is a member (an id that can be stored, vars or none) or says why not
            if reason is None:
                assert user_id is not None and 0 < len(user_id) <= 255 and "\x00" not in user_id
                assert vars_ is None or all(isinstance(v, str) for v in vars_.values())


@given(name=arg(), raw=st.binary(max_size=60), kind=st.sampled_from(["csv", "ndjson"]),
       audience_id=arg())
@fuzz_settings()
def test_fuzz_the_audience_commands(shop: Any, tmp_path_factory: Any, name: str, raw: bytes,
                                    kind: str, audience_id: str) -> None:
    app, _webpush = shop
    runner = app.test_cli_runner()
    path = tmp_path_factory.mktemp("aud") / f"ids.{kind}"
    path.write_bytes(raw)
    run(runner, ["webpush", "audience", "create", "--name", name, "--file", str(path)])
    run(runner, ["webpush", "audience", "list"])
    run(runner, ["webpush", "audience", "delete", "--", audience_id])


@given(audience_id=arg(), var_items=st.lists(arg(), max_size=3), title=arg())
@fuzz_settings()
def test_fuzz_send_to_an_audience_with_vars(shop: Any, audience_id: str,
                                            var_items: list[str], title: str) -> None:
    app, _webpush = shop
    args = ["webpush", "send", "--audience", audience_id, "--title", title]
    for item in var_items:
        args += ["--var", item]
    run(app.test_cli_runner(), args)
