"""The data that flows through crm2calls, independent of Flask, the CRMs and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a lead is in its life; crm2calls/lifecycle.py owns the transitions, docs/operations.md explains each."""

    RECEIVED = "received"  # stored; its phone must still be fetched from the CRM (enrichment)
    PENDING = "pending"  # the addPhones entry is rendered and frozen, waiting to be sent
    SENDING = "sending"  # claimed by a worker under a lease; an expired lease makes it pending again
    SENT = "sent"  # Aimylogic accepted it (job id recorded); its job is followed from here
    CALLING = "calling"  # its job is planned, being dialled or waiting for a redial (jobStatus)
    CALLED = "called"  # the robot talked to someone (longCallWithResult, longCallWithNoResult)
    NOT_REACHED = "not_reached"  # every attempt failed (noAnswer, nonexistentNumber, notDone)
    CANCELED = "canceled"  # stopped before it was called: the CRM closed the lead, an operator, or Aimylogic
    HELD = "held"  # a guard holds it (rate cap, paused campaign); released later, never dropped
    DUPLICATE = "duplicate"  # the same person was already called within the duplicate window
    REJECTED = "rejected"  # cannot be called: no phone, invalid number, refused by the API
    FAILED = "failed"  # gave up after the attempt or age limit: the dead letter, kept for `leads retry`
    EXPIRED = "expired"  # its calling window (finishDateTime) passed before it could be sent
    DRY_RUN = "dry_run"  # a dry run logged its entry instead of sending it; `leads retry` sends it for real


# Statuses the lead's own delivery is over in (an operator's `leads retry` may start some again). A lead is
# final when it is in one of them and has no follow-up work due (LeadRecord.final): purge and the DynamoDB
# TTL read that. SENT and CALLING move on only through follow-up work (polling the job).
END_STATUSES = frozenset(
    {
        Status.SENT,
        Status.CALLING,
        Status.CALLED,
        Status.NOT_REACHED,
        Status.CANCELED,
        Status.DUPLICATE,
        Status.REJECTED,
        Status.FAILED,
        Status.EXPIRED,
        Status.DRY_RUN,
    }
)
# The statuses whose leads may carry follow-up work; the follow-up pass claims from these (crm2calls/followup.py).
FOLLOWED_STATUSES = (Status.SENT, Status.CALLING, Status.CALLED, Status.NOT_REACHED, Status.CANCELED)


@dataclass
class WorkItem:
    """One piece of follow-up work on a lead (poll its job, write its outcome back, cancel its job).

    due None: parked, nothing runs it until an operator replays it (a dead letter; `error` says why).
    """

    due: datetime | None
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True)
class PhoneCandidate:
    """One number as the CRM holds it, before normalisation."""

    value: str
    kind: str = ""  # "mobile", "work", "home", ... in lower case; "" when the CRM does not say
    primary: bool = False


@dataclass
class Lead:
    """A lead as the CRM describes it, before mapping to an addPhones entry."""

    external_id: str | None
    phones: list[PhoneCandidate]
    fields: dict[str, Any] = field(default_factory=dict)  # what payload mapping reads (dotted paths)
    name: str | None = None
    zone: str | None = None  # a time zone the lead itself gives (IANA id or UTC offset)
    city: str | None = None  # a city or region the mapping file may map to a zone
    region: str | None = None  # phone region for national numbers, when the source knows it
    route: str | None = None  # the value of the source's campaign_by field, as text: picks the campaign


@dataclass
class LeadEvent:
    """One lead event parsed from a webhook (a request may hold many)."""

    key: str  # idempotency key: unique per CRM event identity within its source
    ref: str  # the CRM's own id of the lead or contact, for people reading logs
    lead: Lead | None  # None: the phone must be fetched from the CRM's API (enrichment)
    raw: dict[str, Any] = field(default_factory=dict)  # what enrichment needs; JSON-serialisable


@dataclass
class LeadRecord:
    """A lead as the store keeps it."""

    id: str
    source: str
    key: str  # "{source}:{event key}", unique in the store for at least KEY_TTL
    ref: str
    status: Status
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    attempts: int = 0
    entry: str | None = None  # the addPhones entry as JSON, frozen when first rendered
    raw: str | None = None  # the event as JSON, kept only until the entry is rendered
    phone_masked: str | None = None
    # SHA-256 of the normalised phone: a pseudonym for the duplicate window, caps and do-not-call list, not a
    # secret (anyone holding the store can confirm a guessed number by hashing it); erased by `leads forget`
    phone_key: str | None = None
    last_error: str | None = None
    job_id: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"at", "status", "note"}]
    # Follow-up work after the send, by task name ("poll", "cancel", "write_back", ...); in FOLLOWED_STATUSES
    # next_attempt_at is the earliest due item, so the store's due index finds it (lifecycle.set_work).
    work: dict[str, WorkItem] = field(default_factory=dict)
    campaign: str = "default"  # the Aimylogic campaign it goes to, chosen when its entry is rendered
    # A fingerprint of the token that placed job_id (never the token): polling and cancelling use the
    # campaign's token only while it is still this one.
    job_token: str | None = None
    # What became of its call, from Aimylogic's report: job_status, call_result, attempts, duration_s,
    # started_at, finished_at (ISO 8601 UTC), report (reportData), tag.
    outcome: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        """Nothing is left to do for this lead: an end status and no follow-up work due."""
        return self.status in END_STATUSES and not any(item.due for item in self.work.values())

    def work_due(self) -> datetime | None:
        """When its earliest follow-up work is due (None: none is)."""
        return min((item.due for item in self.work.values() if item.due), default=None)


@dataclass(frozen=True)
class StopEvent:
    """A CRM saying "stop calling this record": closed, won, lost, deleted, merged, archived.

    key: idempotency key of the event within its source; record: the CRM record it names as
    "<type>:<id>" ("lead:123", "contact:9", "deal:5"); reason: what the CRM said, for people;
    check: True when the event alone does not say whether to stop (an update event): the worker looks
    the record up in the CRM, and only while we still have work for it.
    """

    key: str
    record: str
    reason: str
    check: bool = False
    raw: dict[str, Any] = field(default_factory=dict)
