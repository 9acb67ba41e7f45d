"""From parsed lead events to stored leads: the domain step behind every webhook."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime

from crm2calls import lifecycle
from crm2calls.model import LeadEvent, LeadRecord, Status
from crm2calls.services import Services
from crm2calls.sources.base import IntakeResult, Source
from crm2calls.stops import tombstone

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
    if (stopped := tombstone(services, source.name, event.ref, now)) is not None:  # a CRM retry out of order
        stored, created = lifecycle.accept_stopped(services, record, now, stopped)
        return _result(event, stored, reason=None if created else "already received")
    if event.lead is None:
        record.raw = json.dumps(event.raw, ensure_ascii=False, separators=(",", ":"))
    stored, created, unusable = lifecycle.accept_new(services, record, event.lead, now)
    if not created:  # the same event arrived twice at once; the first one stands
        return _result(event, stored, reason="already received")
    return _result(event, stored, field=unusable.field if unusable else None)


def _result(event: LeadEvent, record: LeadRecord, reason: str | None = None, field: str | None = None) -> IntakeResult:
    if record.status in (Status.DUPLICATE, Status.REJECTED, Status.CANCELED):
        reason = record.last_error or _note(record)
    return IntakeResult(event.key, event.ref, record.status, record.id, reason, field)


def _note(record: LeadRecord) -> str | None:
    return record.history[-1]["note"] if record.history else None
