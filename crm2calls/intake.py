"""From parsed lead events to stored leads: the domain step behind every webhook."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from crm2calls.errors import UnusableLeadError
from crm2calls.logs import log_transition
from crm2calls.model import Lead, LeadEvent, LeadRecord, Status
from crm2calls.services import Services
from crm2calls.sources.base import IntakeResult, Source

log = logging.getLogger("crm2calls.intake")


_ID_ALPHABET = "abcdefghijkmnopqrstuvwxyz"  # letters only: log redaction masks long digit runs


def new_lead_id(now: datetime) -> str:
    """A sortable, unguessable id: milliseconds since the epoch, then 64 random bits, in letters."""
    value = (int(now.timestamp() * 1000) << 64) | uuid.uuid4().int >> 64
    letters = []
    while value:
        value, digit = divmod(value, len(_ID_ALPHABET))
        letters.append(_ID_ALPHABET[digit])
    return "".join(reversed(letters))


def transition(record: LeadRecord, status: Status, now: datetime, note: str = "", **fields: Any) -> None:
    """Move a record to a status, remember it in its history and log one JSON line."""
    record.status = status
    record.updated_at = now
    record.history.append({"at": now.isoformat(), "status": str(status), "note": note})
    log_transition(record, note, **fields)


def settle(services: Services, record: LeadRecord, lead: Lead, now: datetime) -> UnusableLeadError | None:
    """Render and freeze the entry, then apply the do-not-call list and the one-person-one-call rule.

    Leaves the record PENDING (or HELD for the spend guards), DUPLICATE or REJECTED; the caller persists it.
    Returns why the lead cannot be called, when that is the lead's own fault.
    """
    from crm2calls import guards
    from crm2calls.mapping import render_entry
    from crm2calls.phones import mask

    policy = services.settings.policy
    try:
        rendered = render_entry(lead, policy.source(record.source), policy, record.created_at)
    except UnusableLeadError as exc:
        record.raw = None
        record.last_error = f"{exc.field}: {exc.reason}"
        transition(record, Status.REJECTED, now, record.last_error)
        return exc
    record.entry = json.dumps(rendered.entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    record.raw = None  # the frozen entry is all delivery needs; drop the CRM's raw data
    record.phone_masked = mask(rendered.phone)
    record.phone_key = guards.phone_key(rendered.phone)
    record.next_attempt_at = now
    window = timedelta(hours=policy.duplicate_window_hours)
    slot = guards.campaign_slot(services, record.phone_key)
    # Claimed by idempotency key, not by id: a CRM retry of the same event re-claims its own slot.
    holder = services.store.claim_phone(slot, record.key, now, window) if window else None
    if holder is not None:
        transition(record, Status.DUPLICATE, now, f"same phone as {holder} within {policy.duplicate_window_hours} h")
        return None
    zone = f"zone {rendered.zone} ({rendered.zone_reason})"
    verdict = guards.admit(services, record, now)
    if verdict.status is Status.REJECTED:
        record.last_error = verdict.reason
        transition(record, Status.REJECTED, now, verdict.reason)
        services.store.release_phone(slot, record.key)
    elif verdict.status is Status.HELD:
        record.last_error, record.next_attempt_at = verdict.reason, verdict.retry_at
        transition(record, Status.HELD, now, f"{zone}; {verdict.reason}; held until {verdict.retry_at:%H:%M} UTC")
        guards.report_holding(services, verdict)
    else:
        transition(record, Status.PENDING, now, zone)
    return None


def accept(services: Services, source: Source, events: list[LeadEvent]) -> list[IntakeResult]:
    """Store each event once (idempotent by key) and say what became of it; StoreError -> 503."""
    now = services.clock()
    results = [_accept_one(services, source, event, now) for event in events]  # stores raise StoreError
    if any(r.status in (Status.PENDING, Status.RECEIVED, Status.HELD) for r in results):
        services.notify()
    return results


def _accept_one(services: Services, source: Source, event: LeadEvent, now: datetime) -> IntakeResult:
    key = f"{source.name}:{event.key}"
    # A CRM retry or a replay is answered as the first time, before anything counts it again.
    existing = services.store.find(key)
    if existing is not None:
        return _result(event, existing, reason="already received")
    record = LeadRecord(
        id=new_lead_id(now),
        source=source.name,
        key=key,
        ref=event.ref,
        status=Status.RECEIVED,
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
    )
    unusable = None
    if event.lead is None:
        record.raw = json.dumps(event.raw, ensure_ascii=False, separators=(",", ":"))
        record.history.append({"at": now.isoformat(), "status": str(Status.RECEIVED), "note": "awaiting enrichment"})
    else:
        unusable = settle(services, record, event.lead, now)
    stored, created = services.store.insert(record)
    if not created:  # the same event arrived twice at once; the first one stands
        return _result(event, stored, reason="already received")
    if stored.status is Status.RECEIVED:
        log_transition(stored, "awaiting enrichment")
    return _result(event, stored, field=unusable.field if unusable else None)


def _result(event: LeadEvent, record: LeadRecord, reason: str | None = None, field: str | None = None) -> IntakeResult:
    if record.status in (Status.DUPLICATE, Status.REJECTED):
        reason = record.last_error or _note(record)
    return IntakeResult(event.key, event.ref, record.status, record.id, reason, field)


def _note(record: LeadRecord) -> str | None:
    return record.history[-1]["note"] if record.history else None
