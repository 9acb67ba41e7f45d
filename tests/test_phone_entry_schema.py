"""PhoneEntrySchema: every rule of docs/addPhones.md, with valid values and near misses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marshmallow import ValidationError

from schemas.phone_entry import PhoneEntrySchema, validate_entry

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"
PHONE = "79123456789"


def entry(**fields):
    return {"phone": PHONE, **fields}


def refused(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_entry(data)
    assert field in caught.value.messages, caught.value.messages


def interval(start: str, end: str) -> dict:
    return {"localTimeFrom": start, "localTimeTo": end}


def test_the_documented_example_loads_and_dumps_the_phone_as_a_string():
    example = json.loads((FIXTURES / "addphones_doc_example.json").read_text())[0]
    assert validate_entry(example) == {**example, "phone": "79123456789"}


def test_a_full_entry_round_trips_unchanged():
    full = json.loads((FIXTURES / "entry_full.json").read_text())
    assert validate_entry(full) == full


# phone


@pytest.mark.parametrize(
    ("phone", "wire"),
    [(PHONE, PHONE), ("12345678", "12345678"), ("123456789012345", "123456789012345"), (79123456789, PHONE)],
)
def test_phone_accepted(phone, wire):
    assert validate_entry({"phone": phone}) == {"phone": wire}


@pytest.mark.parametrize(
    "phone",
    [
        "+79123456789",
        "8 912 345-67-89",
        "1234567",
        "1234567890123456",
        "07912345678",
        "٧٩١٢٣٤٥٦٧٨٩",  # Arabic-Indic digits
        "",
        None,
        True,
        79123456789.0,
    ],
)
def test_phone_refused(phone):
    refused({"phone": phone}, "phone")


def test_phone_required():
    refused({"payload": {}}, "phone")


# payload


@pytest.mark.parametrize("payload", [{}, {"name": "Alex", "nested": {"a": [1, None]}}])
def test_payload_accepted(payload):
    assert validate_entry(entry(payload=payload))["payload"] == payload


@pytest.mark.parametrize("payload", [[], "name", 1, None])
def test_payload_refused(payload):
    refused(entry(payload=payload), "payload")


# startDateTime / finishDateTime


@pytest.mark.parametrize(
    ("given", "wire"),
    [
        ("2026-11-26T10:00:00Z", "2026-11-26T10:00:00Z"),
        ("2026-11-26T13:00:00+03:00", "2026-11-26T10:00:00Z"),
        ("2026-11-26T04:30:00-05:30", "2026-11-26T10:00:00Z"),
        ("2026-11-26T10:00Z", "2026-11-26T10:00:00Z"),
        ("2026-11-26T10:00:00.5Z", "2026-11-26T10:00:00.500000Z"),
        ("2026-11-27T00:30:00+14:00", "2026-11-26T10:30:00Z"),
    ],
)
def test_date_times_dump_in_utc_with_z(given, wire):
    assert validate_entry(entry(startDateTime=given))["startDateTime"] == wire
    assert validate_entry(entry(finishDateTime=given))["finishDateTime"] == wire


@pytest.mark.parametrize(
    "given",
    [
        "2026-11-26T10:00:00",  # naive
        "2026-11-26",
        "2026-11-26 10:00:00Z",
        "20261126T100000Z",
        "2026-11-26T10:00:00+0300",
        "2026-11-26T10:00:00+19:00",
        "2026-11-26T10:00:00z",
        "2026-02-30T10:00:00Z",
        "2026-11-26T24:00:00Z",
        "2026-11-26T10:00:00.1234567Z",
        1764151200,
        "",
    ],
)
def test_date_times_refused(given):
    refused(entry(startDateTime=given), "startDateTime")
    refused(entry(finishDateTime=given), "finishDateTime")


@pytest.mark.parametrize(
    "finish",
    ["2026-11-26T10:00:00Z", "2026-11-26T13:00:00+03:00", "2026-11-26T09:59:59Z"],
)
def test_finish_must_be_strictly_after_start(finish):
    refused(entry(startDateTime="2026-11-26T10:00:00Z", finishDateTime=finish), "finishDateTime")


def test_finish_after_start_accepted():
    data = entry(startDateTime="2026-11-26T10:00:00Z", finishDateTime="2026-11-26T10:00:01Z")
    assert validate_entry(data) == data


# allowedDays


@pytest.mark.parametrize("days", [["mon"], ["sun", "mon"], ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]])
def test_allowed_days_accepted(days):
    assert validate_entry(entry(allowedDays=days))["allowedDays"] == days


@pytest.mark.parametrize("days", [[], ["mon", "mon"], ["Mon"], ["monday"], "mon", ["mon", None]])
def test_allowed_days_refused(days):
    refused(entry(allowedDays=days), "allowedDays")


# allowedTime


@pytest.mark.parametrize(
    "times",
    [
        {"default": [interval("10:00", "19:00")]},
        {"mon": [interval("10:00", "12:00"), interval("12:00", "14:00")]},  # touching is not overlapping
        {"sat": [interval("15:00", "16:00"), interval("09:00", "10:00")]},  # any order
        {"sun": [interval("00:00", "23:59")], "default": [interval("10:00", "11:00")]},
    ],
)
def test_allowed_time_accepted(times):
    assert validate_entry(entry(allowedTime=times))["allowedTime"] == times


@pytest.mark.parametrize(
    "times",
    [
        {"holiday": [interval("10:00", "19:00")]},
        {"Mon": [interval("10:00", "19:00")]},
        {"default": []},
        {"default": interval("10:00", "19:00")},
        {"default": [{"localTimeFrom": "10:00"}]},
        {"default": [{"localTimeTo": "19:00"}]},
        {"default": [{**interval("10:00", "19:00"), "tz": "+03:00"}]},
        {"default": [interval("10:00", "24:00")]},
        {"default": [interval("9:00", "19:00")]},
        {"default": [interval("10:00:00", "19:00")]},
        {"default": [interval("10:00", "19:00\n")]},
        {"default": [interval("10:60", "19:00")]},
        {"default": [interval("10:00", "10:00")]},
        {"default": [interval("19:00", "10:00")]},
        {"default": [interval("10:00", "12:01"), interval("12:00", "14:00")]},
        {"default": [interval("10:00", "19:00"), interval("11:00", "12:00")]},
        {"default": [None]},
    ],
)
def test_allowed_time_refused(times):
    refused(entry(allowedTime=times), "allowedTime")


def test_allowed_time_for_a_day_outside_allowed_days_is_refused():
    refused(entry(allowedDays=["mon"], allowedTime={"tue": [interval("10:00", "12:00")]}), "allowedTime")


@pytest.mark.parametrize(
    "data",
    [
        entry(allowedDays=["mon"], allowedTime={"mon": [interval("10:00", "12:00")]}),
        entry(allowedDays=["mon"], allowedTime={"default": [interval("10:00", "12:00")]}),
        entry(allowedTime={"tue": [interval("10:00", "12:00")]}),  # no allowedDays: every day counts
    ],
)
def test_allowed_time_for_allowed_days_default_or_without_allowed_days_accepted(data):
    assert validate_entry(data) == data


# retryIntervalInMinutes, maxAttempts


@pytest.mark.parametrize("field", ["retryIntervalInMinutes", "maxAttempts"])
@pytest.mark.parametrize("value", [0, 1, 120, 10_000])
def test_counts_accepted(field, value):
    assert validate_entry(entry(**{field: value}))[field] == value


@pytest.mark.parametrize("field", ["retryIntervalInMinutes", "maxAttempts"])
@pytest.mark.parametrize("value", [-1, 1.5, 1.0, "3", True, False, None, [1]])
def test_counts_refused(field, value):
    refused(entry(**{field: value}), field)


# gmtZone (the whole grammar is in test_zones.py)


@pytest.mark.parametrize("zone", ["Z", "+03:30", "-5", "+0530", "UTC", "GMT+3", "UT-03:00", "Europe/Moscow"])
def test_gmt_zone_accepted(zone):
    assert validate_entry(entry(gmtZone=zone))["gmtZone"] == zone


@pytest.mark.parametrize("zone", ["+3:30", "+033", "+19", "+18:01", "UTC+", "GMT+3:30", "Europe/Nowhere", "utc", ""])
def test_gmt_zone_refused(zone):
    refused(entry(gmtZone=zone), "gmtZone")


# shape


@pytest.mark.parametrize("key", ["extra", "Phone", "gmt_zone"])
def test_unknown_keys_refused(key):
    refused(entry(**{key: 1}), key)


def test_dump_omits_keys_without_a_value():
    assert PhoneEntrySchema().dump({"phone": PHONE, "payload": None, "gmtZone": None}) == {"phone": PHONE}


def test_errors_name_every_bad_field():
    with pytest.raises(ValidationError) as caught:
        validate_entry({"phone": "+7", "maxAttempts": -1, "gmtZone": "Mars"})
    assert set(caught.value.messages) == {"phone", "maxAttempts", "gmtZone"}
