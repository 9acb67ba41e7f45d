"""The durable lead store: one interface (LeadStore), backends chosen by LEADS_STORE."""

from __future__ import annotations

from crm2calls.store.base import KEY_TTL, LeadStore

__all__ = ["KEY_TTL", "LeadStore", "open_store"]


def open_store(url: str) -> LeadStore:
    """Open the store named by a LEADS_STORE URL (sqlite:///path.db or dynamodb://TABLE)."""
    if url.startswith("sqlite:///"):
        from crm2calls.store.sqlite import SQLiteStore

        path, _, query = url[len("sqlite:///") :].partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        return SQLiteStore(path, synchronous=options.get("synchronous", "normal").upper())
    if url.startswith("dynamodb://"):
        from crm2calls.store.dynamodb import DynamoDBStore

        return DynamoDBStore(url[len("dynamodb://") :].strip("/"))
    raise ValueError("LEADS_STORE: use sqlite:///path.db or dynamodb://TABLE")
