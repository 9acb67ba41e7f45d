"""Leads whose call has ended, as the follow-up pass finds them: built by hand for the write-back tests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from crm2calls.model import LeadRecord, Status, WorkItem


def outcome(job_status: str = "longCallWithResult", **overrides: object) -> dict:
    """A call's outcome as crm2calls/outcomes.py keeps it (LeadRecord.outcome)."""
    return {
        "job_status": job_status,
        "call_result": "interested",
        "attempts": 2,
        "duration_s": 74,
        "started_at": "2026-11-26T08:57:46+00:00",
        "finished_at": "2026-11-26T08:59:00+00:00",
        "report": {"answer": "call me tomorrow", "score": 4},
        "tag": None,
        **overrides,
    }


def ended_lead(
    source: str,
    ref: str,
    now: datetime,
    *,
    job_id: str = "9051123",
    lead_id: str = "L-0001",
    status: Status = Status.CALLED,
    work: dict[str, WorkItem] | None = None,
    payload: dict | None = None,
    **outcome_fields: object,
) -> LeadRecord:
    """A lead whose job ended a minute before `now`, with its outcome and the given follow-up work."""
    created = now - timedelta(hours=1)
    entry = {"phone": "79120004242", "finishDateTime": (now + timedelta(days=1)).isoformat(), "payload": payload or {}}
    return LeadRecord(
        id=lead_id,
        source=source,
        key=f"{source}:event:{lead_id}",
        ref=ref,
        status=status,
        created_at=created,
        updated_at=now - timedelta(minutes=1),
        entry=json.dumps(entry),
        phone_masked="7912*****42",
        job_id=job_id,
        attempts=1,
        history=[
            {"at": created.isoformat(), "status": "pending", "note": "admitted"},
            {"at": (created + timedelta(minutes=1)).isoformat(), "status": "sent", "note": f"job {job_id}"},
            {"at": (now - timedelta(minutes=1)).isoformat(), "status": str(status), "note": "the job ended"},
        ],
        work=work or {},
        campaign="default",
        outcome=outcome(**outcome_fields),
    )
