"""Phone numbers: normalise what managers type, pick the one to call, mask them for logs.

phonenumbers is imported inside the functions: it is heavy for a Lambda cold start.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crm2calls.errors import UnusableLeadError
from crm2calls.model import PhoneCandidate

if TYPE_CHECKING:
    import phonenumbers


NOT_A_REGION = "is not a phone region code; use one phonenumbers knows, such as RU, US, DE"


def is_region(code: str) -> bool:
    """True for a region code phonenumbers supports ("RU", "US", ...; not "XX"): start-up checks every one.

    It looks for the library's metadata module of the region instead of importing phonenumbers, which
    would add some 40 ms to every Lambda cold start (tests/test_phones.py holds it to SUPPORTED_REGIONS).
    """
    if not (len(code) == 2 and code.isascii() and code.isalpha() and code.isupper()):
        return False
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("phonenumbers")  # finds the package without running it
    return any((Path(place) / "data" / f"region_{code}.py").is_file() for place in spec.submodule_search_locations)


def mask(phone: str) -> str:
    """Mask for logs: 79123456789 -> 7912*****89; numbers under 10 digits are all stars, so little is revealed."""
    digits = re.sub(r"[^0-9]", "", phone or "")
    if len(digits) < 10:
        return "*" * len(digits)
    return digits[:4] + "*" * (len(digits) - 6) + digits[-2:]


def _parse(value: str, region: str) -> tuple[str, phonenumbers.PhoneNumber]:
    """Digits with the country code and the parsed number; UnusableLeadError saying why (never the number)."""
    import phonenumbers
    from phonenumbers import NumberParseException, ValidationResult

    if not isinstance(value, str) or not value.strip():
        raise UnusableLeadError("phone", "not a phone number")
    try:
        number = phonenumbers.parse(value, region)  # keeps any extension apart, in number.extension
    except NumberParseException as exc:
        reasons = {
            NumberParseException.INVALID_COUNTRY_CODE: "no valid country code",
            NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
            NumberParseException.TOO_SHORT_NSN: "too short",
            NumberParseException.TOO_LONG: "too long",
        }
        raise UnusableLeadError("phone", reasons.get(exc.error_type, "not a phone number")) from None
    if not phonenumbers.is_valid_number(number):
        possible = phonenumbers.is_possible_number_with_reason(number)
        if possible in (ValidationResult.TOO_SHORT, ValidationResult.INVALID_LENGTH):
            reason = "too short" if possible == ValidationResult.TOO_SHORT else "wrong length"
        elif possible == ValidationResult.TOO_LONG:
            reason = "too long"
        else:
            where = phonenumbers.region_code_for_country_code(number.country_code)
            reason = f"not valid in region {where}" if where != "ZZ" else "unknown country code"
        raise UnusableLeadError("phone", reason)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:], number


def normalize(value: str, region: str) -> str:
    """Digits with the country code, no "+", no extension: "8 912 345-67-89" in RU -> "79123456789"."""
    return _parse(value, region)[0]


def _is_mobile(candidate: PhoneCandidate, region: str) -> bool:
    import phonenumbers

    try:
        number = phonenumbers.parse(candidate.value, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE


def _ordered(candidates: list[PhoneCandidate], region: str, preference: tuple[str, ...]) -> list[PhoneCandidate]:
    """Candidates in preference order; kinds not named (and no "any") are left out."""
    left = list(candidates)
    ordered: list[PhoneCandidate] = []
    for kind in preference:
        if kind == "any":
            chosen = left
        elif kind == "primary":
            chosen = [c for c in left if c.primary]
        elif kind == "mobile":  # a number the CRM gives no kind counts as mobile when it is one
            chosen = [c for c in left if c.kind == "mobile" or (not c.kind and _is_mobile(c, region))]
        else:
            chosen = [c for c in left if c.kind == kind]
        ordered += chosen
        left = [c for c in left if c not in chosen]
    return ordered


def pick_phone(
    candidates: list[PhoneCandidate], region: str, preference: tuple[str, ...]
) -> tuple[str, phonenumbers.PhoneNumber]:
    """The first valid number in preference order, normalised, with its parsed form."""
    if not [c for c in candidates if c.value and c.value.strip()]:
        raise UnusableLeadError("phone", "no phone number")
    # One number and "any" in the preference: no ordering to do, so no second parse to learn its type.
    ordered = (
        list(candidates) if len(candidates) == 1 and "any" in preference else _ordered(candidates, region, preference)
    )
    if not ordered:
        raise UnusableLeadError("phone", f"no number of the kinds {', '.join(preference)}")
    problems = []
    for candidate in ordered:
        try:
            return _parse(candidate.value, region)
        except UnusableLeadError as exc:
            masked = mask(candidate.value)
            problems.append(f"{masked}: {exc.reason}" if masked else "a value with no digits")
    raise UnusableLeadError("phone", "no valid number (" + "; ".join(problems) + ")")
