"""From a CRM record to a Lead, and from a Lead to the addPhones entry: pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any

from crm2calls.model import Lead, PhoneCandidate
from crm2calls.phones import pick_phone
from crm2calls.policy import CallWindow, Policy, SourcePolicy
from crm2calls.zones import plan_window, resolve_zones
from schemas.phone_entry import validate_entry


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path ("contacts.0.phone"), or None when any step is missing."""
    for step in path.split("."):
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and step.isascii() and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        else:
            return None
    return data


def scalar_text(value: Any) -> str | None:
    """A scalar as stripped text; None for missing, empty or structured values."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip() or None


def _candidates(value: Any) -> list[PhoneCandidate]:
    """A phone field as candidates: a string, or a list of strings or {"value", "type", "primary"} objects."""
    items = value if isinstance(value, list) else [value]
    found = []
    for item in items:
        if isinstance(item, dict):
            text = scalar_text(item.get("value"))
            kind = scalar_text(item.get("type")) or ""
            if text:
                found.append(PhoneCandidate(text, kind.lower(), item.get("primary") is True))
        elif text := scalar_text(item):
            found.append(PhoneCandidate(text))
    return found


def route_value(data: Any, policy: SourcePolicy) -> str | None:
    """The value of the source's campaign_by field as text (3002 and "3002" alike); None without one."""
    if policy.campaign_by is None:
        return None
    value = get_path(data, policy.campaign_by.field)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return scalar_text(value)


def lead_from_fields(record: dict, policy: SourcePolicy) -> Lead:
    """The generic mapping: read id, phones, name, zone and city by the source's paths, and build the payload."""

    paths = policy.fields
    phones = [c for path in paths.phones for c in _candidates(get_path(record, path))]
    if policy.payload is None:  # every filled top-level field, except the id and the phones (as payload_for does)
        taken = {path.split(".")[0] for path in (paths.id, *paths.phones) if path}
        payload = {key: value for key, value in record.items() if key not in taken and value not in (None, "", [], {})}
    else:
        payload = {key: get_path(record, path) for key, path in policy.payload.items()}
        payload = {key: value for key, value in payload.items() if value is not None}
    return Lead(
        external_id=scalar_text(get_path(record, paths.id)) if paths.id else None,
        phones=phones,
        fields=payload,
        name=scalar_text(get_path(record, paths.name)) if paths.name else None,
        zone=scalar_text(get_path(record, paths.zone)) if paths.zone else None,
        city=scalar_text(get_path(record, paths.city)) if paths.city else None,
        route=route_value(record, policy),
    )


@dataclass(frozen=True)
class RenderedEntry:
    """The validated addPhones entry, the normalised phone, and the zone with how it was chosen."""

    entry: dict
    phone: str
    zone: str
    zone_reason: str


def _wire_time(value: time) -> str:
    return f"{value:%H:%M}"


def render_entry(lead: Lead, source: SourcePolicy, policy: Policy, received_at: datetime) -> RenderedEntry:
    """Build and validate the addPhones entry for a lead; UnusableLeadError when it cannot be called."""
    window = source.window
    phone, number = pick_phone(lead.phones, lead.region or source.region, source.phone_preference)
    fallback = source.default_zone or policy.default_zone
    zones, zones_from = resolve_zones(lead, policy.cities, number, fallback)
    plan = plan_window(zones, window, received_at, fallback)
    if not plan.common:
        # The configured hours share no time across the zones (a Russian mobile spans 10 hours):
        # the safe hours usually do, and keep every candidate customer out of the night.
        safe = replace(window, hours={"default": (policy.safe_hours,)})
        safe_plan = plan_window(zones, safe, received_at, fallback)
        if safe_plan.common:
            plan = replace(safe_plan, reason=f"configured hours share no time; safe {safe_plan.reason}")
    start = received_at.replace(microsecond=0)  # whole seconds: Aimylogic needs no more
    entry: dict[str, Any] = {"phone": phone}
    if lead.fields:
        entry["payload"] = lead.fields
    entry.update(
        startDateTime=start.isoformat(),
        finishDateTime=(start + timedelta(hours=window.call_within_hours)).isoformat(),
        allowedDays=list(plan.days),
        allowedTime={
            key: [{"localTimeFrom": _wire_time(i.start), "localTimeTo": _wire_time(i.end)} for i in intervals]
            for key, intervals in plan.hours.items()
        },
        retryIntervalInMinutes=window.retry_interval_minutes,
        maxAttempts=window.max_call_attempts,
        gmtZone=plan.zone,
    )
    return RenderedEntry(validate_entry(entry), phone, plan.zone, f"{zones_from}: {plan.reason}")


def rewindow(entry: dict, window: CallWindow, now: datetime) -> dict:
    """A frozen entry with a fresh calling window from `now` (an operator's retry), validated again.

    The days, hours and zone stay as rendered for the lead; the span, retries and attempts follow the
    call policy as it is now.
    """
    start = now.replace(microsecond=0)
    return validate_entry(
        {
            **entry,
            "startDateTime": start.isoformat(),
            "finishDateTime": (start + timedelta(hours=window.call_within_hours)).isoformat(),
            "retryIntervalInMinutes": window.retry_interval_minutes,
            "maxAttempts": window.max_call_attempts,
        }
    )
