"""LeadRecord <-> flat rows of str/int/None, shared by the store backends.

Datetimes become fixed-width UTC ISO strings, so comparing the strings compares the times
(SQL `<=`, DynamoDB key conditions). History must be JSON-serialisable (use ISO strings for times).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from crm2calls.model import LeadRecord, Status, WorkItem

FIELDS = tuple(f.name for f in fields(LeadRecord))
DATETIME_FIELDS = frozenset({"created_at", "updated_at", "next_attempt_at", "lease_until"})
IMMUTABLE_FIELDS = ("id", "source", "key", "ref", "created_at")  # update() never rewrites these
# What a row holds beyond the record's fields: `final` (0/1), derived, so purge and TTL can select on it.
COLUMNS = (*FIELDS, "final")
MUTABLE_COLUMNS = tuple(name for name in COLUMNS if name not in IMMUTABLE_FIELDS)

Row = dict[str, str | int | None]


def iso(moment: datetime) -> str:
    """A timezone-aware datetime as a sortable UTC string: 2025-01-31T09:05:00.000000+00:00."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the store keeps timezone-aware UTC only")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def parse_iso(text: str) -> datetime:
    """The inverse of iso()."""
    return datetime.fromisoformat(text)


def to_row(record: LeadRecord) -> Row:
    """Every field of a record as str, int or None."""
    row: Row = {}
    for name in FIELDS:
        value = getattr(record, name)
        if name in DATETIME_FIELDS:
            value = None if value is None else iso(value)
        elif name == "status":
            value = Status(value).value
        elif name == "history":
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif name == "work":
            value = json.dumps({task: _work_row(item) for task, item in sorted(value.items())}, separators=(",", ":"))
        elif name == "outcome":
            value = None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        row[name] = value
    row["final"] = int(record.final)
    return row


def from_row(row: Mapping[str, Any]) -> LeadRecord:
    """A record from a row; missing keys read as None, extra keys (backend bookkeeping) are ignored."""
    values: dict[str, Any] = {name: row.get(name) for name in FIELDS}
    for name in DATETIME_FIELDS:
        if values[name] is not None:
            values[name] = parse_iso(values[name])
    values["status"] = Status(values["status"])
    values["campaign"] = values["campaign"] or "default"  # stored before campaigns existed
    values["attempts"] = int(values["attempts"] or 0)
    values["history"] = json.loads(values["history"]) if values["history"] else []
    values["work"] = {task: _work_item(item) for task, item in json.loads(values["work"] or "{}").items()}
    values["outcome"] = json.loads(values["outcome"]) if values["outcome"] else None
    return LeadRecord(**values)


def _work_row(item: WorkItem) -> dict[str, Any]:
    row: dict[str, Any] = {"due": None if item.due is None else iso(item.due)}
    if item.attempts:
        row["attempts"] = item.attempts
    if item.error:
        row["error"] = item.error
    return row


def _work_item(value: Any) -> WorkItem:
    if isinstance(value, str):  # schema v2/v3 kept only the due time
        return WorkItem(parse_iso(value))
    due = value.get("due")
    return WorkItem(None if due is None else parse_iso(due), int(value.get("attempts", 0)), value.get("error"))
