"""deliver_pending against the Aimylogic emulator and a SQLite store, time moved by hand."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from crm2calls.aimylogic import DryRunDialer
from crm2calls.campaigns import meta_name as campaign_meta
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, EnrichmentError, StoreError, UnavailableError
from crm2calls.guards import phone_key, slot_name
from crm2calls.intake import new_lead_id
from crm2calls.model import Lead, LeadRecord, PhoneCandidate, Status
from crm2calls.phones import mask
from crm2calls.sources.base import Source
from crm2calls.store import open_store
from crm2calls.store.base import ClaimRefusedError, Claims
from crm2calls.worker import DeliveryWorker
from tests.conftest import FIXTURES, TOKEN

ENTRY = json.loads((FIXTURES / "aimylogic" / "entry.json").read_text())
CAP = 300  # backoff_cap_seconds in the tests' policy


@pytest.fixture
def make(make_services, shipped_policy, aimylogic):
    """Services delivering to the emulator, with delivery policy fields overridden."""

    def build(**delivery):
        policy = replace(
            shipped_policy, delivery=replace(shipped_policy.delivery, backoff_cap_seconds=CAP, **delivery)
        )
        return make_services(policy=policy, aimylogic_token=TOKEN, aimylogic_url=aimylogic.url, dry_run=False)

    return build


def add_lead(services, n: int, *, created_at=None, **entry_changes) -> LeadRecord:
    """Store a PENDING lead as intake would leave it: frozen entry, phone key, phone slot claimed."""
    now = services.clock()
    entry = {**copy.deepcopy(ENTRY), "phone": f"7912{n:07d}", **entry_changes}
    record = LeadRecord(
        id=new_lead_id(now),
        source="generic",
        key=f"generic:{n}",
        ref=str(n),
        status=Status.PENDING,
        created_at=created_at or now,
        updated_at=now,
        next_attempt_at=now,
        entry=json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        phone_masked=mask(entry["phone"]),
        phone_key=phone_key(entry["phone"]),
    )
    stored, _ = services.store.insert(record, Claims(slot_name(record.phone_key), timedelta(hours=24)))
    return stored


def add_leads(services, count: int) -> list[LeadRecord]:
    return [add_lead(services, n) for n in range(count)]


def statuses(services) -> dict[str, int]:
    return {status: n for status, n in services.store.count_by_status().items() if n}


def all_leads(services) -> list[LeadRecord]:
    return services.store.list(limit=100_000)


def slot_is_free(services, record: LeadRecord) -> bool:
    """Whether another lead could take this lead's phone now (the slot was released); the probe keeps it."""
    now = services.clock()
    probe = replace(record, id=new_lead_id(now), key=f"probe:{record.key}", status=Status.DUPLICATE, updated_at=now)
    try:
        services.store.insert(probe, Claims(slot_name(record.phone_key), timedelta(hours=24)))
    except ClaimRefusedError:
        return False
    return True


# Sending


def test_entries_go_out_as_frozen_and_job_ids_map_back(make, aimylogic):
    services = make()
    leads = add_leads(services, 3)

    report = deliver_pending(services)

    assert (report.sent, report.requests) == (3, 1)
    assert aimylogic.requests[0].json() == [json.loads(lead.entry) for lead in leads]
    for lead in leads:
        stored = services.store.get(lead.id)
        assert stored.status is Status.SENT and stored.attempts == 1
        assert aimylogic.calls[stored.job_id]["phone"] == json.loads(lead.entry)["phone"]
        assert stored.lease_owner is None and stored.lease_until is None


def test_ten_duplicate_inserts_reach_aimylogic_once(make, aimylogic):
    services = make()
    for _ in range(10):
        add_lead(services, 7)  # a CRM retrying the same event: same key, new id each time

    deliver_pending(services)
    deliver_pending(services)

    assert len(aimylogic.entries) == 1 and len(aimylogic.calls) == 1
    assert statuses(services) == {"sent": 1}


def test_concurrent_passes_send_each_lead_once(make, aimylogic):
    services = make(batch_size=10, concurrency=2)
    add_leads(services, 200)
    aimylogic.delay = 0.02  # keep requests in flight so the passes overlap

    passes = [threading.Thread(target=deliver_pending, args=(services,)) for _ in range(3)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()

    assert len(aimylogic.entries) == 200 and aimylogic.duplicates_ignored == 0
    assert statuses(services) == {"sent": 200}


@pytest.mark.slow  # ~3,000 fsynced SQLite commits
def test_batches_of_batch_size(make, aimylogic):
    services = make(batch_size=100, concurrency=4)
    add_leads(services, 1000)

    report = deliver_pending(services)

    assert report.requests == 10 and report.sent == 1000
    assert sorted(len(r.json()) for r in aimylogic.requests) == [100] * 10
    assert len(aimylogic.calls) == 1000
    assert set(aimylogic.calls_per_phone().values()) == {1}


def test_job_id_count_mismatch_keeps_every_id_on_every_lead(make, aimylogic, caplog):
    services = make()
    leads = add_leads(services, 3)
    aimylogic.fail_next(200, body='["101", "102"]')  # scripted: two ids for three entries

    deliver_pending(services)

    assert {services.store.get(lead.id).job_id for lead in leads} == {"101,102"}
    assert "2 job ids for 3 entries" in caplog.text


def test_a_dry_run_ends_leads_dry_run_without_a_job_id(make_services):
    services = make_services()  # DRY_RUN
    lead = add_lead(services, 1)

    report = deliver_pending(services)

    assert isinstance(services.dialer, DryRunDialer)
    stored = services.store.get(lead.id)
    assert (stored.status, stored.job_id, report.dry_run, report.sent) == (Status.DRY_RUN, None, 1, 0)


def test_time_budget_stops_between_rounds(make, aimylogic):
    services = make(batch_size=1, concurrency=1)
    add_leads(services, 5)
    aimylogic.delay = 0.2

    report = deliver_pending(services, time_budget=0.3)

    assert 1 <= report.sent < 5
    assert statuses(services) == {"sent": report.sent, "pending": 5 - report.sent}


# Retries


@pytest.mark.slow  # 500 leads retried for 30 emulated minutes: thousands of fsynced commits
def test_a_30_minute_outage_loses_nothing_and_sends_each_lead_once(make, aimylogic, clock):
    services = make()
    add_leads(services, 500)
    aimylogic.fail_next(503, times=10**6)

    for _ in range(30):
        report = deliver_pending(services)
        assert report.sent == 0 and report.failed == 0
        clock.advance(minutes=1)
    outage_requests = len(aimylogic.requests)
    aimylogic.recover()

    passes = 0
    while statuses(services) != {"sent": 500} and passes < 2:
        clock.advance(seconds=CAP)  # every retry is due within the backoff cap
        deliver_pending(services)
        passes += 1

    assert statuses(services) == {"sent": 500}
    assert outage_requests > 30 and aimylogic.calls and aimylogic.duplicates_ignored == 0
    assert len(aimylogic.calls) == 500 and set(aimylogic.calls_per_phone().values()) == {1}
    assert all(1 < lead.attempts <= 15 for lead in all_leads(services))


def test_retry_after_is_respected(make, aimylogic, clock):
    services = make()
    lead = add_lead(services, 1)
    aimylogic.fail_next(429, retry_after=900)
    start = clock()

    report = deliver_pending(services)
    stored = services.store.get(lead.id)

    assert report.retried == 1
    assert stored.status is Status.PENDING and stored.attempts == 1
    assert stored.next_attempt_at >= start + timedelta(seconds=900)
    assert "HTTP 429" in stored.last_error
    clock.advance(seconds=899)
    assert deliver_pending(services).requests == 0
    clock.advance(seconds=1)
    assert deliver_pending(services).sent == 1


def test_backoff_grows_and_stays_under_the_cap(make, aimylogic, clock):
    services = make(backoff_base_seconds=5)
    lead = add_lead(services, 1)
    aimylogic.fail_next(503, times=100)
    delays = []
    for _ in range(10):
        now = clock()
        deliver_pending(services)
        stored = services.store.get(lead.id)
        delays.append((stored.next_attempt_at - now).total_seconds())
        clock.now = stored.next_attempt_at

    assert 2.5 <= delays[0] <= 5 and 5 <= delays[1] <= 10
    assert all(CAP / 2 <= d <= CAP for d in delays[-3:])


def test_max_send_attempts_fails_the_lead_and_frees_its_phone(make, aimylogic, clock):
    services = make(max_send_attempts=3)
    lead = add_lead(services, 1)
    aimylogic.fail_next(503, times=100)

    reports = []
    for _ in range(4):
        reports.append(deliver_pending(services))
        clock.advance(seconds=CAP)
    stored = services.store.get(lead.id)

    assert [r.requests for r in reports] == [1, 1, 1, 0]
    assert stored.status is Status.FAILED and stored.attempts == 3
    assert "HTTP 503" in stored.last_error and reports[2].failed == 1
    assert slot_is_free(services, stored)


def test_max_age_fails_the_lead(make, aimylogic, clock):
    services = make(max_age_hours=72)
    lead = add_lead(services, 1, created_at=clock() - timedelta(hours=72))
    aimylogic.fail_next(503)

    report = deliver_pending(services)

    assert report.failed == 1 and services.store.get(lead.id).status is Status.FAILED


# Rejections


def test_one_invalid_entry_is_isolated_and_the_rest_delivered(make, aimylogic):
    services = make(batch_size=10)
    leads = [add_lead(services, n) for n in range(10)]
    bad = add_lead(services, 99, gmtZone="+25:00")  # hand-broken: our schemas would never render this

    report = deliver_pending(services)

    rejected = services.store.get(bad.id)
    assert rejected.status is Status.REJECTED
    assert "gmtZone" in rejected.last_error and "HTTP 400" in rejected.last_error
    assert all(services.store.get(lead.id).status is Status.SENT for lead in leads)
    assert len(aimylogic.calls) == 10 and "7912" + "0000099" not in aimylogic.calls_per_phone()
    assert report.rejected == 1 and report.sent == 10 and report.requests == len(aimylogic.requests)
    assert slot_is_free(services, rejected)


# A refused token


def test_a_refused_token_holds_its_campaign_until_the_token_works(make, aimylogic, clock, caplog):
    services = make(batch_size=2, concurrency=4)
    leads = add_leads(services, 5)
    aimylogic.fail_next(401, times=2, only="status")  # the check before the pass, then the probe after CAP
    start = clock()

    first = deliver_pending(services)
    state = services.store.get_meta(campaign_meta("default"))

    assert first.paused and first.requests == 0  # the status check found out: no addPhones spent on it
    assert state["delivery"] == "token_refused" and "AIMYLOGIC_TOKEN" in state["reason"]
    assert state["since"] == start.isoformat()
    assert state["retry_at"] == (start + timedelta(seconds=CAP)).isoformat()
    assert all(services.store.get(lead.id).attempts == 0 for lead in leads)
    assert statuses(services) == {"held": 5}
    assert any(r.levelno == logging.ERROR and "AIMYLOGIC_TOKEN" in r.getMessage() for r in caplog.records)

    clock.advance(seconds=CAP - 1)
    asked = aimylogic.count("status")
    assert deliver_pending(services).requests == 0 and aimylogic.count("status") == asked  # nothing is asked

    clock.advance(seconds=1)
    probe = deliver_pending(services)  # one status request probes, and is refused again
    assert probe.requests == 0 and probe.paused and aimylogic.count("status") == asked + 1
    assert services.store.get_meta(campaign_meta("default"))["since"] == start.isoformat()

    clock.advance(seconds=CAP)
    resumed = deliver_pending(services)
    assert resumed.requests == 3 and resumed.sent == 5 and not resumed.paused
    assert services.store.get_meta(campaign_meta("default"))["delivery"] == "sending"
    assert all(services.store.get(lead.id).attempts == 1 for lead in leads)


def test_a_token_refused_by_addphones_holds_the_batch_not_a_lead(make, aimylogic, clock):
    services = make(batch_size=2, concurrency=1)
    leads = add_leads(services, 4)
    aimylogic.fail_next(401)  # addPhones refuses the token; the status check before the pass did not

    report = deliver_pending(services)

    assert report.paused and report.requests == 1 and statuses(services) == {"held": 4}
    assert all(services.store.get(lead.id).attempts == 0 for lead in leads)
    clock.advance(seconds=CAP)
    assert deliver_pending(services).sent == 4


# Leases


def test_a_worker_that_lost_its_lease_still_records_the_job_ids_it_got(make, aimylogic):
    services = make()
    leads = add_leads(services, 2)
    real = services.dialer

    class Thief:
        """Sends, then another worker takes the leads over before the answer is recorded."""

        def add_phones(self, entries):
            ids = real.add_phones(entries)
            for lead in leads:
                stolen = services.store.get(lead.id)
                stolen.lease_owner = "another-worker"
                services.store.update(stolen, owner=None)
            return ids

    services._dialers["default"] = Thief()

    report = deliver_pending(services)

    assert report.sent == 2 and report.requests == 1
    for lead in leads:
        stored = services.store.get(lead.id)
        assert stored.status is Status.SENT and stored.job_id in aimylogic.calls
        assert stored.lease_owner is None  # the other worker cannot send it again: its lease is gone


# Enrichment: leads whose phone must be fetched from the CRM


class ScriptedSource(Source):
    """A CRM whose API answers each lead from a script: an exception to raise, or a phone."""

    name = "scripted"

    def __init__(self, settings, policy):
        super().__init__(settings, policy)
        self.script: dict[str, list] = {}
        self.calls = 0

    def enrich(self, event, now):
        self.calls += 1
        steps = self.script[event.ref]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, Exception):
            raise step
        assert event.raw == {"lead_id": event.ref}  # rebuilt from what intake stored
        return Lead(external_id=event.ref, phones=[PhoneCandidate(step, "mobile")], fields={"crm_id": event.ref})


@pytest.fixture
def enrichment(make):
    services = make(enrich_max_attempts=3)
    source = ScriptedSource(services.settings, services.settings.policy.source("scripted"))
    services._sources["scripted"] = source

    def receive(ref: str, *steps, created_at=None) -> LeadRecord:
        now = services.clock()
        source.script[ref] = list(steps)
        record = LeadRecord(
            id=new_lead_id(now), source="scripted", key=f"scripted:event-{ref}", ref=ref, status=Status.RECEIVED,
            created_at=created_at or now, updated_at=now, next_attempt_at=now, raw=json.dumps({"lead_id": ref}),
        )
        return services.store.insert(record)[0]

    return services, source, receive


def test_enriched_lead_is_rendered_and_sent_in_the_same_pass(enrichment, aimylogic):
    services, _, receive = enrichment
    lead = receive("a1", "+7 912 345-67-89")

    report = deliver_pending(services)
    stored = services.store.get(lead.id)

    assert (report.enriched, report.sent) == (1, 1)
    assert stored.status is Status.SENT and stored.raw is None
    sent = aimylogic.calls[stored.job_id]
    assert sent["phone"] == "79123456789" and sent["payload"] == {"crm_id": "a1"}
    assert stored.phone_masked == "7912*****89"


def test_enrichment_retries_then_rejects_a_lead_without_a_phone(enrichment, clock):
    services, source, receive = enrichment
    lead = receive("a2", EnrichmentError("the deal has no contact yet"))

    for _ in range(3):
        deliver_pending(services)
        clock.advance(seconds=CAP)
    stored = services.store.get(lead.id)

    assert source.calls == 3
    assert stored.status is Status.REJECTED and stored.last_error == "the deal has no contact yet"


def test_enrichment_not_retryable_rejects_at_once(enrichment):
    services, _, receive = enrichment
    lead = receive("a3", EnrichmentError("lead deleted in the CRM", retryable=False))

    report = deliver_pending(services)

    assert report.rejected == 1 and services.store.get(lead.id).status is Status.REJECTED


def test_crm_down_honours_retry_after_then_fails_past_max_age(enrichment, clock):
    services, _, receive = enrichment
    start = clock()
    lead = receive("a4", UnavailableError("CRM answered HTTP 429", retry_after=600))

    deliver_pending(services)
    stored = services.store.get(lead.id)
    assert stored.status is Status.RECEIVED and stored.attempts == 1
    assert stored.next_attempt_at >= start + timedelta(seconds=600)

    clock.advance(hours=72)
    deliver_pending(services)
    assert services.store.get(lead.id).status is Status.FAILED


def test_crm_auth_error_keeps_the_lead_and_says_what_to_fix(enrichment, clock, caplog):
    services, _, receive = enrichment
    lead = receive("a5", AuthError("scripted API refused our credentials (HTTP 401)"), "+79123456700")
    start = clock()

    deliver_pending(services)
    stored = services.store.get(lead.id)

    assert stored.status is Status.RECEIVED and stored.attempts == 0
    assert stored.next_attempt_at == start + timedelta(seconds=CAP)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("SCRIPTED_*" in message for message in errors)
    clock.advance(seconds=CAP)
    deliver_pending(services)
    assert services.store.get(lead.id).status is Status.SENT


def test_a_bug_in_one_adapter_call_does_not_stop_the_others(enrichment):
    services, _, receive = enrichment
    broken = receive("a6", KeyError("contacts"))
    fine = receive("a7", "+79123456701")

    report = deliver_pending(services)

    assert services.store.get(fine.id).status is Status.SENT
    assert services.store.get(broken.id).status is Status.RECEIVED and report.retried == 1


# The worker thread


def wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_worker_delivers_when_woken(make):
    services = make(poll_seconds=60)  # only wake() can make it run again within the test
    worker = DeliveryWorker(services)
    services.notify = worker.wake
    worker.start()
    try:
        assert wait_for(lambda: worker.alive)
        time.sleep(0.1)  # let the first (empty) pass finish, so the lead is found only after wake()
        lead = add_lead(services, 1)
        services.notify()
        assert wait_for(lambda: services.store.get(lead.id).status is Status.SENT)
    finally:
        worker.stop(timeout=5)
    assert not worker.alive


def add_phones_requests(emulator) -> list[list[dict]]:
    return [request.json() for request in list(emulator.requests) if request.path.endswith("/addPhones")]


def test_worker_sends_at_once_and_groups_what_arrives_while_a_request_is_out(make, aimylogic):
    services = make(poll_seconds=60)
    worker = DeliveryWorker(services)
    services.notify = worker.wake
    worker.start()
    try:
        assert wait_for(lambda: worker.alive)
        time.sleep(0.1)  # the first (empty) pass is over: only wake() starts the next one
        aimylogic.record_then_hang(30)  # the first request is taken, its answer held until recover()
        first = add_lead(services, 1)
        woken = time.monotonic()
        services.notify()
        assert wait_for(lambda: aimylogic.hanging == 1)
        # A worker that lingered after a wake (0.5 s before) would not have sent yet.
        assert time.monotonic() - woken < 0.4
        later = [add_lead(services, n) for n in range(2, 6)]
        for _ in later:
            services.notify()
        assert len(add_phones_requests(aimylogic)) == 1  # nothing more leaves while the request is out
        aimylogic.recover()
        assert wait_for(lambda: all(services.store.get(r.id).status is Status.SENT for r in [first, *later]))
    finally:
        worker.stop(timeout=5)
    sent = add_phones_requests(aimylogic)
    assert [len(body) for body in sent] == [1, 4]
    assert {entry["phone"] for entry in sent[1]} == {f"7912{n:07d}" for n in range(2, 6)}


def test_worker_survives_a_failing_pass(make, caplog, tmp_path):
    services = make(poll_seconds=60)
    real = open_store(services.settings.leads_store)
    failures = iter([StoreError("sqlite store: database is locked")])

    def flaky_store():
        for failure in failures:
            raise failure
        return real

    services.store_factory = flaky_store
    worker = DeliveryWorker(services)
    worker.start()
    try:
        assert wait_for(lambda: "delivery pass failed" in caplog.text)
        lead = add_lead(services, 1)
        worker.wake()
        assert wait_for(lambda: services.store.get(lead.id).status is Status.SENT)
        assert worker.alive
    finally:
        worker.stop(timeout=5)
