"""gmtZone grammar, zone resolution and the call window across several zones."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from crm2calls.model import Lead
from crm2calls.policy import WEEKDAYS, CallWindow, Interval
from crm2calls.zones import (
    format_offset,
    is_gmt_zone,
    is_iana_zone,
    parse_offset,
    plan_window,
    resolve_zones,
    zone_tzinfo,
)

WINTER = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # a Thursday; no zone below changes offset that week
SUMMER = datetime(2026, 7, 16, 9, 0, tzinfo=UTC)  # Europe/Bucharest on summer time (+03:00)
RU_MOBILE = phonenumbers.parse("+79123456789")


def iv(text: str) -> Interval:
    start, end = text.split("-")
    return Interval(time.fromisoformat(start), time.fromisoformat(end))


def window(hours: dict[str, list[str]], days: tuple[str, ...] = WEEKDAYS[:5]) -> CallWindow:
    return CallWindow(
        days=days,
        hours={key: tuple(iv(t) for t in value) for key, value in hours.items()},
        retry_interval_minutes=60,
        max_call_attempts=3,
        call_within_hours=72,
    )


def allowed(w: CallWindow, local: datetime) -> bool:
    """The configured rule, applied to one local time: the brute-force oracle."""
    day = WEEKDAYS[local.weekday()]
    now = local.time()
    return day in w.days and any(i.start <= now < i.end for i in w.intervals_for(day))


def plan_allows(plan, instant: datetime) -> bool:
    local = instant.astimezone(zone_tzinfo(plan.zone))
    day = WEEKDAYS[local.weekday()]
    intervals = plan.hours.get(day, plan.hours.get("default", ()))
    return day in plan.days and any(i.start <= local.time() < i.end for i in intervals)


# gmtZone: Java ZoneId.of's grammar


@pytest.mark.parametrize(
    "text",
    [
        "Z",
        "+3",
        "-3",
        "+0",
        "+03",
        "-03",
        "+0330",
        "+03:30",
        "-03:30",
        "+033015",
        "+03:30:15",
        "+18",
        "-18:00",
        "+18:00:00",
        "UTC",
        "GMT",
        "UT",
        "UTC+3",
        "UTC-03:30",
        "GMT+0330",
        "GMT-03:30:15",
        "UT+5",
        "UT-18:00",
        "Europe/Moscow",
        "Asia/Yekaterinburg",
        "Etc/GMT+5",
        "GMT0",
    ],
)
def test_gmt_zone_accepts_every_zoneid_form(text):
    assert is_gmt_zone(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "+3:30",  # one-digit hours only without minutes
        "+033",
        "+19",
        "-19",
        "+18:01",
        "+18:00:01",
        "+03:60",
        "+03:30:60",
        "+03:3000",  # colons all or none
        "+0330:00",
        "UTC+",
        "UTC+19",
        "GMT+3:30",
        "UTCZ",
        "UTC 3",
        "utc",
        "z",
        "3",
        "03:00",
        "+٣",  # Arabic-Indic digit: Java takes ASCII digits only
        "Europe/Nowhere",
        "europe/moscow",
        "localtime",
        "Etc/Unknown",
    ],
)
def test_gmt_zone_refuses_near_misses(text):
    assert not is_gmt_zone(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Z", timedelta(0)),
        ("GMT", timedelta(0)),
        ("+5", timedelta(hours=5)),
        ("-03:30", timedelta(hours=-3, minutes=-30)),
        ("UTC+0545", timedelta(hours=5, minutes=45)),
        ("GMT-05:30:15", -timedelta(hours=5, minutes=30, seconds=15)),
        ("Europe/Moscow", None),
    ],
)
def test_parse_offset(text, expected):
    assert parse_offset(text) == expected


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (timedelta(hours=5), "+05:00"),
        (timedelta(hours=-3, minutes=-30), "-03:30"),
        (timedelta(0), "+00:00"),
        (timedelta(hours=5, minutes=30, seconds=15), "+05:30:15"),
    ],
)
def test_format_offset_round_trips(offset, text):
    assert format_offset(offset) == text
    assert parse_offset(text) == offset


@pytest.mark.parametrize(
    ("name", "known"), [("Europe/Moscow", True), ("UTC", True), ("europe/moscow", False), ("", False)]
)
def test_is_iana_zone_is_exact(name, known):
    assert is_iana_zone(name) is known


def test_zone_tzinfo_handles_ids_and_offsets():
    assert WINTER.astimezone(zone_tzinfo("Asia/Yekaterinburg")).utcoffset() == timedelta(hours=5)
    assert zone_tzinfo("UTC+5") == timezone(timedelta(hours=5))
    with pytest.raises(ValueError):
        zone_tzinfo("Mars/Olympus")


# Zone resolution: the lead's zone, then its city, then the number, then the fallback

CITIES = {"екатеринбург": "Asia/Yekaterinburg", "novosibirsk": "Asia/Novosibirsk"}


@pytest.mark.parametrize(
    ("lead", "number", "zones", "source"),
    [
        (Lead("1", [], zone="Asia/Omsk", city="Novosibirsk"), RU_MOBILE, ["Asia/Omsk"], "lead zone"),
        (Lead("1", [], zone="+05:00"), RU_MOBILE, ["+05:00"], "lead zone"),
        (Lead("1", [], zone="UTC+5"), RU_MOBILE, ["+05:00"], "lead zone"),
        (Lead("1", [], zone="Mars/Base", city=" Екатеринбург "), RU_MOBILE, ["Asia/Yekaterinburg"], "city"),
        (Lead("1", [], city="NOVOSIBIRSK"), RU_MOBILE, ["Asia/Novosibirsk"], "city"),
        (Lead("1", [], city="Tver"), phonenumbers.parse("+73432123456"), ["Asia/Yekaterinburg"], "number"),
        (Lead("1", []), phonenumbers.parse("+80012345678"), ["Europe/Moscow"], "fallback"),  # Etc/Unknown
    ],
)
def test_resolve_zones_order(lead, number, zones, source):
    assert resolve_zones(lead, CITIES, number, "Europe/Moscow") == (zones, source)


def test_russian_mobile_has_sixteen_candidate_zones():
    zones, source = resolve_zones(Lead("1", []), {}, RU_MOBILE, "Europe/Moscow")
    assert source == "number"
    assert len(zones) == 16
    assert {"Europe/Moscow", "Asia/Kamchatka", "Europe/Bucharest"} <= set(zones)


# The window plan


def test_single_zone_keeps_the_configured_window():
    w = window({"default": ["10:00-19:00"]})
    plan = plan_window(["Asia/Yekaterinburg"], w, WINTER, "Europe/Moscow")
    assert (plan.zone, plan.days, plan.hours) == ("Asia/Yekaterinburg", WEEKDAYS[:5], w.hours)
    assert plan.reason == "one zone"


def test_single_zone_sends_default_only_when_a_day_needs_it():
    partly = window({"default": ["10:00-19:00"], "sat": ["11:00-15:00"]}, days=("mon", "sat"))
    assert set(plan_window(["Europe/Moscow"], partly, WINTER, "Europe/Moscow").hours) == {"sat", "default"}
    every = window({"default": ["10:00-19:00"], "mon": ["10:00-12:00"], "sat": ["11:00-15:00"]}, days=("mon", "sat"))
    assert set(plan_window(["Europe/Moscow"], every, WINTER, "Europe/Moscow").hours) == {"mon", "sat"}


@pytest.mark.parametrize(
    ("zones", "target", "expected"),
    [
        # Yekaterinburg is 2 h ahead: its 19:00 is Moscow's 17:00.
        (["Asia/Yekaterinburg", "Europe/Moscow"], "Europe/Moscow", "10:00-17:00"),
        # Fallback not a candidate: the first zone; Novosibirsk's 10:00 is Yekaterinburg's 08:00.
        (["Asia/Yekaterinburg", "Asia/Novosibirsk"], "Asia/Yekaterinburg", "10:00-17:00"),
        # A fixed offset plans like a zone: +03:00 and Yekaterinburg (+05:00).
        (["+03:00", "Asia/Yekaterinburg"], "+03:00", "10:00-17:00"),
    ],
)
def test_two_zones_get_the_common_hours(zones, target, expected):
    plan = plan_window(zones, window({"default": ["10:00-19:00"]}), WINTER, "Europe/Moscow")
    assert plan.zone == target
    assert plan.days == WEEKDAYS[:5]
    assert plan.hours == {"default": (iv(expected),)}
    assert plan.reason == "hours common to 2 zones"


def test_two_zones_a_day_apart_shift_the_days():
    # Kiritimati (+14) is a calendar day ahead of Honolulu (-10) at the same clock time: Honolulu's
    # Thursday is Kiritimati's short Friday, and Honolulu's Friday is Kiritimati's Saturday (no calls).
    w = window({"default": ["09:00-18:00"], "fri": ["09:00-13:00"]})
    plan = plan_window(["Pacific/Honolulu", "Pacific/Kiritimati"], w, WINTER, "Europe/Moscow")
    assert plan.zone == "Pacific/Honolulu"
    assert plan.days == ("mon", "tue", "wed", "thu")
    full = (iv("09:00-18:00"),)
    assert plan.hours == {"mon": full, "tue": full, "wed": full, "thu": (iv("09:00-13:00"),)}


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Kaliningrad (Europe/Bucharest, +02:00) to Kamchatka (+12:00): 10 h apart, 09-21 leaves 2 h.
        (WINTER, "10:00-12:00"),
        # In summer Bucharest is +03:00 like Moscow: 9 h apart leaves 3 h.
        (SUMMER, "09:00-12:00"),
    ],
)
def test_russian_mobile_gets_the_hours_common_to_all_sixteen_zones(now, expected):
    zones, _ = resolve_zones(Lead("1", []), {}, RU_MOBILE, "Europe/Moscow")
    w = window({"default": ["09:00-21:00"]})
    plan = plan_window(zones, w, now, "Europe/Moscow")
    assert plan.zone == "Europe/Moscow"
    assert plan.hours == {"default": (iv(expected),)}
    # Brute force over every minute of the week: the plan allows exactly the minutes every zone allows.
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0)
    tzs = [ZoneInfo(z) for z in zones]
    plan_minutes = 0
    for minute in range(7 * 24 * 60):
        instant = monday + timedelta(minutes=minute)
        by_plan = plan_allows(plan, instant)
        in_all = all(allowed(w, instant.astimezone(tz)) for tz in tzs)
        assert by_plan == in_all, instant
        plan_minutes += by_plan
    assert plan_minutes > 0


def test_russian_mobile_with_no_common_hour_falls_back():
    zones, _ = resolve_zones(Lead("1", []), {}, RU_MOBILE, "Europe/Moscow")
    w = window({"default": ["10:00-19:00"]})
    plan = plan_window(zones, w, WINTER, "Europe/Moscow")
    assert (plan.zone, plan.days, plan.hours) == ("Europe/Moscow", WEEKDAYS[:5], w.hours)
    assert "no hour is common to the 16 zones" in plan.reason
    assert "fallback" in plan.reason


def test_empty_intersection_falls_back_to_one_of_the_candidates_when_the_fallback_is_not_one():
    # A zone the number cannot be in would call its owner at that zone's hours: a US number at Moscow's.
    plan = plan_window(["Pacific/Honolulu", "Asia/Tokyo"], window({"default": ["10:00-12:00"]}), WINTER, "UTC")
    assert plan.zone == "Pacific/Honolulu"
    assert plan.hours == {"default": (iv("10:00-12:00"),)} and not plan.common
