"""Following each job to its end: getReport over real HTTP at the emulator, SQLite and DynamoDB, a hand-moved clock."""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import pairwise

import pytest

from crm2calls import campaigns, lifecycle
from crm2calls.aimylogic import AimylogicClient, token_fingerprint
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, RejectedError, UnavailableError
from crm2calls.followup import follow_up
from crm2calls.guards import phone_key, slot_name
from crm2calls.intake import new_lead_id
from crm2calls.model import LeadRecord, Status
from crm2calls.outcomes import CHUNK, GRACE, MISSING_LIMIT
from crm2calls.phones import mask
from crm2calls.store.base import Claims
from tests.conftest import FIXTURES, TOKEN
from tests.emulators.aimylogic import JobPlan
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)

ENTRY = json.loads((FIXTURES / "aimylogic" / "entry.json").read_text())
REPORT_KEYS = {
    "callJobId", "jobStatus", "callResult", "reportData", "attemptsCount", "callDuration", "startedAt",
    "finishedAt", "tagName", "tagPayload", "phone", "createdAt", "redialNumber",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request, tmp_path) -> str:
    """LEADS_STORE for the test: a SQLite file, or a fresh table at moto's server over HTTP."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'leads.db'}"
    request.getfixturevalue("aws_env")
    return f"dynamodb://leads-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(make_services, aimylogic, backend):
    def build(**overrides):
        values = {"aimylogic_token": TOKEN, "aimylogic_url": aimylogic.url, "dry_run": False, "leads_store": backend}
        return make_services(**{**values, **overrides})

    return build


def add_lead(services, n: int, **entry_changes) -> LeadRecord:
    """Store a PENDING lead as intake leaves it (frozen entry, phone slot claimed)."""
    now = services.clock()
    entry = {**copy.deepcopy(ENTRY), "phone": f"7912{n:07d}", **entry_changes}
    record = LeadRecord(
        id=new_lead_id(now),
        source="generic",
        key=f"generic:{n}",
        ref=str(n),
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
        entry=json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        phone_masked=mask(entry["phone"]),
        phone_key=phone_key(entry["phone"]),
    )
    stored, _ = services.store.insert(record, Claims(slot_name(record.phone_key), timedelta(hours=24)))
    return stored


def send(services, count: int = 1, start: int = 0, **entry_changes) -> list[LeadRecord]:
    """`count` leads sent through delivery: each SENT with its job id and a poll due a minute later."""
    leads = [add_lead(services, n, **entry_changes) for n in range(start, start + count)]
    deliver_pending(services)
    return [services.store.get(lead.id) for lead in leads]


def job_of_phone(aimylogic, leads: list[LeadRecord]) -> list[str]:
    """The id of the job Aimylogic made for each lead's phone."""
    jobs = {job.phone: job.id for job in aimylogic.jobs.values()}
    return [jobs[json.loads(lead.entry)["phone"]] for lead in leads]


def run_minutes(services, clock, minutes: int) -> None:
    """One follow-up pass a minute, as the schedule and the worker run them."""
    for _ in range(minutes):
        clock.advance(minutes=1)
        follow_up(services)


def reports(aimylogic) -> int:
    return aimylogic.count("getReport")


# The client


def test_get_report_answers_each_known_job_by_id_or_by_phone(aimylogic, clock):
    client = AimylogicClient(aimylogic.url, TOKEN, clock=clock)
    aimylogic.plan_job("89120000001", JobPlan(final="noAnswer", attempts=2, wait=0, ring=30, retry=60))
    first, second = client.add_phones([{"phone": "89120000001"}, {"phone": "79120000002"}])
    clock.advance(minutes=5)

    by_id = client.get_report(ids=[first, int(second), "999"])  # ids opaque: strings, numbers, an unknown one
    by_phone = client.get_report(phones=["79120000001"])

    assert [report["callJobId"] for report in by_id] == [first, second]
    assert set(by_id[0]) == REPORT_KEYS
    assert by_id[0]["jobStatus"] == "noAnswer" and by_id[0]["attemptsCount"] == 2
    assert by_id[0]["phone"] == "79120000001"  # sent as 8..., reported as 7... (a.10)
    assert by_phone == [by_id[0]]
    assert aimylogic.count("getReport") == 2 and aimylogic.report_ids_asked == 3
    sent = aimylogic.status_requests[-2].json()
    assert sent == {"ids": [first, int(second), "999"]}


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (503, {"Retry-After": "120"}, UnavailableError, 120.0),
        (429, {}, UnavailableError, None),
        (404, {}, AuthError, None),
        (401, {}, AuthError, None),
        (400, {}, RejectedError, None),
    ],
)
def test_get_report_errors_are_mapped_like_addphones(aimylogic, clock, status, headers, error, retry_after):
    client = AimylogicClient(aimylogic.url, TOKEN, clock=clock)
    aimylogic.fail_next(status, headers=headers, only="getReport")

    with pytest.raises(error) as raised:
        client.get_report(ids=["1"])

    assert raised.value.retry_after == retry_after
    assert TOKEN not in str(raised.value)


def test_get_report_refuses_an_answer_that_is_not_a_list_of_reports(aimylogic, clock):
    client = AimylogicClient(aimylogic.url, TOKEN, clock=clock)
    aimylogic.fail_next(200, body='{"error": "strange"}', only="getReport")

    with pytest.raises(UnavailableError, match="not a JSON array"):
        client.get_report(ids=["1"])


# The emulator's jobs


def test_a_job_moves_through_its_plan_on_the_clock(aimylogic, clock):
    client = AimylogicClient(aimylogic.url, TOKEN, clock=clock)
    plan = JobPlan(final="longCallWithResult", attempts=2, wait=60, ring=30, retry=300, duration=42,
                   report={"interested": "yes"}, tag=("hot", {"score": 9}))  # fmt: skip
    aimylogic.plan_job("79120000001", plan)
    [job] = client.add_phones([{"phone": "79120000001"}])
    seen = []
    for seconds in (0, 60, 90, 389, 390, 420):
        clock.now = aimylogic.jobs[job].created + timedelta(seconds=seconds)
        [report] = client.get_report(ids=[job])
        seen.append((report["jobStatus"], report["attemptsCount"]))

    assert seen == [("planned", 0), ("inProcess", 1), ("onRetry", 1), ("onRetry", 1), ("inProcess", 2),
                    ("longCallWithResult", 2)]  # fmt: skip
    assert report["callDuration"] == 42 and report["reportData"] == {"interested": "yes"}
    assert (report["tagName"], report["tagPayload"]) == ("hot", {"score": 9})
    assert report["finishedAt"] - report["startedAt"] == 360_000  # ms: two rings and one retry wait


# Following jobs to their end


FINALS = [
    ("longCallWithResult", Status.CALLED),
    ("longCallWithNoResult", Status.CALLED),
    ("noAnswer", Status.NOT_REACHED),
    ("nonexistentNumber", Status.NOT_REACHED),
    ("notDone", Status.NOT_REACHED),
    ("canceled", Status.CANCELED),
]


@pytest.mark.parametrize(("final", "status"), FINALS)
def test_a_job_is_followed_to_each_final_status(make, aimylogic, clock, final, status):
    services = make()
    attempts = 1 if final in ("longCallWithResult", "longCallWithNoResult") else 2
    attempts = 0 if final == "canceled" else attempts
    plan = JobPlan(final=final, attempts=attempts, wait=300, ring=60, retry=120, duration=33,
                   report={"answer": "yes"}, tag=("warm", {"k": 1}))  # fmt: skip
    aimylogic.plan_job("79120000000", plan)
    [lead] = send(services)

    run_minutes(services, clock, 12)

    stored = services.store.get(lead.id)
    assert stored.status is status
    outcome = stored.outcome
    assert outcome["job_status"] == final and outcome["attempts"] == attempts
    talked = status is Status.CALLED
    assert outcome["duration_s"] == (33 if talked else 0)
    assert outcome["report"] == ({"answer": "yes"} if talked else None)
    assert outcome["tag"] == ({"name": "warm", "payload": {"k": 1}} if talked else None)
    report = aimylogic.job_report(lead.job_id)
    assert outcome["finished_at"] == datetime.fromtimestamp(report["finishedAt"] / 1000, clock.now.tzinfo).isoformat()
    # polling is over; the write-backs it planned ran too (dropped: no CRM API for generic, no results URL)
    assert stored.work == {} and stored.final
    # one history line per jobStatus seen, however many polls saw it
    notes = [step["note"] for step in stored.history]
    seen = [note.split()[2].rstrip(",") for note in notes[1:]]
    assert all(before != after for before, after in pairwise(seen)), notes
    assert seen[-1] == final and seen[0] == "planned"
    polls = reports(aimylogic)
    assert polls > len(seen)  # polls that saw nothing new wrote nothing
    run_minutes(services, clock, 30)
    assert reports(aimylogic) == polls  # a final job is never asked about again


def test_a_job_planned_for_hours_keeps_a_short_history_and_is_polled_slowly_outside_its_window(make, aimylogic, clock):
    services = make()
    aimylogic.plan_job("79120000000", JobPlan(final=None, stuck="planned"))
    clock.now = clock.now.replace(hour=14, minute=0)  # 17:00 at +03:00: one hour of the window left
    [lead] = send(services, startDateTime="2026-11-26T09:00:00Z")

    run_minutes(services, clock, 60)  # the window is open: one poll a minute
    in_window = reports(aimylogic)
    run_minutes(services, clock, 120)  # closed until 10:00 local tomorrow: one poll in 15 minutes
    outside = reports(aimylogic) - in_window

    stored = services.store.get(lead.id)
    assert stored.status is Status.CALLING
    assert [step["status"] for step in stored.history] == ["sent", "calling"]
    assert 55 <= in_window <= 61 and 7 <= outside <= 9


def test_a_job_that_never_ends_stops_being_polled(make, aimylogic, clock):
    services = make()
    aimylogic.plan_job("79120000000", JobPlan(final=None, stuck="onRetry", wait=0))
    finish = clock.now + timedelta(hours=2)
    [lead] = send(services, finishDateTime=finish.isoformat())

    run_minutes(services, clock, int((2 * 60 + GRACE.total_seconds() / 60) + 5))
    asked = reports(aimylogic)
    run_minutes(services, clock, 60)

    stored = services.store.get(lead.id)
    assert reports(aimylogic) == asked  # nothing asked after finishDateTime + GRACE
    assert stored.status is Status.CALLING and stored.final
    assert stored.work["poll"].due is None
    assert "still onRetry" in stored.work["poll"].error and "no longer polled" in stored.history[-1]["note"]
    assert datetime.fromisoformat(stored.history[-1]["at"]) >= finish + GRACE


@pytest.mark.parametrize("omitted", [1, 3])
def test_a_job_known_only_in_part_is_matched_by_phone_then_by_id(make, aimylogic, clock, omitted):
    services = make()
    aimylogic.omit_ids(omitted)  # three entries, 2 ids (each lead keeps both) or none
    aimylogic.plan_job("79120000000", JobPlan(final="noAnswer", attempts=1, wait=0, ring=30))
    aimylogic.plan_job("79120000001", JobPlan(final=None, stuck="planned"))
    leads = send(services, 3)
    assert all("," in (lead.job_id or ",") for lead in leads)

    run_minutes(services, clock, 1)
    body = aimylogic.status_requests[-1].json()
    run_minutes(services, clock, 1)

    stored = [services.store.get(lead.id) for lead in leads]
    assert [record.job_id for record in stored] == job_of_phone(aimylogic, leads)  # now known exactly
    assert [record.status for record in stored] == [Status.NOT_REACHED, Status.CALLING, Status.CALLED]
    assert sorted(body["phones"]) == ["79120000000", "79120000001", "79120000002"]
    assert "found by phone" in stored[1].history[-1]["note"]
    assert set(aimylogic.status_requests[-1].json()) == {"ids"}  # the one still calling is asked by id


def test_an_id_handed_to_every_lead_of_a_batch_is_checked_against_the_phone(make, aimylogic, clock):
    services = make()
    aimylogic.omit_ids(1)
    leads = send(services, 2)  # two entries, one id: both leads keep "5665334669," (a list), only one owns it
    assert {lead.job_id for lead in leads} == {aimylogic.jobs_of()[0] + ","}

    run_minutes(services, clock, 3)

    stored = [services.store.get(lead.id) for lead in leads]
    assert [record.job_id for record in stored] == job_of_phone(aimylogic, leads)
    assert {record.status for record in stored} == {Status.CALLED}


def test_many_leads_share_each_request(make, aimylogic, clock):
    services = make()
    count = CHUNK + 20
    send(services, count)

    run_minutes(services, clock, 1)  # every job in progress after a minute: 2 requests for 120 jobs

    assert reports(aimylogic) == 2 and aimylogic.report_ids_asked == count
    assert services.store.count_by_status().get(Status.CALLING) == count


def test_a_job_aimylogic_does_not_know_is_parked_after_a_few_asks(make, aimylogic, clock):
    services = make()
    [lead] = send(services)
    aimylogic.jobs.clear()  # Aimylogic lost it

    run_minutes(services, clock, 30)

    stored = services.store.get(lead.id)
    assert reports(aimylogic) == MISSING_LIMIT
    assert stored.status is Status.SENT and stored.final
    assert "no report for job" in stored.work["poll"].error
    assert sum("no longer polled" in step["note"] for step in stored.history) == 1


def test_a_getreport_outage_backs_off_then_recovers(make, aimylogic, clock):
    services = make()
    aimylogic.plan_job("79120000000", JobPlan(final="longCallWithResult", wait=0, ring=30))
    [lead] = send(services)
    aimylogic.fail_next(503, times=1000, only="getReport")

    run_minutes(services, clock, 60)
    during = reports(aimylogic)
    stored = services.store.get(lead.id)
    assert stored.status is Status.SENT and stored.work["poll"].attempts >= 5
    assert "503" in stored.work["poll"].error
    aimylogic.recover()
    run_minutes(services, clock, 16)

    assert 5 <= during <= 8  # 1, 2, 4, 8, 15, 15 minutes apart: not one a minute
    assert services.store.get(lead.id).status is Status.CALLED


def test_a_refused_token_holds_polling_like_delivery(make, aimylogic, clock):
    services = make()
    [lead] = send(services)
    aimylogic.fail_next(401, only="getReport")

    run_minutes(services, clock, 1)
    state = campaigns.state(services, "default")
    assert state["delivery"] == campaigns.TOKEN_REFUSED
    run_minutes(services, clock, 3)  # the hold lasts backoff_cap_seconds: nothing is asked meanwhile
    assert reports(aimylogic) == 1
    stored = services.store.get(lead.id)
    assert stored.work["poll"].attempts == 0 and "refused the token" in stored.work["poll"].error

    clock.now = datetime.fromisoformat(state["retry_at"])
    follow_up(services)
    assert services.store.get(lead.id).status is Status.CALLED  # the call ended during the hold
    assert campaigns.state(services, "default")["delivery"] == campaigns.SENDING


def test_a_job_placed_by_a_replaced_token_is_not_polled(make, aimylogic, clock):
    services = make()
    [lead] = send(services)
    stored = services.store.get(lead.id)
    assert stored.job_token == token_fingerprint(TOKEN)
    other = make(aimylogic_token="9999.1111.aaaaaaaa")  # the campaign's token was replaced; same store

    run_minutes(other, clock, 3)

    stored = other.store.get(lead.id)
    assert reports(aimylogic) == 0
    assert stored.final and "token was replaced" in stored.work["poll"].error
    assert sum("token was replaced" in step["note"] for step in stored.history) == 1


def test_a_lease_lost_during_a_slow_getreport_writes_history_once(make, aimylogic, clock):
    services = make()
    aimylogic.plan_job("79120000000", JobPlan(final="longCallWithResult", wait=0, ring=30))
    [lead] = send(services)
    clock.advance(minutes=1)
    aimylogic.hang_reports(30)
    slow = threading.Thread(target=follow_up, args=(services,))
    slow.start()
    deadline = time.monotonic() + 10
    while not aimylogic.hanging and time.monotonic() < deadline:
        time.sleep(0.01)
    assert aimylogic.hanging == 1

    clock.advance(minutes=6)  # its lease (5 min) ran out: another pass takes the lead and follows it
    follow_up(services)
    aimylogic.recover()  # the slow answer arrives
    slow.join(10)

    stored = services.store.get(lead.id)
    assert stored.status is Status.CALLED
    assert [step["status"] for step in stored.history] == ["sent", "called"]


def test_a_dry_run_asks_nothing_and_keeps_the_poll(make, aimylogic, clock):
    services = make()
    [lead] = send(services)
    dry = make(dry_run=True)

    run_minutes(dry, clock, 2)

    stored = dry.store.get(lead.id)
    assert reports(aimylogic) == 0 and stored.status is Status.SENT
    assert stored.work["poll"].due is not None and "dry run" in stored.work["poll"].error


def test_lifecycle_keeps_a_stopped_lead_stopped_when_its_job_reports(make, clock):
    services = make()
    [lead] = send(services)
    record = services.store.get(lead.id)
    record.status = Status.CANCELED  # a CRM stop got there first
    outcome = {"job_status": "longCallWithResult", "attempts": 1}
    claimed = services.store.claim(Status.SENT, clock.now + timedelta(minutes=2), 300, 10, "me")
    assert claimed
    record = replace(claimed[0], status=Status.CANCELED)

    assert lifecycle.follow_job(services, record, outcome, clock.now, "me", None)
    assert services.store.get(lead.id).status is Status.CANCELED


def test_two_leads_of_one_phone_each_find_their_own_job(make, aimylogic, clock):
    services = make()
    aimylogic.plan_job("79120000007", JobPlan(final=None, stuck="planned"))
    aimylogic.omit_ids(1, times=2)  # neither send learns its job id
    [first] = send(services, 1, start=7)
    clock.advance(hours=25)  # no follow-up pass ran meanwhile; the duplicate window has passed
    [second] = send(services, 1, start=8, phone="79120000007")  # another lead, the same person

    run_minutes(services, clock, 1)

    body = aimylogic.status_requests[-1].json()
    jobs = aimylogic.jobs_of()
    assert body == {"phones": ["79120000007", "79120000007"]}
    assert (services.store.get(first.id).job_id, services.store.get(second.id).job_id) == (jobs[0], jobs[1])


def test_a_pass_out_of_time_starts_no_request_and_leaves_the_leads_to_the_next(make, aimylogic, clock):
    services = make()
    leads = send(services, 3)
    clock.advance(minutes=1)

    follow_up(services, time_budget=0)  # Lambda's budget already spent: no request starts

    assert reports(aimylogic) == 0
    assert all(services.store.get(lead.id).status is Status.SENT for lead in leads)
    clock.advance(minutes=6)  # their leases ran out
    follow_up(services)
    assert reports(aimylogic) == 1 and all(services.store.get(lead.id).status is Status.CALLED for lead in leads)
