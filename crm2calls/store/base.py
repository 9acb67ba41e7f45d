"""The contract every store backend keeps; tests/test_store_contract.py runs it on each."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from crm2calls.model import LeadRecord, Status

KEY_TTL = timedelta(days=8)  # CRMs retry for up to 3 days; keys must outlive that by a margin
SCHEMA_VERSION = 1


class LeadStore(Protocol):
    """Durable, concurrency-safe storage of leads. All datetimes are timezone-aware UTC."""

    def migrate(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION, keeping existing data; idempotent."""

    def insert(self, record: LeadRecord) -> tuple[LeadRecord, bool]:
        """Insert unless a lead with the same key exists: (stored record, created?). Atomic."""

    def get(self, lead_id: str) -> LeadRecord | None:
        """One lead by our id."""

    def find(self, key: str) -> LeadRecord | None:
        """The lead stored under an idempotency key, if any (a CRM retry is answered from it)."""

    def claim(self, status: Status, now: datetime, lease_seconds: int, limit: int, owner: str) -> list[LeadRecord]:
        """Lease up to `limit` due leads of `status` to `owner`, oldest first.

        Due: next_attempt_at <= now and no live lease. Claiming PENDING also takes SENDING leads
        whose lease expired (a worker died) and sets status SENDING. No lead goes to two owners.
        """

    def update(self, record: LeadRecord, owner: str | None) -> bool:
        """Write the record's mutable fields if `owner` still holds its lease (None: unconditional)."""

    def list(
        self, status: Status | None = None, source: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[LeadRecord]:
        """Leads, newest first, filtered."""

    def count_by_status(self) -> dict[str, int]:
        """How many leads are in each status (for /healthz and `leads list`)."""

    def claim_phone(self, phone_key: str, lead_id: str, now: datetime, window: timedelta) -> str | None:
        """Take the one-person-one-call slot: None if `lead_id` now holds it, else the holder's id."""

    def release_phone(self, phone_key: str, lead_id: str) -> None:
        """Give the slot back (the lead was rejected or failed), only if `lead_id` holds it."""

    def take(self, counter: str, limit: int, expires_at: datetime, now: datetime) -> bool:
        """Add one to a counter unless it is at `limit`: the rate and per-number guards.

        A counter whose expires_at <= now is over: it starts again at one, expiring at `expires_at`.
        """

    def get_meta(self, name: str) -> dict[str, Any] | None:
        """A small named document (campaign pause, block list entries, ...)."""

    def put_meta(self, name: str, value: dict[str, Any] | None) -> None:
        """Write (or, with None, delete) a named document."""

    def purge(self, before: datetime) -> int:
        """Delete leads in a final status created before `before`; return how many."""

    def forget(self, phone_key: str) -> int:
        """Erase every lead and claim that holds this phone; return how many leads."""
