"""Stop calling when the CRM says stop: webhooks over real HTTP, on SQLite and DynamoDB, against the Aimylogic emulator.

Every path of crm2calls/stops.py: a stop before the send, during it, after the call ended; the cancel of a queued
job (and an Aimylogic outage during it, on the injected clock); tombstones and a late lead webhook; repeats.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
import requests

from crm2calls import lifecycle
from crm2calls.delivery import deliver_pending
from crm2calls.errors import EnrichmentError
from crm2calls.followup import follow_up
from crm2calls.model import Status, StopEvent
from crm2calls.services import Services
from crm2calls.sources.base import Source
from crm2calls.stops import apply_stops, mark_name, tombstone
from crm2calls.store.base import KEY_TTL
from schemas.api import HealthSchema, LeadsAckSchema
from tests.conftest import FIXTURES, SECRET, TOKEN
from tests.emulators.aimylogic import JobPlan
from tests.emulators.base import LocalServer
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)

STOPS = FIXTURES / "generic" / "stops"


@dataclass
class Stand:
    """crm2calls served on 127.0.0.1 with its store, the emulator it calls, and the follow-up kicks it made."""

    services: Services
    url: str
    aimylogic: Any
    kicks: list[float]
    app: Any

    def post(self, body: Any, form: bool = False) -> dict[str, Any]:
        """POST a generic webhook; its JSON answer (202 asserted, and its schema)."""
        url = f"{self.url}/webhooks/generic?key={SECRET}"
        if form:
            response = requests.post(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"},
                                     timeout=10)  # fmt: skip
        else:
            response = requests.post(url, json=body, timeout=10)
        assert response.status_code == 202, response.text
        answer = response.json()
        assert LeadsAckSchema().validate(answer) == {}, answer
        return answer

    def lead(self, lead_id: str, phone: str) -> str:
        """A new lead; our id of it."""
        [summary] = self.post({"id": lead_id, "phone": phone, "name": "Ivan"})["leads"]
        return summary["lead_id"]

    def stop(self, lead_id: str, event: str = "lead.closed", **extra: Any) -> dict[str, Any]:
        """A stop event for a lead id; what it did."""
        [stopped] = self.post({"event": event, "id": lead_id, **extra})["stops"]
        return stopped

    def get(self, lead_id: str):
        return self.services.store.get(lead_id)

    def health(self) -> dict[str, Any]:
        body = requests.get(f"{self.url}/healthz", timeout=10).json()
        assert HealthSchema().validate(body) == {}, body
        return body


@pytest.fixture(params=["sqlite", "dynamodb"])
def stand(request, make_services, aimylogic):
    """The app over real HTTP on either store, sending to the emulator; follow-up kicks are counted, not run."""
    aimylogic.default_plan = JobPlan(final=None)  # a queued job waits for our cancel; a test ends one with finish_job
    overrides: dict[str, Any] = {"aimylogic_url": aimylogic.url, "aimylogic_token": TOKEN}
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")
        overrides["leads_store"] = f"dynamodb://stops-{uuid.uuid4().hex[:12]}"
    services = make_services(**overrides)
    kicks: list[float] = []
    from app import create_app

    app = create_app(services=services)
    services.notify_follow_up = lambda: kicks.append(time.monotonic())
    server = LocalServer(app).start()
    yield Stand(services, server.url, aimylogic, kicks, app)
    server.stop()


def history(record) -> str:
    return "\n".join(step["note"] for step in record.history)


# Before the send


def test_a_lead_not_yet_sent_is_canceled_and_never_sent(stand):
    lead_id = stand.lead("s-1", "+79123456701")
    assert stand.get(lead_id).status is Status.PENDING

    stopped = stand.stop("s-1", reason="won")

    assert stopped == {"record": "s-1", "reason": "closed in the CRM: won",
                       "leads": [{"lead_id": lead_id, "did": "canceled"}]}  # fmt: skip
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and record.last_error == "closed in the CRM: won"
    assert record.next_attempt_at is None and not record.work
    assert deliver_pending(stand.services).sent == 0
    assert stand.aimylogic.entries == [] and stand.kicks == []  # nothing in Aimylogic: no follow-up needed


def test_a_stop_gives_the_one_person_one_call_slot_back(stand):
    services = stand.services
    policy = services.settings.policy
    guards = replace(policy.guards, per_number_per_day=0, per_number_per_week=0, per_number_per_month=0)
    services.settings = replace(services.settings, policy=replace(policy, guards=guards))
    stand.lead("s-1", "+79123456702")
    stand.stop("s-1")
    [again] = stand.post({"id": "s-2", "phone": "+79123456702"})["leads"]
    assert again["status"] == "accepted" and stand.get(again["lead_id"]).status is Status.PENDING


def test_a_stop_and_a_lead_of_the_record_in_one_body_end_with_the_lead_stopped(stand):
    answer = stand.post([{"id": "s-3", "phone": "+79123456703"}, {"event": "lead.deleted", "id": "s-3"}])
    [summary] = answer["leads"]
    assert answer["stops"][0]["leads"] == [{"lead_id": summary["lead_id"], "did": "canceled"}]
    assert stand.get(summary["lead_id"]).status is Status.CANCELED


# Queued in Aimylogic


def test_a_queued_job_is_cancelled_on_its_campaign_and_the_lead_canceled(stand):
    lead_id = stand.lead("s-4", "+79123456704")
    deliver_pending(stand.services)
    job = stand.get(lead_id).job_id
    assert job in stand.aimylogic.jobs_of()

    stopped = stand.stop("s-4", event="lead.deleted")

    assert stopped["leads"] == [{"lead_id": lead_id, "did": "cancel_planned"}]
    assert len(stand.kicks) == 1  # the follow-up worker is woken at once; the schedule is the safety net
    record = stand.get(lead_id)
    assert record.status is Status.SENT and record.work["cancel"].due == stand.services.clock()
    assert record.next_attempt_at == stand.services.clock()  # on the due index, before its poll
    report = follow_up(stand.services)
    assert report.tasks == {"cancel": 1}
    assert stand.aimylogic.cancels == [{"token": TOKEN, "ids": [job], "phones": [], "answer": [job]}]
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and not record.work and record.next_attempt_at is None
    assert record.outcome["job_status"] == "canceled" and record.outcome["canceled_ids"] == [job]
    assert record.outcome["reason"] == "deleted in the CRM" and record.outcome["canceled_by"] == "crm2calls"
    assert f"Aimylogic cancelled job {job}" in history(record)
    assert record.final  # no write-back planned: the manager closed it in the CRM himself


def test_many_queued_jobs_of_a_campaign_go_in_one_cancel_request(stand):
    ids = [stand.lead(f"m-{n}", f"+791234567{n:02d}") for n in range(10, 15)]
    deliver_pending(stand.services)
    stand.post([{"event": "lead.closed", "id": f"m-{n}"} for n in range(10, 15)])
    follow_up(stand.services)
    [request] = stand.aimylogic.cancels
    assert sorted(request["ids"]) == sorted(stand.get(lead_id).job_id for lead_id in ids)
    assert {stand.get(lead_id).status for lead_id in ids} == {Status.CANCELED}


def test_a_job_that_ended_before_the_cancel_is_followed_to_its_report(stand):
    lead_id = stand.lead("s-5", "+79123456705")
    deliver_pending(stand.services)
    record = stand.get(lead_id)
    stand.aimylogic.finish_job(record.job_id)  # called a moment ago: we have not polled it yet

    stand.stop("s-5")
    follow_up(stand.services)

    record = stand.get(lead_id)
    assert stand.aimylogic.cancels[0]["answer"] == []
    assert record.status is Status.SENT and "cancel" not in record.work
    assert record.work["poll"].due == stand.services.clock()  # the poller tells how it ended
    assert "cancel not confirmed: Aimylogic did not cancel it" in history(record)


@pytest.mark.parametrize("shape", ["object", "empty"])
def test_an_answer_in_an_undocumented_shape_never_marks_a_lead_canceled(stand, shape):
    lead_id = stand.lead("s-6", "+79123456706")
    deliver_pending(stand.services)
    stand.aimylogic.cancel_answer = shape
    stand.stop("s-6")
    follow_up(stand.services)
    record = stand.get(lead_id)
    assert record.status is Status.SENT and "poll" in record.work and "cancel" not in record.work
    assert "not a list of job ids" in history(record)


def test_a_job_placed_by_a_replaced_token_is_parked_for_a_person(stand):
    lead_id = stand.lead("s-7", "+79123456707")
    deliver_pending(stand.services)
    record = stand.get(lead_id)
    stand.services.store.update(replace(record, job_token="0badf00d"), owner=None)
    stand.stop("s-7")
    follow_up(stand.services)
    record = stand.get(lead_id)
    assert stand.aimylogic.cancels == []
    assert record.work["cancel"].due is None and "token was replaced" in record.work["cancel"].error


# After the call


def test_a_lead_whose_call_ended_keeps_its_outcome_and_the_stop_is_recorded(stand):
    lead_id = stand.lead("s-8", "+79123456708")
    deliver_pending(stand.services)
    record = stand.get(lead_id)
    outcome = {"job_status": "longCallWithResult", "call_result": "interested"}
    record.outcome = outcome
    lifecycle.drop_work(record, "poll")
    assert lifecycle.save(stand.services, record, Status.CALLED, stand.services.clock(), "report", owner=None)

    stopped = stand.stop("s-8")

    assert stopped["leads"] == [{"lead_id": lead_id, "did": "recorded"}]
    record = stand.get(lead_id)
    assert record.status is Status.CALLED and record.outcome == outcome and not record.work
    assert "stop recorded: closed in the CRM; it stays called" in history(record)
    follow_up(stand.services)
    assert stand.aimylogic.cancels == []


# Idempotency and tombstones


def test_a_repeated_stop_is_answered_as_the_first_time_and_applied_once(stand):
    lead_id = stand.lead("s-9", "+79123456709")
    deliver_pending(stand.services)
    first = stand.stop("s-9")
    second = stand.stop("s-9")
    assert second == {**first, "status": "already received"}
    follow_up(stand.services)
    stand.stop("s-9")
    follow_up(stand.services)
    assert len(stand.aimylogic.cancels) == 1
    assert history(stand.get(lead_id)).count("(stop ") == 1


def test_a_stop_for_a_record_not_seen_yet_leaves_a_tombstone_and_a_late_lead_is_not_called(stand):
    stopped = stand.stop("s-10", reason="lost")
    assert stopped == {"record": "s-10", "reason": "closed in the CRM: lost", "leads": [], "tombstone": True}

    [late] = stand.post({"id": "s-10", "phone": "+79123456710"})["leads"]  # the CRM's retry, out of order

    assert late["status"] == "canceled"
    assert late["reason"] == "the CRM stopped this record before the lead arrived: closed in the CRM: lost"
    record = stand.get(late["lead_id"])
    assert record.status is Status.CANCELED and record.next_attempt_at is None and record.final
    assert deliver_pending(stand.services).sent == 0 and stand.aimylogic.entries == []
    again = stand.post({"id": "s-10", "phone": "+79123456710"})["leads"][0]
    assert (again["status"], again["lead_id"]) == ("canceled", late["lead_id"])  # its retry: the same answer


def test_a_tombstone_is_kept_key_ttl_and_written_to_expire(stand):
    services, clock = stand.services, stand.services.clock
    stand.stop("s-11")
    assert tombstone(services, "generic", "s-11", clock()) is not None
    clock.advance(seconds=KEY_TTL.total_seconds() - 1)
    assert tombstone(services, "generic", "s-11", clock()) is not None
    clock.advance(seconds=1)
    assert tombstone(services, "generic", "s-11", clock()) is None
    services.store.purge(clock())
    if services.settings.leads_store.startswith("sqlite"):
        assert services.store.get_meta(mark_name("generic", "s-11")) is None


def test_a_stop_event_never_creates_a_call_and_needs_the_key(stand):
    response = requests.post(f"{stand.url}/webhooks/generic", json={"event": "lead.closed", "id": "x"}, timeout=10)
    assert response.status_code == 401
    assert stand.services.store.get_meta(mark_name("generic", "x")) is None
    stand.stop("x")
    assert stand.services.store.list() == []


def test_a_stop_without_an_id_is_a_clear_400(stand):
    response = requests.post(f"{stand.url}/webhooks/generic?key={SECRET}", json=[{"id": "a", "phone": "+79123456711"},
                             {"event": "lead.closed"}], timeout=10)  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {"error": "malformed", "message": "a lead.closed event needs the lead's id",
                               "field": "[1].id"}  # fmt: skip
    assert stand.services.store.list() == []


def test_stop_events_from_fixtures_json_and_form(stand):
    lead_id = stand.lead("lead-1001", "+79123456712")
    answer = stand.post(json.loads((STOPS / "closed.json").read_text()))
    assert answer["leads"] == [] and answer["stops"][0]["leads"] == [{"lead_id": lead_id, "did": "canceled"}]
    other = stand.lead("lead-1002", "+79123456713")
    answer = stand.post((STOPS / "deleted.form").read_bytes(), form=True)
    assert answer["stops"][0]["leads"] == [{"lead_id": other, "did": "canceled"}]
    assert answer["stops"][0]["reason"] == "deleted in the CRM: merged into lead-1003"


# Races


def test_a_stop_while_the_lead_is_being_sent_cancels_its_job_once_its_id_is_known(stand):
    lead_id = stand.lead("r-1", "+79123456720")
    stand.aimylogic.record_then_hang(10)  # Aimylogic takes the entry; its answer is slow
    sender = threading.Thread(target=deliver_pending, args=(stand.services,))
    sender.start()
    while not stand.aimylogic.hanging:
        time.sleep(0.005)
    assert stand.get(lead_id).status is Status.SENDING

    stopped = stand.stop("r-1")

    assert stopped["leads"] == [{"lead_id": lead_id, "did": "deferred"}]  # never written under the sender's lease
    stand.aimylogic.recover()  # the answer arrives
    sender.join(timeout=10)
    record = stand.get(lead_id)
    assert record.status is Status.SENT and record.job_id in stand.aimylogic.jobs_of()
    assert "cancel" in record.work and stand.kicks  # planned by the sender right after it recorded the job
    follow_up(stand.services)
    assert stand.aimylogic.cancelled_ids() == [record.job_id]
    assert stand.get(lead_id).status is Status.CANCELED


def test_a_stop_of_a_lead_whose_sender_died_mid_send_cancels_by_phone(stand):
    services, clock = stand.services, stand.services.clock
    lead_id = stand.lead("r-2", "+79123456721")
    [claimed] = services.store.claim(Status.PENDING, clock(), 60, 1, "dead-sender")
    stand.aimylogic.calls["9"] = json.loads(claimed.entry)  # its addPhones got through before it died
    stand.aimylogic.campaigns[TOKEN].jobs.append("9")
    clock.advance(seconds=61)

    assert stand.stop("r-2")["leads"] == [{"lead_id": lead_id, "did": "cancel_planned"}]
    assert stand.get(lead_id).status is Status.CANCELED  # never sent again
    follow_up(services)

    [request] = stand.aimylogic.cancels
    assert request["phones"] == ["79123456721"] and request["answer"] == ["9"]
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and not record.work and record.outcome["canceled_ids"] == ["9"]
    assert deliver_pending(services).sent == 0


def poll_later(run, leads):
    """A stand-in for the poll handler (crm2calls/outcomes.py): looks again in a minute."""
    for record in leads:
        lifecycle.set_work(record, "poll", run.now + timedelta(minutes=1))
        lifecycle.save_work(run.services, record, run.now, owner=run.owner)


def test_a_stop_while_a_follow_up_pass_holds_the_lead_is_applied_after_its_write(stand, monkeypatch):
    from crm2calls import followup

    monkeypatch.setitem(followup.TASKS, "poll", "tests.test_stops:poll_later")
    services, clock = stand.services, stand.services.clock
    lead_id = stand.lead("r-3", "+79123456722")
    deliver_pending(services)
    clock.advance(seconds=61)  # its first poll is due
    seen: list[Any] = []
    original = services.store.claim

    def claim_then_stop(status, now, lease, limit, owner):
        claimed = original(status, now, lease, limit, owner)
        if claimed and status is Status.SENT:
            seen.append(stand.stop("r-3"))  # arrives while the pass holds the lead
        return claimed

    services.store.claim = claim_then_stop
    try:
        follow_up(services)
    finally:
        del services.store.claim
    assert seen[0]["leads"] == [{"lead_id": lead_id, "did": "deferred"}]
    record = stand.get(lead_id)
    assert "cancel" in record.work  # the pass read the mark after its own write
    follow_up(services)
    assert stand.get(lead_id).status is Status.CANCELED


# Durable cancels: an outage


def test_a_cancel_through_an_outage_is_retried_with_backoff_survives_a_restart_and_shows_in_health(
    stand, monkeypatch
):
    from crm2calls import followup

    monkeypatch.setitem(followup.TASKS, "poll", "tests.test_stops:poll_later")
    services, clock = stand.services, stand.services.clock
    lead_id = stand.lead("o-1", "+79123456730")
    deliver_pending(services)
    stand.aimylogic.fail_next(503, times=2, only="callJob/cancel")
    stand.aimylogic.fail_next(429, retry_after=600, only="callJob/cancel")
    stand.stop("o-1")

    follow_up(services)
    record = stand.get(lead_id)
    item = record.work["cancel"]
    assert record.status is Status.SENT and item.attempts == 1 and "HTTP 503" in item.error
    assert clock() + timedelta(seconds=2.5) <= item.due <= clock() + timedelta(seconds=5)
    health = stand.health()
    assert health["cancels_retrying"] == 1 and "cancels_retrying" in [r["code"] for r in health["reasons"]]
    assert follow_up(services).tasks == {}  # not due yet

    clock.now = item.due
    follow_up(services)
    assert stand.get(lead_id).work["cancel"].attempts == 2

    restarted = replace(services, _store=None, _dialers={}, _sources={})  # a new process on the same store
    clock.now = stand.get(lead_id).work["cancel"].due
    follow_up(restarted)
    item = restarted.store.get(lead_id).work["cancel"]
    assert item.attempts == 3 and item.due >= clock() + timedelta(seconds=600)  # Retry-After honoured

    clock.now = item.due
    follow_up(restarted)
    record = restarted.store.get(lead_id)
    assert record.status is Status.CANCELED and [c["answer"] for c in stand.aimylogic.cancels] == [[record.job_id]]
    assert "cancels_retrying" not in stand.health()


# Update events: looked up in the CRM by the worker, only while we have work for the record


class ClosingCrm(Source):
    """A CRM whose records are looked up by check_stop: answers scripted per call."""

    name = "scripted"
    answers: list[Any] = []
    checked: list[StopEvent] = []

    def check_stop(self, event, now):
        self.checked.append(event)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def crm(stand):
    source = ClosingCrm(stand.services.settings, stand.services.settings.policy.source("scripted"))
    source.answers, source.checked = [], []
    stand.services._sources["scripted"] = source
    return source


def scripted_lead(stand, ref: str, phone: str) -> str:
    """A lead of the scripted CRM, sent to Aimylogic."""
    from crm2calls.intake import new_lead_id
    from crm2calls.model import LeadRecord

    services = stand.services
    now = services.clock()
    record = LeadRecord(id=new_lead_id(now), source="scripted", key=f"scripted:{ref}", ref=ref,
                        status=Status.RECEIVED, created_at=now, updated_at=now, next_attempt_at=now)  # fmt: skip
    from crm2calls.model import Lead, PhoneCandidate

    lead = Lead(external_id=ref, phones=[PhoneCandidate(phone, "mobile")])
    stored, created, _ = lifecycle.accept_new(services, record, lead, now)
    assert created and stored.status is Status.PENDING
    deliver_pending(services)
    return stored.id


def test_an_update_event_is_looked_up_by_the_worker_and_stops_the_call(stand, crm):
    lead_id = scripted_lead(stand, "deal:7", "+79123456740")
    crm.answers = [EnrichmentError("HTTP 503", retryable=True), "deal:7 is won"]
    [result] = apply_stops(stand.services, "scripted", [StopEvent("e1", "deal:7", "deal updated", check=True,
                                                                  raw={"deal_id": "7"})])  # fmt: skip
    assert result.leads == {lead_id: "check_planned"} and crm.checked == []  # no CRM call on the request path

    follow_up(stand.services)  # the CRM is down: retried like enrichment
    item = stand.get(lead_id).work["check_stop"]
    assert item.attempts == 1 and item.error == "HTTP 503"
    stand.services.clock.now = item.due
    follow_up(stand.services)
    assert crm.checked[-1] == StopEvent("e1", "deal:7", "deal updated", True, {"deal_id": "7"})
    follow_up(stand.services)
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and record.outcome["reason"] == "deal:7 is won"


def test_an_update_that_is_no_stop_lets_the_call_go_on(stand, crm):
    lead_id = scripted_lead(stand, "deal:8", "+79123456741")
    crm.answers = [None]
    apply_stops(stand.services, "scripted", [StopEvent("e2", "deal:8", "deal updated", check=True)])
    follow_up(stand.services)
    record = stand.get(lead_id)
    assert record.status is Status.SENT and "check_stop" not in record.work and "poll" in record.work
    assert "still open" in history(record) and stand.aimylogic.cancels == []


def test_an_update_of_a_record_we_have_no_work_for_writes_nothing(stand, crm):
    [result] = apply_stops(stand.services, "scripted", [StopEvent("e3", "deal:9", "deal updated", check=True)])
    assert result.leads == {} and not result.tombstone
    assert stand.services.store.get_meta(mark_name("scripted", "deal:9")) is None


def test_an_update_of_a_lead_not_sent_yet_is_looked_up_once_it_is_sent(stand, crm):
    from crm2calls.intake import new_lead_id
    from crm2calls.model import Lead, LeadRecord, PhoneCandidate

    services = stand.services
    now = services.clock()
    record = LeadRecord(id=new_lead_id(now), source="scripted", key="scripted:deal:10", ref="deal:10",
                        status=Status.RECEIVED, created_at=now, updated_at=now, next_attempt_at=now)  # fmt: skip
    lead = Lead(external_id="deal:10", phones=[PhoneCandidate("+79123456742", "mobile")])
    stored, _, _ = lifecycle.accept_new(services, record, lead, now)
    [result] = apply_stops(services, "scripted", [StopEvent("e4", "deal:10", "deal updated", check=True)])
    assert result.leads == {stored.id: "nothing"} and stand.get(stored.id).status is Status.PENDING

    crm.answers = ["deal:10 is lost"]
    deliver_pending(services)  # sent, then its stop mark read: the check is planned
    assert "check_stop" in stand.get(stored.id).work
    follow_up(services)
    follow_up(services)
    assert stand.get(stored.id).status is Status.CANCELED and len(crm.checked) == 1


class SlowCrm(ClosingCrm):
    """A CRM whose phone lookup (enrichment) waits until the test lets it answer."""

    go = threading.Event()
    asked = threading.Event()

    def enrich(self, event, now):
        from crm2calls.model import Lead, PhoneCandidate

        self.asked.set()
        assert self.go.wait(10)
        return Lead(external_id=event.ref, phones=[PhoneCandidate("+79123456743", "mobile")])


def test_a_stop_while_the_worker_fetches_the_phone_cancels_the_job_right_after_its_send(stand):
    from crm2calls.intake import new_lead_id
    from crm2calls.model import LeadRecord

    services = stand.services
    source = SlowCrm(services.settings, services.settings.policy.source("scripted"))
    source.go, source.asked = threading.Event(), threading.Event()
    services._sources["scripted"] = source
    now = services.clock()
    record = LeadRecord(id=new_lead_id(now), source="scripted", key="scripted:lead:11", ref="lead:11",
                        status=Status.RECEIVED, created_at=now, updated_at=now, next_attempt_at=now)  # fmt: skip
    stored, _, _ = lifecycle.accept_new(services, record, None, now)
    worker = threading.Thread(target=deliver_pending, args=(services,))
    worker.start()
    assert source.asked.wait(10)

    [result] = apply_stops(services, "scripted", [StopEvent("e5", "lead:11", "lead deleted")])

    assert result.leads == {stored.id: "deferred"}
    source.go.set()
    worker.join(timeout=10)
    record = stand.get(stored.id)
    assert record.status is Status.SENT and "cancel" in record.work  # placed, then its cancel planned at once
    follow_up(services)
    assert stand.aimylogic.cancelled_ids() == [record.job_id] and stand.get(stored.id).status is Status.CANCELED


def test_a_stop_naming_no_record_touches_nothing(stand):
    [summary] = stand.post({"phone": "+79123456744"})["leads"]  # a lead without an id: its ref is "-"
    assert stand.stop("-") == {"record": "-", "reason": "closed in the CRM", "leads": []}
    assert stand.get(summary["lead_id"]).status is Status.PENDING


def test_a_stop_cut_short_by_a_store_failure_is_finished_by_the_crms_retry(stand):
    from crm2calls.errors import StoreError
    from crm2calls.intake import new_lead_id
    from crm2calls.model import Lead, LeadRecord, PhoneCandidate

    stand.lead("s-12", "+79123456745")
    now = stand.services.clock()
    again = LeadRecord(id=new_lead_id(now), source="generic", key="generic:other-event", ref="s-12",
                       status=Status.RECEIVED, created_at=now, updated_at=now, next_attempt_at=now)  # fmt: skip
    lifecycle.accept_new(stand.services, again, Lead("s-12", [PhoneCandidate("+79123456746")]), now)
    store = stand.services.store
    original = store.lease
    calls = []

    def fail_second_lease(lead_id, *args):
        calls.append(lead_id)
        if len(calls) == 2:
            raise StoreError("sqlite store: database is locked")
        return original(lead_id, *args)

    store.lease = fail_second_lease
    try:
        response = requests.post(f"{stand.url}/webhooks/generic?key={SECRET}", json={"event": "lead.closed",
                                 "id": "s-12"}, timeout=10)  # fmt: skip
    finally:
        del store.lease
    assert response.status_code == 503  # the CRM retries the event

    stopped = stand.stop("s-12")

    assert "status" not in stopped and [lead["did"] for lead in stopped["leads"]] == ["already stopped", "canceled"]
    assert {record.status for record in store.find_by_ref("generic", "s-12")} == {Status.CANCELED}


def test_one_unknown_id_refused_with_a_400_does_not_leave_the_other_jobs_calling(stand):
    ids = [stand.lead(f"u-{n}", f"+791234567{n:02d}") for n in range(60, 64)]
    deliver_pending(stand.services)
    gone = stand.get(ids[1])
    stand.services.store.update(replace(gone, job_id="999"), owner=None)  # a job id Aimylogic never had
    stand.aimylogic.unknown_answer = 400
    stand.post([{"event": "lead.closed", "id": f"u-{n}"} for n in range(60, 64)])

    follow_up(stand.services)

    assert [stand.get(lead_id).status for lead_id in ids] == [Status.CANCELED, Status.SENT, Status.CANCELED,
                                                              Status.CANCELED]  # fmt: skip
    assert "cancel not confirmed: Aimylogic cancel: HTTP 400" in history(stand.get(ids[1]))
    assert len(stand.aimylogic.cancels) == 5  # the four, the refused half, each of its two, the other half


def test_a_send_reads_no_stop_mark_unless_a_stop_came_after_its_leads(stand, monkeypatch):
    store = stand.services.store
    read: list[str] = []
    original = store.get_meta
    monkeypatch.setattr(store, "get_meta", lambda name: read.append(name) or original(name))
    for n in range(3):
        stand.lead(f"q-{n}", f"+7912345677{n}")
    stand.services.clock.advance(seconds=10)
    stand.stop("someone-else")  # a stop of another record, after these leads arrived
    read.clear()
    deliver_pending(stand.services)
    marks = [name for name in read if name.startswith("stop")]
    assert marks[0] == "stops:latest" and sorted(marks[1:]) == [f"stop:generic:q-{n}" for n in range(3)]

    stand.services.clock.advance(seconds=10)
    stand.lead("q-3", "+79123456773")  # arrived after the latest stop: its mark is not read
    read.clear()
    deliver_pending(stand.services)
    assert [name for name in read if name.startswith("stop")] == ["stops:latest"]


def test_cancels_are_counted_by_result(stand):
    from crm2calls import metrics

    sink = metrics.PrometheusSink()
    previous = metrics.use(sink)
    try:
        ended, queued = stand.lead("k-1", "+79123456721"), stand.lead("k-2", "+79123456722")
        deliver_pending(stand.services)
        stand.aimylogic.finish_job(stand.get(ended).job_id)
        stand.post([{"event": "lead.closed", "id": "k-1"}, {"event": "lead.closed", "id": "k-2"}])
        follow_up(stand.services)
    finally:
        metrics.use(previous)
    count = lambda result: sink.registry.get_sample_value(  # noqa: E731
        "crm2calls_cancels_total", {"campaign": "default", "result": result}
    )
    assert (count("canceled"), count("not_canceled")) == (1, 1)
    assert stand.get(queued).status is Status.CANCELED
