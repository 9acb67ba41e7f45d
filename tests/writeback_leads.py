"""Leads whose call has ended, as the polling part leaves them: built directly and stored, write-back due."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from crm2calls.model import LeadRecord, Status, WorkItem
from tests.conftest import FIXTURES

OUTCOMES = json.loads((FIXTURES / "writeback" / "outcomes.json").read_text())


def ended_lead(
    source: str, ref: str, now: datetime, kind: str = "called", outcome: dict[str, Any] | None = None, **changes: Any
) -> LeadRecord:
    """A lead of `source` from CRM record `ref` whose job ended (fixture outcome `kind`, then `outcome`'s
    changes), write-back due now."""
    result = {**OUTCOMES[kind], **(outcome or {})}
    status = Status.CALLED if result["job_status"].startswith("longCall") else Status.NOT_REACHED
    lead_id = uuid.uuid4().hex
    values: dict[str, Any] = dict(
        id=lead_id,
        source=source,
        key=f"{source}:{ref}:{lead_id[:6]}",
        ref=ref,
        status=status,
        created_at=now - timedelta(minutes=10),
        updated_at=now,
        next_attempt_at=now,
        job_id=result["job_id"],
        phone_masked="7912*****89",
        history=[{"at": now.isoformat(), "status": str(status), "note": f"job {result['job_id']} ended"}],
        work={"write_back": WorkItem(now)},
        outcome=result,
    )
    return LeadRecord(**{**values, **changes})


def store_ended(services: Any, source: str, ref: str, kind: str = "called", **changes: Any) -> LeadRecord:
    """ended_lead() inserted in the services' store."""
    record = ended_lead(source, ref, services.clock(), kind, **changes)
    stored, created = services.store.insert(record)
    assert created
    return stored
