"""Times of day in a device's time zone (local_time.py) and the category settings
(categories.py): properties over every zone and instant, and the settings' errors."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_webpush_targeted.categories import parse_categories, quiet_window
from flask_webpush_targeted.config import validate_config
from flask_webpush_targeted.exceptions import ConfigurationError
from flask_webpush_targeted.local_time import (
    in_window,
    is_zone,
    next_local,
    parse_clock,
    parse_window,
    quiet_until,
    zone,
)

ZONES = sorted(z for z in available_timezones() if is_zone(z))
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                        timezones=st.just(UTC))
clock_times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
windows = st.tuples(clock_times, clock_times).filter(lambda w: w[0] != w[1])


@settings(max_examples=300, deadline=None)
@given(at=instants, name=st.sampled_from(ZONES), window=windows)
def test_quiet_hours_end_after_the_moment_outside_the_window_within_a_day(
        at: datetime, name: str, window: tuple[time, time]) -> None:
    tz = ZoneInfo(name)
    released = quiet_until(at, tz, window)
    inside = in_window(at.astimezone(tz).time().replace(second=0, microsecond=0), window)
    if not inside:
        assert released is None
        return
    assert released is not None and at < released <= at + timedelta(hours=26)
    # the clocks show the window's end then (or, in a gap the clocks skip, just after it)
    shown = released.astimezone(tz).time()
    assert shown == window[1] or not in_window(shown, window)


@settings(max_examples=300, deadline=None)
@given(at=instants, name=st.sampled_from(ZONES), t=clock_times)
def test_the_next_local_time_is_the_first_at_or_after_the_call_within_a_day(
        at: datetime, name: str, t: time) -> None:
    tz = ZoneInfo(name)
    due = next_local(at, tz, t)
    assert at <= due <= at + timedelta(hours=26)
    local = due.astimezone(tz)
    if local.time().replace(second=0, microsecond=0) == t:
        # the day before, the clocks showed that time before the call
        before = datetime.combine((local - timedelta(days=1)).date(), t, tzinfo=tz)
        assert before.astimezone(UTC) < at


def test_nine_in_the_morning_in_three_zones() -> None:
    noon = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    nine = time(9, 0)
    assert next_local(noon, zone("America/New_York"), nine) == datetime(2026, 12, 1, 14, 0,
                                                                         tzinfo=UTC)
    assert next_local(noon, zone("Europe/Warsaw"), nine) == datetime(2026, 12, 2, 8, 0,
                                                                      tzinfo=UTC)
    assert next_local(noon, zone("Asia/Tokyo"), nine) == datetime(2026, 12, 2, 0, 0, tzinfo=UTC)


def test_a_window_across_midnight_and_one_within_a_day() -> None:
    night = parse_window(("21:00", "08:00"))
    lunch = parse_window(["12:00", "13:30"])
    assert in_window(time(23, 0), night) and in_window(time(7, 59), night)
    assert not in_window(time(8, 0), night) and in_window(time(21, 0), night)
    assert in_window(time(12, 0), lunch) and not in_window(time(13, 30), lunch)


def test_spring_forward_releases_just_after_the_gap() -> None:
    # Europe/Warsaw skips 02:00-03:00 on 2026-03-29; quiet hours ending at 02:30 end at 03:00.
    tz = zone("Europe/Warsaw")
    at = datetime(2026, 3, 29, 0, 15, tzinfo=UTC)  # 01:15 local
    released = quiet_until(at, tz, parse_window(("22:00", "02:30")))
    assert released is not None and released.astimezone(tz).time() == time(3, 30)
    assert released == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize("value", ["9:00", "24:00", "12:60", " 12:00", "12:00\x00", "１２:００",
                                   "", None, 1200, ["12:00"], "12:00:00"])
def test_a_time_of_day_is_hh_mm_only(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_clock(value)


@pytest.mark.parametrize("name", ["America", "../../etc/passwd", "Europe/Nowhere", "x" * 65,
                                  "UTC\x00", "Europe/Warsaw/", "/UTC", "", "\udcff", 7])
def test_a_time_zone_is_an_iana_name_only(name: Any) -> None:
    assert not is_zone(name)


@pytest.mark.parametrize(("categories", "message"), [
    ({}, "non-empty dict"),
    ([("orders", {})], "non-empty dict"),
    ({"Orders!": {"label": "x"}}, "category name"),
    ({"orders": {"label": ""}}, "needs a 'label'"),
    ({"orders": {"label": "x", "colour": "red"}}, "unknown key"),
    ({"orders": {"label": "x", "required": "yes"}}, "True or False"),
    ({"orders": {"label": "x", "quiet_hours": ("21:00", "21:00")}}, "starts when it ends"),
    ({"orders": {"label": "x", "quiet_hours": "21:00-08:00"}}, "quiet_hours"),
    ({"orders": {"label": "x", "cap": (0, timedelta(days=1))}}, "count"),
    ({"orders": {"label": "x", "cap": (2, 86400)}}, "period"),
    ({"orders": {"label": "x", "cap": (2, timedelta(days=400))}}, "period"),
    ({"orders": {"label": "x", "cap": (True, timedelta(days=1))}}, "count"),
])
def test_bad_categories_are_refused_at_init_app_saying_what_is_wrong(
        categories: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_categories(categories)
    config = valid_config(WEBPUSH_CATEGORIES=categories)
    with pytest.raises(ConfigurationError, match="WEBPUSH_CATEGORIES"):
        validate_config(config)


@pytest.mark.parametrize(("key", "value"), [
    ("WEBPUSH_QUIET_HOURS", ("21:00",)), ("WEBPUSH_QUIET_HOURS", "21:00-08:00"),
    ("WEBPUSH_QUIET_HOURS", ("8:00", "21:00")), ("WEBPUSH_DEFAULT_TIMEZONE", "Mars/Olympus"),
    ("WEBPUSH_DEFAULT_TIMEZONE", None),
])
def test_bad_quiet_hours_and_default_zone_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        validate_config(valid_config(**{key: value}))


def test_a_category_follows_the_global_quiet_hours_unless_it_sets_its_own() -> None:
    parsed = parse_categories({
        "orders": {"label": "Orders", "required": True, "quiet_hours": None},
        "offers": {"label": "Offers"},
        "late": {"label": "Late news", "quiet_hours": ("23:00", "06:00")},
    })
    assert parsed is not None
    night = parse_window(("21:00", "08:00"))
    assert quiet_window(parsed["orders"], night, None) is None
    assert quiet_window(parsed["orders"], night, True) == night
    assert quiet_window(parsed["offers"], night, None) == night
    assert quiet_window(parsed["offers"], night, False) is None
    assert quiet_window(parsed["late"], night, None) == parse_window(("23:00", "06:00"))
    assert quiet_window(None, None, None) is None


def valid_config(**overrides: Any) -> dict[str, Any]:
    from hostapp import VAPID_PRIVATE, VAPID_PUBLIC

    from flask_webpush_targeted.config import DEFAULTS

    return {**DEFAULTS, "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE,
            "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
            "WEBPUSH_VAPID_SUBJECT": "mailto:ops@shop.example", **overrides}
