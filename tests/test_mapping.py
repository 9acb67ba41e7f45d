"""From CRM records to Leads, and from Leads to validated addPhones entries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from marshmallow import ValidationError

from crm2calls.errors import UnusableLeadError
from crm2calls.mapping import get_path, lead_from_fields, render_entry
from crm2calls.model import Lead, PhoneCandidate
from schemas.policy import PolicySchema, build_policy

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"
RECEIVED = datetime(2026, 11, 26, 10, 0, 0, 654321, tzinfo=UTC)  # a Thursday
MOBILE = "8 912 345-67-89"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def make_policy(data: dict | None = None):
    return build_policy(PolicySchema().load(data or {}), "RU")


def render(lead: Lead, data: dict | None = None, source: str = "generic", received_at: datetime = RECEIVED):
    policy = make_policy(data)
    return render_entry(lead, policy.source(source), policy, received_at)


def lead(*phones: str, **kwargs) -> Lead:
    return Lead("1", [PhoneCandidate(p) for p in phones], **kwargs)


def times(*spans: str) -> list[dict]:
    return [{"localTimeFrom": s[:5], "localTimeTo": s[6:]} for s in spans]


# get_path

NESTED = load("lead_nested.json")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("lead.id", "L-7"),
        ("contacts.0.name", "Иван"),
        ("contacts.0.phones.1.primary", True),
        ("deal.amount", 1500.5),
        ("deal.items.0", {"sku": "A1"}),
        ("contacts.1.name", None),  # index out of range
        ("contacts.-1.name", None),
        ("contacts.first.name", None),
        ("lead.title.0", None),  # strings are not indexed
        ("lead.missing", None),
        ("nowhere", None),
    ],
)
def test_get_path(path, value):
    assert get_path(NESTED, path) == value


def test_get_path_keeps_falsy_values():
    assert get_path({"a": {"b": 0, "c": False, "d": ""}}, "a.b") == 0
    assert get_path({"a": {"c": False}}, "a.c") is False


# lead_from_fields


def test_default_fields_and_default_payload():
    got = lead_from_fields(load("lead_flat.json"), make_policy().source("generic"))
    assert got.external_id == "1042"
    assert got.phones == [PhoneCandidate("8 (343) 212-34-56")]
    assert (got.name, got.city, got.zone) == ("Анна Петрова", "Екатеринбург", None)
    # Every filled top-level field except id and phone, with its JSON type.
    assert got.fields == {
        "name": "Анна Петрова",
        "city": "Екатеринбург",
        "product": "Тариф Бизнес",
        "amount": 15000,
        "discount": 0,
        "vip": True,
        "tags": ["new", "web"],
        "utm": {"source": "yandex", "campaign": "autumn"},
    }


NESTED_SOURCE = {
    "sources": {
        "generic": {
            "fields": {
                "id": "lead.id",
                "phones": ["contacts.0.phones"],
                "name": "contacts.0.name",
                "city": "contacts.0.address.city",
            },
            "payload": {"title": "lead.title", "amount": "deal.amount", "sku": "deal.items.0.sku", "gone": "deal.x"},
        }
    }
}


def test_explicit_fields_and_flat_payload_by_path():
    got = lead_from_fields(NESTED, make_policy(NESTED_SOURCE).source("generic"))
    assert got.external_id == "L-7"
    assert got.phones == [
        PhoneCandidate("+7 343 212-34-56", "work"),
        PhoneCandidate("8 912 345-67-89", "mobile", primary=True),
    ]
    assert (got.name, got.city) == ("Иван", "Новосибирск")
    assert got.fields == {"title": "Заявка на звонок", "amount": 1500.5, "sku": "A1"}  # missing paths left out


def test_default_payload_leaves_out_the_top_level_of_nested_id_and_phone_paths():
    source = make_policy({"sources": {"generic": {"fields": {"id": "lead.id", "phones": ["contacts.0.phones"]}}}})
    assert set(lead_from_fields(NESTED, source.source("generic")).fields) == {"deal"}


@pytest.mark.parametrize(
    ("value", "candidates"),
    [
        ("8 912 345-67-89", [PhoneCandidate("8 912 345-67-89")]),
        (79123456789, [PhoneCandidate("79123456789")]),
        (["+7 912", " ", "8 343"], [PhoneCandidate("+7 912"), PhoneCandidate("8 343")]),
        (
            [{"value": "8 343", "type": "Work"}, {"value": ""}, "8 912"],
            [PhoneCandidate("8 343", "work"), PhoneCandidate("8 912")],
        ),
        ([{"value": "8 912", "primary": "yes"}], [PhoneCandidate("8 912")]),  # only JSON true is primary
        ("", []),
        (None, []),
        (True, []),
        ({"value": "8 912"}, [PhoneCandidate("8 912")]),
    ],
)
def test_phone_field_shapes(value, candidates):
    assert lead_from_fields({"phone": value}, make_policy().source("generic")).phones == candidates


def test_several_phone_paths_are_read_in_order():
    data = {"sources": {"generic": {"fields": {"phones": ["mobile", "phone"]}}}}
    got = lead_from_fields({"phone": "8 343", "mobile": "8 912"}, make_policy(data).source("generic"))
    assert [c.value for c in got.phones] == ["8 912", "8 343"]


# render_entry


@pytest.mark.parametrize(
    "typed",
    ["8 912 345-67-89", "+7 (912) 345-67-89", "89123456789", "+79123456789", "9123456789", "8(912)345 67 89 доб. 12"],
)
def test_every_russian_format_renders_the_same_phone(typed):
    rendered = render(lead(typed))
    assert rendered.phone == rendered.entry["phone"] == "79123456789"


def test_yekaterinburg_landline_gets_its_zone_and_the_configured_window():
    rendered = render(lead("8 (343) 212-34-56"))
    assert rendered.entry == {
        "phone": "73432123456",
        "startDateTime": "2026-11-26T10:00:00Z",
        "finishDateTime": "2026-11-29T10:00:00Z",
        "allowedDays": ["mon", "tue", "wed", "thu", "fri"],
        "allowedTime": {"default": times("10:00-19:00")},
        "retryIntervalInMinutes": 60,
        "maxAttempts": 3,
        "gmtZone": "Asia/Yekaterinburg",
    }
    assert (rendered.zone, rendered.zone_reason) == ("Asia/Yekaterinburg", "number: one zone")


def test_russian_mobile_gets_the_hours_common_to_its_zones():
    rendered = render(lead(MOBILE), {"calls": {"hours": {"default": ["09:00-21:00"]}}})
    # Kaliningrad (+02:00 in November) to Kamchatka (+12:00): 09-21 everywhere is 10-12 in Moscow.
    assert rendered.entry["gmtZone"] == "Europe/Moscow"
    assert rendered.entry["allowedTime"] == {"default": times("10:00-12:00")}
    assert rendered.zone_reason == "number: hours common to 16 zones"


def test_russian_mobile_without_common_configured_hours_gets_the_common_safe_hours():
    rendered = render(lead(MOBILE))  # 10:00-19:00 share no time across 16 zones; 09:00-21:00 do
    assert rendered.entry["gmtZone"] == "Europe/Moscow"
    assert rendered.entry["allowedTime"] == {"default": times("10:00-12:00")}
    assert rendered.zone_reason == "number: configured hours share no time; safe hours common to 16 zones"


def test_russian_mobile_with_no_common_time_at_all_falls_back_and_says_so():
    rendered = render(lead(MOBILE), {"calls": {"safe_hours": "10:00-19:00"}})
    assert rendered.entry["gmtZone"] == "Europe/Moscow"
    assert rendered.entry["allowedTime"] == {"default": times("10:00-19:00")}
    assert "fallback" in rendered.zone_reason


@pytest.mark.parametrize(
    ("record", "zone", "source"),
    [
        ({"phone": MOBILE, "timezone": "Asia/Vladivostok"}, "Asia/Vladivostok", "lead zone"),
        ({"phone": MOBILE, "timezone": "UTC+5"}, "+05:00", "lead zone"),
        ({"phone": "8 (343) 212-34-56", "timezone": "Asia/Omsk", "city": "Новосибирск"}, "Asia/Omsk", "lead zone"),
        ({"phone": "8 (343) 212-34-56", "city": "  НОВОСИБИРСК "}, "Asia/Novosibirsk", "city"),
        ({"phone": MOBILE, "city": "Тверь"}, "Europe/Moscow", "number"),  # unmapped city: the number decides
    ],
)
def test_lead_zone_and_mapped_city_win_over_the_number(record, zone, source):
    policy = make_policy({"zones": {"cities": {"Новосибирск": "Asia/Novosibirsk"}}})
    generic = policy.source("generic")
    rendered = render_entry(lead_from_fields(record, generic), generic, policy, RECEIVED)
    assert rendered.entry["gmtZone"] == rendered.zone == zone
    assert rendered.zone_reason.startswith(f"{source}: ")


def test_a_lead_zone_keeps_the_configured_window():
    rendered = render(lead(MOBILE, zone="Asia/Vladivostok"))
    assert rendered.entry["allowedTime"] == {"default": times("10:00-19:00")}


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        (None, {"name": "Анна Петрова", "product": "Тариф Бизнес", "vip": True}),
        (
            {"sources": {"generic": {"payload": {"client": "name", "plan": "product"}}}},
            {"client": "Анна Петрова", "plan": "Тариф Бизнес"},
        ),
    ],
)
def test_payload_default_and_explicit(data, payload):
    record = {"id": 7, "phone": MOBILE, "name": "Анна Петрова", "product": "Тариф Бизнес", "vip": True}
    policy = make_policy(data)
    generic = policy.source("generic")
    rendered = render_entry(lead_from_fields(record, generic), generic, policy, RECEIVED)
    assert rendered.entry["payload"] == payload


def test_finish_is_arrival_plus_call_within_hours():
    arrival = datetime(2026, 11, 26, 13, 0, 5, 999999, tzinfo=timezone(timedelta(hours=3)))
    rendered = render(lead(MOBILE), {"calls": {"call_within_hours": 30}}, received_at=arrival)
    assert rendered.entry["startDateTime"] == "2026-11-26T10:00:05Z"
    assert rendered.entry["finishDateTime"] == "2026-11-27T16:00:05Z"


def test_source_window_settings_reach_the_entry():
    data = {"sources": {"generic": {"calls": {"retry_interval_minutes": 15, "max_call_attempts": 0, "days": ["sat"]}}}}
    entry = render(lead(MOBILE, zone="Europe/Moscow"), data).entry
    assert (entry["retryIntervalInMinutes"], entry["maxAttempts"], entry["allowedDays"]) == (15, 0, ["sat"])


def test_entry_omits_empty_optionals():
    entry = render(lead("8 (343) 212-34-56", fields={})).entry
    assert "payload" not in entry
    assert None not in entry.values()


def test_default_hours_only_when_a_day_needs_them_and_no_key_outside_allowed_days():
    calls = {
        "days": ["mon", "sat"],
        "hours": {"default": ["10:00-19:00"], "sat": ["11:00-15:00"], "sun": ["12:00-13:00"]},
    }
    entry = render(lead(MOBILE, zone="Europe/Moscow"), {"calls": calls}).entry
    assert entry["allowedDays"] == ["mon", "sat"]
    assert entry["allowedTime"] == {"default": times("10:00-19:00"), "sat": times("11:00-15:00")}
    calls["hours"]["mon"] = ["10:00-12:00"]
    entry = render(lead(MOBILE, zone="Europe/Moscow"), {"calls": calls}).entry
    assert entry["allowedTime"] == {"mon": times("10:00-12:00"), "sat": times("11:00-15:00")}


@pytest.mark.parametrize(
    ("phones", "reason"),
    [([], "no phone number"), (["8 912 345 67"], "no valid number (*********: too short)")],
)
def test_unusable_leads_raise(phones, reason):
    with pytest.raises(UnusableLeadError) as caught:
        render(lead(*phones))
    assert (caught.value.field, caught.value.reason) == ("phone", reason)


def test_the_entry_is_validated_before_it_leaves():
    # A naive arrival time is a caller's bug: the schema refuses it rather than sending a guess.
    with pytest.raises(ValidationError) as caught:
        render(lead(MOBILE, zone="Europe/Moscow"), received_at=datetime(2026, 11, 26, 10, 0))
    assert "startDateTime" in caught.value.messages
