"""One addPhones entry (docs/addPhones.md) as a schema: load refuses what Aimylogic would refuse, dump is the wire."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timezone
from functools import lru_cache
from itertools import pairwise
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_dump, validate, validates_schema

from crm2calls.policy import WEEKDAYS
from crm2calls.zones import is_gmt_zone, parse_offset

TIME_KEYS = (*WEEKDAYS, "default")
_PHONE = re.compile(r"[1-9][0-9]{7,14}")  # E.164 digits: country codes never start with 0
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]\Z")  # Regexp only anchors the start
# Java's ISO_OFFSET_DATE_TIME in its common form; fractions up to microseconds, which is all Python keeps.
_INSTANT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2}(?::[0-9]{2})?)"
)


class PhoneField(fields.Field):
    """Digits with the country code, no "+": "79123456789" (a JSON number is taken too); dumped as a string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not _PHONE.fullmatch(text):
            raise ValidationError("8 to 15 digits with the country code and no + (for example 79123456789)")
        return text

    def _serialize(self, value: str | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


class InstantField(fields.Field):
    """An ISO-8601 date-time with an explicit offset; dumped in UTC as "2026-11-26T10:00:00Z"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        match = _INSTANT.fullmatch(value) if isinstance(value, str) else None
        offset = parse_offset(match.group(8)) if match else None
        if offset is None:
            raise ValidationError('an ISO-8601 date-time with an offset, such as "2026-11-26T10:00:00Z" or "+03:00"')
        year, month, day, hour, minute = (int(g) for g in match.groups()[:5])
        second = int(match.group(6) or 0)
        micro = int((match.group(7) or "0").ljust(6, "0"))
        try:
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
        except ValueError as exc:
            raise ValidationError(f"not a real date-time: {exc}") from None

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _count() -> fields.Integer:
    """A non-negative JSON integer; strict refuses 1.0 and "3", and marshmallow 4 refuses true/false."""
    return fields.Integer(strict=True, validate=validate.Range(min=0))


class LocalTimeSchema(Schema):
    """{"localTimeFrom": "HH:mm", "localTimeTo": "HH:mm"}, from before to."""

    class Meta:
        unknown = RAISE

    localTimeFrom = fields.String(required=True, validate=validate.Regexp(_HHMM, error="HH:mm from 00:00 to 23:59"))
    localTimeTo = fields.String(required=True, validate=validate.Regexp(_HHMM, error="HH:mm from 00:00 to 23:59"))

    @validates_schema
    def _from_before_to(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["localTimeFrom"] >= data["localTimeTo"]:  # zero-padded HH:mm sorts as time does
            raise ValidationError("localTimeTo must be after localTimeFrom", "localTimeTo")


def _intervals_apart(intervals: list[dict[str, str]]) -> None:
    if not intervals:
        raise ValidationError("give at least one interval")
    ordered = sorted(intervals, key=lambda i: i["localTimeFrom"])
    for earlier, later in pairwise(ordered):
        if earlier["localTimeTo"] > later["localTimeFrom"]:
            raise ValidationError(
                f"{earlier['localTimeFrom']}-{earlier['localTimeTo']} overlaps "
                f"{later['localTimeFrom']}-{later['localTimeTo']}"
            )


def _days(days: list[str]) -> None:
    if not days or len(set(days)) != len(days):
        raise ValidationError("list each day once, at least one day")


def _zone(text: str) -> None:
    if not is_gmt_zone(text):
        raise ValidationError('"Z", an offset such as "+03:00" or "UTC+3", or an IANA zone id such as "Europe/Moscow"')


class PhoneEntrySchema(Schema):
    """One element of the addPhones array."""

    class Meta:
        unknown = RAISE

    phone = PhoneField(required=True)
    payload = fields.Dict(keys=fields.String())
    startDateTime = InstantField()
    finishDateTime = InstantField()
    allowedDays = fields.List(fields.String(validate=validate.OneOf(WEEKDAYS)), validate=_days)
    allowedTime = fields.Dict(
        keys=fields.String(validate=validate.OneOf(TIME_KEYS)),
        values=fields.List(fields.Nested(LocalTimeSchema), validate=_intervals_apart),
    )
    retryIntervalInMinutes = _count()
    maxAttempts = _count()
    gmtZone = fields.String(validate=_zone)

    @validates_schema
    def _finish_after_start(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, finish = data.get("startDateTime"), data.get("finishDateTime")
        if start is not None and finish is not None and finish <= start:
            raise ValidationError("must be after startDateTime", "finishDateTime")

    @validates_schema
    def _times_only_for_allowed_days(self, data: dict[str, Any], **kwargs: Any) -> None:
        days, times = data.get("allowedDays"), data.get("allowedTime") or {}
        extra = [key for key in times if key != "default" and days is not None and key not in days]
        if extra:
            raise ValidationError(f"{', '.join(extra)} not in allowedDays (Aimylogic would ignore it)", "allowedTime")

    @post_dump
    def _no_nulls(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {key: value for key, value in data.items() if value is not None}


# The call-window part of an entry comes from a handful of plans, so it is validated once per
# distinct window; the per-lead part (phone, payload, dates) is validated every time. Schema
# instances keep no state between calls, so these serve every thread.
WINDOW_KEYS = ("allowedDays", "allowedTime", "retryIntervalInMinutes", "maxAttempts", "gmtZone")
_LEAD_PART = PhoneEntrySchema(exclude=WINDOW_KEYS)
_WHOLE = PhoneEntrySchema()


@lru_cache(maxsize=1024)
def _window_part(window_json: str) -> str:
    window = json.loads(window_json)
    return json.dumps(_WHOLE.dump(_WHOLE.load({"phone": "70000000000", **window})) | {"phone": None})


def validate_entry(entry: dict) -> dict:
    """Load and dump an entry: the wire dict, or ValidationError with messages per field."""
    if not isinstance(entry, dict):
        return _WHOLE.dump(_WHOLE.load(entry))  # marshmallow words the error
    window = {key: entry[key] for key in WINDOW_KEYS if key in entry}
    try:
        dumped_window = json.loads(_window_part(json.dumps(window, sort_keys=True, allow_nan=False)))
        rest = {key: value for key, value in entry.items() if key not in WINDOW_KEYS}
        return _LEAD_PART.dump(_LEAD_PART.load(rest)) | {k: v for k, v in dumped_window.items() if v is not None}
    except (TypeError, ValueError, ValidationError):  # let the whole schema name every bad field
        return _WHOLE.dump(_WHOLE.load(entry))
