"""The per-platform figures count a closed set derived from the User-Agent, never a label."""

from __future__ import annotations

import os

import pytest
from agents import AGENTS
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_webpush_targeted import counters
from flask_webpush_targeted.platforms import PLATFORMS, platform_of

#: WEBPUSH_FUZZ_EXAMPLES=20000 for a longer hunt than the suite's
EXAMPLES = int(os.environ.get("WEBPUSH_FUZZ_EXAMPLES", "300"))


@pytest.mark.parametrize(("user_agent", "platform"), list(AGENTS.values()), ids=list(AGENTS))
def test_real_user_agents_count_under_their_browser_family_and_form_factor(
        user_agent: str, platform: str) -> None:
    assert counters.platform_of(user_agent) == platform


@pytest.mark.parametrize("user_agent", [None, "", "   "])
def test_a_device_that_sent_no_user_agent_counts_as_unknown(user_agent: str | None) -> None:
    assert counters.platform_of(user_agent) == "unknown"


def test_the_set_has_every_family_on_desktop_and_mobile_and_unknown() -> None:
    assert counters.PLATFORMS == PLATFORMS
    assert len(set(PLATFORMS)) == len(PLATFORMS) == 15
    assert {"Chrome desktop", "Firefox mobile", "Safari mobile", "Edge desktop",
            "Samsung Internet mobile", "Opera desktop", "other desktop", "other mobile",
            "unknown"} <= set(PLATFORMS)


@pytest.mark.parametrize("label", ["Anna's phone", "=HYPERLINK(\"https://evil.example\")",
                                   "Firefox on Linux", "unknown", "Chrome desktop"])
def test_text_a_customer_could_type_never_becomes_a_platform_of_its_own(label: str) -> None:
    # no browser token in it: a browser of no known family, on no known mobile system
    assert counters.platform_of(label) == "other desktop"


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.one_of(
    st.none(), st.text(),
    # text built from the tokens the table looks for, in any order and mix
    st.lists(st.sampled_from(["Mozilla/5.0", "(iPhone;", "Android", "Mobile", "Edg/1",
                              "Chrome/1", "Safari/6", "Firefox/1", "AppleWebKit/6", "OPR/1",
                              "SamsungBrowser/2", "iPad", "CriOS/1", "\x00", "\ud800", " "]),
             max_size=12).map(" ".join),
))
def test_the_platform_of_any_text_is_one_of_the_closed_set(user_agent: str | None) -> None:
    assert platform_of(user_agent) in PLATFORMS
