"""Fuzzing the ``flask webpush`` commands' arguments and options.

Through ``app.test_cli_runner()`` on SQLite and PostgreSQL: whatever the arguments
(surrogates as a shell passes undecodable bytes, NUL, huge numbers, extreme dates,
wrong kinds of values), a command ends with exit code 0, 1 (an error of the extension,
said in one line) or 2 (a usage error), and never with a traceback. The concrete
inputs that once ended in a traceback are kept below as regression tests.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import empty_queue
from fuzz_strategies import (
    extreme_datetimes,
    fuzz_settings,
    huge_integers,
    nasty_floats,
    nasty_text,
)
from hypothesis import given
from hypothesis import strategies as st

from flask_webpush_targeted.push_api.keys import SCOPES


@pytest.fixture
def cli(make_app: Any) -> Any:
    """(app, runner) with a queue of its own, emptied after the test."""
    app, _db, _webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                  WEBPUSH_QUEUE=f"webpush-fuzz-{uuid.uuid4().hex[:8]}")
    yield app, app.test_cli_runner()
    empty_queue(app)


def run(runner: Any, args: list[str], stdin: str | None = None) -> Any:
    """Run one command; assert it ended as a command should."""
    result = runner.invoke(args=args, input=stdin)
    # SystemExit is how click ends with a code; anything else is a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, result.output, repr(result.exception))
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    if result.exit_code:
        assert result.output.strip(), args  # says why
    return result


def arg() -> st.SearchStrategy[str]:
    """A command-line argument: text (a surrogate is how Python passes undecodable argv
    bytes), numbers of every size, floats, dates as text."""
    return st.one_of(nasty_text(), huge_integers().map(str), nasty_floats().map(str),
                     extreme_datetimes().map(lambda d: d.isoformat()))


SEND_OPTIONS = ("--body", "--url", "--devices", "--ttl", "--urgency", "--topic", "--category",
                "--send-at", "--idempotency-key")


@given(users=st.lists(arg(), min_size=1, max_size=3), title=arg(),
       options=st.dictionaries(st.sampled_from(SEND_OPTIONS), arg(), max_size=4))
@fuzz_settings(2)
def test_fuzz_send(cli: Any, users: list[str], title: str, options: dict[str, str]) -> None:
    _app, runner = cli
    args = ["webpush", "send", "--title", title]
    for user in users:
        args += ["--user", user]
    for name, value in options.items():
        args += [name, value]
    run(runner, args)


@given(lines=st.lists(arg(), max_size=5), raw=st.binary(max_size=40))
@fuzz_settings()
def test_fuzz_send_users_file(cli: Any, tmp_path_factory: Any, lines: list[str],
                              raw: bytes) -> None:
    _app, runner = cli
    path = tmp_path_factory.mktemp("ids") / "ids.txt"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw)
    run(runner, ["webpush", "send", "--users-file", str(path), "--title", "Sale"])


@given(notification_id=arg(), limit=arg(), days=arg())
@fuzz_settings()
def test_fuzz_stats_and_prune(cli: Any, notification_id: str, limit: str, days: str) -> None:
    _app, runner = cli
    run(runner, ["webpush", "stats", notification_id])
    run(runner, ["webpush", "stats", "--limit", limit])
    run(runner, ["webpush", "prune", "--older-than", days])


@given(since=arg(), cursor=arg())
@fuzz_settings()
def test_fuzz_export_events(cli: Any, since: str, cursor: str) -> None:
    _app, runner = cli
    run(runner, ["webpush", "export-events", "--since", since])
    run(runner, ["webpush", "export-events", "--cursor", cursor])
    run(runner, ["webpush", "export-events", "--since", since, "--cursor", cursor])


@given(user_id=arg())
@fuzz_settings()
def test_fuzz_export_and_forget_user(cli: Any, user_id: str) -> None:
    _app, runner = cli
    run(runner, ["webpush", "export-user", "--", user_id])
    run(runner, ["webpush", "forget-user", "--yes", "--", user_id])
    run(runner, ["webpush", "forget-user", "--", user_id], stdin="n\n")


@given(name=arg(), scopes=st.lists(st.one_of(st.sampled_from(SCOPES), arg()), max_size=2),
       key=arg())
@fuzz_settings()
def test_fuzz_api_keys(cli: Any, name: str, scopes: list[str], key: str) -> None:
    _app, runner = cli
    args = ["webpush", "api-key", "create", "--", name]
    for scope in scopes:
        args[-2:-2] = ["--scope", scope]
    run(runner, args)
    run(runner, ["webpush", "api-key", "revoke", "--", key])
    run(runner, ["webpush", "api-key", "list"])


# -- inputs that ended in a traceback, kept as regression tests --------------------------------


@pytest.mark.parametrize("args", [
    ["webpush", "stats", "--limit", "99999999999999999999"],  # per_page overflowed the query
    ["webpush", "stats", "99999999999999999999"],  # bigint out of range
    ["webpush", "prune", "--older-than", "99999999999"],  # timedelta overflow
    ["webpush", "export-user", "a\x00b"],  # NUL on PostgreSQL
    ["webpush", "forget-user", "--yes", "\udcff"],  # an undecodable argv byte
    ["webpush", "api-key", "create", "crm\x00"],
    ["webpush", "api-key", "revoke", "99999999999"],  # integer out of range on PostgreSQL
    ["webpush", "api-key", "revoke", "wpk_99999999999_secret"],
    ["webpush", "api-key", "revoke", "a\x00"],
    # a worker name RQ cannot encode for Redis (an undecodable argv byte): UnicodeEncodeError
    ["webpush", "worker", "--burst", "--name", "w\udcff"],
])
def test_commands_end_with_a_message_not_a_traceback(cli: Any, args: list[str]) -> None:
    _app, runner = cli
    result = run(runner, args)
    assert result.exit_code in (1, 2), result.output


# -- the options of categories, and users' choices ----------------------------------------------

FUZZ_CATEGORIES = {"orders": {"label": "Your orders", "required": True},
                   "marketing": {"label": "Offers"}}
CATEGORY_SEND_OPTIONS = ("--send-at-local", "--rate-per-minute", "--category", "--send-at")


@pytest.fixture
def shop_cli(make_app: Any) -> Any:
    """(app, runner) with categories and quiet hours configured, a queue of its own."""
    app, _db, _webpush = make_app(WEBPUSH_SITE_URL="https://shop.example",
                                  WEBPUSH_QUEUE=f"webpush-fuzz-{uuid.uuid4().hex[:8]}",
                                  WEBPUSH_CATEGORIES=FUZZ_CATEGORIES,
                                  WEBPUSH_QUIET_HOURS=("21:00", "08:00"))
    yield app, app.test_cli_runner()
    empty_queue(app)


def _clock_or_arg() -> st.SearchStrategy[str]:
    return st.one_of(arg(), st.sampled_from(["09:30", "23:59", "00:00", "orders", "marketing"]),
                     st.from_regex(r"\A[0-9]{1,3}:[0-9]{1,3}\Z"))


@given(options=st.dictionaries(st.sampled_from(CATEGORY_SEND_OPTIONS), _clock_or_arg(),
                               max_size=3),
       quiet=st.sampled_from([[], ["--quiet-hours"], ["--no-quiet-hours"]]),
       categories=st.booleans())
@fuzz_settings(2)
def test_fuzz_send_with_the_options_of_categories(
    cli: Any, shop_cli: Any, options: dict[str, str], quiet: list[str], categories: bool,
) -> None:
    _app, runner = shop_cli if categories else cli
    args = ["webpush", "send", "--user", "1", "--title", "Sale", *quiet]
    for name, value in options.items():
        args += [name, value]
    run(runner, args)


@given(user_id=arg(), sets=st.lists(st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["orders", "marketing", "news"]),
              st.sampled_from(["on", "off", "yes", "0", ""])),
    arg()), max_size=3), categories=st.booleans())
@fuzz_settings()
def test_fuzz_preferences(cli: Any, shop_cli: Any, user_id: str, sets: list[str],
                          categories: bool) -> None:
    _app, runner = shop_cli if categories else cli
    args = ["webpush", "preferences"]
    for value in sets:
        args += ["--set", value]
    run(runner, [*args, "--", user_id])
