# ruff: noqa: F811  (the contract's fixtures, imported, are redefined as parameters)
"""Leads counted by status and campaign in the store's own writes, on every backend (SQLite, DynamoDB at moto).

After every kind of write, racing writers and lost leases, the maintained counts equal a count of
the leads themselves; an upgrade from schema v4 counts the existing leads once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter as Tally
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm2calls.model import LeadRecord, Status
from crm2calls.store.base import SCHEMA_VERSION, ClaimRefusedError, Claims, Counter, LeadStore
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_store_contract import MIN, T0, Backend, backend, in_threads, lead, store  # noqa: F401  (fixtures)

DAY = timedelta(days=1)
NOW = datetime.now(UTC).replace(microsecond=0)  # final leads of T0 are past their retention: a recount leaves them out


def counted(store: LeadStore) -> dict[str, dict[str, int]]:
    """The maintained counts, zeros left out."""
    return {
        status: {campaign: n for campaign, n in by_campaign.items() if n}
        for status, by_campaign in store.counts().items()
        if any(by_campaign.values())
    }


def truth(store: LeadStore) -> dict[str, dict[str, int]]:
    """The leads themselves, counted."""
    found: dict[str, dict[str, int]] = {}
    for (status, campaign), n in Tally((r.status.value, r.campaign) for r in store.list(limit=100_000)).items():
        found.setdefault(status, {})[campaign] = n
    return found


def assert_counts_true(store: LeadStore) -> None:
    assert counted(store) == truth(store)
    assert sum(store.count_by_status().values()) == len(store.list(limit=100_000))


def moved(record: LeadRecord, status: Status, **changes: Any) -> LeadRecord:
    return replace(record, status=status, updated_at=record.updated_at + MIN, **changes)


def test_every_write_moves_its_lead_between_counts(store: LeadStore) -> None:
    assert counted(store) == {} and store.count_by_status() == {status.value: 0 for status in Status}
    store.insert(lead(1))
    store.insert(lead(2))
    store.insert(replace(lead(3, status=Status.HELD), campaign="renewals"))
    store.insert(replace(lead(4), key=lead(1).key))  # a known key: nothing new
    assert counted(store) == {"pending": {"default": 2}, "held": {"renewals": 1}}

    [taken] = store.claim(Status.PENDING, T0, 60, 1, "worker")  # pending -> sending
    assert counted(store) == {"pending": {"default": 1}, "sending": {"default": 1}, "held": {"renewals": 1}}
    assert store.update(moved(taken, Status.SENT, next_attempt_at=None), owner="worker")
    store.update(moved(store.get("lead-3"), Status.PENDING, campaign="default"), owner=None)  # campaign too
    assert counted(store) == {"pending": {"default": 2}, "sent": {"default": 1}}
    store.update(moved(store.get("lead-2"), Status.PENDING, last_error="x"), owner=None)  # status unchanged
    assert counted(store) == {"pending": {"default": 2}, "sent": {"default": 1}}
    assert_counts_true(store)


def test_writes_that_change_nothing_count_nothing(store: LeadStore) -> None:
    minute = Counter("rate:minute:202503030900", 1, T0 + MIN)
    store.insert(lead(1), Claims(counters=(minute,)))
    with pytest.raises(ClaimRefusedError):  # refused: not stored, not counted
        store.insert(lead(2), Claims(counters=(minute,)))
    with pytest.raises(ClaimRefusedError):  # a refused update leaves the lead where it was counted
        store.update(replace(store.get("lead-1"), status=Status.SENT), owner=None, claims=Claims(counters=(minute,)))
    [taken] = store.claim(Status.PENDING, T0, 60, 1, "worker")
    assert not store.update(moved(taken, Status.SENT), owner="someone else")  # a stale owner writes nothing
    assert not store.update(moved(lead(9), Status.SENT), owner=None)  # nor does a missing lead
    assert counted(store) == {"sending": {"default": 1}}
    assert_counts_true(store)


def test_a_lost_lease_moves_the_lead_once(store: LeadStore) -> None:
    store.insert(lead(1))
    [first] = store.claim(Status.PENDING, T0, 60, 1, "first")
    [second] = store.claim(Status.PENDING, T0 + 2 * MIN, 60, 1, "second")  # the first worker's lease ran out
    assert counted(store) == {"sending": {"default": 1}}
    assert store.update(moved(second, Status.SENT, job_id="job-2"), owner="second")
    assert not store.update(moved(first, Status.FAILED), owner="first")
    assert not store.record_job(moved(first, Status.SENT, job_id="job-1"))  # a job id is recorded already
    assert counted(store) == {"sent": {"default": 1}}
    store.insert(lead(2))
    [third] = store.claim(Status.PENDING, T0, 60, 1, "third")
    [fourth] = store.claim(Status.PENDING, T0 + 2 * MIN, 60, 1, "fourth")
    assert store.record_job(moved(third, Status.SENT, job_id="job-3"))  # the late sender keeps its job id
    assert counted(store) == {"sent": {"default": 2}}
    assert not store.update(moved(fourth, Status.FAILED), owner="fourth")  # record_job dropped its lease
    assert_counts_true(store)


def test_purge_and_forget_take_their_leads_out_of_the_counts(store: LeadStore) -> None:
    store.insert(lead(1, status=Status.SENT, next_attempt_at=None, phone_key="p1"))
    store.insert(lead(2, status=Status.REJECTED, next_attempt_at=None))
    store.insert(lead(3, phone_key="p1"))
    store.insert(lead(4))
    assert store.purge(T0 + MIN) == 2
    assert counted(store) == {"pending": {"default": 2}}
    assert store.forget("p1") == 1
    assert counted(store) == {"pending": {"default": 1}}
    assert_counts_true(store)


def test_racing_writers_keep_the_counts_true(store: LeadStore) -> None:
    for n in range(12):
        store.insert(lead(n))
    statuses = [Status.SENT, Status.FAILED, Status.HELD, Status.PENDING, Status.REJECTED, Status.CANCELED]

    def race(i: int) -> None:
        if i < 6:  # unconditional writers (operators) all over one lead, and over each other's leads
            record = store.get("lead-0")
            store.update(moved(record, statuses[i], campaign=f"c{i % 2}"), owner=None)
            record = store.get(f"lead-{i + 1}")
            store.update(moved(record, statuses[(i + 1) % 6]), owner=None)
        else:  # workers claiming what is pending and settling it
            for record in store.claim(Status.PENDING, T0, 60, 2, f"worker-{i}"):
                store.update(moved(record, Status.SENT, job_id=f"job-{i}"), owner=f"worker-{i}")

    in_threads(12, race)
    assert_counts_true(store)


def test_racing_inserts_of_one_key_count_one_lead(store: LeadStore) -> None:
    in_threads(8, lambda i: store.insert(lead(i, key="amocrm:same")))
    assert counted(store) == {"pending": {"default": 1}}


def test_backlog_gives_each_campaigns_oldest_waiting_lead(store: LeadStore) -> None:
    store.insert(lead(1, status=Status.HELD, at=T0))  # held on purpose: not waiting
    store.insert(replace(lead(2, at=T0 + MIN), campaign="renewals"))
    store.insert(replace(lead(3, status=Status.RECEIVED, at=T0 + 3 * MIN), campaign="renewals"))
    store.insert(lead(4, at=T0 + 2 * MIN))
    store.insert(lead(5, status=Status.SENT, at=T0 - DAY, next_attempt_at=None))
    backlog = store.backlog()
    assert (backlog.waiting, backlog.held) == (3, 1)
    assert backlog.oldest == {"default": T0 + 2 * MIN, "renewals": T0 + MIN}
    store.update(moved(store.get("lead-2"), Status.SENT, next_attempt_at=None), owner=None)
    store.claim(Status.PENDING, T0 + 5 * MIN, 60, 5, "worker")  # sending still waits
    assert store.backlog().oldest == {"default": T0 + 2 * MIN, "renewals": T0 + 3 * MIN}


def test_a_count_below_zero_is_logged_and_read_as_zero(
    backend: Backend, store: LeadStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert(lead(1, status=Status.FAILED, at=NOW))
    if backend.name == "sqlite":
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE lead_counts SET leads = -2 WHERE status = 'failed'")
    else:
        import boto3

        item = {"pk": {"S": "COUNT#failed"}, "c#default": {"N": "-2"}}
        boto3.client("dynamodb").put_item(TableName=store.table, Item=item)
    with caplog.at_level(logging.ERROR, logger="crm2calls.store"):
        assert store.count_by_status()["failed"] == 0
    assert "failed leads of campaign default is -2" in caplog.text and "leads recount" in caplog.text
    assert store.recount()["failed"] == 1
    assert_counts_true(store)


def test_an_upgrade_from_v4_counts_the_stored_leads_once(backend: Backend, store: LeadStore) -> None:
    store.insert(lead(1))
    store.insert(replace(lead(2, status=Status.HELD), campaign="renewals"))
    store.insert(lead(3, status=Status.SENT, at=NOW, next_attempt_at=None))
    if backend.name == "sqlite":
        with sqlite3.connect(store.path) as conn:
            for trigger in ("lead_counts_insert", "lead_counts_update", "lead_counts_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute("DROP TABLE lead_counts")
    else:
        import boto3

        client = boto3.client("dynamodb")
        client.update_table(TableName=store.table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "waiting"}}])
        for status in Status:
            client.delete_item(TableName=store.table, Key={"pk": {"S": f"COUNT#{status.value}"}})
        key = {"pk": {"S": "LEAD#lead-1"}}
        client.update_item(TableName=store.table, Key=key, UpdateExpression="REMOVE waiting_campaign")
    backend.set_schema_version(4)
    upgraded = backend.open()
    upgraded.migrate()
    upgraded.migrate()  # counted once, not twice
    assert counted(upgraded) == {"pending": {"default": 1}, "held": {"renewals": 1}, "sent": {"default": 1}}
    assert upgraded.backlog().oldest == {"default": T0}
    upgraded.insert(lead(4))
    assert counted(upgraded)["pending"] == {"default": 2}
    assert SCHEMA_VERSION == 6


def test_an_owner_writing_after_someone_else_moved_its_lead_counts_from_where_the_lead_is(store: LeadStore) -> None:
    store.insert(lead(1))
    [taken] = store.claim(Status.PENDING, T0, 60, 1, "worker")
    store.update(replace(store.get("lead-1"), status=Status.HELD), owner=None)  # the lease stays: still ours
    assert store.update(moved(taken, Status.SENT, job_id="job-1"), owner="worker")
    assert counted(store) == {"sent": {"default": 1}}
    assert_counts_true(store)


def test_a_claim_larger_than_one_transaction_takes_every_lead_once(store: LeadStore) -> None:
    for n in range(120):
        store.insert(lead(n))
    got = in_threads(3, lambda i: store.claim(Status.PENDING, T0, 60, 100, f"worker-{i}"))
    ids = [record.id for batch in got for record in batch]
    assert len(ids) == len(set(ids)) == 120
    assert all(record.status is Status.SENDING and record.lease_owner == f"worker-{i}"
               for i, batch in enumerate(got) for record in batch)
    assert counted(store) == {"sending": {"default": 120}}


def test_dynamodb_backlog_goes_on_while_the_upgrade_builds_the_waiting_index(
    backend: Backend, store: LeadStore, caplog: pytest.LogCaptureFixture
) -> None:
    if backend.name != "dynamodb":
        pytest.skip("the DynamoDB index")
    import boto3

    store.insert(lead(1))
    boto3.client("dynamodb").update_table(
        TableName=store.table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "waiting"}}]
    )  # what a query meets until the new index is active
    with caplog.at_level(logging.WARNING, logger="crm2calls.store"):
        backlog = store.backlog()
    assert (backlog.waiting, backlog.oldest) == (1, {}) and "not ready" in caplog.text


def test_dynamodb_recount_leaves_out_final_leads_past_their_retention(backend: Backend, store: LeadStore) -> None:
    if backend.name != "dynamodb":
        pytest.skip("the DynamoDB TTL")
    store.insert(lead(1, status=Status.SENT, next_attempt_at=None))  # final since T0: past its 90 days
    store.insert(lead(2, status=Status.SENT, at=NOW, next_attempt_at=None))
    assert store.count_by_status()["sent"] == 2  # the TTL moves no count
    assert store.recount()["sent"] == 1
