"""Phone normalisation, choice among a lead's numbers, and masking."""

from __future__ import annotations

import pytest

from crm2calls.errors import UnusableLeadError
from crm2calls.model import PhoneCandidate
from crm2calls.phones import is_region, mask, normalize, pick_phone

PREFERENCE = ("mobile", "primary", "any")


@pytest.mark.parametrize(
    "typed",
    [
        "8 912 345-67-89",
        "+7 (912) 345-67-89",
        "89123456789",
        "+79123456789",
        "79123456789",
        "9123456789",
        "8-912-345-67-89",
        "8 (912) 345 67 89",
        "+7(912)3456789",
        "  8 912 345 67 89  ",
        "8.912.345.67.89",
        "tel:+7-912-345-67-89",
        "+7 912 345-67-89 #404812",
        "8 912 345-67-89 доб. 12",
        "8 912 345-67-89, доб. 12",
        "+7 912 345 67 89 ext. 5",
        "89123456789 x5",
    ],
)
def test_russian_formats_normalise_to_digits_with_country_code(typed):
    assert normalize(typed, "RU") == "79123456789"


@pytest.mark.parametrize(
    ("typed", "region", "digits"),
    [
        ("8 (343) 212-34-56", "RU", "73432123456"),
        ("+1 415 555 2671", "RU", "14155552671"),
        ("(415) 555-2671", "US", "14155552671"),
        ("+39 06 1234 5678", "RU", "390612345678"),  # Italian leading zero kept
        ("+44 20 7946 0958", "GB", "442079460958"),
    ],
)
def test_other_numbers_normalise(typed, region, digits):
    assert normalize(typed, region) == digits


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "not a phone number"),
        ("   ", "not a phone number"),
        ("call me", "not a phone number"),
        ("12", "too short"),
        ("8 912 345 67", "too short"),
        ("+7 912 345 67 89 12 34 56", "too long"),
        ("+7 000 123 45 67", "not valid in region RU"),
        ("+999 123456789", "no valid country code"),
    ],
)
def test_invalid_numbers_say_why_without_the_number(typed, reason):
    with pytest.raises(UnusableLeadError) as caught:
        normalize(typed, "RU")
    assert caught.value.field == "phone"
    assert caught.value.reason == reason
    digits = "".join(ch for ch in typed if ch.isdigit())
    if len(digits) > 6:
        assert digits not in str(caught.value)


@pytest.mark.parametrize(("code", "known"), [("RU", True), ("US", True), ("XX", False), ("ru", False), ("", False)])
def test_is_region(code, known):
    assert is_region(code) is known


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("79123456789", "7912*****89"),
        ("+7 (912) 345-67-89", "7912*****89"),
        ("390612345678", "3906******78"),
        ("7912345678", "7912****78"),
        ("123456789", "*********"),
        ("12", "**"),
        ("", ""),
    ],
)
def test_mask(phone, masked):
    assert mask(phone) == masked


def pick(*candidates, preference=PREFERENCE):
    return pick_phone(list(candidates), "RU", preference)[0]


LANDLINE = "8 (343) 212-34-56"
MOBILE = "8 912 345-67-89"
OTHER_MOBILE = "8 922 111-22-33"


def test_mobile_kind_wins_over_order():
    assert pick(PhoneCandidate(LANDLINE, "work"), PhoneCandidate(MOBILE, "mobile")) == "79123456789"


def test_a_number_without_kind_counts_as_mobile_when_it_is_one():
    assert pick(PhoneCandidate(LANDLINE, "work"), PhoneCandidate(MOBILE)) == "79123456789"


def test_a_landline_without_kind_is_not_a_mobile():
    assert pick(PhoneCandidate(LANDLINE), PhoneCandidate(LANDLINE.replace("56", "57"), primary=True)) == "73432123457"


def test_primary_before_the_rest():
    got = pick(PhoneCandidate(LANDLINE, "work"), PhoneCandidate(OTHER_MOBILE, "home", primary=True))
    assert got == "79221112233"


def test_any_keeps_the_given_order():
    assert pick(PhoneCandidate(LANDLINE, "work"), PhoneCandidate(MOBILE, "home"), preference=("any",)) == "73432123456"


def test_custom_kind_order():
    candidates = (PhoneCandidate(MOBILE, "mobile"), PhoneCandidate(LANDLINE, "work"))
    assert pick(*candidates, preference=("work", "any")) == "73432123456"


def test_an_invalid_number_falls_through_to_the_next():
    assert pick(PhoneCandidate("8 912 345", "mobile"), PhoneCandidate(LANDLINE, "work")) == "73432123456"


def test_returns_the_parsed_number_too():
    digits, number = pick_phone([PhoneCandidate(MOBILE)], "RU", PREFERENCE)
    assert (digits, number.country_code, number.national_number) == ("79123456789", 7, 9123456789)


@pytest.mark.parametrize("candidates", [[], [PhoneCandidate("")], [PhoneCandidate("  ", "mobile")]])
def test_no_number_at_all(candidates):
    with pytest.raises(UnusableLeadError) as caught:
        pick_phone(candidates, "RU", PREFERENCE)
    assert (caught.value.field, caught.value.reason) == ("phone", "no phone number")


def test_none_valid_names_each_reason_masked():
    with pytest.raises(UnusableLeadError) as caught:
        pick(PhoneCandidate("+7 000 123 45 67", "mobile"), PhoneCandidate("12"))
    reason = caught.value.reason
    assert reason == "no valid number (7000*****67: not valid in region RU; **: too short)"
    assert "70001234567" not in str(caught.value)


def test_no_number_of_the_preferred_kinds():
    with pytest.raises(UnusableLeadError) as caught:
        pick(PhoneCandidate(LANDLINE, "work"), preference=("mobile",))
    assert caught.value.reason == "no number of the kinds mobile"


def test_is_region_agrees_with_phonenumbers_on_every_two_letter_code():
    import string

    import phonenumbers

    from crm2calls.phones import is_region

    codes = [a + b for a in string.ascii_uppercase for b in string.ascii_uppercase]
    assert {code for code in codes if is_region(code)} == {c for c in phonenumbers.SUPPORTED_REGIONS if c in codes}
    assert not is_region("ru") and not is_region("RUS") and not is_region("")
