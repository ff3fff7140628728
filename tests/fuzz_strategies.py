"""Hypothesis strategies and settings for fuzzing every input surface of the extension.

The values are the ones that broke it from outside: lone surrogates and NUL in text,
integers beyond 64 bits, NaN and infinities, dates at the ends of ``datetime``'s range,
JSON nested thousands deep, and values of the wrong type. Each fuzz test module draws
from here, so a new kind of bad input added here reaches every surface at once.

Profiles: ``ci`` (the default, a few examples per test: the fuzz set stays within a few
minutes on both databases) and ``long`` for a run on demand::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz_*.py -q
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

#: examples per fuzz test in each profile
EXAMPLES = {"ci": 25, "long": 1500}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in EXAMPLES:
    PROFILE = "ci"

# Registered here unless a profile of that name exists already (conftest or another module
# may define them for their own tests); the fuzz tests below do not depend on which did.
for _name, _examples in EXAMPLES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, max_examples=_examples, deadline=None)


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings of one fuzz test: the profile's examples (times ``scale``), no deadline
    (a database round trip varies), fixtures shared between examples on purpose (one app
    per database: state left by earlier examples is more input, not a leak)."""
    return settings(
        max_examples=max(1, int(EXAMPLES[PROFILE] * scale)), deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
        derandomize=PROFILE == "ci",  # CI: the same examples every run, no flaky red
        database=None if PROFILE == "ci" else settings.default.database,
    )


# -- text ------------------------------------------------------------------------------------

#: text that broke a check somewhere, or that a check must refuse
SPECIAL_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\udcff", "\t", "\r\n", "\x1b[31m",
    "/\\evil.example/p.png", "/\t/evil.example/", "\\\\evil.example/", "//evil.example/",
    "/\x00/evil.example/", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
    "https://evil.example/", "https://shop.example@evil.example/", "http://[::1",
    "=cmd|' /C calc'!A0", "%00", "%ED%A0%80", "9" * 20, "-1", "0", "1e309", "NaN",
    "Infinity", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-13-45",
    "\u202e", "\ufeff", "\U0001f600", "x" * 300, "é" * 100,
]

#: every code point, controls included, and lone surrogates (st.characters leaves them
#: out unless asked for category Cs)
any_character = st.one_of(st.characters(), st.characters(categories=["Cs"]),
                          st.characters(max_codepoint=0x1f))


def nasty_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Strings: the special ones above, arbitrary code points, and long ones."""
    return st.one_of(
        st.sampled_from(SPECIAL_TEXT),
        st.text(any_character, max_size=max_size),
        st.text(any_character, min_size=1, max_size=4).map(lambda s: s * 2000),
    )


def latin1_header() -> st.SearchStrategy[str]:
    """A header value as WSGI hands it over (latin-1, no line break): NUL and controls in."""
    return st.one_of(
        st.sampled_from(["", "\x00", "Mozilla/5.0\x00(X11)", "\x1b[2J", "ÿ" * 600]),
        st.text(st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"),
                max_size=80),
    )


def url_quoted(text: str) -> str:
    """``text`` percent-encoded as a URL carries it (a lone surrogate as its UTF-8 bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def query_value() -> st.SearchStrategy[str]:
    """A query-string value, already percent-encoded: text, digits, dates, bad bytes."""
    return st.one_of(
        nasty_text().map(url_quoted),
        huge_integers().map(str),
        st.sampled_from(["%FF", "%C0%80", "%", "%zz", "+", "&", "="]),
        extreme_datetimes().map(lambda d: url_quoted(d.isoformat())),
    )


# -- numbers, dates ----------------------------------------------------------------------------

EDGE_INTEGERS = [0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64,
                 10**20, 10**400]


def huge_integers() -> st.SearchStrategy[int]:
    """Integers near and beyond the database's column sizes."""
    return st.one_of(st.sampled_from(EDGE_INTEGERS), st.integers(),
                     st.integers(min_value=-(10**30), max_value=10**30))


def id_segment() -> st.SearchStrategy[str]:
    """A path segment an ``<int:...>`` route matches: 1 to 30 digits, no leading zero."""
    return st.one_of(st.sampled_from(["0", "1", str(2**31), str(2**63), "9" * 20]),
                     st.from_regex(r"\A[1-9][0-9]{0,29}\Z"))


def nasty_floats() -> st.SearchStrategy[float]:
    """Floats with NaN, both infinities, -0.0 and the largest finite ones."""
    return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 1.5]),
                     st.floats(allow_nan=True, allow_infinity=True))


EXTREME_DATETIMES = [
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59),  # naive
    datetime(1970, 1, 1, tzinfo=UTC), datetime(8999, 12, 31, tzinfo=UTC),
]


def extreme_datetimes() -> st.SearchStrategy[datetime]:
    """Datetimes over the whole range, naive or with any offset, ends of the range first."""
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
        lambda m: timezone(timedelta(minutes=m)))
    return st.one_of(st.sampled_from(EXTREME_DATETIMES),
                     st.datetimes(timezones=st.none() | st.just(UTC) | offsets))


# -- JSON --------------------------------------------------------------------------------------


def nested(depth: int, leaf: Any = 1) -> Any:
    """A JSON value nested ``depth`` levels deep, built without recursion."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_json_text() -> st.SearchStrategy[str]:
    """JSON text nested up to 10,000 deep: arrays, objects, or both."""
    def text(depth: int, kind: int) -> str:
        if kind == 0:
            return "[" * depth + "]" * depth
        if kind == 1:
            return '{"a":' * depth + "1" + "}" * depth
        return '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)
    return st.builds(text, st.sampled_from([33, 100, 999, 1001, 2000, 10_000]),
                     st.integers(0, 2))


def json_scalars() -> st.SearchStrategy[Any]:
    """Every JSON scalar and the Python floats JSON has no word for."""
    return st.one_of(st.none(), st.booleans(), huge_integers(), nasty_floats(), nasty_text())


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Arbitrary JSON-like values: scalars above in lists and objects, some nested deep."""
    tree = st.recursive(json_scalars(), lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(nasty_text(12), children, max_size=4)), max_leaves=max_leaves)
    return st.one_of(tree, st.sampled_from([33, 200]).map(nested))


def hashable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Only the values of ``strategy`` that can be a dict's keys: a list or a set drawn as a
    key makes hypothesis itself fail, not the code under test."""
    def can_hash(value: Any) -> bool:
        try:
            hash(value)
        except TypeError:
            return False
        return True
    return strategy.filter(can_hash)


def wrong_types() -> st.SearchStrategy[Any]:
    """A value of any type, for a parameter that expects one in particular."""
    return st.one_of(json_scalars(), st.lists(json_scalars(), max_size=3),
                     st.dictionaries(nasty_text(8), json_scalars(), max_size=3),
                     st.binary(max_size=8), extreme_datetimes(),
                     st.sampled_from([object(), (), set(), timedelta.max, b"\x00"]))


def json_body_text(valid: Any = None) -> st.SearchStrategy[bytes]:
    """A request body: ``valid`` with a field replaced by a bad value, or arbitrary JSON
    (NaN and surrogate escapes as Python writes them), JSON nested deep, or not JSON."""
    def mutate(base: dict[str, Any], key: str, value: Any) -> Any:
        return {**base, key: value}

    options = [
        json_values().map(lambda v: json.dumps(v).encode()),
        deep_json_text().map(str.encode),
        st.binary(max_size=64),
        st.sampled_from([b"", b"{", b'{"a":1,"a":2}', b"\xff\xfe", b"NaN", b"[1e999]"]),
    ]
    if isinstance(valid, dict) and valid:
        options.append(st.builds(mutate, st.just(valid), st.sampled_from(sorted(valid)),
                                 json_values()).map(lambda v: json.dumps(v).encode()))
        options.append(st.builds(mutate, st.just(valid), nasty_text(12),
                                 json_values()).map(lambda v: json.dumps(v).encode()))
    return st.one_of(*options)
