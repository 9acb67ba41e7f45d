"""The LeadStore contract, run on every backend: SQLite in a temp dir, DynamoDB on moto's server over HTTP."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from crm2calls.errors import StoreError
from crm2calls.model import END_STATUSES, LeadRecord, Status, WorkItem
from crm2calls.store import open_store
from crm2calls.store.base import SCHEMA_VERSION, ClaimRefusedError, Claims, Counter, LeadStore
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


@dataclass
class Backend:
    """One backend's storage: open it again (same file or table) and tamper with its schema version."""

    name: str
    open: Callable[[], LeadStore]
    set_schema_version: Callable[[int], None]


def _sqlite_backend(tmp_path: Any) -> Backend:
    path = tmp_path / "data" / "leads.db"

    def set_version(version: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {version}")

    return Backend("sqlite", lambda: open_store(f"sqlite:///{path}"), set_version)


def _dynamodb_backend() -> Backend:
    table = f"leads-{uuid.uuid4().hex[:12]}"

    def set_version(version: int) -> None:
        import boto3

        item = {"pk": {"S": "SCHEMA"}, "version": {"N": str(version)}}
        boto3.client("dynamodb").put_item(TableName=table, Item=item)

    return Backend("dynamodb", lambda: open_store(f"dynamodb://{table}"), set_version)


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    request.getfixturevalue("aws_env")
    return _dynamodb_backend()


@pytest.fixture
def store(backend: Backend) -> LeadStore:
    opened = backend.open()
    opened.migrate()
    return opened


def lead(n: int, status: Status = Status.PENDING, at: datetime = T0, **changes: Any) -> LeadRecord:
    """Lead number n, created and due at `at`."""
    record = LeadRecord(
        id=f"lead-{n}",
        source="amocrm",
        key=f"amocrm:event-{n}",
        ref=f"crm-{n}",
        status=status,
        created_at=at,
        updated_at=at,
        next_attempt_at=at,
    )
    return replace(record, **changes)


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(0..count-1) in threads released together; return the results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def drain(store: LeadStore, owner: str, now: datetime, limit: int) -> list[str]:
    """Claim pending leads until none is left; return the ids this owner got."""
    got: list[str] = []
    while batch := store.claim(Status.PENDING, now, 300, limit, owner):
        got += [record.id for record in batch]
    return got


# Idempotency


def test_insert_with_a_known_key_returns_the_stored_lead(store: LeadStore) -> None:
    first = lead(1)
    assert store.insert(first) == (first, True)
    stored, created = store.insert(replace(lead(2), key=first.key))
    assert (stored, created) == (first, False)
    assert store.get("lead-2") is None
    assert store.count_by_status()["pending"] == 1


def test_find_returns_the_lead_stored_under_a_key(store: LeadStore) -> None:
    first = lead(1)
    assert store.find(first.key) is None
    store.insert(first)
    assert store.find(first.key) == first
    assert store.find(first.key + "x") is None


def test_concurrent_inserts_of_one_key_create_one_lead(store: LeadStore) -> None:
    results = in_threads(10, lambda i: store.insert(lead(i, key="amocrm:same-event")))
    winners = [stored.id for stored, created in results if created]
    assert len(winners) == 1
    assert {stored.id for stored, _ in results} == set(winners)
    assert [record.id for record in store.list()] == winners


# Round trip


def test_every_field_round_trips_through_insert_get_and_update(store: LeadStore) -> None:
    moscow = timezone(timedelta(hours=3))
    values = {
        "id": "lead-full",
        "source": "bitrix24",
        "key": "bitrix24:ONCRMLEADADD:7",
        "ref": "7",
        "status": Status.SENDING,
        "created_at": datetime(2025, 3, 3, 12, 0, 0, 123456, tzinfo=moscow),  # stored as UTC, same instant
        "updated_at": datetime(2025, 3, 3, 9, 0, 1, 1, tzinfo=UTC),
        "next_attempt_at": datetime(2025, 3, 3, 9, 5, tzinfo=UTC),
        "attempts": 3,
        "entry": '{"phone":"79123456789","payload":{"name":"Анна"}}',
        "raw": '{"event":"ONCRMLEADADD"}',
        "phone_masked": "7912*****89",
        "phone_key": "k-7912",
        "last_error": "HTTP 503 from Aimylogic",
        "job_id": "job-1",
        "lease_owner": "worker-a",
        "lease_until": datetime(2025, 3, 3, 9, 7, tzinfo=UTC),
        "history": [{"at": "2025-03-03T09:00:00+00:00", "status": "pending", "note": "rendered"}, {"n": [1, None]}],
        "work": {
            "poll": WorkItem(datetime(2025, 3, 3, 9, 6, tzinfo=UTC)),
            "write_back": WorkItem(None, attempts=8, error="HTTP 503 from amocrm"),
        },
        "campaign": "renewals",
        "job_token": None,
        "outcome": {"job_status": "noAnswer", "attempts": 2, "report": {"answer": "да"}},
    }
    assert set(values) == {f.name for f in fields(LeadRecord)}  # a new field must be added here
    full = LeadRecord(**values)
    store.insert(full)
    got = store.get("lead-full")
    assert got == full
    assert got.created_at.utcoffset() == timedelta(0)

    changed = replace(
        full,
        status=Status.SENT,
        updated_at=T0 + 10 * MIN,
        next_attempt_at=None,
        attempts=4,
        entry=None,
        raw=None,
        phone_masked=None,
        phone_key=None,
        last_error=None,
        job_id="job-2",
        lease_owner=None,
        lease_until=None,
        history=[*full.history, {"at": "2025-03-03T09:10:00+00:00", "status": "sent", "note": ""}],
        work={},
        job_token="3f2a9c1e",
        outcome=None,
    )
    assert store.update(changed, owner="worker-a") is True
    assert store.get("lead-full") == changed


def test_naive_datetimes_are_refused(store: LeadStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.insert(lead(1, at=datetime(2025, 3, 3, 9, 0)))
    assert store.get("lead-1") is None


def test_get_of_an_unknown_id_is_none(store: LeadStore) -> None:
    assert store.get("no-such-lead") is None


# Claim


def test_claim_takes_only_due_leads_oldest_first_within_the_limit(store: LeadStore) -> None:
    due = [lead(i, at=T0 + i * MIN) for i in range(5)]
    not_due = [
        lead(10, at=T0 + 60 * MIN),  # later
        lead(11, next_attempt_at=None),  # no attempt planned
        lead(12, status=Status.HELD),  # another status
        lead(13, status=Status.SENT),
        lead(14, status=Status.SENDING, lease_owner="worker-x", lease_until=T0 + 60 * MIN),  # live lease
    ]
    for record in [*reversed(due), *not_due]:
        store.insert(record)
    now = T0 + 10 * MIN

    first = store.claim(Status.PENDING, now, 60, 3, "worker-a")
    assert [r.id for r in first] == ["lead-0", "lead-1", "lead-2"]
    assert {(r.status, r.lease_owner, r.lease_until) for r in first} == {(Status.SENDING, "worker-a", now + MIN)}
    assert store.get("lead-0") == first[0]
    assert [r.id for r in store.claim(Status.PENDING, now, 60, 10, "worker-a")] == ["lead-3", "lead-4"]
    assert store.claim(Status.PENDING, now, 60, 10, "worker-a") == []
    for record in not_due:
        assert store.get(record.id) == record


@pytest.mark.parametrize("status", [Status.RECEIVED, Status.HELD])
def test_claim_of_other_statuses_leases_without_changing_status(store: LeadStore, status: Status) -> None:
    store.insert(lead(1, status=status))
    store.insert(lead(2, status=Status.PENDING))
    claimed = store.claim(status, T0, 60, 10, "worker-a")
    assert [(r.id, r.status, r.lease_owner) for r in claimed] == [("lead-1", status, "worker-a")]
    assert store.claim(status, T0 + 30 * timedelta(seconds=1), 60, 10, "worker-b") == []  # leased


def test_claim_retakes_a_sending_lead_only_once_its_lease_expired(store: LeadStore) -> None:
    store.insert(lead(1))
    [mine] = store.claim(Status.PENDING, T0, 60, 10, "worker-a")
    assert mine.lease_until == T0 + MIN
    assert store.claim(Status.PENDING, T0 + timedelta(seconds=59), 60, 10, "worker-b") == []
    [retaken] = store.claim(Status.PENDING, T0 + MIN, 60, 10, "worker-b")
    assert (retaken.id, retaken.status, retaken.lease_owner) == ("lead-1", Status.SENDING, "worker-b")
    assert retaken.lease_until == T0 + 2 * MIN


def test_claim_with_no_room_takes_nothing(store: LeadStore) -> None:
    store.insert(lead(1))
    assert store.claim(Status.PENDING, T0, 60, 0, "worker-a") == []
    assert store.get("lead-1").lease_owner is None


def test_racing_workers_never_get_the_same_lead(store: LeadStore) -> None:
    ids = {f"lead-{i}" for i in range(24)}
    for i in range(24):
        store.insert(lead(i, at=T0 + i * timedelta(seconds=1)))
    got = in_threads(4, lambda i: drain(store, f"worker-{i}", T0 + 10 * MIN, 3))
    every = [lead_id for ids_of_one in got for lead_id in ids_of_one]
    assert sorted(every) == sorted(ids)  # each lead exactly once
    for i, ids_of_one in enumerate(got):
        assert {store.get(lead_id).lease_owner for lead_id in ids_of_one} <= {f"worker-{i}"}


# Update


def test_update_by_a_stale_owner_changes_nothing(store: LeadStore) -> None:
    store.insert(lead(1))
    [stale] = store.claim(Status.PENDING, T0, 60, 1, "worker-a")
    [current] = store.claim(Status.PENDING, T0 + 2 * MIN, 60, 1, "worker-b")
    assert store.update(replace(stale, status=Status.SENT, job_id="job-a"), owner="worker-a") is False
    assert store.get("lead-1") == current
    assert store.update(replace(current, status=Status.SENT, job_id="job-b"), owner="worker-b") is True
    assert store.get("lead-1").job_id == "job-b"


def test_update_without_owner_is_unconditional(store: LeadStore) -> None:
    store.insert(lead(1))
    [leased] = store.claim(Status.PENDING, T0, 60, 1, "worker-a")
    released = replace(leased, status=Status.PENDING, lease_owner=None, lease_until=None, attempts=1)
    assert store.update(released, owner=None) is True
    assert store.get("lead-1") == released


def test_update_of_a_missing_lead_is_false(store: LeadStore) -> None:
    assert store.update(lead(1), owner=None) is False
    assert store.get("lead-1") is None


# Claims: the one-person-one-call slot and the guard counters, written with their lead or not at all

SLOT = "default:phone-1"
DAY = timedelta(hours=24)


def slot_claim(slot: str = SLOT, window: timedelta = DAY) -> Claims:
    return Claims(slot=slot, window=window)


def test_a_slot_holds_one_lead_per_window_and_a_refused_lead_is_not_stored(store: LeadStore) -> None:
    store.insert(lead(1), slot_claim())
    with pytest.raises(ClaimRefusedError) as refused:
        store.insert(lead(2, at=T0 + DAY - timedelta(microseconds=1)), slot_claim())
    assert (refused.value.claim, refused.value.holder) == (SLOT, "amocrm:event-1")
    assert store.get("lead-2") is None and store.find("amocrm:event-2") is None  # no lead, no key
    store.insert(lead(3), slot_claim("default:phone-2"))  # another phone
    store.insert(lead(4, at=T0 + DAY), slot_claim())  # the window is over: the slot is free again
    with pytest.raises(ClaimRefusedError) as refused:
        store.insert(lead(5, at=T0 + DAY), slot_claim())
    assert refused.value.holder == "amocrm:event-4"


def test_the_holder_takes_its_own_slot_again(store: LeadStore) -> None:
    record, _ = store.insert(lead(1), slot_claim())
    assert store.update(replace(record, updated_at=T0 + MIN, status=Status.HELD), None, slot_claim()) is True
    with pytest.raises(ClaimRefusedError):
        store.insert(lead(2, at=T0 + MIN), slot_claim())


def test_a_known_key_is_answered_before_any_claim(store: LeadStore) -> None:
    store.insert(lead(1), slot_claim())
    stored, created = store.insert(lead(2, key=lead(1).key), slot_claim("default:other"))
    assert (stored.id, created) == ("lead-1", False)
    store.insert(lead(3), slot_claim("default:other"))  # the known key took nothing


def test_release_gives_the_slot_back_only_for_its_holder(store: LeadStore) -> None:
    first, _ = store.insert(lead(1), slot_claim())
    other, _ = store.insert(lead(2), Claims())
    store.update(replace(other, status=Status.REJECTED), None, Claims(release=SLOT))  # not its slot
    with pytest.raises(ClaimRefusedError):
        store.insert(lead(3), slot_claim())
    store.update(replace(first, status=Status.REJECTED), None, Claims(release=SLOT))
    store.insert(lead(3), slot_claim())
    store.update(replace(other, status=Status.FAILED), None, Claims(release="default:nobody"))  # nothing held: fine


def test_counters_stop_at_their_limit_and_a_refused_write_takes_no_claim(store: LeadStore) -> None:
    minute = Counter("rate:minute:202503030900", 2, T0 + MIN)
    for n in (1, 2):
        store.insert(lead(n), Claims(counters=(minute,)))
    with pytest.raises(ClaimRefusedError) as refused:
        store.insert(lead(3), Claims(slot="default:phone-3", window=DAY, counters=(minute,)))
    assert refused.value.claim == minute.name
    assert store.get("lead-3") is None
    store.insert(lead(4), Claims(slot="default:phone-3", window=DAY))  # the refused write did not take the slot
    other = Counter("rate:minute:202503030901", 2, T0 + 2 * MIN)
    store.insert(lead(5), Claims(counters=(other,)))  # counters are independent
    bigger = Counter(minute.name, 3, minute.expires_at)
    store.insert(lead(6), Claims(counters=(bigger,)))  # the refusal did not count: 2 of 3 before this one
    with pytest.raises(ClaimRefusedError):
        store.insert(lead(7), Claims(counters=(bigger,)))


def test_an_update_refused_by_a_counter_changes_nothing(store: LeadStore) -> None:
    full = Counter("number:k:20250303", 1, T0 + DAY)
    store.insert(lead(1), Claims(counters=(full,)))
    held, _ = store.insert(lead(2, status=Status.HELD))
    with pytest.raises(ClaimRefusedError):
        store.update(replace(held, status=Status.PENDING, attempts=1), None, Claims(counters=(full,)))
    assert store.get("lead-2") == held


def test_an_update_by_a_stale_owner_takes_no_claim(store: LeadStore) -> None:
    store.insert(lead(1, status=Status.HELD))
    [record] = store.claim(Status.HELD, T0, 60, 1, "worker-a")
    assert store.update(replace(record, status=Status.PENDING), "worker-b", slot_claim()) is False
    store.insert(lead(2), slot_claim())  # the slot was not taken


def test_a_counter_at_zero_refuses(store: LeadStore) -> None:
    with pytest.raises(ClaimRefusedError):
        store.insert(lead(1), Claims(counters=(Counter("rate:day:20250303", 0, T0 + DAY),)))


# Leases and job ids


def test_renew_extends_only_the_owners_leases(store: LeadStore) -> None:
    for n in (1, 2):
        store.insert(lead(n))
    store.claim(Status.PENDING, T0, 60, 1, "worker-a")  # lead-1
    store.claim(Status.PENDING, T0, 60, 1, "worker-b")  # lead-2
    assert store.renew(["lead-1", "lead-2", "lead-9"], "worker-a", T0 + 5 * MIN) == {"lead-1"}
    assert store.get("lead-1").lease_until == T0 + 5 * MIN
    assert store.get("lead-2").lease_until == T0 + MIN
    assert store.renew([], "worker-a", T0) == set()


def test_record_job_keeps_the_first_job_id(store: LeadStore) -> None:
    store.insert(lead(1))
    [mine] = store.claim(Status.PENDING, T0, 60, 1, "worker-a")
    [theirs] = store.claim(Status.PENDING, T0 + 2 * MIN, 60, 1, "worker-b")  # worker-a's lease ran out
    sent = replace(mine, status=Status.SENT, job_id="job-a", lease_owner=None, lease_until=None)
    assert store.update(sent, "worker-a") is False
    assert store.record_job(sent) is True  # the job id Aimylogic gave is kept
    assert store.get("lead-1").job_id == "job-a"
    again = replace(theirs, status=Status.SENT, job_id="job-b", lease_owner=None, lease_until=None)
    assert store.update(again, "worker-b") is False  # worker-a's record dropped worker-b's lease
    assert store.record_job(again) is False
    assert store.get("lead-1").job_id == "job-a"


# Meta


def test_meta_put_get_delete(store: LeadStore) -> None:
    assert store.get_meta("campaign") is None
    store.put_meta("campaign", {"paused": True, "reason": "Пауза", "by": None})
    assert store.get_meta("campaign") == {"paused": True, "reason": "Пауза", "by": None}
    store.put_meta("campaign", {"paused": False})
    assert store.get_meta("campaign") == {"paused": False}
    store.put_meta("campaign", None)
    assert store.get_meta("campaign") is None
    store.put_meta("campaign", None)  # deleting nothing is fine


# Purge and forget


def test_purge_removes_old_final_leads_and_frees_their_keys(store: LeadStore) -> None:
    cutoff = T0 + 60 * MIN
    old_final = [lead(i, status=status) for i, status in enumerate(sorted(END_STATUSES))]
    kept = [
        lead(10, status=Status.PENDING),
        lead(11, status=Status.HELD),
        lead(12, status=Status.SENT, at=cutoff),
        lead(13, status=Status.SENT, work={"poll": WorkItem(T0 + DAY)}),  # sent, but its job is still followed
    ]
    for record in [*old_final, *kept]:
        store.insert(record)

    assert store.purge(cutoff) == len(old_final)
    assert {r.id for r in store.list()} == {r.id for r in kept}
    assert store.purge(cutoff) == 0
    stored, created = store.insert(lead(20, key=old_final[0].key, at=cutoff))
    assert (stored.id, created) == ("lead-20", True)


def test_forget_erases_every_lead_slot_and_counter_of_a_phone_but_its_do_not_call_entry(store: LeadStore) -> None:
    day = Counter("number:phone-1:20250303", 1, T0 + DAY)
    store.insert(lead(1, phone_key="phone-1"), Claims(slot="default:phone-1", window=DAY, counters=(day,)))
    store.insert(lead(2, status=Status.SENT, phone_key="phone-1"), Claims(slot="renewals:phone-1", window=DAY))
    store.insert(lead(3, phone_key="phone-2"), Claims(slot="default:phone-2", window=DAY))
    store.put_meta("dnc:phone-1", {"since": T0.isoformat()})

    assert store.forget("phone-1") == 2
    assert [r.id for r in store.list()] == ["lead-3"]
    assert store.find("amocrm:event-1") is None
    # The same person's next lead is a new lead: no slot in any campaign, no count left.
    store.insert(lead(4, phone_key="phone-1"), Claims(slot="default:phone-1", window=DAY, counters=(day,)))
    store.insert(lead(5, phone_key="phone-1"), Claims(slot="renewals:phone-1", window=DAY))
    with pytest.raises(ClaimRefusedError):
        store.insert(lead(6), Claims(slot="default:phone-2", window=DAY))  # another phone's slot stays
    assert store.get_meta("dnc:phone-1") == {"since": T0.isoformat()}
    assert store.forget("phone-1") == 2


# Listing


def test_list_filters_by_status_source_and_since_newest_first(store: LeadStore) -> None:
    records = [
        lead(1, at=T0),
        lead(2, at=T0 + MIN, source="bitrix24"),
        lead(3, at=T0 + 2 * MIN, status=Status.SENT),
        lead(4, at=T0 + 3 * MIN, source="bitrix24", status=Status.SENT),
    ]
    for record in records:
        store.insert(record)

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in store.list(**filters)]

    assert ids() == ["lead-4", "lead-3", "lead-2", "lead-1"]
    assert ids(status=Status.SENT) == ["lead-4", "lead-3"]
    assert ids(source="bitrix24") == ["lead-4", "lead-2"]
    assert ids(since=T0 + MIN) == ["lead-4", "lead-3", "lead-2"]  # since is inclusive
    assert ids(status=Status.PENDING, source="bitrix24", since=T0) == ["lead-2"]
    assert ids(limit=2) == ["lead-4", "lead-3"]
    assert store.list()[0] == records[3]


def test_oldest_waiting_is_the_oldest_lead_not_yet_sent_held_ones_aside(store: LeadStore) -> None:
    assert store.backlog().oldest == {}
    store.insert(lead(1, status=Status.HELD, at=T0))  # held on purpose: not waiting
    store.insert(lead(2, status=Status.SENT, at=T0 + MIN))
    store.insert(lead(3, status=Status.PENDING, at=T0 + 3 * MIN))
    store.insert(lead(4, status=Status.RECEIVED, at=T0 + 2 * MIN, next_attempt_at=T0 + 9 * MIN))
    assert store.backlog().oldest == {"default": T0 + 2 * MIN}
    store.claim(Status.PENDING, T0 + 3 * MIN, 60, 1, "worker")  # sending still waits
    store.update(replace(store.get("lead-4"), status=Status.FAILED, next_attempt_at=None), owner=None)
    assert store.backlog().oldest == {"default": T0 + 3 * MIN}


def test_backlog_counts_the_unsent_leads_and_the_held_ones_apart(store: LeadStore) -> None:
    assert (store.backlog().waiting, store.backlog().held) == (0, 0)
    statuses = [Status.RECEIVED, Status.PENDING, Status.PENDING, Status.HELD, Status.SENT, Status.REJECTED]
    for n, status in enumerate(statuses):
        store.insert(lead(n, status=status, next_attempt_at=None if status in (Status.SENT, Status.REJECTED) else T0))
    assert (store.backlog().waiting, store.backlog().held) == (3, 1)
    store.claim(Status.PENDING, T0, 60, 1, "worker")  # sending still waits
    assert (store.backlog().waiting, store.backlog().held) == (3, 1)
    store.update(replace(store.get("lead-1"), status=Status.SENT, next_attempt_at=None), owner=None)
    store.update(replace(store.get("lead-3"), status=Status.PENDING), owner=None)  # a held lead admitted
    assert (store.backlog().waiting, store.backlog().held) == (3, 0)


def test_count_by_status_lists_every_status(store: LeadStore) -> None:
    for i, status in enumerate([Status.PENDING, Status.PENDING, Status.FAILED]):
        store.insert(lead(i, status=status))
    expected = {status.value: 0 for status in Status} | {"pending": 2, "failed": 1}
    assert store.count_by_status() == expected


# Schema


def test_migrate_twice_is_harmless_and_data_survives_reopening(backend: Backend, store: LeadStore) -> None:
    store.insert(lead(1))
    store.put_meta("campaign", {"paused": True})
    store.migrate()
    reopened = backend.open()
    reopened.migrate()
    assert reopened.get("lead-1") == lead(1)
    assert reopened.get_meta("campaign") == {"paused": True}
    assert reopened.insert(lead(2, key=lead(1).key))[1] is False


def test_migrate_refuses_a_newer_schema(backend: Backend, store: LeadStore) -> None:
    backend.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        backend.open().migrate()


def test_an_unmigrated_store_fails_with_store_error(backend: Backend) -> None:
    with pytest.raises(StoreError):
        backend.open().get("lead-1")


# Upgrades

V1_SLOT = "0123456789abcdef:" + "a" * 64  # v1 named a slot by a hash of the campaign token


def test_sqlite_v1_store_upgrades_its_final_leads_and_slots(tmp_path: Any) -> None:
    from crm2calls.store.records import to_row
    from crm2calls.store.sqlite import _create_v1

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        _create_v1(conn)
        conn.execute("PRAGMA user_version = 1")
        for record in (lead(1, status=Status.SENT), lead(2)):
            v2_columns = ("work", "final", "campaign", "job_token", "outcome")
            row = {name: value for name, value in to_row(record).items() if name not in v2_columns}
            sql = f"INSERT INTO leads ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})"  # noqa: S608
            conn.execute(sql, list(row.values()))
        claimed_at = "2025-03-03T09:00:00.000000+00:00"
        conn.execute("INSERT INTO phone_claims VALUES (?, ?, ?)", (V1_SLOT, "amocrm:event-1", claimed_at))
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    assert store.get("lead-1") == lead(1, status=Status.SENT)
    assert store.purge(T0 + MIN) == 1  # the sent lead is final
    with pytest.raises(ClaimRefusedError):  # the slot survived the upgrade under the campaign's name
        store.insert(lead(3), slot_claim("default:" + "a" * 64))


def test_dynamodb_v1_table_upgrades_its_final_leads_and_slots(backend: Backend, store: LeadStore) -> None:
    if backend.name != "dynamodb":
        pytest.skip("the DynamoDB upgrade")
    import boto3

    client = boto3.client("dynamodb")
    store.insert(lead(1, status=Status.SENT))
    final = {"ExpressionAttributeNames": {"#f": "final"}}
    client.update_item(TableName=store.table, Key={"pk": {"S": "LEAD#lead-1"}}, UpdateExpression="REMOVE #f", **final)
    client.put_item(
        TableName=store.table,
        Item={
            "pk": {"S": f"PHONE#{V1_SLOT}"},
            "lead_id": {"S": "amocrm:event-1"},
            "claimed_at": {"S": "2025-03-03T09:00:00.000000+00:00"},
        },
    )
    backend.set_schema_version(1)
    upgraded = backend.open()
    upgraded.migrate()
    assert upgraded.purge(T0 + MIN) == 1
    with pytest.raises(ClaimRefusedError):
        upgraded.insert(lead(3), slot_claim("default:" + "a" * 64))


def test_leads_stored_before_campaigns_belong_to_default(backend: Backend, store: LeadStore) -> None:
    store.insert(lead(1))
    store.put_meta("campaign", {"paused": True, "reason": "token refused"})  # v2's one delivery state
    if backend.name == "sqlite":
        with sqlite3.connect(store.path) as conn:
            for trigger in ("lead_counts_insert", "lead_counts_update", "lead_counts_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")  # v5's
            conn.execute("DROP TABLE lead_counts")
            conn.execute("DROP INDEX leads_status_campaign")
            conn.execute("DROP INDEX leads_ref")  # a v2 database has neither v3's nor v4's columns
            conn.execute("ALTER TABLE leads DROP COLUMN outcome")
            conn.execute("ALTER TABLE leads DROP COLUMN job_token")
            conn.execute("ALTER TABLE leads DROP COLUMN campaign")
            conn.execute("DROP INDEX meta_expires")  # nor v5's
            conn.execute("ALTER TABLE meta DROP COLUMN expires_at")
    else:
        import boto3

        boto3.client("dynamodb").update_item(
            TableName=store.table, Key={"pk": {"S": "LEAD#lead-1"}}, UpdateExpression="REMOVE campaign"
        )
    backend.set_schema_version(2)
    upgraded = backend.open()
    upgraded.migrate()
    assert upgraded.get("lead-1").campaign == "default"
    assert [r.id for r in upgraded.list(campaign="default")] == ["lead-1"] and upgraded.list(campaign="x") == []
    assert upgraded.get_meta("campaign") is None
    assert upgraded.get_meta("campaign:default") == {"paused": True, "reason": "token refused"}


def test_find_by_ref_returns_every_lead_of_one_crm_record_oldest_first(store: LeadStore) -> None:
    store.insert(replace(lead(1), ref="lead:77"))
    store.insert(replace(lead(2), ref="lead:77", created_at=T0 - MIN))
    store.insert(replace(lead(3), ref="lead:78"))
    store.insert(replace(lead(4), ref="lead:77", source="bitrix24"))
    assert [r.id for r in store.find_by_ref("amocrm", "lead:77")] == ["lead-2", "lead-1"]
    assert store.find_by_ref("amocrm", "lead:79") == []


def test_parked_work_leaves_a_lead_final_and_due_work_does_not(store: LeadStore) -> None:
    parked = lead(1, status=Status.CALLED, work={"write_back": WorkItem(None, 8, "HTTP 500")})
    due = lead(2, status=Status.CALLED, work={"write_back": WorkItem(T0 + MIN)})
    store.insert(parked)
    store.insert(due)
    assert store.get("lead-1").work == parked.work
    assert store.purge(T0 + DAY) == 1 and store.get("lead-2") is not None


def test_leads_stored_before_outcomes_are_found_by_ref(backend: Backend, store: LeadStore) -> None:
    store.insert(replace(lead(1), ref="lead:77"))
    if backend.name == "sqlite":
        with sqlite3.connect(store.path) as conn:
            for trigger in ("lead_counts_insert", "lead_counts_update", "lead_counts_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")  # v5's
            conn.execute("DROP TABLE lead_counts")
            conn.execute("DROP INDEX leads_ref")
            conn.execute("ALTER TABLE leads DROP COLUMN outcome")
            conn.execute("DROP INDEX meta_expires")  # a v3 database has no v5 column either
            conn.execute("ALTER TABLE meta DROP COLUMN expires_at")
    else:
        import boto3

        client = boto3.client("dynamodb")
        client.update_table(TableName=store.table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "ref"}}])
        client.update_item(
            TableName=store.table, Key={"pk": {"S": "LEAD#lead-1"}}, UpdateExpression="REMOVE source_ref"
        )
    backend.set_schema_version(3)
    upgraded = backend.open()
    upgraded.migrate()
    assert [r.id for r in upgraded.find_by_ref("amocrm", "lead:77")] == ["lead-1"]
    assert upgraded.get("lead-1").outcome is None


def test_held_leads_are_counted_per_campaign(store: LeadStore) -> None:
    store.insert(lead(1, status=Status.HELD))
    store.insert(replace(lead(2, status=Status.HELD), campaign="renewals"))
    store.insert(replace(lead(3, status=Status.HELD), campaign="renewals"))
    store.insert(replace(lead(4), campaign="renewals"))
    assert store.held_by_campaign() == {"default": 1, "renewals": 2}


# SQLite only


def test_sqlite_relative_url_creates_its_folder(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///instance/leads.db")
    store.migrate()
    store.insert(lead(1))
    assert (tmp_path / "instance" / "leads.db").is_file()
    assert open_store(f"sqlite:///{tmp_path}/instance/leads.db").get("lead-1") == lead(1)


def _deliver_in_process(path: str, owner: str, start: Any, out: Any) -> None:
    """A worker process: connect, wait for the start, then claim, "send" and mark sent until nothing is left."""
    store = open_store(f"sqlite:///{path}")
    store.get("lead-0")
    start.wait()
    got: list[tuple[str, bool]] = []  # (lead id, marked sent?)
    while batch := store.claim(Status.PENDING, T0, 300, 2, owner):
        time.sleep(0.002)  # the HTTP call a real worker makes; lets the other process in
        got += [(r.id, store.update(replace(r, status=Status.SENT, lease_owner=None), owner=owner)) for r in batch]
    out.put((owner, got))


def test_sqlite_processes_never_share_a_lead(tmp_path: Any) -> None:
    leads = 200
    path = str(tmp_path / "leads.db")
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    for i in range(leads):
        store.insert(lead(i))
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_deliver_in_process, args=(path, f"p{i}", start, out)) for i in range(2)]
    for worker in workers:
        worker.start()
    results = dict(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
    every = results["p0"] + results["p1"]
    assert sorted(lead_id for lead_id, _ in every) == sorted(f"lead-{i}" for i in range(leads))
    assert all(sent for _, sent in every)
    assert results["p0"] and results["p1"]  # both really raced
    assert store.count_by_status()["sent"] == leads


# DynamoDB only


def test_dynamodb_migrate_creates_the_table_it_describes(aws_env: str) -> None:  # noqa: F811
    import boto3

    from crm2calls.store.dynamodb import DUE_INDEX, REF_INDEX, WAITING_INDEX, DynamoDBStore, iam_policy

    store = DynamoDBStore(f"leads-{uuid.uuid4().hex[:12]}")
    store.migrate()
    client = boto3.client("dynamodb")
    table = client.describe_table(TableName=store.table)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == [DUE_INDEX, REF_INDEX, WAITING_INDEX]
    ttl = client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    [statement] = iam_policy(table["TableArn"])["Statement"]
    indexes = [f"{table['TableArn']}/index/{name}" for name in (DUE_INDEX, REF_INDEX, WAITING_INDEX)]
    assert statement["Resource"] == [table["TableArn"], *indexes]


def test_dynamodb_keys_counters_and_final_leads_expire_by_ttl(aws_env: str) -> None:  # noqa: F811
    import boto3

    from crm2calls.store.base import KEY_TTL
    from crm2calls.store.dynamodb import DynamoDBStore

    store = DynamoDBStore(f"leads-{uuid.uuid4().hex[:12]}", retention=timedelta(days=30))
    store.migrate()
    client = boto3.client("dynamodb")

    def expires(pk: str) -> int | None:
        item = client.get_item(TableName=store.table, Key={"pk": {"S": pk}})["Item"]
        return int(item["expires_at"]["N"]) if "expires_at" in item else None

    record, _ = store.insert(lead(1), Claims(counters=(Counter("rate:minute:202503030900", 5, T0 + MIN),)))
    assert expires(f"KEY#{record.key}") == int((T0 + KEY_TTL).timestamp())
    assert expires("COUNTER#rate:minute:202503030900") == int((T0 + MIN).timestamp())
    assert expires("LEAD#lead-1") is None  # pending leads never expire
    store.update(replace(record, status=Status.SENT, updated_at=T0 + MIN), owner=None)
    assert expires("LEAD#lead-1") == int((T0 + MIN + timedelta(days=30)).timestamp())
    store.update(replace(record, status=Status.PENDING, updated_at=T0 + 2 * MIN), owner=None)  # `leads retry`
    assert expires("LEAD#lead-1") is None
    store.update(
        replace(record, status=Status.SENT, work={"poll": WorkItem(T0 + DAY)}), owner=None
    )  # followed: not final
    assert expires("LEAD#lead-1") is None


def test_sqlite_a_failing_commit_rolls_back_and_the_connection_works_on(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'leads.db'}")
    store.migrate()
    conn = store._conn()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (parent_id REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), store._write() as tx:  # checked only at COMMIT
        tx.execute("INSERT INTO child VALUES (1)")
    assert not conn.in_transaction
    store.insert(lead(1))  # the next write starts its own transaction
    assert store.get("lead-1") == lead(1)


# Leasing one lead (a stop on the request path, an operator's command) and expiring documents


def test_lease_takes_one_free_lead_whatever_its_status_and_refuses_a_held_one(store: LeadStore) -> None:
    store.insert(lead(1, status=Status.SENT))
    store.insert(lead(2))
    [claimed] = store.claim(Status.PENDING, T0, 300, 1, "worker")  # lead 2 is being sent

    taken = store.lease("lead-1", "stop", T0, 60)
    assert taken is not None and (taken.status, taken.lease_owner) == (Status.SENT, "stop")
    assert store.lease("lead-1", "other", T0 + MIN / 2, 60) is None  # a live lease
    assert store.lease(claimed.id, "stop", T0, 60) is None  # never a lead a worker holds
    assert store.lease("lead-9", "stop", T0, 60) is None  # unknown
    assert store.update(replace(taken, status=Status.CANCELED, lease_owner=None, lease_until=None), "stop")
    assert store.update(replace(claimed, status=Status.SENT), "worker")  # the worker's lease was untouched
    again = store.lease("lead-1", "other", T0 + 2 * MIN, 60)  # free again after the write
    assert again is not None and again.status is Status.CANCELED


def test_lease_after_expiry_and_a_stale_worker_write_loses(store: LeadStore) -> None:
    store.insert(lead(1))
    [claimed] = store.claim(Status.PENDING, T0, 60, 1, "worker")
    taken = store.lease(claimed.id, "stop", T0 + 2 * MIN, 60)  # the worker died: its lease ran out
    assert taken is not None and taken.status is Status.SENDING
    assert not store.update(replace(claimed, status=Status.PENDING), "worker")


def test_meta_may_expire_and_purge_forgets_it_then(backend: Backend, store: LeadStore) -> None:
    store.put_meta("stop:generic:42", {"reason": "closed"}, expires_at=T0 + DAY)
    store.put_meta("campaign:default", {"delivery": "sending"})
    assert store.get_meta("stop:generic:42") == {"reason": "closed"}  # readers check their own times
    store.purge(T0)
    assert store.get_meta("stop:generic:42") == {"reason": "closed"}  # not yet expired: kept
    store.purge(T0 + DAY)
    if backend.name == "sqlite":
        assert store.get_meta("stop:generic:42") is None
    else:  # the table's TTL forgets documents (purge scans leads only): its expires_at says when
        assert _dynamodb_expiry(store, "stop:generic:42") == T0 + DAY
    assert store.get_meta("campaign:default") == {"delivery": "sending"}  # documents without expiry stay
    store.put_meta("stop:generic:42", {"reason": "again"})  # written again without expiry: kept for good
    store.purge(T0 + 2 * DAY)
    assert store.get_meta("stop:generic:42") == {"reason": "again"}
    if backend.name == "dynamodb":
        assert _dynamodb_expiry(store, "stop:generic:42") is None


def _dynamodb_expiry(store: Any, name: str) -> datetime | None:
    """When the table's TTL may forget a named document."""
    item = store._client.get_item(TableName=store.table, Key={"pk": {"S": f"META#{name}"}})["Item"]
    return datetime.fromtimestamp(int(item["expires_at"]["N"]), UTC) if "expires_at" in item else None


def test_sqlite_v5_store_gains_expiring_meta(tmp_path: Any) -> None:
    path = tmp_path / "leads.db"
    with sqlite3.connect(path) as conn:
        from crm2calls.store.sqlite import MIGRATIONS

        for step in range(1, 6):
            MIGRATIONS[step](conn)
        conn.execute("INSERT INTO meta (name, json) VALUES ('campaign:default', '{\"held\": 2}')")
        conn.execute("PRAGMA user_version = 5")
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    assert store.get_meta("campaign:default") == {"held": 2}
    store.put_meta("stop:generic:1", {"reason": "closed"}, expires_at=T0)
    store.purge(T0)
    assert store.get_meta("stop:generic:1") is None and store.get_meta("campaign:default") == {"held": 2}
