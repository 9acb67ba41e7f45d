"""The follow-up pass: due work is found on the due index, one task per lead per pass, the most urgent first.

Handlers here are small recorders registered in followup.TASKS for the test; the store is SQLite and
DynamoDB (moto's server mode), since finding due work is the store's due index.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from crm2calls import followup, lifecycle
from crm2calls.followup import FollowUpPass, follow_up
from crm2calls.model import LeadRecord, Status, WorkItem
from crm2calls.worker import FollowUpWorker
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
RAN: list[tuple[str, list[str]]] = []


def record_cancel(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """A cancel handler that only says it ran and marks its item done."""
    _done("cancel", run, leads)


def record_poll(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """A poll handler that only says it ran and marks its item done."""
    _done("poll", run, leads)


def failing_poll(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """A poll handler that fails before writing anything (the store, a bug)."""
    RAN.append(("poll", [lead.id for lead in leads]))
    raise RuntimeError("boom")


def _done(task: str, run: FollowUpPass, leads: list[LeadRecord]) -> None:
    RAN.append((task, [lead.id for lead in leads]))
    for lead in leads:
        lifecycle.drop_work(lead, task)
        assert lifecycle.save_work(run.services, lead, run.now, f"{task} done", owner=run.owner)


@pytest.fixture(params=["sqlite", "dynamodb"])
def services(request, tmp_path, make_services, clock, monkeypatch):
    """Services on a fresh store of each backend, with the recording handlers registered."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'leads.db'}"
    else:
        request.getfixturevalue("aws_env")
        url = f"dynamodb://leads-{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(
        followup,
        "TASKS",
        {"cancel": f"{__name__}:record_cancel", "poll": f"{__name__}:record_poll", "write_back": "nowhere:at_all"},
    )
    RAN.clear()
    clock.now = T0
    return make_services(leads_store=url)


def followed(services, n: int, status: Status = Status.SENT, **work: datetime | None) -> LeadRecord:
    """A stored lead in a followed status with the given work items (due times)."""
    record = LeadRecord(
        id=f"lead-{n}",
        source="generic",
        key=f"generic:{n}",
        ref=str(n),
        status=status,
        created_at=T0 - timedelta(hours=1),
        updated_at=T0 - timedelta(hours=1),
        job_id=f"job-{n}",
        work={task: WorkItem(due) for task, due in work.items()},
    )
    record.next_attempt_at = record.work_due()
    services.store.insert(record)
    return record


def test_only_due_work_is_run_each_task_once_per_batch(services, clock) -> None:
    followed(services, 1, poll=T0)
    followed(services, 2, Status.CALLING, poll=T0 - timedelta(minutes=5))
    followed(services, 3, poll=T0 + timedelta(minutes=1))  # not due yet
    followed(services, 4, Status.CALLED)  # nothing to do
    report = follow_up(services)
    assert report.claimed == 2 and report.tasks == {"poll": 2}
    assert [(task, sorted(ids)) for task, ids in RAN] == [("poll", ["lead-1", "lead-2"])]
    assert services.store.get("lead-1").work == {} and services.store.get("lead-1").final
    assert services.store.get("lead-3").work == {"poll": WorkItem(T0 + timedelta(minutes=1))}
    clock.advance(minutes=1)
    follow_up(services)
    assert RAN[-1] == ("poll", ["lead-3"])


def test_a_lead_runs_its_most_urgent_task_first_and_the_next_on_the_following_pass(services) -> None:
    followed(services, 1, poll=T0 - timedelta(minutes=10), cancel=T0)
    follow_up(services)
    assert RAN == [("cancel", ["lead-1"])]  # the cancel beats the poll it makes pointless
    assert services.store.get("lead-1").next_attempt_at == T0 - timedelta(minutes=10)  # the poll keeps it due
    follow_up(services)
    assert RAN == [("cancel", ["lead-1"]), ("poll", ["lead-1"])]


def test_work_a_newer_release_planned_is_kept_for_it(services) -> None:
    followed(services, 1, **{"summarise": T0})
    follow_up(services)
    kept = services.store.get("lead-1")
    assert RAN == [] and set(kept.work) == {"summarise"}
    assert kept.next_attempt_at == T0 + followup.UNKNOWN_TASK_RETRY and not kept.final


def test_a_failing_handler_loses_no_work_and_its_leads_return_after_the_lease(services, clock, monkeypatch) -> None:
    monkeypatch.setitem(followup.TASKS, "poll", f"{__name__}:failing_poll")
    followed(services, 1, poll=T0)
    follow_up(services)
    follow_up(services)  # leased: not taken again while the first pass might still be at it
    assert RAN == [("poll", ["lead-1"])]
    assert set(services.store.get("lead-1").work) == {"poll"}
    clock.advance(seconds=followup.LEASE.total_seconds())
    follow_up(services)
    assert len(RAN) == 2


def test_a_handler_whose_module_is_missing_is_logged_and_its_work_kept(services, caplog) -> None:
    followed(services, 1, write_back=T0)
    follow_up(services)
    assert "follow-up task write_back failed" in caplog.text
    assert set(services.store.get("lead-1").work) == {"write_back"}


def test_parked_work_is_never_claimed_and_leaves_the_lead_final(services) -> None:
    record = followed(services, 1, Status.CALLED, write_back=T0)
    lifecycle.set_work(record, "write_back", None, error="HTTP 500 eight times")
    assert lifecycle.save_work(services, record, T0, "write-back given up", owner=None)
    assert follow_up(services).claimed == 0
    stored = services.store.get("lead-1")
    assert stored.final and stored.next_attempt_at is None
    assert stored.work["write_back"].error == "HTTP 500 eight times"


def test_out_of_time_stops_new_requests_only_once_the_budget_is_spent(services) -> None:
    run = FollowUpPass(services, T0, "owner", deadline=None)
    assert not run.out_of_time()
    assert FollowUpPass(services, T0, "owner", deadline=0.0).out_of_time()


def test_sent_plans_the_first_poll_and_a_dry_run_does_not(make_services, clock) -> None:
    clock.now = T0
    for dry_run, expected in ((False, {"poll"}), (True, set())):
        services = make_services(dry_run=dry_run)
        record = LeadRecord(
            id=f"lead-{dry_run}", source="generic", key=f"generic:{dry_run}", ref="1", status=Status.PENDING,
            created_at=T0, updated_at=T0, next_attempt_at=T0,
        )
        services.store.insert(record)
        [claimed] = services.store.claim(Status.PENDING, T0, 60, 10, "w")
        assert lifecycle.sent(services, claimed, "job-1", T0, "w")
        stored = services.store.get(record.id)
        assert set(stored.work) == expected
        assert stored.next_attempt_at == (T0 + lifecycle.FIRST_POLL if expected else None)


def test_the_follow_up_worker_runs_a_pass_as_soon_as_it_is_woken(services) -> None:
    ran = threading.Event()

    class Worker(FollowUpWorker):
        def run_pass(self) -> object:
            ran.set()
            return None

        def interval(self) -> float:
            return 3600.0  # a wake must not wait for the interval

    worker = Worker(services)
    worker.start()
    try:
        assert ran.wait(5)  # the first pass runs at start
        ran.clear()
        worker.wake()
        assert ran.wait(5)
    finally:
        worker.stop()
    assert not worker.alive


def test_a_pass_claims_again_until_nothing_is_due(services) -> None:
    for n in range(5):
        followed(services, n, poll=T0)
    report = follow_up(services, limit=2)  # a busy minute: more leads due than one claim takes
    assert report.claimed == 5 and report.tasks == {"poll": 5}
    assert sorted(lead for _, ids in RAN for lead in ids) == [f"lead-{n}" for n in range(5)]
    assert follow_up(services, limit=2).claimed == 0


def test_a_pass_out_of_time_starts_no_new_round(services) -> None:
    for n in range(5):
        followed(services, n, poll=T0)
    assert follow_up(services, limit=2, time_budget=0).claimed == 0  # the budget is spent before the first claim


def test_an_operator_replays_parked_work_and_its_attempts_start_again(services, app_for) -> None:
    record = followed(services, 1, Status.CALLING)
    lifecycle.set_work(record, "poll", None, attempts=3, error="past finishDateTime + 1 h: the job never ended")
    assert lifecycle.save_work(services, record, T0, owner=None)

    result = app_for(services).test_cli_runner().invoke(args=["leads", "replay", "lead-1"])

    assert result.exit_code == 0 and "lead-1: poll planned again" in result.output, result.output
    stored = services.store.get("lead-1")
    assert stored.work["poll"] == WorkItem(T0) and stored.next_attempt_at == T0
    assert stored.history[-1]["note"] == "poll replayed by an operator"
    follow_up(services)
    assert RAN == [("poll", ["lead-1"])]


@pytest.fixture
def app_for():
    from app import create_app

    return lambda services: create_app(services=services)
