"""The DynamoDB lead store: one on-demand table, for Lambda. boto3 finds the endpoint (AWS_ENDPOINT_URL) itself.

Items, all under one string hash key `pk`:
  LEAD#{id}         a lead: its fields as S/N attributes (None fields absent), final 0/1; expires_at once final
  KEY#{key}         the idempotency key -> lead_id, written in one transaction with its lead; expires_at
  PHONE#{slot}      a one-person-one-call slot ("{campaign}:{phone_key}"): lead_id (the holder's key),
                    claimed_at; expires_at = end of the window; taken in the transaction that writes its lead
  COUNTER#{name}    a guard counter (its name carries its window): value, expires_at; counted in the
                    transaction that writes its lead
  META#{name}       a small JSON document; expires_at when it may be forgotten (stop tombstones)
  COUNT#{status}    how many leads are in the status: one number attribute per campaign ("c#{campaign}"),
                    changed in the transaction that writes a lead in or out of the status (or campaign)
  SCHEMA            the schema version
The `due` index (status, next_attempt_at) holds only leads with a next_attempt_at: the work to claim.
The `ref` index (source_ref = "{source}#{ref}", keys only) finds the leads a CRM record gave (stop events).
The `waiting` index (waiting_campaign, created_at; keys only) holds the leads not yet sent (received, pending,
sending) by campaign, oldest first: one entry read gives a campaign's oldest waiting lead.
expires_at is epoch seconds and the table's TTL attribute; the code never relies on TTL having run.
list(), purge(), forget() and recount() Scan the table: they are operator commands, not hot paths; counts are
read from the COUNT items. A write that changes a lead's status or campaign first reads what it replaces and
writes on condition that it is still so, retrying when another writer came between.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from crm2calls.errors import StoreError
from crm2calls.model import END_STATUSES, LeadRecord, Status
from crm2calls.store.base import (
    KEY_TTL,
    NO_CLAIMS,
    SCHEMA_VERSION,
    WAITING_STATUSES,
    Backlog,
    ClaimRefusedError,
    Claims,
    backlog_of,
    checked_counts,
    totals,
)
from crm2calls.store.records import MUTABLE_COLUMNS, Row, from_row, iso, to_row

log = logging.getLogger("crm2calls.store")

DUE_INDEX = "due"
REF_INDEX = "ref"
WAITING_INDEX = "waiting"
WAITING = frozenset(status.value for status in WAITING_STATUSES)
COUNT_PREFIX = "c#"  # a COUNT item's attribute per campaign
WRITE_TRIES = 8  # a lead written by others between our read and our write is read again, this many times
TAKE_CHUNK = 50  # leads taken in one transaction by claim() (a transaction holds at most 100 items)
LEASED_MEMORY = 10_000  # leases this process granted whose status it remembers, so update() need not read it
FINAL_RETENTION = timedelta(days=90)  # TTL of a lead once final; `leads purge` may remove it sooner
TRANSACTION_TRIES = 5  # concurrent transactions on one item cancel each other; retry briefly
_CLIENT_LOCK = threading.Lock()

P = ParamSpec("P")
T = TypeVar("T")


def _store_errors(method: Callable[P, T]) -> Callable[P, T]:
    """Report AWS failures (throttling, network, missing table, denied) as StoreError."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, BotoCoreError | ClientError):
                raise StoreError(f"dynamodb store: {exc}") from exc
            raise

    return wrapper


def _epoch(moment: datetime) -> int:
    """Whole epoch seconds, rounded up: what DynamoDB TTL reads."""
    return math.ceil(moment.timestamp())


def _encode(values: dict[str, str | int | None]) -> dict[str, dict[str, str]]:
    """Plain values as DynamoDB attribute values; None leaves the attribute out."""
    return {
        name: {"S": value} if isinstance(value, str) else {"N": str(value)}
        for name, value in values.items()
        if value is not None
    }


def _decode(item: dict[str, dict[str, str]]) -> dict[str, str | int]:
    """DynamoDB attribute values (S and N only) as plain values."""
    return {name: value["S"] if "S" in value else int(value["N"]) for name, value in item.items()}


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def iam_policy(table_arn: str) -> dict[str, Any]:
    """The least-privilege IAM policy the running service needs on the table (not migrate's first run)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:Query",
                    "dynamodb:Scan",
                    "dynamodb:BatchGetItem",
                ],
                "Resource": [
                    table_arn,
                    *(f"{table_arn}/index/{name}" for name in (DUE_INDEX, REF_INDEX, WAITING_INDEX)),
                ],
            }
        ],
    }


class DynamoDBStore:
    """LeadStore on one DynamoDB table."""

    def __init__(self, table: str, retention: timedelta = FINAL_RETENTION):
        import boto3
        from botocore.config import Config

        if retention < KEY_TTL:
            raise ValueError("retention must be at least KEY_TTL: a lead must outlive its idempotency key")
        self.table = table
        self.retention = retention
        config = Config(
            retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10, max_pool_connections=32
        )
        with _CLIENT_LOCK:  # creating clients from boto3's shared default session is not thread-safe
            self._client = boto3.client("dynamodb", config=config)
        # lead id -> (status, campaign) it was leased in here: update() by the owner guesses it is still so.
        self._leased: dict[str, tuple[str, str]] = {}

    def table_definition(self) -> dict[str, Any]:
        """The create_table arguments: on-demand, hash key pk, the sparse `due` index and the `ref` index."""
        return {
            "TableName": self.table,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "next_attempt_at", "AttributeType": "S"},
                {"AttributeName": "source_ref", "AttributeType": "S"},
                {"AttributeName": "waiting_campaign", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
            ],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": DUE_INDEX,
                    "KeySchema": [
                        {"AttributeName": "status", "KeyType": "HASH"},
                        {"AttributeName": "next_attempt_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {
                        "ProjectionType": "INCLUDE",
                        "NonKeyAttributes": ["created_at", "lease_owner", "lease_until"],
                    },
                },
                self._ref_index(),
                self._waiting_index(),
            ],
        }

    @staticmethod
    def _ref_index() -> dict[str, Any]:
        return {
            "IndexName": REF_INDEX,
            "KeySchema": [{"AttributeName": "source_ref", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }

    @staticmethod
    def _waiting_index() -> dict[str, Any]:
        return {
            "IndexName": WAITING_INDEX,
            "KeySchema": [
                {"AttributeName": "waiting_campaign", "KeyType": "HASH"},
                {"AttributeName": "created_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }

    # Schema

    @_store_errors
    def migrate(self) -> None:
        """Create the table (index, TTL) if missing and record SCHEMA_VERSION; idempotent, one read when current."""
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(f"dynamodb store: schema version {version} is newer than this release's")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[step](self)
        if version < SCHEMA_VERSION:
            with suppress(self._client.exceptions.ConditionalCheckFailedException):  # another process was first
                self._client.put_item(
                    TableName=self.table,
                    Item=_encode({"pk": "SCHEMA", "version": SCHEMA_VERSION}),
                    ConditionExpression="attribute_not_exists(pk) OR version < :v",
                    ExpressionAttributeValues={":v": {"N": str(SCHEMA_VERSION)}},
                )

    def _schema_version(self) -> int:
        try:
            item = self._client.get_item(TableName=self.table, Key=self._key("SCHEMA"), ConsistentRead=True)
        except self._client.exceptions.ResourceNotFoundException:
            return 0
        return int(item["Item"]["version"]["N"]) if "Item" in item else 0

    def _create_v1(self) -> None:
        # The table may exist already: created by an operator, or by a concurrent migrate.
        with suppress(self._client.exceptions.ResourceInUseException):
            self._client.create_table(**self.table_definition())
        self._client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 2, "MaxAttempts": 90})
        ttl = self._client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            self._client.update_time_to_live(
                TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
            )

    def _v2_final(self) -> None:
        """Mark leads final (v1 read final from the status), and name slots by campaign instead of by token."""
        ends = {status.value for status in END_STATUSES}
        for item in self._scan_leads({}, projection=("pk", "status")):
            self._client.update_item(
                TableName=self.table,
                Key={"pk": item["pk"]},
                UpdateExpression="SET #final = if_not_exists(#final, :final)",
                ExpressionAttributeNames={"#final": "final"},
                ExpressionAttributeValues={":final": {"N": "1" if item["status"]["S"] in ends else "0"}},
            )
        scan: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :phone)",
            "ExpressionAttributeValues": {":phone": {"S": "PHONE#"}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.scan(**scan)
            for item in page["Items"]:
                name = item["pk"]["S"][len("PHONE#") :]
                if len(name) == 81 and name[16] == ":":  # v1: "<16 hex of the token's hash>:<phone key>"
                    renamed = {**item, "pk": {"S": f"PHONE#default:{name[17:]}"}}
                    self._client.put_item(TableName=self.table, Item=renamed)
                    self._client.delete_item(TableName=self.table, Key={"pk": item["pk"]})
            if "LastEvaluatedKey" not in page:
                return
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _v3_campaigns(self) -> None:
        """Each lead names its campaign (leads stored before belong to default); delivery state per campaign."""
        for item in self._scan_leads({}, projection=("pk",)):
            self._client.update_item(
                TableName=self.table,
                Key={"pk": item["pk"]},
                UpdateExpression="SET campaign = if_not_exists(campaign, :default)",
                ExpressionAttributeValues={":default": {"S": "default"}},
            )
        old = self._client.get_item(TableName=self.table, Key=self._key("META#campaign"), ConsistentRead=True)
        if "Item" in old:
            self._client.put_item(TableName=self.table, Item={**old["Item"], "pk": {"S": "META#campaign:default"}})
            self._client.delete_item(TableName=self.table, Key=self._key("META#campaign"))

    def _v4_outcomes(self) -> None:
        """Leads found by the CRM record they came from: the `ref` index, and source_ref on older leads."""
        table = self._client.describe_table(TableName=self.table)["Table"]
        if REF_INDEX not in {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}:
            with suppress(self._client.exceptions.ResourceInUseException):  # a concurrent migrate is adding it
                self._client.update_table(
                    TableName=self.table,
                    AttributeDefinitions=[{"AttributeName": "source_ref", "AttributeType": "S"}],
                    GlobalSecondaryIndexUpdates=[{"Create": self._ref_index()}],
                )
        for item in self._scan_leads({}, projection=("pk", "source", "ref")):
            self._client.update_item(
                TableName=self.table,
                Key={"pk": item["pk"]},
                UpdateExpression="SET source_ref = if_not_exists(source_ref, :ref)",
                ExpressionAttributeValues={":ref": {"S": f"{item['source']['S']}#{item['ref']['S']}"}},
            )

    def _v5_counts(self) -> None:
        """Leads counted by status and campaign (COUNT items), and the `waiting` index of each campaign's backlog."""
        table = self._client.describe_table(TableName=self.table)["Table"]
        if WAITING_INDEX not in {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}:
            with suppress(self._client.exceptions.ResourceInUseException):  # a concurrent migrate is adding it
                self._client.update_table(
                    TableName=self.table,
                    AttributeDefinitions=[
                        {"AttributeName": "waiting_campaign", "AttributeType": "S"},
                        {"AttributeName": "created_at", "AttributeType": "S"},
                    ],
                    GlobalSecondaryIndexUpdates=[{"Create": self._waiting_index()}],
                )
        for item in self._scan_leads({}, projection=("pk", "status", "campaign")):
            if item["status"]["S"] in WAITING:
                self._client.update_item(
                    TableName=self.table,
                    Key={"pk": item["pk"]},
                    UpdateExpression="SET waiting_campaign = if_not_exists(waiting_campaign, :campaign)",
                    ExpressionAttributeValues={":campaign": item["campaign"]},
                )
        self.recount()

    @_store_errors
    def recount(self) -> dict[str, int]:
        """Count every lead (a Scan) and overwrite the COUNT items; returns the totals.

        Not one snapshot: a lead written while the Scan runs may be counted in its old status. Run it
        when nothing writes, or again. Leads past their expires_at are left out: the TTL is removing them
        (it moves no count, so the counts of final statuses grow by what it removes until a recount).
        """
        found: dict[str, dict[str, int]] = {status.value: {} for status in Status}
        now = time.time()
        for item in self._scan_leads({}, projection=("status", "campaign", "expires_at")):
            if "expires_at" in item and int(item["expires_at"]["N"]) <= now:
                continue
            by_campaign = found.setdefault(item["status"]["S"], {})
            campaign = item.get("campaign", {}).get("S", "default")
            by_campaign[campaign] = by_campaign.get(campaign, 0) + 1
        for status, by_campaign in found.items():
            item = {"pk": f"COUNT#{status}", **{COUNT_PREFIX + name: n for name, n in by_campaign.items()}}
            self._client.put_item(TableName=self.table, Item=_encode(item))
        return totals(found)

    # Counts

    def _count_items(self, moves: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
        """Transaction items adding each (status, campaign) move to its COUNT item; one item per status."""
        by_status: dict[str, dict[str, int]] = {}
        for (status, campaign), delta in moves.items():
            if delta:
                by_status.setdefault(status, {})[campaign] = delta
        items = []
        for status, deltas in sorted(by_status.items()):
            names = {f"#c{i}": COUNT_PREFIX + campaign for i, campaign in enumerate(deltas)}
            values = {f":d{i}": {"N": str(delta)} for i, delta in enumerate(deltas.values())}
            items.append({
                "Update": {
                    "TableName": self.table,
                    "Key": self._key(f"COUNT#{status}"),
                    "UpdateExpression": "ADD " + ", ".join(f"#c{i} :d{i}" for i in range(len(deltas))),
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            })
        return items

    @staticmethod
    def _moves(old: tuple[str, str] | None, new: tuple[str, str] | None) -> dict[tuple[str, str], int]:
        """The count changes of a lead leaving `old` (status, campaign) for `new`; None: absent."""
        moves: dict[tuple[str, str], int] = {}
        if old != new:
            if old is not None:
                moves[old] = moves.get(old, 0) - 1
            if new is not None:
                moves[new] = moves.get(new, 0) + 1
        return moves

    @_store_errors
    def counts(self) -> dict[str, dict[str, int]]:
        """How many leads are in each status, by campaign: one BatchGetItem of the COUNT items."""
        keys = [self._key(f"COUNT#{status.value}") for status in Status]
        found: dict[str, dict[str, int]] = {}
        request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            answer = self._client.batch_get_item(RequestItems=request)
            for item in answer["Responses"].get(self.table, []):
                status = item["pk"]["S"][len("COUNT#") :]
                found[status] = {
                    name[len(COUNT_PREFIX) :]: int(value["N"])
                    for name, value in item.items()
                    if name.startswith(COUNT_PREFIX)
                }
            request = answer.get("UnprocessedKeys") or {}
        return checked_counts(found)

    def count_by_status(self) -> dict[str, int]:
        """How many leads are in each status, every status listed (the COUNT items)."""
        return totals(self.counts())

    def held_by_campaign(self) -> dict[str, int]:
        """How many leads are held, per campaign (campaigns with none left out)."""
        return {campaign: n for campaign, n in self.counts().get(Status.HELD.value, {}).items() if n}

    @_store_errors
    def backlog(self) -> Backlog:
        """The unsent leads from the COUNT items; each campaign's oldest waiting lead: one entry of `waiting` each."""
        from botocore.exceptions import ClientError

        counts = self.counts()
        campaigns = {
            campaign for status in WAITING for campaign, n in counts.get(status, {}).items() if n > 0
        }
        oldest = {}
        for campaign in sorted(campaigns):
            try:
                page = self._client.query(
                    TableName=self.table,
                    IndexName=WAITING_INDEX,
                    KeyConditionExpression="waiting_campaign = :campaign",
                    ExpressionAttributeValues={":campaign": {"S": campaign}},
                    Limit=1,
                )
            except ClientError as exc:
                if _code(exc) not in ("ValidationException", "ResourceNotFoundException"):
                    raise
                # The upgrade to v5 is still building the index ("Cannot read from backfilling global
                # secondary index"), or has not added it yet: delivery goes on, the ages wait for it.
                log.warning("dynamodb store: the waiting index is not ready yet: %s", exc)
                break
            if page["Items"]:
                oldest[campaign] = datetime.fromisoformat(page["Items"][0]["created_at"]["S"])
        return backlog_of(counts, oldest)

    # Leads

    @staticmethod
    def _key(pk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": pk}}

    def _lead_values(self, row: Row) -> dict[str, str | int | None]:
        """The lead's row plus expires_at: final leads (no work left) expire after the retention."""
        expires = None
        if row["final"]:
            expires = _epoch(datetime.fromisoformat(str(row["updated_at"])) + self.retention)
        waiting = row["campaign"] if row["status"] in WAITING else None
        source_ref = f"{row['source']}#{row['ref']}"
        return {**row, "expires_at": expires, "source_ref": source_ref, "waiting_campaign": waiting}

    @_store_errors
    def insert(self, record: LeadRecord, claims: Claims = NO_CLAIMS) -> tuple[LeadRecord, bool]:
        """Insert the lead, its key and its claims in one transaction, unless its key exists."""
        row = to_row(record)
        lead = _encode({"pk": f"LEAD#{record.id}", **self._lead_values(row)})
        expires = _epoch(record.created_at + KEY_TTL)
        key = _encode({"pk": f"KEY#{record.key}", "lead_id": record.id, "expires_at": expires})
        items = [
            {"Put": {"TableName": self.table, "Item": key, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self.table, "Item": lead, "ConditionExpression": "attribute_not_exists(pk)"}},
        ]
        items += self._count_items(self._moves(None, (row["status"], row["campaign"])))
        claim_items, names = self._claim_items(record, replace(claims, release=None))  # a new lead holds no slot
        failed = self._transact(items + claim_items)
        if not failed:
            return from_row(row), True
        if failed[0] == "ConditionalCheckFailed":  # the key exists: the first event stands, claims unseen
            existing = self.find(record.key)
            if existing is None:
                raise StoreError("dynamodb store: an idempotency key points to a missing lead")
            return existing, False
        if failed[1] == "ConditionalCheckFailed":
            raise StoreError("dynamodb store: a lead with this id exists under another key")
        self._refused(failed[len(items) :], names)
        raise AssertionError("unreachable")

    def _claim_items(self, record: LeadRecord, claims: Claims) -> tuple[list[dict[str, Any]], list[str]]:
        """Transaction items for claims, and the claim name each stands for (for ClaimRefusedError)."""
        now = record.updated_at
        items: list[dict[str, Any]] = []
        names: list[str] = []
        if claims.release:
            items.append(
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": self._key(f"PHONE#{claims.release}"),
                        "ConditionExpression": "attribute_not_exists(pk) OR lead_id = :holder",
                        "ExpressionAttributeValues": {":holder": {"S": record.key}},
                    }
                }
            )
            names.append(claims.release)
        if claims.slot:
            slot = {"pk": f"PHONE#{claims.slot}", "lead_id": record.key, "claimed_at": iso(now)}
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": _encode({**slot, "expires_at": _epoch(now + claims.window)}),
                        "ConditionExpression": "attribute_not_exists(pk) OR claimed_at <= :cutoff OR lead_id = :me",
                        "ExpressionAttributeValues": {
                            ":cutoff": {"S": iso(now - claims.window)},
                            ":me": {"S": record.key},
                        },
                    }
                }
            )
            names.append(claims.slot)
        for counter in claims.counters:
            if counter.limit < 1:
                raise ClaimRefusedError(counter.name)
            items.append(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": self._key(f"COUNTER#{counter.name}"),
                        "UpdateExpression": "SET expires_at = :expires ADD #value :one",
                        "ConditionExpression": "attribute_not_exists(pk) OR #value < :limit",
                        "ExpressionAttributeNames": {"#value": "value"},
                        "ExpressionAttributeValues": {
                            ":one": {"N": "1"},
                            ":limit": {"N": str(counter.limit)},
                            ":expires": {"N": str(_epoch(counter.expires_at))},
                        },
                    }
                }
            )
            names.append(counter.name)
        return items, names

    def _slot_holder(self, slot: str) -> str | None:
        found = self._client.get_item(TableName=self.table, Key=self._key(f"PHONE#{slot}"), ConsistentRead=True)
        return found.get("Item", {}).get("lead_id", {}).get("S")

    def _refused(self, codes: list[str], names: list[str]) -> None:
        """Raise ClaimRefusedError for the first claim whose condition failed."""
        for code, name in zip(codes, names, strict=False):
            if code == "ConditionalCheckFailed":
                is_slot = not name.startswith(("rate:", "number:"))
                raise ClaimRefusedError(name, self._slot_holder(name) if is_slot else None)
        raise StoreError(f"dynamodb store: a transaction was cancelled ({', '.join(codes)})")

    def _transact(self, items: list[dict[str, Any]]) -> list[str]:
        """Run a write transaction: [] if done, else each item's cancellation code ("None" for no fault)."""
        for attempt in range(TRANSACTION_TRIES):
            try:
                self._client.transact_write_items(TransactItems=items)
                return []
            except self._client.exceptions.TransactionCanceledException as exc:
                codes = [reason.get("Code", "None") for reason in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in codes:
                    return codes
                if "TransactionConflict" not in codes or attempt == TRANSACTION_TRIES - 1:
                    raise
            time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    @_store_errors
    def get(self, lead_id: str) -> LeadRecord | None:
        """One lead by our id."""
        found = self._client.get_item(TableName=self.table, Key=self._key(f"LEAD#{lead_id}"), ConsistentRead=True)
        return from_row(_decode(found["Item"])) if "Item" in found else None

    @_store_errors
    def find(self, key: str) -> LeadRecord | None:
        """The lead stored under an idempotency key, if any."""
        found = self._client.get_item(TableName=self.table, Key=self._key(f"KEY#{key}"), ConsistentRead=True)
        return self.get(found["Item"]["lead_id"]["S"]) if "Item" in found else None

    @_store_errors
    def find_by_ref(self, source: str, ref: str) -> list[LeadRecord]:
        """The leads that came from this CRM record, oldest first: the `ref` index, then each lead read consistently."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": REF_INDEX,
            "KeyConditionExpression": "source_ref = :ref",
            "ExpressionAttributeValues": {":ref": {"S": f"{source}#{ref}"}},
        }
        records = []
        while True:
            page = self._client.query(**query)
            records += [lead for item in page["Items"] if (lead := self.get(item["pk"]["S"][len("LEAD#") :]))]
            if "LastEvaluatedKey" not in page:
                return sorted(records, key=lambda r: (r.created_at, r.id))
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @_store_errors
    def claim(self, status: Status, now: datetime, lease_seconds: int, limit: int, owner: str) -> list[LeadRecord]:
        """Lease up to `limit` due leads of `status` to `owner`, earliest next_attempt_at first.

        Candidates come from the `due` index (eventually consistent); each is then taken with a
        conditional update that holds only if its status and lease are still what was read.
        """
        if limit < 1:
            return []
        status = Status(status)
        statuses = [status, Status.SENDING] if status is Status.PENDING else [status]
        new_status = Status.SENDING if status is Status.PENDING else status
        # Read more than needed: other workers may win some of the candidates.
        candidates = [item for s in statuses for item in self._due(s, now, 2 * limit + 10)]
        candidates.sort(key=lambda item: (item["next_attempt_at"]["S"], item.get("created_at", {}).get("S", "")))
        until = iso(now + timedelta(seconds=lease_seconds))
        claimed: list[LeadRecord] = []
        while candidates and len(claimed) < limit:
            size = min(limit - len(claimed), TAKE_CHUNK)
            chunk, candidates = candidates[:size], candidates[size:]
            moving = [item for item in chunk if item["status"]["S"] != new_status.value]
            claimed += self._take_moving(moving, new_status, now, until, owner)
            for item in chunk:
                if item["status"]["S"] == new_status.value and len(claimed) < limit:
                    record = self._take_lead(item, new_status, now, until, owner)
                    claimed += [record] if record is not None else []
        if len(self._leased) > LEASED_MEMORY:
            self._leased.clear()
        for record in claimed:
            self._leased[record.id] = (record.status.value, record.campaign)
        claimed.sort(key=lambda r: (r.next_attempt_at, r.created_at))
        return claimed

    def _take_moving(
        self, seen: list[dict[str, Any]], new_status: Status, now: datetime, until: str, owner: str
    ) -> list[LeadRecord]:
        """Lease leads that change status on the way (pending to sending): read them together, then take them
        in one transaction with their count moves; leads another worker took meanwhile are left out."""
        if not seen:
            return []
        answer = self._client.batch_get_item(
            RequestItems={self.table: {"Keys": [{"pk": item["pk"]} for item in seen], "ConsistentRead": True}}
        )
        current = {item["pk"]["S"]: item for item in answer["Responses"].get(self.table, [])}
        # Keys DynamoDB left unprocessed are candidates for the next pass, not errors.
        takes = []
        for item in seen:
            now_item = current.get(item["pk"]["S"])
            if now_item is None or now_item["status"] != item["status"]:
                continue
            take = self._take_update(item, new_status, now, until, owner)
            take["ConditionExpression"] += " AND campaign = :campaign AND updated_at = :updated_at"
            take["ExpressionAttributeValues"][":campaign"] = now_item["campaign"]
            take["ExpressionAttributeValues"][":updated_at"] = now_item["updated_at"]
            takes.append((now_item, take))
        while takes:
            moves: dict[tuple[str, str], int] = {}
            for now_item, _ in takes:
                status, campaign = now_item["status"]["S"], now_item["campaign"]["S"]
                for key, delta in self._moves((status, campaign), (new_status.value, campaign)).items():
                    moves[key] = moves.get(key, 0) + delta
            failed = self._transact([{"Update": take} for _, take in takes] + self._count_items(moves))
            if not failed:
                lease = {"status": new_status.value, "lease_owner": owner, "lease_until": until}
                return [from_row({**_decode(now_item), **lease}) for now_item, _ in takes]
            takes = [pair for pair, code in zip(takes, failed, strict=False) if code != "ConditionalCheckFailed"]
        return []

    def _due(self, status: Status, now: datetime, want: int) -> Iterator[dict[str, Any]]:
        """Up to about `want` index entries of `status` due at `now` and not under a live lease, earliest first."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "#status = :status AND next_attempt_at <= :now",
            "FilterExpression": "attribute_not_exists(lease_until) OR lease_until <= :now",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}, ":now": {"S": iso(now)}},
            "Limit": want,
        }
        found = 0
        while True:
            page = self._client.query(**query)
            yield from page["Items"]
            found += len(page["Items"])
            if found >= want or "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _take_update(
        self, seen: dict[str, Any], new_status: Status, now: datetime, until: str, owner: str
    ) -> dict[str, Any]:
        """The Update that leases one candidate, on condition that nobody changed its status or lease since."""
        values = {
            ":seen_status": seen["status"],
            ":now": {"S": iso(now)},
            ":new_status": {"S": new_status.value},
            ":owner": {"S": owner},
            ":until": {"S": until},
        }
        condition = "#status = :seen_status AND next_attempt_at <= :now AND "
        if "lease_until" in seen:
            condition += "lease_until = :seen_until"
            values[":seen_until"] = seen["lease_until"]
        else:
            condition += "attribute_not_exists(lease_until)"
        if "lease_owner" in seen:
            condition += " AND lease_owner = :seen_owner"
            values[":seen_owner"] = seen["lease_owner"]
        else:
            condition += " AND attribute_not_exists(lease_owner)"
        return {
            "TableName": self.table,
            "Key": {"pk": seen["pk"]},
            "UpdateExpression": "SET #status = :new_status, lease_owner = :owner, lease_until = :until",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values,
        }

    def _take_lead(
        self, seen: dict[str, Any], new_status: Status, now: datetime, until: str, owner: str
    ) -> LeadRecord | None:
        """Lease one candidate that keeps its status (no count moves), in one conditional update."""
        try:
            updated = self._client.update_item(
                **self._take_update(seen, new_status, now, until, owner), ReturnValues="ALL_NEW"
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return None  # another worker took it, or it changed
        return from_row(_decode(updated["Attributes"]))

    @_store_errors
    def renew(self, lead_ids: list[str], owner: str, until: datetime) -> set[str]:
        """Extend `owner`'s leases on these leads to `until`; return the ids it still holds."""
        held = set()
        for lead_id in lead_ids:
            try:
                self._client.update_item(
                    TableName=self.table,
                    Key=self._key(f"LEAD#{lead_id}"),
                    UpdateExpression="SET lease_until = :until",
                    ConditionExpression="lease_owner = :owner",
                    ExpressionAttributeValues={":until": {"S": iso(until)}, ":owner": {"S": owner}},
                )
            except self._client.exceptions.ConditionalCheckFailedException:
                continue
            held.add(lead_id)
        return held

    @_store_errors
    def lease(self, lead_id: str, owner: str, now: datetime, lease_seconds: int) -> LeadRecord | None:
        """Lease one lead to `owner`, whatever its status, unless a live lease holds it; the lead, or None."""
        try:
            updated = self._client.update_item(
                TableName=self.table,
                Key=self._key(f"LEAD#{lead_id}"),
                UpdateExpression="SET lease_owner = :owner, lease_until = :until",
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until <= :now)"
                ),
                ExpressionAttributeValues={
                    ":owner": {"S": owner},
                    ":until": {"S": iso(now + timedelta(seconds=lease_seconds))},
                    ":now": {"S": iso(now)},
                },
                ReturnValues="ALL_NEW",
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return None
        return from_row(_decode(updated["Attributes"]))

    def _update_item(self, record: LeadRecord, condition: str, values: dict[str, Any]) -> dict[str, Any]:
        """The Update of a lead's mutable fields under `condition`, as a transaction item's body."""
        row = self._lead_values(to_row(record))
        names, encoded, sets, removes = {}, dict(values), [], []
        for i, name in enumerate((*MUTABLE_COLUMNS, "expires_at", "waiting_campaign")):
            names[f"#f{i}"] = name
            if row[name] is None:
                removes.append(f"#f{i}")
            else:
                sets.append(f"#f{i} = :v{i}")
                encoded[f":v{i}"] = _encode({name: row[name]})[name]
        return {
            "TableName": self.table,
            "Key": self._key(f"LEAD#{record.id}"),
            "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": encoded,
        }

    def _seen(self, lead_id: str) -> dict[str, str] | None:
        """The stored lead's status, campaign and lease owner (a consistent read), or None if it is gone."""
        found = self._client.get_item(
            TableName=self.table,
            Key=self._key(f"LEAD#{lead_id}"),
            ConsistentRead=True,
            ProjectionExpression="#status, campaign, lease_owner, job_id",
            ExpressionAttributeNames={"#status": "status"},
        )
        return _decode(found["Item"]) if "Item" in found else None  # type: ignore[return-value]

    def _write_lead(
        self, record: LeadRecord, allowed: Callable[[dict[str, str]], bool], condition: str, values: dict[str, Any],
        claim_items: list[dict[str, Any]], names: list[str], guess: dict[str, str] | None = None,
    ) -> bool:
        """Write the lead with its claims and count moves, if `allowed` by what is stored; False if not (or gone).

        The write holds only while the lead's status and campaign are what was read (or, first, what
        `guess` says); when another writer changed them in between, the lead is read again and the
        write tried again.
        """
        for attempt in range(WRITE_TRIES):
            seen = guess if guess is not None and attempt == 0 else self._seen(record.id)
            if seen is None or not allowed(seen):
                return False
            values = {**values, ":seen_status": {"S": seen["status"]}, ":seen_campaign": {"S": seen["campaign"]}}
            update = self._update_item(record, f"{condition} AND #status = :seen_status AND campaign = :seen_campaign",
                                       values)
            update["ExpressionAttributeNames"]["#status"] = "status"
            moves = self._moves((seen["status"], seen["campaign"]), (Status(record.status).value, record.campaign))
            count_items = self._count_items(moves)
            if not count_items and not claim_items:
                try:
                    self._client.update_item(**update)
                except self._client.exceptions.ConditionalCheckFailedException:
                    continue  # changed since it was read: read it again
                return True
            failed = self._transact([{"Update": update}, *count_items, *claim_items])
            if not failed:
                return True
            if failed[0] == "ConditionalCheckFailed":
                continue
            self._refused(failed[1 + len(count_items) :], names)
        raise StoreError(f"dynamodb store: lead {record.id} kept changing under the write; try again")

    @_store_errors
    def update(self, record: LeadRecord, owner: str | None, claims: Claims = NO_CLAIMS) -> bool:
        """Write the record's mutable fields and its claims if `owner` still holds its lease (None: unconditional)."""
        condition, values = "attribute_exists(pk)", {}
        if owner is not None:
            condition += " AND lease_owner = :expected_owner"
            values[":expected_owner"] = {"S": owner}
        if claims.release and self._slot_holder(claims.release) != record.key:
            claims = replace(claims, release=None)  # held by another lead, or by nobody: nothing to give back
        claim_items, names = self._claim_items(record, claims)
        def holds(seen: dict[str, str]) -> bool:
            return owner is None or seen.get("lease_owner") == owner

        leased = self._leased.pop(record.id, None) if owner is not None else None
        guess = {"status": leased[0], "campaign": leased[1], "lease_owner": owner} if leased else None
        return self._write_lead(record, holds, condition, values, claim_items, names, guess)

    @_store_errors
    def record_job(self, record: LeadRecord) -> bool:
        """Write a sent lead whose lease was lost, unless a job id is recorded for it already."""
        condition = "attribute_exists(pk) AND attribute_not_exists(job_id)"
        return self._write_lead(record, lambda seen: "job_id" not in seen, condition, {}, [], [])

    def _scan_leads(self, filters: dict[str, tuple[str, str]], projection: tuple[str, ...] = ()) -> Iterator[dict]:
        """Every lead item matching `filters` ({attribute: (operator, value)}), consistently read."""
        names = {"#pk": "pk"}
        values = {":lead": {"S": "LEAD#"}}
        conditions = ["begins_with(#pk, :lead)"]
        for i, (name, (operator, value)) in enumerate(filters.items()):
            names[f"#a{i}"] = name
            values[f":a{i}"] = {"S": value}
            conditions.append(f"#a{i} {operator} :a{i}")
        scan: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        if projection:
            scan["ProjectionExpression"] = ", ".join(f"#{name}" for name in projection)
            names.update({f"#{name}": name for name in projection})
        while True:
            page = self._client.scan(**scan)
            yield from page["Items"]
            if "LastEvaluatedKey" not in page:
                return
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @_store_errors
    def list(
        self,
        status: Status | None = None,
        source: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        campaign: str | None = None,
    ) -> list[LeadRecord]:
        """Leads, newest first, filtered (a Scan)."""
        filters: dict[str, tuple[str, str]] = {}
        if campaign is not None:
            filters["campaign"] = ("=", campaign)
        if status is not None:
            filters["status"] = ("=", Status(status).value)
        if source is not None:
            filters["source"] = ("=", source)
        if since is not None:
            filters["created_at"] = (">=", iso(since))
        records = [from_row(_decode(item)) for item in self._scan_leads(filters)]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records[:limit]

    def _delete_lead(self, item: dict[str, Any], final_only: bool) -> bool:
        """Delete a lead, its idempotency key and its count together; False if a condition stopped it."""
        lead: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": item["pk"]},
            "ConditionExpression": "#status = :status AND campaign = :campaign",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": item["status"], ":campaign": item["campaign"]},
        }
        if final_only:  # `leads retry` may have made it pending again since the scan
            lead["ConditionExpression"] += " AND #final = :one"  # FINAL is a reserved word
            lead["ExpressionAttributeNames"]["#final"] = "final"
            lead["ExpressionAttributeValues"][":one"] = {"N": "1"}
        key = {
            "TableName": self.table,
            "Key": self._key(f"KEY#{item['key']['S']}"),
            "ConditionExpression": "attribute_not_exists(pk) OR lead_id = :id",
            "ExpressionAttributeValues": {":id": item["id"]},
        }
        count = self._count_items(self._moves((item["status"]["S"], item["campaign"]["S"]), None))
        return not self._transact([{"Delete": lead}, {"Delete": key}, *count])

    @_store_errors
    def purge(self, before: datetime) -> int:
        """Delete final leads created before `before`, and their keys; return how many (a Scan)."""
        projection = ("pk", "id", "key", "final", "status", "campaign")
        old = self._scan_leads({"created_at": ("<", iso(before))}, projection=projection)
        return sum(self._delete_lead(item, final_only=True) for item in old if item.get("final", {}).get("N") == "1")

    @_store_errors
    def forget(self, phone_key: str) -> int:
        """Erase every trace of this phone but its do-not-call entry: leads, keys, slots, counters (a Scan)."""
        scan: dict[str, Any] = {
            "TableName": self.table,
            # Leads hold the key as an attribute; slots and counters in their names. The dnc entry stays.
            "FilterExpression": "phone_key = :key OR (contains(pk, :key) AND NOT begins_with(pk, :meta))",
            "ExpressionAttributeValues": {":key": {"S": phone_key}, ":meta": {"S": "META#"}},
            "ProjectionExpression": "pk, id, #key, #status, campaign",
            "ExpressionAttributeNames": {"#key": "key", "#status": "status"},
            "ConsistentRead": True,
        }
        deleted = 0
        while True:
            page = self._client.scan(**scan)
            for item in page["Items"]:
                if item["pk"]["S"].startswith("LEAD#"):
                    deleted += self._forget_lead(item)
                else:
                    self._client.delete_item(TableName=self.table, Key={"pk": item["pk"]})
            if "LastEvaluatedKey" not in page:
                return deleted
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _forget_lead(self, item: dict[str, Any]) -> bool:
        """Delete a lead whatever it becomes meanwhile: read again when its status changed since the scan."""
        for _ in range(WRITE_TRIES):
            if self._delete_lead(item, final_only=False):
                return True
            found = self._client.get_item(
                TableName=self.table,
                Key={"pk": item["pk"]},
                ConsistentRead=True,
                ProjectionExpression="pk, id, #key, #status, campaign",
                ExpressionAttributeNames={"#key": "key", "#status": "status"},
            )
            if "Item" not in found:
                return False
            item = found["Item"]
        raise StoreError(f"dynamodb store: {item['pk']['S']} kept changing while it was being forgotten; try again")

    # Guards and documents

    @_store_errors
    def get_meta(self, name: str) -> dict[str, Any] | None:
        """A small named document (campaign pause, block list entries, ...)."""
        found = self._client.get_item(TableName=self.table, Key=self._key(f"META#{name}"), ConsistentRead=True)
        return json.loads(found["Item"]["json"]["S"]) if "Item" in found else None

    @_store_errors
    def put_meta(self, name: str, value: dict[str, Any] | None, expires_at: datetime | None = None) -> None:
        """Write (or, with None, delete) a named document; the table's TTL forgets it once expires_at has passed."""
        if value is None:
            self._client.delete_item(TableName=self.table, Key=self._key(f"META#{name}"))
        else:
            item = {"pk": f"META#{name}", "json": json.dumps(value, ensure_ascii=False)}
            if expires_at is not None:
                item["expires_at"] = _epoch(expires_at)
            self._client.put_item(TableName=self.table, Item=_encode(item))


def _v6_expiring_meta(store: DynamoDBStore) -> None:
    """Named documents may carry expires_at: the table's TTL attribute already, so nothing to change."""


# Step n takes the table from schema version n-1 to n.
MIGRATIONS: dict[int, Callable[[DynamoDBStore], None]] = {
    1: DynamoDBStore._create_v1,
    2: DynamoDBStore._v2_final,
    3: DynamoDBStore._v3_campaigns,
    4: DynamoDBStore._v4_outcomes,
    5: DynamoDBStore._v5_counts,
    6: _v6_expiring_meta,
}
