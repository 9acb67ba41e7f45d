"""The contract every store backend keeps; tests/test_store_contract.py runs it on each."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from crm2calls.errors import Crm2CallsError
from crm2calls.model import LeadRecord, Status

KEY_TTL = timedelta(days=8)  # CRMs retry for up to 3 days; keys must outlive that by a margin
SCHEMA_VERSION = 6
WAITING_STATUSES = (Status.RECEIVED, Status.PENDING, Status.SENDING)  # not sent yet, and not held

log = logging.getLogger("crm2calls.store")


@dataclass(frozen=True)
class Counter:
    """One guard counter to add one to, unless it has reached `limit`.

    Names carry their window ("rate:minute:202611260905"), so a window's counter is never reused;
    expires_at only tells the store when it may forget it.
    """

    name: str
    limit: int
    expires_at: datetime


@dataclass(frozen=True)
class Claims:
    """What a write takes or gives back together with the lead, in the same transaction.

    slot: the one-person-one-call slot to take, held by the lead's idempotency key for `window`;
    counters: guard counters to count the lead in; release: a slot the lead gives back.
    """

    slot: str | None = None
    window: timedelta = timedelta(0)
    counters: tuple[Counter, ...] = ()
    release: str | None = None


NO_CLAIMS = Claims()


@dataclass(frozen=True)
class Backlog:
    """Leads not yet sent: waiting (received, pending, sending) and held back by a guard on purpose.

    oldest: when each campaign's oldest waiting lead arrived (campaigns with none waiting left out).
    """

    waiting: int
    held: int
    oldest: dict[str, datetime] = field(default_factory=dict)


class ClaimRefusedError(Crm2CallsError):
    """A claim of a write was refused (slot held by another lead, counter at its limit); nothing was written.

    Not retryable as it is: the caller decides what the lead becomes (duplicate, held, rejected) and
    writes that instead.
    """

    def __init__(self, claim: str, holder: str | None = None):
        super().__init__(f"claim refused: {claim}")
        self.claim = claim  # the slot's or the counter's name
        self.holder = holder  # for a slot: the idempotency key of the lead that holds it


class LeadStore(Protocol):
    """Durable, concurrency-safe storage of leads. All datetimes are timezone-aware UTC."""

    def migrate(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION, keeping existing data; idempotent."""

    def insert(self, record: LeadRecord, claims: Claims = NO_CLAIMS) -> tuple[LeadRecord, bool]:
        """Insert the lead, its key and its claims in one transaction, unless its key exists.

        Returns (stored record, created?); an existing key wins before any claim is looked at.
        ClaimRefusedError when a claim is refused: then nothing is written.
        """

    def get(self, lead_id: str) -> LeadRecord | None:
        """One lead by our id."""

    def find(self, key: str) -> LeadRecord | None:
        """The lead stored under an idempotency key, if any (a CRM retry is answered from it)."""

    def find_by_ref(self, source: str, ref: str) -> list[LeadRecord]:
        """The leads that came from this CRM record (LeadRecord.ref within its source), oldest first."""

    def claim(self, status: Status, now: datetime, lease_seconds: int, limit: int, owner: str) -> list[LeadRecord]:
        """Lease up to `limit` due leads of `status` to `owner`, oldest first.

        Due: next_attempt_at <= now and no live lease. Claiming PENDING also takes SENDING leads
        whose lease expired (a worker died) and sets status SENDING. No lead goes to two owners.
        """

    def renew(self, lead_ids: list[str], owner: str, until: datetime) -> set[str]:
        """Extend `owner`'s leases on these leads to `until`; return the ids it still holds."""

    def lease(self, lead_id: str, owner: str, now: datetime, lease_seconds: int) -> LeadRecord | None:
        """Lease one lead to `owner`, whatever its status, unless a live lease holds it; the lead as stored, or None.

        Status and due time are unchanged: the holder writes it with update(record, owner) as a worker does
        (a stop on the request path, an operator's command). None: unknown, or another owner holds it.
        """

    def update(self, record: LeadRecord, owner: str | None, claims: Claims = NO_CLAIMS) -> bool:
        """Write the record's mutable fields and its claims in one transaction.

        Only if `owner` still holds its lease (None: unconditionally); False when it does not.
        ClaimRefusedError when a claim is refused: then nothing is written.
        """

    def record_job(self, record: LeadRecord) -> bool:
        """Write a sent lead whose lease was lost, unless a job id is recorded for it already.

        A job id Aimylogic gave is never thrown away; the first one recorded stands.
        """

    def list(
        self,
        status: Status | None = None,
        source: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        campaign: str | None = None,
    ) -> list[LeadRecord]:
        """Leads, newest first, filtered."""

    def backlog(self) -> Backlog:
        """How many leads wait to be sent and are held (the counts), and each campaign's oldest waiting lead.

        Reads the counts and one index entry per campaign with leads waiting: never the whole table.
        """

    def counts(self) -> dict[str, dict[str, int]]:
        """How many leads are in each status, by campaign: counts kept in the transaction of every write.

        Statuses and campaigns with no lead may be left out; a count found below zero is logged and read as 0.
        """

    def count_by_status(self) -> dict[str, int]:
        """How many leads are in each status, every status listed (the counts' totals)."""

    def recount(self) -> dict[str, int]:
        """Count every lead again and store the counts (an upgrade does it once; a repair); returns the totals."""

    def held_by_campaign(self) -> dict[str, int]:
        """How many leads are held, per campaign (campaigns with none left out)."""

    def get_meta(self, name: str) -> dict[str, Any] | None:
        """A small named document (campaign pause, block list entries, ...)."""

    def put_meta(self, name: str, value: dict[str, Any] | None, expires_at: datetime | None = None) -> None:
        """Write (or, with None, delete) a named document; one with expires_at may be forgotten after it.

        Readers still check their document's own time: the store forgets late (purge, DynamoDB TTL), never early.
        """

    def purge(self, before: datetime) -> int:
        """Delete final leads (end status, no work left) created before `before`, and their keys; return how many.

        Counters and named documents that expired by `before` go too.
        """

    def forget(self, phone_key: str) -> int:
        """Erase every trace of this phone but its do-not-call entry (leads, keys, slots, counters); count the leads."""


def checked_counts(found: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The counts as read, a negative one logged (a write that bypassed the store) and read as 0."""
    for status, by_campaign in found.items():
        for campaign, count in by_campaign.items():
            if count < 0:
                log.error(
                    "the count of %s leads of campaign %s is %d, below zero: a write bypassed the store; "
                    "`flask --app app leads recount` counts the leads again",
                    status, campaign, count,
                    extra={"fields": {"event": "lead_count_negative", "status": status, "campaign": campaign}},
                )
                by_campaign[campaign] = 0
    return found


def totals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Leads per status over every campaign, every status listed."""
    found = {status.value: 0 for status in Status}
    for status, by_campaign in counts.items():
        found[status] = found.get(status, 0) + sum(by_campaign.values())
    return found


def backlog_of(counts: dict[str, dict[str, int]], oldest: dict[str, datetime]) -> Backlog:
    """The Backlog from the counts and the campaigns' oldest waiting leads."""
    waiting = sum(sum(counts.get(status.value, {}).values()) for status in WAITING_STATUSES)
    return Backlog(waiting=waiting, held=sum(counts.get(Status.HELD.value, {}).values()), oldest=oldest)
