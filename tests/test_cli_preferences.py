"""``flask webpush preferences`` and the options of categories in ``flask webpush send``.

Through ``app.test_cli_runner()`` on SQLite and PostgreSQL: the choices printed and
changed (each change a consent-ledger row with source "host"), ``--quiet-hours``,
``--send-at-local`` and ``--rate-per-minute`` stored as given and refused with a message,
and ``--category`` held to WEBPUSH_CATEGORIES when it is set. A bad value ends with exit
code 1 (the extension's refusal) or 2 (a usage error) and one line saying why, never a
traceback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import empty_queue

CATEGORIES = {
    "orders": {"label": "Your orders", "required": True},
    "marketing": {"label": "Offers", "description": "Sales and discounts."},
    "news": {"label": "News", "default": True},
}


class Cli:
    """A host app and its CLI runner."""

    def __init__(self, app: Any, db: Any, webpush: Any) -> None:
        self.app, self.db, self.webpush = app, db, webpush
        self.runner = app.test_cli_runner()

    def run(self, *args: str) -> Any:
        result = self.runner.invoke(args=["webpush", *args])
        # SystemExit is how click ends with a code; anything else is a traceback.
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, result.output, repr(result.exception))
        assert "Traceback" not in result.output
        if result.exit_code:
            assert result.output.strip(), args  # says why
        return result

    def ledger(self) -> list[tuple[str, str, str, str | None, str | None]]:
        C = self.webpush.models.Consent
        with self.app.app_context():
            rows = self.db.session.scalars(
                sa.select(C).where(C.scope.like("category:%")).order_by(C.id)).all()
            return [(r.user_id, r.scope, r.action, r.source, r.text_version) for r in rows]

    def notifications(self) -> list[Any]:
        N = self.webpush.models.Notification
        with self.app.app_context():
            rows = self.db.session.scalars(sa.select(N).order_by(N.id)).all()
            for row in rows:
                self.db.session.expunge(row)
            return list(rows)


@pytest.fixture
def make_cli(make_app: Callable[..., Any]) -> Any:
    made: list[Any] = []

    def make(**config: Any) -> Cli:
        app, db, webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                    WEBPUSH_QUEUE=f"webpush-cli-{uuid.uuid4().hex[:8]}",
                                    **config)
        made.append(app)
        return Cli(app, db, webpush)

    yield make
    for app in made:
        empty_queue(app)


@pytest.fixture
def shop(make_cli: Callable[..., Cli]) -> Cli:
    """Categories and quiet hours configured."""
    return make_cli(WEBPUSH_CATEGORIES=CATEGORIES, WEBPUSH_QUIET_HOURS=("21:00", "08:00"),
                    WEBPUSH_CONSENT_VERSION="2026-11")


@pytest.fixture
def plain(make_cli: Callable[..., Cli]) -> Cli:
    """Categories off, no quiet hours (the defaults)."""
    return make_cli()


# -- flask webpush preferences --------------------------------------------------------------


def test_preferences_prints_each_category_and_the_users_choice(shop: Cli) -> None:
    result = shop.run("preferences", "42")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "orders     on   Your orders (required)",
        "marketing  off  Offers",
        "news       on   News",
    ]
    assert shop.ledger() == []  # reading writes nothing


def test_preferences_set_changes_them_with_source_host_in_the_ledger(shop: Cli) -> None:
    result = shop.run("preferences", "42", "--set", "marketing=on", "--set", "news=off")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "2 change(s) recorded for user '42'.",
        "orders     on   Your orders (required)",
        "marketing  on   Offers",
        "news       off  News",
    ]
    assert shop.ledger() == [("42", "category:marketing", "granted", "host", "2026-11"),
                             ("42", "category:news", "withdrawn", "host", "2026-11")]
    with shop.app.app_context():
        assert shop.webpush.preferences("42") == {"orders": True, "marketing": True,
                                                  "news": False}
        assert shop.webpush.preferences("43")["marketing"] is False  # another user's own
    again = shop.run("preferences", "42", "--set", "marketing=yes", "--set", "news=no")
    assert again.exit_code == 0 and again.output.startswith("0 change(s)")
    assert len(shop.ledger()) == 2


@pytest.mark.parametrize(("sets", "words"), [
    (["orders=off"], ["orders", "required"]),
    (["deals=on"], ["deals", "not a category", "orders, marketing, news"]),
    (["marketing"], ["NAME=on or NAME=off"]),
    (["marketing=maybe"], ["NAME=on or NAME=off"]),
    (["=on"], ["NAME=on or NAME=off"]),
    (["marketing=on", "marketing=off"], ["both on and off"]),
    (["a\x00b=on"], ["not a category"]),
    (["\udcff=on"], ["not a category"]),
])
def test_preferences_set_refuses_bad_choices_as_a_usage_error(shop: Cli, sets: list[str],
                                                              words: list[str]) -> None:
    args = [arg for value in sets for arg in ("--set", value)]
    result = shop.run("preferences", "42", *args)
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output, result.output
    assert shop.ledger() == []


@pytest.mark.parametrize("user_id", ["a\x00b", "\udcff", "x" * 256, ""])
def test_preferences_refuses_a_user_id_that_cannot_be_one(shop: Cli, user_id: str) -> None:
    result = shop.run("preferences", "--", user_id)
    assert result.exit_code == 2 and "USER_ID" in result.output, result.output


def test_preferences_with_categories_off(plain: Cli) -> None:
    shown = plain.run("preferences", "42")
    assert shown.exit_code == 0 and "Categories are off" in shown.output
    refused = plain.run("preferences", "42", "--set", "marketing=on")
    assert refused.exit_code == 2 and "WEBPUSH_CATEGORIES" in refused.output
    assert plain.ledger() == []


# -- flask webpush send: the new options ----------------------------------------------------


def test_send_stores_quiet_hours_send_at_local_and_rate_as_given(shop: Cli) -> None:
    for args in ([], ["--quiet-hours"], ["--no-quiet-hours", "--send-at-local", "09:30",
                                         "--rate-per-minute", "600"]):
        result = shop.run("send", "--user", "1", "--title", "Sale", "--category", "news",
                          *args)
        assert result.exit_code == 0, result.output
    stored = [(n.category, n.quiet_hours, n.send_at_local, n.rate_per_minute)
              for n in shop.notifications()]
    assert stored == [("news", None, None, None), ("news", True, None, None),
                      ("news", False, "09:30", 600)]


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--send-at-local", "9:30"], 1, ["HH:MM"]),
    (["--send-at-local", "24:00"], 1, ["HH:MM"]),
    (["--send-at-local", "09:30\x00"], 1, ["HH:MM"]),
    (["--send-at-local", "09:30", "--send-at", "2030-01-01T09:00+01:00"], 1, ["exclude"]),
    (["--rate-per-minute", "0"], 1, ["1 to 1,000,000"]),
    (["--rate-per-minute", "1000001"], 1, ["1 to 1,000,000"]),
    (["--rate-per-minute", "9" * 40], 1, ["1 to 1,000,000"]),
    (["--rate-per-minute", "ten"], 2, ["not a valid integer"]),
    (["--rate-per-minute", "1.5"], 2, ["not a valid integer"]),
    (["--category", "deals"], 2, ["--category", "'deals' is not one of", "'marketing'"]),
    (["--category", "a\x00b"], 2, ["--category"]),
    (["--category", "\udcff"], 2, ["--category"]),
])
def test_send_refuses_bad_values_with_a_message(shop: Cli, args: list[str], code: int,
                                                words: list[str]) -> None:
    result = shop.run("send", "--user", "1", "--title", "Sale", *args)
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, result.output
    assert shop.notifications() == []


def test_send_without_categories_takes_a_free_label_and_needs_quiet_hours_to_keep(
    plain: Cli,
) -> None:
    free = plain.run("send", "--user", "1", "--title", "Sale", "--category", "anything")
    assert free.exit_code == 0, free.output
    kept = plain.run("send", "--user", "1", "--title", "Sale", "--quiet-hours")
    assert kept.exit_code == 1 and "WEBPUSH_QUIET_HOURS" in kept.output
    assert [n.category for n in plain.notifications()] == ["anything"]


def test_send_help_lists_the_new_options(plain: Cli) -> None:
    text = plain.run("send", "--help").output
    for option in ("--quiet-hours / --no-quiet-hours", "--send-at-local HH:MM",
                   "--rate-per-minute N", "WEBPUSH_CATEGORIES"):
        assert option in text, text
