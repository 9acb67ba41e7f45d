"""The SQLite lead store: one file, WAL, safe for several processes and threads (gunicorn).

SQL is built from column names and `?` marks only (the S608 noqa lines); every value is bound.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from crm2calls.errors import StoreError
from crm2calls.model import END_STATUSES, LeadRecord, Status
from crm2calls.store.base import (
    NO_CLAIMS,
    SCHEMA_VERSION,
    Backlog,
    ClaimRefusedError,
    Claims,
    backlog_of,
    checked_counts,
    totals,
)
from crm2calls.store.records import COLUMNS, MUTABLE_COLUMNS, from_row, iso, parse_iso, to_row

WAITING = (Status.RECEIVED.value, Status.PENDING.value, Status.SENDING.value)
BUSY_TIMEOUT_MS = 10_000  # a writer waits this long for another process's write to finish

P = ParamSpec("P")
T = TypeVar("T")

_V1 = (
    """CREATE TABLE leads (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        ref TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        next_attempt_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        entry TEXT,
        raw TEXT,
        phone_masked TEXT,
        phone_key TEXT,
        last_error TEXT,
        job_id TEXT,
        lease_owner TEXT,
        lease_until TEXT,
        history TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX leads_due ON leads (status, next_attempt_at)",
    "CREATE INDEX leads_created ON leads (created_at)",
    "CREATE INDEX leads_phone ON leads (phone_key)",
    "CREATE TABLE phone_claims (phone_key TEXT PRIMARY KEY, lead_id TEXT NOT NULL, claimed_at TEXT NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at TEXT NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, json TEXT NOT NULL)",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


def _v2_work_and_final(conn: sqlite3.Connection) -> None:
    """Follow-up work per lead and a `final` flag for purge; slots named by campaign, not by token."""
    conn.execute("ALTER TABLE leads ADD COLUMN work TEXT NOT NULL DEFAULT '{}'")
    conn.execute("ALTER TABLE leads ADD COLUMN final INTEGER NOT NULL DEFAULT 0")
    ends = tuple(status.value for status in END_STATUSES)
    conn.execute(f"UPDATE leads SET final = 1 WHERE status IN ({', '.join('?' for _ in ends)})", ends)  # noqa: S608
    conn.execute("CREATE INDEX leads_final ON leads (final, created_at)")
    # v1 named a slot by a hash of the campaign token ("<16 hex>:<phone key>"); a new token must not free it.
    conn.execute(
        "UPDATE OR REPLACE phone_claims SET phone_key = 'default:' || substr(phone_key, 18) "
        "WHERE length(phone_key) = 81 AND substr(phone_key, 17, 1) = ':'"
    )


def _v3_campaigns(conn: sqlite3.Connection) -> None:
    """Each lead names its campaign (leads stored before belong to default); delivery state per campaign."""
    conn.execute("ALTER TABLE leads ADD COLUMN campaign TEXT NOT NULL DEFAULT 'default'")
    conn.execute("ALTER TABLE leads ADD COLUMN job_token TEXT")
    conn.execute("CREATE INDEX leads_status_campaign ON leads (status, campaign)")
    conn.execute("UPDATE OR REPLACE meta SET name = 'campaign:default' WHERE name = 'campaign'")


def _v4_outcomes(conn: sqlite3.Connection) -> None:
    """A call's outcome per lead; leads found by the CRM record they came from (stop events name it)."""
    conn.execute("ALTER TABLE leads ADD COLUMN outcome TEXT")
    conn.execute("CREATE INDEX leads_ref ON leads (source, ref)")


# Triggers keep the counts in the transaction of every write to leads, whichever statement makes it.
_COUNTED = (
    """CREATE TABLE lead_counts (
        status TEXT NOT NULL, campaign TEXT NOT NULL, leads INTEGER NOT NULL, PRIMARY KEY (status, campaign)
    )""",
    """CREATE TRIGGER lead_counts_insert AFTER INSERT ON leads BEGIN
        INSERT OR IGNORE INTO lead_counts VALUES (new.status, new.campaign, 0);
        UPDATE lead_counts SET leads = leads + 1 WHERE status = new.status AND campaign = new.campaign;
    END""",
    """CREATE TRIGGER lead_counts_update AFTER UPDATE OF status, campaign ON leads
        WHEN old.status IS NOT new.status OR old.campaign IS NOT new.campaign BEGIN
        UPDATE lead_counts SET leads = leads - 1 WHERE status = old.status AND campaign = old.campaign;
        INSERT OR IGNORE INTO lead_counts VALUES (new.status, new.campaign, 0);
        UPDATE lead_counts SET leads = leads + 1 WHERE status = new.status AND campaign = new.campaign;
    END""",
    """CREATE TRIGGER lead_counts_delete AFTER DELETE ON leads BEGIN
        UPDATE lead_counts SET leads = leads - 1 WHERE status = old.status AND campaign = old.campaign;
    END""",
)


def _v5_counts(conn: sqlite3.Connection) -> None:
    """Leads counted by status and campaign in a table the triggers keep, so nothing counts rows to answer."""
    for statement in _COUNTED:
        conn.execute(statement)
    _recount(conn)


def _recount(conn: sqlite3.Connection) -> None:
    """Count every lead once, in the caller's write transaction."""
    conn.execute("DELETE FROM lead_counts")
    conn.execute("INSERT INTO lead_counts SELECT status, campaign, COUNT(*) FROM leads GROUP BY status, campaign")


def _v6_expiring_meta(conn: sqlite3.Connection) -> None:
    """Named documents may expire (stop tombstones live as long as idempotency keys); purge forgets them."""
    if "expires_at" not in {row[1] for row in conn.execute("PRAGMA table_info(meta)")}:
        conn.execute("ALTER TABLE meta ADD COLUMN expires_at TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS meta_expires ON meta (expires_at) WHERE expires_at IS NOT NULL")


# Step n takes the schema from version n-1 to n.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _create_v1,
    2: _v2_work_and_final,
    3: _v3_campaigns,
    4: _v4_outcomes,
    5: _v5_counts,
    6: _v6_expiring_meta,
}

# One statement, so atomic: an expired counter restarts at 1, a live one grows while under the limit.
_TAKE = """INSERT INTO counters (name, value, expires_at) VALUES (:name, 1, :expires_at)
    ON CONFLICT (name) DO UPDATE SET
        value = CASE WHEN counters.expires_at <= :now THEN 1 ELSE counters.value + 1 END,
        expires_at = CASE WHEN counters.expires_at <= :now THEN excluded.expires_at ELSE counters.expires_at END
    WHERE counters.expires_at <= :now OR counters.value < :limit
    RETURNING value"""

# Takes the slot when it is free, expired, or already this lead's; returns a row only when taken.
_CLAIM_SLOT = """INSERT INTO phone_claims (phone_key, lead_id, claimed_at) VALUES (:slot, :holder, :now)
    ON CONFLICT (phone_key) DO UPDATE SET lead_id = excluded.lead_id, claimed_at = excluded.claimed_at
    WHERE phone_claims.claimed_at <= :cutoff OR phone_claims.lead_id = excluded.lead_id
    RETURNING lead_id"""

_COLUMN_LIST = ", ".join(COLUMNS)
_INSERT = (
    f"INSERT INTO leads ({_COLUMN_LIST}) VALUES ({', '.join(f':{name}' for name in COLUMNS)})"  # noqa: S608
    " ON CONFLICT (key) DO NOTHING RETURNING id"
)
_UPDATE = f"UPDATE leads SET {', '.join(f'{name} = :{name}' for name in MUTABLE_COLUMNS)} WHERE id = :id"  # noqa: S608


def _store_errors(method: Callable[P, T]) -> Callable[P, T]:
    """Report a locked, missing, unwritable or corrupt database as StoreError (the CRM retries)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"sqlite store: {exc}") from exc

    return wrapper


class SQLiteStore:
    """LeadStore on one SQLite file; one connection per thread and process."""

    def __init__(self, path: str, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self._local = threading.local()
        self.synchronous = synchronous

    def _conn(self) -> sqlite3.Connection:
        # Keyed by pid too: a connection must never cross a fork (gunicorn preload).
        if getattr(self._local, "pid", None) != os.getpid():
            if parent := os.path.dirname(self.path):
                os.makedirs(parent, exist_ok=True)  # here, not in __init__: a failure is a StoreError
            # timeout= is SQLite's busy_timeout; isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives any crash of our processes (SIGKILL included) and
            # never corrupts the file; only a power cut or kernel crash may roll back the last
            # commits. FULL would fsync every commit and cap acknowledgements at a few hundred a
            # second on ordinary disks; docs/durability.md says how to choose FULL.
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Deleted rows are overwritten with zeros, so `leads forget` leaves no phone in free pages.
            conn.execute("PRAGMA secure_delete = ON")
            self._local.conn, self._local.pid = conn, os.getpid()
        return self._local.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so reads inside it stay true until COMMIT."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")  # a failing COMMIT (disk full, I/O) rolls back like any statement
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this thread's connection (a new one opens on next use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.__dict__.clear()

    @_store_errors
    def migrate(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION, keeping existing data; idempotent."""
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"sqlite store: schema version {version} is newer than this release's")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @_store_errors
    def insert(self, record: LeadRecord, claims: Claims = NO_CLAIMS) -> tuple[LeadRecord, bool]:
        """Insert the lead, its key and its claims in one transaction, unless its key exists."""
        with self._write() as conn:
            if conn.execute(_INSERT, to_row(record)).fetchone() is None:
                existing = conn.execute("SELECT * FROM leads WHERE key = ?", (record.key,)).fetchone()
                return from_row(dict(existing)), False
            self._take(conn, record, claims)
        return record, True

    def _take(self, conn: sqlite3.Connection, record: LeadRecord, claims: Claims) -> None:
        """Apply claims inside a write transaction; ClaimRefusedError (the transaction rolls back) on refusal."""
        now = record.updated_at
        if claims.release:
            conn.execute("DELETE FROM phone_claims WHERE phone_key = ? AND lead_id = ?", (claims.release, record.key))
        if claims.slot:
            params = {"slot": claims.slot, "holder": record.key, "now": iso(now), "cutoff": iso(now - claims.window)}
            if conn.execute(_CLAIM_SLOT, params).fetchone() is None:
                holder = conn.execute("SELECT lead_id FROM phone_claims WHERE phone_key = ?", (claims.slot,)).fetchone()
                raise ClaimRefusedError(claims.slot, holder[0])
        for counter in claims.counters:
            params = {"name": counter.name, "expires_at": iso(counter.expires_at), "now": iso(now)}
            if counter.limit < 1 or conn.execute(_TAKE, {**params, "limit": counter.limit}).fetchone() is None:
                raise ClaimRefusedError(counter.name)

    @_store_errors
    def get(self, lead_id: str) -> LeadRecord | None:
        """One lead by our id."""
        row = self._conn().execute("SELECT * FROM leads WHERE id = ?", (lead_id,)).fetchone()
        return None if row is None else from_row(dict(row))

    @_store_errors
    def find(self, key: str) -> LeadRecord | None:
        """The lead stored under an idempotency key, if any."""
        row = self._conn().execute("SELECT * FROM leads WHERE key = ?", (key,)).fetchone()
        return None if row is None else from_row(dict(row))

    @_store_errors
    def find_by_ref(self, source: str, ref: str) -> list[LeadRecord]:
        """The leads that came from this CRM record, oldest first."""
        sql = "SELECT * FROM leads WHERE source = ? AND ref = ? ORDER BY created_at, id"
        return [from_row(dict(row)) for row in self._conn().execute(sql, (source, ref))]

    @_store_errors
    def claim(self, status: Status, now: datetime, lease_seconds: int, limit: int, owner: str) -> list[LeadRecord]:
        """Lease up to `limit` due leads of `status` to `owner`, earliest next_attempt_at first."""
        if limit < 1:
            return []
        status = Status(status)
        statuses = [status.value, Status.SENDING.value] if status is Status.PENDING else [status.value]
        new_status = Status.SENDING if status is Status.PENDING else status
        marks = ", ".join("?" for _ in statuses)
        # One UPDATE picks and leases the rows under the write lock: no lead goes to two owners.
        sql = f"""UPDATE leads SET status = ?, lease_owner = ?, lease_until = ?
            WHERE id IN (
                SELECT id FROM leads
                WHERE status IN ({marks}) AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)
                ORDER BY next_attempt_at, created_at LIMIT ?)
            RETURNING *"""  # noqa: S608
        params = [new_status.value, owner, iso(now + timedelta(seconds=lease_seconds)), *statuses]
        params += [iso(now), iso(now), limit]
        with self._write() as conn:
            rows = conn.execute(sql, params).fetchall()
        return sorted((from_row(dict(row)) for row in rows), key=lambda r: (r.next_attempt_at, r.created_at))

    @_store_errors
    def renew(self, lead_ids: list[str], owner: str, until: datetime) -> set[str]:
        """Extend `owner`'s leases on these leads to `until`; return the ids it still holds."""
        if not lead_ids:
            return set()
        marks = ", ".join("?" for _ in lead_ids)
        sql = f"UPDATE leads SET lease_until = ? WHERE lease_owner = ? AND id IN ({marks}) RETURNING id"  # noqa: S608
        with self._write() as conn:
            return {row[0] for row in conn.execute(sql, (iso(until), owner, *lead_ids)).fetchall()}

    @_store_errors
    def lease(self, lead_id: str, owner: str, now: datetime, lease_seconds: int) -> LeadRecord | None:
        """Lease one lead to `owner`, whatever its status, unless a live lease holds it; the lead, or None."""
        sql = """UPDATE leads SET lease_owner = ?, lease_until = ?
            WHERE id = ? AND (lease_until IS NULL OR lease_until <= ?) RETURNING *"""
        until = iso(now + timedelta(seconds=lease_seconds))
        with self._write() as conn:
            row = conn.execute(sql, (owner, until, lead_id, iso(now))).fetchone()
        return None if row is None else from_row(dict(row))

    @_store_errors
    def update(self, record: LeadRecord, owner: str | None, claims: Claims = NO_CLAIMS) -> bool:
        """Write the record's mutable fields and its claims if `owner` still holds its lease (None: unconditional)."""
        params: dict[str, Any] = to_row(record)
        sql = _UPDATE
        if owner is not None:
            sql += " AND lease_owner = :expected_owner"
            params["expected_owner"] = owner
        if claims == NO_CLAIMS:  # one statement is its own transaction
            return self._conn().execute(sql, params).rowcount == 1
        with self._write() as conn:
            if conn.execute(sql, params).rowcount != 1:
                return False
            self._take(conn, record, claims)
        return True

    @_store_errors
    def record_job(self, record: LeadRecord) -> bool:
        """Write a sent lead whose lease was lost, unless a job id is recorded for it already."""
        return self._conn().execute(_UPDATE + " AND job_id IS NULL", to_row(record)).rowcount == 1

    @_store_errors
    def list(
        self,
        status: Status | None = None,
        source: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        campaign: str | None = None,
    ) -> list[LeadRecord]:
        """Leads, newest first, filtered."""
        where, params = ["1 = 1"], []
        if campaign is not None:
            where.append("campaign = ?")
            params.append(campaign)
        if status is not None:
            where.append("status = ?")
            params.append(Status(status).value)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        if since is not None:
            where.append("created_at >= ?")
            params.append(iso(since))
        sql = f"SELECT * FROM leads WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?"  # noqa: S608
        return [from_row(dict(row)) for row in self._conn().execute(sql, [*params, limit])]

    @_store_errors
    def backlog(self) -> Backlog:
        """The unsent leads from the counts, and each campaign's oldest waiting lead (the status-campaign index)."""
        counts = self.counts()
        rows = self._conn().execute(
            "SELECT campaign, MIN(created_at) FROM leads WHERE status IN (?, ?, ?) GROUP BY campaign", WAITING
        )
        oldest = {campaign: parse_iso(created) for campaign, created in rows}
        return backlog_of(counts, oldest)

    @_store_errors
    def counts(self) -> dict[str, dict[str, int]]:
        """How many leads are in each status, by campaign (the maintained counts: one small table read)."""
        found: dict[str, dict[str, int]] = {}
        for status, campaign, leads in self._conn().execute("SELECT status, campaign, leads FROM lead_counts"):
            found.setdefault(status, {})[campaign] = leads
        return checked_counts(found)

    def count_by_status(self) -> dict[str, int]:
        """How many leads are in each status, every status listed."""
        return totals(self.counts())

    def held_by_campaign(self) -> dict[str, int]:
        """How many leads are held, per campaign (campaigns with none left out)."""
        return {campaign: n for campaign, n in self.counts().get(Status.HELD.value, {}).items() if n}

    @_store_errors
    def recount(self) -> dict[str, int]:
        """Count every lead again (one transaction); returns the totals."""
        with self._write() as conn:
            _recount(conn)
        return self.count_by_status()

    @_store_errors
    def get_meta(self, name: str) -> dict[str, Any] | None:
        """A small named document (campaign pause, block list entries, ...)."""
        row = self._conn().execute("SELECT json FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    @_store_errors
    def put_meta(self, name: str, value: dict[str, Any] | None, expires_at: datetime | None = None) -> None:
        """Write (or, with None, delete) a named document; purge forgets it once expires_at has passed."""
        if value is None:
            self._conn().execute("DELETE FROM meta WHERE name = ?", (name,))
        else:
            self._conn().execute(
                "INSERT INTO meta (name, json, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "json = excluded.json, expires_at = excluded.expires_at",
                (name, json.dumps(value, ensure_ascii=False), None if expires_at is None else iso(expires_at)),
            )

    @_store_errors
    def purge(self, before: datetime) -> int:
        """Delete final leads created before `before` (and counters and documents expired by then); return how many."""
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM leads WHERE final = 1 AND created_at < ?", (iso(before),)).rowcount
            conn.execute("DELETE FROM counters WHERE expires_at <= ?", (iso(before),))
            conn.execute("DELETE FROM meta WHERE expires_at IS NOT NULL AND expires_at <= ?", (iso(before),))
        return deleted

    @_store_errors
    def forget(self, phone_key: str) -> int:
        """Erase every trace of this phone but its do-not-call entry: leads, slots, counters; return how many leads."""
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM leads WHERE phone_key = ?", (phone_key,)).rowcount
            conn.execute("DELETE FROM phone_claims WHERE phone_key LIKE ?", (f"%:{phone_key}",))
            conn.execute("DELETE FROM counters WHERE name LIKE ?", (f"number:{phone_key}:%",))
        # The WAL still holds the deleted pages' old images until a checkpoint copies it back and empties it.
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted
