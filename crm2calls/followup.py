"""The follow-up pass: the work a lead has after its send (cancel its job, poll it, write its outcome back).

Each lead carries its work as named items with due times (LeadRecord.work); the pass claims leads
whose earliest item is due, from the followed statuses, under a lease like delivery's, and hands each
task's leads to that task's handler in one batch (a handler groups them further, e.g. by campaign, so
one request serves many leads). A lead runs one task per pass, the most urgent; its other due items
keep it due, so the next pass takes it again at once.

Handlers live with what they do and are imported only when they have work (a cold start loads none):
each takes (pass, leads) and writes every lead it was given through the lifecycle, or leaves it to its
lease when the pass is out of time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module

from crm2calls import lifecycle
from crm2calls.logs import redact
from crm2calls.model import FOLLOWED_STATUSES, LeadRecord
from crm2calls.services import Services

log = logging.getLogger("crm2calls.followup")


@dataclass
class FollowUpPass:
    """What a handler gets besides its leads: the services, the pass's time, its lease owner and its deadline."""

    services: Services
    now: datetime
    owner: str
    deadline: float | None = None  # time.monotonic() after which no new request starts (Lambda's budget)

    def out_of_time(self) -> bool:
        """Start no new request: the invocation ends soon. Unhandled leads keep their work for the next pass."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def renew(self, records: list[LeadRecord]) -> set[str]:
        """Extend the lease on these leads before a request that may be slow; the ids still held."""
        until = self.services.clock() + LEASE
        return self.services.store.renew([record.id for record in records], self.owner, until)


Handler = Callable[[FollowUpPass, list[LeadRecord]], None]

# Task name -> "module:function", most urgent first: a cancel must beat the call it stops.
TASKS: dict[str, str] = {
    "cancel": "crm2calls.stops:cancel_jobs",  # cancel the lead's queued job in Aimylogic
    "check_stop": "crm2calls.stops:check_stops",  # an update event from the CRM: look the record up
    "poll": "crm2calls.outcomes:poll_jobs",  # follow the job through callJob/getReport
    "write_back": "crm2calls.writeback:write_back",  # put the outcome onto the CRM record
    "notify": "crm2calls.results_webhook:notify",  # POST the outcome to RESULTS_WEBHOOK_URL
}
LEASE = timedelta(minutes=5)  # a handler renews it before each request that could outlive it
UNKNOWN_TASK_RETRY = timedelta(hours=1)
MAX_ROUNDS = 20  # rounds of `limit` leads one pass runs at most; a lead that stays due waits for the next pass


@dataclass
class FollowUpReport:
    """What one follow-up pass did: how many leads each task was run for."""

    claimed: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        done = ", ".join(f"{task} {count}" for task, count in self.tasks.items()) or "nothing due"
        return f"follow-up: {self.claimed} leads ({done}) in {self.seconds:.2f} s"


def handler(task: str) -> Handler:
    """The function that runs `task` (imported on first use)."""
    module_name, name = TASKS[task].split(":")
    return getattr(import_module(module_name), name)


def next_task(record: LeadRecord, now: datetime) -> str | None:
    """The most urgent task due on this lead; tasks this release does not know come last."""
    due = [task for task, item in record.work.items() if item.due is not None and item.due <= now]
    order = list(TASKS)
    return min(due, key=lambda task: (order.index(task) if task in order else len(order), task), default=None)


def _stopped_meanwhile(services: Services, claimed: list[LeadRecord], now: datetime) -> None:
    """A stop that came while this pass held a queued lead was left to us: read its mark now (crm2calls/stops.py)."""
    if not claimed:
        return
    from crm2calls.stops import consult_marks

    try:
        consult_marks(services, claimed, now)
    except Exception as exc:  # the next pass that holds the lead reads the mark again
        log.error("reading stop marks failed: %s", redact(f"{type(exc).__name__}: {exc}"), exc_info=True)


def follow_up(services: Services, limit: int = 500, time_budget: float | None = None) -> FollowUpReport:
    """Claim the leads whose follow-up work is due and run it, one task per lead, in rounds of `limit`
    until nothing is due, the budget is spent or MAX_ROUNDS ran (a busy minute may have thousands due).

    time_budget: seconds after which no new round starts and handlers start no new request (None: no limit).
    """
    started = time.monotonic()
    owner = f"follow-up:{uuid.uuid4().hex[:12]}"
    deadline = None if time_budget is None else started + time_budget
    report = FollowUpReport()
    for _ in range(MAX_ROUNDS):
        run = FollowUpPass(services, services.clock(), owner, deadline)
        if run.out_of_time() or _round(run, limit, report) < limit:
            break
    report.seconds = time.monotonic() - started
    if report.claimed:
        log.info("%s", report, extra={"fields": {"event": "follow_up", "claimed": report.claimed, **report.tasks}})
    return report


def _round(run: FollowUpPass, limit: int, report: FollowUpReport) -> int:
    """Claim up to `limit` leads with work due and run it; how many were claimed."""
    services, now, owner = run.services, run.now, run.owner
    claimed: list[LeadRecord] = []
    for status in FOLLOWED_STATUSES:
        lease = int(LEASE.total_seconds())
        claimed += services.store.claim(status, now, lease, limit - len(claimed), owner)
    report.claimed += len(claimed)
    batches: dict[str, list[LeadRecord]] = {}
    for record in claimed:
        task = next_task(record, now)
        if task is None:  # its work changed since the index saw it: write back what is due now
            lifecycle.save_work(services, record, now, owner=owner)
        elif task not in TASKS:  # written by a newer release (a rollback): keep it for that release
            item = record.work[task]
            lifecycle.set_work(record, task, now + UNKNOWN_TASK_RETRY, attempts=item.attempts, error=item.error)
            lifecycle.save_work(services, record, now, owner=owner)
            log.warning("lead %s has follow-up work %r this release does not know", record.id, task)
        else:
            batches.setdefault(task, []).append(record)
    for task in TASKS:
        if task not in batches:
            continue
        report.tasks[task] = report.tasks.get(task, 0) + len(batches[task])
        try:
            handler(task)(run, batches[task])
        except Exception as exc:  # the store or a bug: the leases expire and the next pass tries again
            log.error("follow-up task %s failed: %s", task, redact(f"{type(exc).__name__}: {exc}"), exc_info=True)
    _stopped_meanwhile(services, claimed, now)
    return len(claimed)
