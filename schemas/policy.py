"""The mapping file (leads.toml) as a schema: every mistake is reported with its key path."""

from __future__ import annotations

import re
from datetime import time
from itertools import pairwise
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from crm2calls.phones import NOT_A_REGION, is_region
from crm2calls.policy import (
    DEFAULT_CAMPAIGN,
    NOTE_LANGUAGES,
    NOTE_PLACEHOLDERS,
    STOP_DEFAULTS,
    WEEKDAYS,
    CallWindow,
    CampaignRoute,
    DeliveryPolicy,
    FieldMap,
    GuardPolicy,
    HealthPolicy,
    Interval,
    Policy,
    ResultsPolicy,
    SourcePolicy,
)

_INTERVAL = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")
HOUR_KEYS = (*WEEKDAYS, "default")


def parse_interval(text: str) -> Interval:
    """Parse "HH:MM-HH:MM" (24:00 allowed as an end) into an Interval, start before end."""
    match = _INTERVAL.match(text)
    if not match:
        raise ValidationError(f'"{text}" is not HH:MM-HH:MM (for example "10:00-19:00")')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h2 == 24 and m2:
        raise ValidationError(f'"{text}": 24:00 is the latest end')
    start = time(h1, m1)
    end = time(23, 59) if h2 == 24 else time(h2, m2)
    if start >= end:
        raise ValidationError(f'"{text}": the start must be before the end')
    return Interval(start, end)


class IntervalField(fields.Field):
    """An Interval written as "HH:MM-HH:MM"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Interval:
        if not isinstance(value, str):
            raise ValidationError('expected a string "HH:MM-HH:MM"')
        return parse_interval(value)

    def _serialize(self, value: Interval | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


def check_no_overlap(intervals: list[Interval]) -> None:
    """Intervals of one day must not overlap (end of one <= start of the next)."""
    ordered = sorted(intervals, key=lambda i: i.start)
    for earlier, later in pairwise(ordered):
        if earlier.end > later.start:
            raise ValidationError(f"intervals {earlier} and {later} overlap")


class HoursField(fields.Dict):
    """{"default": ["10:00-19:00"], "sat": [...]}: keys among the weekdays and default."""

    def __init__(self, **kwargs: Any):
        super().__init__(
            keys=fields.String(validate=validate.OneOf(HOUR_KEYS)),
            values=fields.List(IntervalField(), validate=check_no_overlap),
            **kwargs,
        )


def _fail(message: str) -> bool:
    raise ValidationError(message)


def _known_source(name: str) -> None:
    from crm2calls.sources import SOURCES

    if name not in SOURCES:
        raise ValidationError(f"no source named {name!r}; the sources are {', '.join(SOURCES)}")


class RenamedKeysSchema(Schema):
    """A section whose keys a release renamed or removed: the old key is refused, naming what replaces it."""

    RENAMED: dict[str, str] = {}
    REMOVED: dict[str, str] = {}  # old key -> what to use instead

    @pre_load
    def _refuse_renamed(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict):
            errors = {old: [f"renamed: use {new}"] for old, new in self.RENAMED.items() if old in data}
            errors |= {old: [f"removed: {instead}"] for old, instead in self.REMOVED.items() if old in data}
            if errors:
                raise ValidationError(errors)
        return data


class WindowOverrideSchema(RenamedKeysSchema):
    """[calls] keys a source may override."""

    RENAMED = {"max_attempts": "max_call_attempts (Aimylogic's maxAttempts: how often it dials)"}

    class Meta:
        unknown = RAISE

    days = fields.List(
        fields.String(validate=validate.OneOf(WEEKDAYS)),
        validate=lambda days: (
            (len(days) > 0 and len(set(days)) == len(days)) or _fail("list each day once, at least one day")
        ),
    )
    hours = HoursField()
    retry_interval_minutes = fields.Integer(strict=True, validate=validate.Range(min=0))
    max_call_attempts = fields.Integer(strict=True, validate=validate.Range(min=0))
    call_within_hours = fields.Integer(strict=True, validate=validate.Range(min=1, max=24 * 30))

    @validates_schema
    def _hours_need_default(self, data: dict[str, Any], **kwargs: Any) -> None:
        hours = data.get("hours")
        if hours is not None and "default" not in hours and set(data.get("days", WEEKDAYS)) - set(hours):
            raise ValidationError('give "default" hours, or hours for every allowed day', "hours")


class CallsSchema(WindowOverrideSchema):
    """[calls]: the window every source inherits, and the global call rules."""

    days = fields.List(
        fields.String(validate=validate.OneOf(WEEKDAYS)),
        load_default=lambda: list(WEEKDAYS[:5]),
        validate=lambda days: (
            (len(days) > 0 and len(set(days)) == len(days)) or _fail("list each day once, at least one day")
        ),
    )
    hours = HoursField(load_default=lambda: {"default": [parse_interval("10:00-19:00")]})
    retry_interval_minutes = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=60)
    max_call_attempts = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=3)
    call_within_hours = fields.Integer(strict=True, validate=validate.Range(min=1, max=24 * 30), load_default=72)
    phone_preference = fields.List(fields.String(), load_default=lambda: ["mobile", "primary", "any"])
    default_zone = fields.String(load_default="Europe/Moscow")
    safe_hours = IntervalField(load_default=lambda: parse_interval("09:00-21:00"))
    allow_outside_safe_hours = fields.Boolean(load_default=False)
    duplicate_window_hours = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=24)

    @validates_schema
    def _zone_exists(self, data: dict[str, Any], **kwargs: Any) -> None:
        from crm2calls.zones import is_iana_zone

        if "default_zone" in data and not is_iana_zone(data["default_zone"]):
            raise ValidationError(
                f'"{data["default_zone"]}" is not an IANA zone id (e.g. Europe/Moscow)', "default_zone"
            )

    @validates_schema
    def _within_safe_hours(self, data: dict[str, Any], **kwargs: Any) -> None:
        safe, hours = data.get("safe_hours"), data.get("hours")
        if safe is None or hours is None or data.get("allow_outside_safe_hours"):
            return
        for day, intervals in hours.items():
            for interval in intervals:
                if interval.start < safe.start or interval.end > safe.end:
                    raise ValidationError(
                        f"{day} {interval} is outside the safe hours {safe}; narrow it, "
                        "or set allow_outside_safe_hours = true if you really mean it",
                        "hours",
                    )


class FieldMapSchema(Schema):
    """[sources.X.fields]: dotted paths into the lead."""

    class Meta:
        unknown = RAISE

    id = fields.String(allow_none=True)
    phones = fields.List(fields.String(), validate=validate.Length(min=1))
    name = fields.String(allow_none=True)
    zone = fields.String(allow_none=True)
    city = fields.String(allow_none=True)


class DeliverySchema(RenamedKeysSchema):
    """[delivery]."""

    RENAMED = {"max_attempts": "max_send_attempts (addPhones attempts before a lead fails)"}
    REMOVED = {
        "linger_seconds": "a woken worker now sends at once, and leads that arrive while a request is out "
        "go in the next one; batch_size and concurrency shape the batches (delete the key)",
    }

    class Meta:
        unknown = RAISE

    batch_size = fields.Integer(strict=True, validate=validate.Range(min=1, max=1000))
    concurrency = fields.Integer(strict=True, validate=validate.Range(min=1, max=32))
    max_send_attempts = fields.Integer(strict=True, validate=validate.Range(min=1))
    max_age_hours = fields.Integer(strict=True, validate=validate.Range(min=1))
    # Above zero: a zero base would retry a failing send in a hot loop.
    backoff_base_seconds = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    backoff_cap_seconds = fields.Float(validate=validate.Range(min=1))
    lease_seconds = fields.Integer(strict=True, validate=validate.Range(min=10))
    poll_seconds = fields.Float(validate=validate.Range(min=0.05, max=60))
    enrich_max_attempts = fields.Integer(strict=True, validate=validate.Range(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> DeliveryPolicy:
        return DeliveryPolicy(**data)


class GuardsSchema(Schema):
    """[guards]."""

    class Meta:
        unknown = RAISE

    calls_per_minute = fields.Integer(strict=True, validate=validate.Range(min=0))
    calls_per_day = fields.Integer(strict=True, validate=validate.Range(min=0))
    per_number_per_day = fields.Integer(strict=True, validate=validate.Range(min=0))
    per_number_per_week = fields.Integer(strict=True, validate=validate.Range(min=0))
    per_number_per_month = fields.Integer(strict=True, validate=validate.Range(min=0))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> GuardPolicy:
        return GuardPolicy(**data)


class HealthThresholdsSchema(Schema):
    """[health]: when /healthz calls the backlog degraded."""

    class Meta:
        unknown = RAISE

    max_waiting_minutes = fields.Integer(strict=True, validate=validate.Range(min=1))
    max_backlog = fields.Integer(strict=True, validate=validate.Range(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> HealthPolicy:
        return HealthPolicy(**data)


_CAMPAIGN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _campaign_name(name: str) -> None:
    if not _CAMPAIGN_NAME.match(name):
        raise ValidationError(f"{name!r}: use lower-case letters, digits, - and _ (at most 40), e.g. renewals")
    if name == DEFAULT_CAMPAIGN:
        raise ValidationError("the default campaign is AIMYLOGIC_TOKEN; declare only the others here")


class CampaignSchema(Schema):
    """[campaigns.NAME]: a campaign and the environment variable that holds its token."""

    class Meta:
        unknown = RAISE

    token_env = fields.String(
        required=True,
        validate=lambda name: bool(_ENV_NAME.match(name))
        or _fail(f"{name!r} is not an environment variable name; e.g. AIMYLOGIC_TOKEN_RENEWALS"),
    )


class CampaignBySchema(Schema):
    """[sources.X.campaign_by]: route leads to campaigns by a field's value."""

    class Meta:
        unknown = RAISE

    field = fields.String(required=True, validate=validate.Length(min=1))
    map = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    default = fields.String()


def check_note(template: str) -> None:
    """A write-back note: text with {placeholders} from NOTE_PLACEHOLDERS only, each plain (no format spec)."""
    from string import Formatter

    allowed = ", ".join("{" + name + "}" for name in NOTE_PLACEHOLDERS)
    if not template.strip():
        raise ValidationError(f"the note is empty; write text with placeholders such as {allowed}")
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValidationError(f"{exc}: write a literal brace as {{{{ or }}}}; the placeholders are {allowed}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in NOTE_PLACEHOLDERS:
            raise ValidationError(f"unknown placeholder {{{name}}}; the placeholders are {allowed}")
        if spec or conversion:
            raise ValidationError(f"{{{name}}} takes no format or conversion; write it as {{{name}}}")


class ResultsSchema(Schema):
    """[sources.X.results]: write call outcomes back onto the CRM record."""

    class Meta:
        unknown = RAISE

    write_back = fields.Boolean(truthy={True}, falsy={False})  # TOML true/false, not "yes"
    note = fields.String(validate=check_note)
    language = fields.String(validate=validate.OneOf(NOTE_LANGUAGES))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> ResultsPolicy:
        return ResultsPolicy(**data)


class SourceSchema(Schema):
    """[sources.X]: overrides for one source."""

    class Meta:
        unknown = RAISE

    region = fields.String(validate=lambda code: is_region(code) or _fail(f"{code!r} {NOT_A_REGION}"))
    records_path = fields.String()
    phone_preference = fields.List(fields.String())
    status_ids = fields.List(fields.String())
    fields_ = fields.Nested(FieldMapSchema, data_key="fields")
    payload = fields.Dict(keys=fields.String(validate=validate.Length(min=1)), values=fields.String())
    calls = fields.Nested(WindowOverrideSchema)
    campaign = fields.String()
    campaign_by = fields.Nested(CampaignBySchema)
    default_zone = fields.String()
    results = fields.Nested(ResultsSchema)

    stop_values = fields.List(fields.String(validate=validate.Length(min=1)))
    stop_property = fields.String(validate=validate.Regexp(r"^[a-z0-9_]{1,100}$", error="not a HubSpot property "
                                                           "name (lower-case internal name, e.g. hs_lead_status)"))

    @validates_schema
    def _zone_exists(self, data: dict[str, Any], **kwargs: Any) -> None:
        from crm2calls.zones import is_iana_zone

        if "default_zone" in data and not is_iana_zone(data["default_zone"]):
            raise ValidationError(
                f'"{data["default_zone"]}" is not an IANA zone id (e.g. America/New_York)', "default_zone"
            )


class ZonesSchema(Schema):
    """[zones]: city or region names -> IANA zone."""

    class Meta:
        unknown = RAISE

    cities = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)

    @validates_schema
    def _zones_exist(self, data: dict[str, Any], **kwargs: Any) -> None:
        from crm2calls.zones import is_iana_zone

        bad = {city: zone for city, zone in data.get("cities", {}).items() if not is_iana_zone(zone)}
        if bad:
            raise ValidationError({city: [f'"{zone}" is not an IANA zone id'] for city, zone in bad.items()}, "cities")


class PolicySchema(Schema):
    """The whole mapping file."""

    class Meta:
        unknown = RAISE

    calls = fields.Nested(CallsSchema, load_default=lambda: CallsSchema().load({}))
    delivery = fields.Nested(DeliverySchema, load_default=DeliveryPolicy)
    guards = fields.Nested(GuardsSchema, load_default=GuardPolicy)
    health = fields.Nested(HealthThresholdsSchema, load_default=HealthPolicy)
    zones = fields.Nested(ZonesSchema, load_default=lambda: {"cities": {}})
    sources = fields.Dict(
        keys=fields.String(validate=_known_source),
        values=fields.Nested(SourceSchema),
        load_default=dict,
    )
    campaigns = fields.Dict(
        keys=fields.String(validate=_campaign_name), values=fields.Nested(CampaignSchema), load_default=dict
    )

    @validates_schema(skip_on_field_errors=False)  # reported with every other problem, all at once
    def _campaigns_exist(self, data: dict[str, Any], **kwargs: Any) -> None:
        known = {DEFAULT_CAMPAIGN, *(data.get("campaigns") or {})}
        hint = f"the campaigns are {', '.join(sorted(known))}; declare others as [campaigns.NAME] token_env = \"VAR\""
        problems: dict[str, Any] = {}
        for name, source in (data.get("sources") or {}).items():
            found: dict[str, Any] = {}
            if source.get("campaign", DEFAULT_CAMPAIGN) not in known:
                found["campaign"] = [f"no campaign named {source['campaign']!r}; {hint}"]
            route = source.get("campaign_by")
            if route:
                routed: dict[str, Any] = {}
                if not route["map"]:
                    routed["map"] = ['names no campaign; map field values to campaigns, e.g. { "3002" = "renewals" }']
                bad = {value: campaign for value, campaign in route["map"].items() if campaign not in known}
                for value, campaign in bad.items():
                    routed.setdefault("map", {})[value] = [f"no campaign named {campaign!r}; {hint}"]
                if "default" in route and route["default"] not in known:
                    routed["default"] = [f"no campaign named {route['default']!r}; {hint}"]
                if routed:
                    found["campaign_by"] = routed
            if found:
                problems[name] = found
        if problems:
            raise ValidationError(problems, "sources")

    @validates_schema(skip_on_field_errors=False)
    def _stop_settings(self, data: dict[str, Any], **kwargs: Any) -> None:
        problems = {}
        for name, source in (data.get("sources") or {}).items():
            found = stop_problems(name, source)
            if found:
                problems[name] = found
        if problems:
            raise ValidationError(problems, "sources")

    @validates_schema
    def _sources_within_safe_hours(self, data: dict[str, Any], **kwargs: Any) -> None:
        calls = data.get("calls") or {}
        safe = calls.get("safe_hours")
        if safe is None or calls.get("allow_outside_safe_hours"):
            return
        problems = {}
        for name, source in (data.get("sources") or {}).items():
            for day, intervals in ((source.get("calls") or {}).get("hours") or {}).items():
                bad = [str(i) for i in intervals if i.start < safe.start or i.end > safe.end]
                if bad:
                    problems[name] = {"calls": {"hours": [f"{day} {', '.join(bad)} is outside the safe hours {safe}"]}}
        if problems:
            raise ValidationError(problems, "sources")


_AMOCRM_STAGE = re.compile(r"^[0-9]{1,20}(:[0-9]{1,20})?$")


def _stage_matches(a: str, b: str) -> bool:
    """Do two amoCRM stage values name a common stage? "142" (any pipeline) meets "9621010:142"."""
    if a == b:
        return True
    return a.rpartition(":")[2] == b.rpartition(":")[2] and (":" not in a or ":" not in b)


def stop_problems(name: str, source: dict[str, Any]) -> dict[str, list[str]]:
    """What is wrong with a source's stop_values and stop_property, by key."""
    found: dict[str, list[str]] = {}
    if "stop_property" in source and name != "hubspot":
        found["stop_property"] = ["only hubspot has a stop property; use stop_values"]
    if "stop_values" in source and name == "pipedrive":
        found["stop_values"] = [
            "Pipedrive's stops are fixed (a lead archived, a deal won or lost, a person or lead deleted): "
            "delete stop_values"
        ]
    if name != "amocrm":
        return found
    stops = source["stop_values"] if "stop_values" in source else list(STOP_DEFAULTS["amocrm"])
    bad = [value for value in stops if not _AMOCRM_STAGE.match(value)]
    if bad:
        found["stop_values"] = [f"{value!r} is not a status_id or pipeline_id:status_id, e.g. \"143\""
                                for value in bad]
        return found
    clashes = [
        f"{stop!r} is also a call trigger in status_ids ({trigger!r}): a stage cannot both start and stop calls; "
        "remove it from status_ids or from stop_values" + ("" if "stop_values" in source else
                                                           " (stop_values defaults to [\"142\", \"143\"])")
        for stop in stops for trigger in source.get("status_ids", ()) if _stage_matches(stop, trigger)
    ]
    if clashes:
        found["stop_values"] = clashes
    return found


def _window(base: dict[str, Any], override: dict[str, Any]) -> CallWindow:
    merged = {**base, **override}
    days = tuple(merged["days"])
    hours = {day: tuple(ivs) for day, ivs in merged["hours"].items() if day == "default" or day in days}
    return CallWindow(
        days=days,
        hours=hours,
        retry_interval_minutes=merged["retry_interval_minutes"],
        max_call_attempts=merged["max_call_attempts"],
        call_within_hours=merged["call_within_hours"],
    )


def build_policy(data: dict[str, Any], default_region: str) -> Policy:
    """Merge [calls] into every source and freeze the result."""
    calls = data["calls"]
    defaults = SourcePolicy(
        name="*",
        region=default_region,
        window=_window(calls, {}),
        fields=FieldMap(),
        payload=None,
        records_path=None,
        phone_preference=tuple(calls["phone_preference"]),
    )
    sources = {}
    for name, src in data["sources"].items():
        sources[name] = SourcePolicy(
            name=name,
            region=src.get("region", default_region),
            window=_window(calls, src.get("calls", {})),
            fields=FieldMap(**{k: tuple(v) if k == "phones" else v for k, v in src.get("fields_", {}).items()}),
            payload=src.get("payload"),
            records_path=src.get("records_path") or None,
            phone_preference=tuple(src.get("phone_preference", calls["phone_preference"])),
            status_ids=tuple(src.get("status_ids", ())),
            campaign=src.get("campaign", DEFAULT_CAMPAIGN),
            campaign_by=_route(src.get("campaign_by")),
            default_zone=src.get("default_zone"),
            results=src.get("results", ResultsPolicy()),

            stop_values=tuple(src["stop_values"]) if "stop_values" in src else None,
            **({"stop_property": src["stop_property"]} if "stop_property" in src else {}),
        )
    return Policy(
        default_zone=calls["default_zone"],
        safe_hours=calls["safe_hours"],
        allow_outside_safe_hours=calls["allow_outside_safe_hours"],
        duplicate_window_hours=calls["duplicate_window_hours"],
        delivery=data["delivery"],
        guards=data["guards"],
        cities={k.casefold(): v for k, v in data["zones"]["cities"].items()},
        defaults=defaults,
        sources=sources,
        health=data["health"],
        campaigns={name: campaign["token_env"] for name, campaign in data["campaigns"].items()},
    )


def _route(data: dict[str, Any] | None) -> CampaignRoute | None:
    if not data:
        return None
    return CampaignRoute(field=data["field"], map=dict(data["map"]), default=data.get("default"))


def flatten_errors(messages: Any, prefix: str = "") -> list[str]:
    """Turn marshmallow's nested messages into "a.b.c: message" lines."""
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            if key in ("_schema", "value"):  # schema-level, or the value side of a Dict field
                path = prefix or "(top level)"
            elif key == "key":  # the key side of a Dict field
                path = f"{prefix} (key)"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(flatten_errors(value, path))
        return lines
    if isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            return [f"{prefix}: {m}" for m in messages]
        return [line for m in messages for line in flatten_errors(m, prefix)]
    return [f"{prefix}: {messages}"]
