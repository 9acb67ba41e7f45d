"""Time zones: the gmtZone grammar, where a customer's zone comes from, and when we may call them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm2calls.policy import WEEKDAYS, CallWindow, Interval

if TYPE_CHECKING:
    import phonenumbers

    from crm2calls.model import Lead

DAY = 24 * 60
WEEK = 7 * DAY
MAX_OFFSET = 18 * 3600

# Java ZoneOffset.of: +h, +hh, +hhmm, +hh:mm, +hhmmss, +hh:mm:ss (ASCII digits only).
_OFFSET = re.compile(r"[+-]([0-9]{1,2}|[0-9]{2}:?[0-9]{2}|[0-9]{6}|[0-9]{2}:[0-9]{2}:[0-9]{2})")
_PREFIXES = ("UTC", "GMT", "UT")  # Java ZoneId.of checks UTC/GMT before UT


# "localtime" is a host symlink, "Factory" and "posixrules" placeholders: not zones a person means.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


def is_iana_zone(name: str) -> bool:
    """True for an IANA zone id known to zoneinfo (case-sensitive, like Java's ZoneId.of)."""
    return isinstance(name, str) and _loads_as_zone(name)


@lru_cache(maxsize=4096)
def _loads_as_zone(name: str) -> bool:
    # Loading the one zone, not listing all of them: available_timezones() reads every file (~30 ms
    # of each Lambda cold start).
    if not name or name in _NOT_ZONES or name.startswith("/") or "\\" in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _parse_signed(text: str) -> timedelta | None:
    """Java ZoneOffset.of: "+h" ... "+hh:mm:ss", at most ±18:00."""
    if not _OFFSET.fullmatch(text):
        return None
    digits = text[1:].replace(":", "")
    if len(digits) == 1:
        digits = "0" + digits
    hours, minutes, seconds = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if minutes > 59 or seconds > 59:
        return None
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_OFFSET:
        return None
    return timedelta(seconds=-total if text[0] == "-" else total)


def parse_offset(text: str) -> timedelta | None:
    """The UTC offset of a gmtZone written as an offset ("Z", "+05:00", "UTC+5", "GMT"), else None."""
    if not isinstance(text, str):
        return None
    if text == "Z":
        return timedelta(0)
    if text[:1] in ("+", "-"):
        return _parse_signed(text)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if not rest:
                return timedelta(0)
            return _parse_signed(rest) if rest[0] in ("+", "-") else None
    return None


def is_gmt_zone(text: str) -> bool:
    """True for every form Aimylogic's gmtZone takes (Java ZoneId.of): offsets, UTC/GMT/UT forms, IANA ids."""
    return parse_offset(text) is not None or is_iana_zone(text)


def format_offset(offset: timedelta) -> str:
    """timedelta(hours=5) -> "+05:00" (seconds only when there are any)."""
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


@lru_cache(maxsize=1024)
def zone_tzinfo(zone: str) -> tzinfo:
    """A tzinfo for an IANA id or an offset form; ValueError for anything else.

    Cached: ZoneInfo keeps only a few zones warm, and a Russian mobile alone spans sixteen.
    """
    if is_iana_zone(zone):
        return ZoneInfo(zone)
    offset = parse_offset(zone)
    if offset is None:
        raise ValueError(f"{zone!r} is not a time zone")
    return timezone(offset)


# Where a customer's zone comes from.


def resolve_zones(
    lead: Lead, cities: dict[str, str], number: phonenumbers.PhoneNumber, fallback: str
) -> tuple[list[str], str]:
    """Candidate zones for a lead and their source: the lead's zone, its city, its number, or the fallback."""
    if lead.zone:
        zone = lead.zone.strip()
        if is_iana_zone(zone):
            return [zone], "lead zone"
        offset = parse_offset(zone)
        if offset is not None:
            return [format_offset(offset)], "lead zone"
    if lead.city:
        zone = cities.get(lead.city.strip().casefold())
        if zone:
            return [zone], "city"
    from phonenumbers import timezone as number_zones

    zones = [z for z in number_zones.time_zones_for_number(number) if is_iana_zone(z)]  # drops Etc/Unknown
    if zones:
        return zones, "number"
    return [fallback], "fallback"


# The call window across several candidate zones.


@dataclass(frozen=True)
class WindowPlan:
    """The days and local hours to send, in `zone`, and why that zone."""

    zone: str
    days: tuple[str, ...]
    hours: dict[str, tuple[Interval, ...]]
    reason: str
    common: bool = True  # False: the zones share no allowed time, this is the fallback zone's window


def _minutes(value: time) -> int:
    return value.hour * 60 + value.minute


def _rotate(mask: int, shift: int) -> int:
    """Move every minute of a week-long bit mask `shift` minutes later, wrapping around the week."""
    shift %= WEEK
    return ((mask << shift) | (mask >> (WEEK - shift))) & ((1 << WEEK) - 1)


def _local_mask(window: CallWindow) -> int:
    """The window as a bit per minute of the local week, bit 0 = Monday 00:00."""
    mask = 0
    for index, day in enumerate(WEEKDAYS):
        if day not in window.days:
            continue
        for interval in window.intervals_for(day):
            start, end = _minutes(interval.start), _minutes(interval.end)
            mask |= ((1 << (end - start)) - 1) << (index * DAY + start)
    return mask


def _offset_minutes(zone: str, now: datetime) -> int:
    offset = now.astimezone(zone_tzinfo(zone)).utcoffset() or timedelta(0)
    return int(offset.total_seconds() // 60)


def _day_intervals(mask: int) -> dict[str, tuple[Interval, ...]]:
    """Split a local-week mask at each midnight into per-day intervals."""
    hours = {}
    for index, day in enumerate(WEEKDAYS):
        bits = format((mask >> (index * DAY)) & ((1 << DAY) - 1), f"0{DAY}b")[::-1]
        # Runs end by 23:59: the mask lies inside the target zone's own window, whose days end by 23:59.
        runs = [(run.start(), run.end()) for run in re.finditer("1+", bits)]
        if runs:
            hours[day] = tuple(Interval(time(*divmod(a, 60)), time(*divmod(b, 60))) for a, b in runs)
    return hours


def _configured(zone: str, window: CallWindow, reason: str) -> WindowPlan:
    hours = {day: ivs for day, ivs in window.hours.items() if day in window.days}
    if any(day not in hours for day in window.days) and "default" in window.hours:
        hours["default"] = window.hours["default"]
    return WindowPlan(zone, tuple(window.days), hours, reason)


def plan_window(zones: list[str], window: CallWindow, now: datetime, fallback: str) -> WindowPlan:
    """The window allowed in every candidate zone this week, in one of them; the fallback when none is common."""
    hours = tuple(sorted(window.hours.items()))
    # Offsets change only at DST transitions, on the hour: one plan per zone set, window and hour.
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return _plan(tuple(dict.fromkeys(zones)), window.days, hours, hour, fallback)


@lru_cache(maxsize=4096)
def _plan(
    zones: tuple[str, ...],
    days: tuple[str, ...],
    hours: tuple[tuple[str, tuple[Interval, ...]], ...],
    now: datetime,
    fallback: str,
) -> WindowPlan:
    window = CallWindow(days, dict(hours), 0, 0, 1)  # only days and hours matter for the plan
    zones = list(zones) or [fallback]
    if len(zones) == 1:
        return _configured(zones[0], window, "one zone")
    local = _local_mask(window)
    common = (1 << WEEK) - 1
    for zone in zones:  # a local minute m of the week is UTC minute m - offset
        common &= _rotate(local, -_offset_minutes(zone, now))
    target = fallback if fallback in zones else zones[0]
    per_day = _day_intervals(_rotate(common, _offset_minutes(target, now)))
    if not per_day:
        # One of the number's own zones, never a zone it cannot be in (a US number, Moscow's hours).
        plan = _configured(target, window, f"no hour is common to the {len(zones)} zones; fallback zone")
        return replace(plan, common=False)
    days = tuple(per_day)
    if len(set(per_day.values())) == 1:
        per_day = {"default": per_day[days[0]]}
    return WindowPlan(target, days, per_day, f"hours common to {len(zones)} zones")


# Whether an addPhones entry's calling window is open at a moment (follow-up polling reads it).


def _entry_window(entry: dict) -> CallWindow:
    """The days and hours of a frozen entry as a CallWindow; absent fields mean every day, all day."""
    days = tuple(entry.get("allowedDays") or WEEKDAYS)
    allowed = entry.get("allowedTime") or {"default": [{"localTimeFrom": "00:00", "localTimeTo": "23:59"}]}
    hours = {
        key: tuple(Interval(time.fromisoformat(i["localTimeFrom"]), time.fromisoformat(i["localTimeTo"])) for i in ivs)
        for key, ivs in allowed.items()
    }
    return CallWindow(days, hours, 0, 0, 1)  # only days and hours matter here


def _entry_zone(entry: dict) -> tzinfo:
    try:
        return zone_tzinfo(entry.get("gmtZone") or "UTC")
    except ValueError:  # Aimylogic took the entry, so the zone was valid there; UTC is the nearest guess
        return UTC


def next_window_opening(entry: dict, at: datetime) -> datetime | None:
    """`at` itself when the entry's calling window is open then, else when it next opens (None: never).

    Minutes of the local week, as the window masks count them; the zone's offset at `at` serves the
    whole week ahead (a DST change inside it moves the answer by an hour at most).
    """
    mask = _local_mask(_entry_window(entry))
    if not mask:
        return None
    local = at.astimezone(_entry_zone(entry))
    minute = local.weekday() * DAY + local.hour * 60 + local.minute
    ahead = _rotate(mask, -minute)  # bit k: local minute `minute + k` of the week
    if ahead & 1:
        return at
    first = (ahead & -ahead).bit_length() - 1
    return (local.replace(second=0, microsecond=0) + timedelta(minutes=first)).astimezone(UTC)
