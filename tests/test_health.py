"""GET /healthz over real HTTP: one document, every reason code, from single-item reads; time moved by hand."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests

from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, StoreError
from crm2calls.health import CRM_AUTH_META, HEALTH_META
from crm2calls.intake import new_lead_id
from crm2calls.model import Lead, LeadRecord, PhoneCandidate, Status
from crm2calls.policy import GuardPolicy, HealthPolicy
from crm2calls.sources.base import Source
from crm2calls.store import open_store
from schemas.api import HealthSchema
from tests.conftest import SECRET, TOKEN
from tests.emulators.base import LocalServer


class RecordingStore:
    """A real store that notes which of its methods were called, and which meta documents were written."""

    def __init__(self, store):
        self._store = store
        self.calls: list[str] = []
        self.written: list[str] = []

    def __getattr__(self, name):
        method = getattr(self._store, name)

        def recorded(*args, **kwargs):
            self.calls.append(name)
            if name == "put_meta":
                self.written.append(args[0])
            return method(*args, **kwargs)

        return recorded


class RefusingSource(Source):
    """A CRM whose API refuses our credentials until `refusing` is cleared, then gives the lead a phone."""

    name = "scripted"
    refusing = True

    def enrich(self, event, now):
        if self.refusing:
            raise AuthError("scripted API refused our credentials (HTTP 401)")
        return Lead(external_id=event.ref, phones=[PhoneCandidate("+79123456700", "mobile")], fields={})


@pytest.fixture
def serve(make_services, shipped_policy, aimylogic):
    """(services, GET /healthz) for an app served on 127.0.0.1, delivering to the emulator."""
    servers = []

    def start(health: HealthPolicy | None = None, guards: GuardPolicy | None = None, **overrides):
        policy = replace(shipped_policy, health=health or shipped_policy.health, guards=guards or shipped_policy.guards)
        services = make_services(policy=policy, aimylogic_url=aimylogic.url, aimylogic_token=TOKEN, **overrides)
        recording = RecordingStore(open_store(services.settings.leads_store))
        services.store_factory = lambda: recording
        from app import create_app

        server = LocalServer(create_app(services=services)).start()
        servers.append(server)

        def get() -> tuple[int, dict]:
            response = requests.get(f"{server.url}/healthz", timeout=10)
            body = response.json()
            assert HealthSchema().validate(body) == {}, body
            return response.status_code, body

        def post(*leads: dict) -> None:
            for lead in leads:
                response = requests.post(f"{server.url}/webhooks/generic?key={SECRET}", json=lead, timeout=10)
                assert response.status_code == 202

        return services, get, post

    yield start
    for server in servers:
        server.stop()


def codes(body: dict) -> list[str]:
    return [reason["code"] for reason in body["reasons"]]


def lead(n: int) -> dict:
    return {"id": f"h-{n}", "phone": f"+7 912 345-67-{n:02d}"}


def test_after_a_pass_the_document_is_ok_and_complete(serve):
    services, get, _ = serve()
    deliver_pending(services)
    assert get() == (200, {
        "status": "ok", "reasons": [], "dry_run": False,
        "campaigns": {"default": {"aimylogic": None, "delivery": "sending", "held": 0, "oldest_waiting_s": 0}},
        "oldest_waiting_s": 0, "backlog": 0, "counts": {status.value: 0 for status in Status},
    })


def test_the_check_reads_single_items_only_never_counts_or_scans(serve, aimylogic):
    services, get, post = serve()
    aimylogic.fail_next(503, times=5)
    post(lead(1), lead(2))
    deliver_pending(services)
    store = services.store
    store.calls.clear()
    status, body = get()
    assert (status, body["backlog"]) == (200, 2)
    # health, campaign, guard, CRM credentials, write-backs, cancels; counts are maintained, not counted
    assert set(store.calls) == {"get_meta", "count_by_status"} and len(store.calls) <= 7


def test_no_pass_yet_then_a_silent_local_worker_is_a_stalled_delivery(serve, clock):
    services, get, _ = serve()
    status, body = get()
    assert (status, body["status"], codes(body)) == (200, "degraded", ["delivery_stalled"])
    assert "no delivery pass has run yet" in body["reasons"][0]["message"]
    assert body["backlog"] is None and body["oldest_waiting_s"] is None
    deliver_pending(services)
    clock.advance(seconds=30)
    assert get()[1]["status"] == "ok"
    clock.advance(seconds=1)
    status, body = get()
    assert (status, codes(body)) == (200, ["delivery_stalled"])
    assert "no delivery pass for 31 s" in body["reasons"][0]["message"]
    assert "delivery pass failed" in body["reasons"][0]["message"]


def test_on_lambda_three_missed_sweeps_are_a_stalled_delivery(serve, clock):
    services, get, _ = serve(on_lambda=True)
    deliver_pending(services)
    clock.advance(minutes=3)
    assert get()[1]["status"] == "ok"
    clock.advance(seconds=1)
    body = get()[1]
    assert codes(body) == ["delivery_stalled"] and "zappa schedule" in body["reasons"][0]["message"]


def test_backlog_and_oldest_waiting_over_the_mapping_files_thresholds(serve, aimylogic, clock):
    services, get, post = serve(health=HealthPolicy(max_waiting_minutes=5, max_backlog=2))
    aimylogic.fail_next(503, times=50)  # Aimylogic is down: the leads wait
    post(lead(1), lead(2))
    deliver_pending(services)
    assert get()[1]["status"] == "ok"
    post(lead(3))
    deliver_pending(services)
    status, body = get()
    assert (status, body["backlog"], codes(body)) == (200, 3, ["backlog_high"])
    assert "max_backlog = 2" in body["reasons"][0]["message"]
    clock.advance(minutes=5, seconds=1)
    deliver_pending(services)
    status, body = get()
    assert body["oldest_waiting_s"] == 301
    assert (status, codes(body)) == (200, ["lead_waiting_too_long", "backlog_high"])
    aimylogic.recover()
    clock.advance(minutes=1)  # past the leads' backoff
    deliver_pending(services)
    body = get()[1]
    assert (body["status"], body["backlog"], body["oldest_waiting_s"]) == ("ok", 0, 0)


def test_a_refused_token_shows_on_the_campaign(serve, aimylogic):
    services, get, post = serve()
    aimylogic.fail_next(401)
    post(lead(1))
    deliver_pending(services)
    status, body = get()
    assert (status, body["status"], codes(body)) == (200, "degraded", ["token_refused"])
    assert body["campaigns"]["default"]["delivery"] == "token_refused"
    assert "AIMYLOGIC_TOKEN" in body["reasons"][0]["message"] and TOKEN not in json.dumps(body)


def test_a_held_campaign_shows_its_held_leads(serve, clock):
    services, get, post = serve(guards=GuardPolicy(calls_per_minute=1))
    post(lead(1), lead(2), lead(3))
    deliver_pending(services)
    clock.advance(minutes=1)
    deliver_pending(services)  # one more admitted, the last one held again
    status, body = get()
    assert (status, codes(body)) == (200, ["campaign_held"])
    held = {"aimylogic": "inProcess", "delivery": "held", "held": 1, "oldest_waiting_s": 0}
    assert body["campaigns"]["default"] == held
    assert "[guards]" in body["reasons"][0]["message"]
    clock.advance(minutes=1)
    deliver_pending(services)
    expected = {"aimylogic": "inProcess", "delivery": "sending", "held": 0, "oldest_waiting_s": 0}
    assert get()[1]["campaigns"]["default"] == expected


def test_a_crm_refusing_our_credentials_is_named_until_it_accepts_them(serve, clock):
    services, get, _ = serve()
    source = RefusingSource(services.settings, services.settings.policy.source("scripted"))
    services._sources["scripted"] = source
    now = clock()
    services.store.insert(LeadRecord(
        id=new_lead_id(now), source="scripted", key="scripted:e1", ref="e1", status=Status.RECEIVED,
        created_at=now, updated_at=now, next_attempt_at=now, raw=json.dumps({"lead_id": "e1"}),
    ))
    deliver_pending(services)
    status, body = get()
    assert (status, codes(body)) == (200, ["crm_credentials_refused"])
    assert "scripted refused our API credentials" in body["reasons"][0]["message"]
    assert "SCRIPTED_*" in body["reasons"][0]["message"]
    source.refusing = False
    clock.advance(seconds=services.settings.policy.delivery.backoff_cap_seconds)
    deliver_pending(services)
    assert get()[1]["status"] == "ok" and services.store.get_meta(CRM_AUTH_META) is None


def test_an_unreachable_store_is_failing_503_with_the_same_document(serve, caplog):
    services, get, _ = serve()

    def unreachable():
        raise StoreError("sqlite store: unable to open database file")

    services.store_factory = unreachable
    status, body = get()
    assert (status, body["status"], codes(body)) == (503, "failing", ["store_unreachable"])
    assert body["campaigns"] == {} and body["backlog"] is None
    assert "LEADS_STORE" in body["reasons"][0]["message"]
    assert "unable to open database file" in caplog.text  # the cause is in the log, not the answer


def test_a_dry_run_outside_development_is_degraded_beside_the_other_reasons(serve):
    _, get, _ = serve(dry_run=True)
    status, body = get()
    assert (status, body["dry_run"], codes(body)) == (200, True, ["dry_run", "delivery_stalled"])


def test_passes_record_what_changed_at_once_and_the_same_once_a_second(serve, aimylogic, clock):
    services, _, post = serve()
    store = services.store
    deliver_pending(services)
    clock.advance(milliseconds=500)
    deliver_pending(services)
    assert store.written.count(HEALTH_META) == 1
    clock.advance(milliseconds=600)
    deliver_pending(services)
    assert store.written.count(HEALTH_META) == 2
    aimylogic.fail_next(503)
    post(lead(1))
    deliver_pending(services)  # the same instant, but now a lead waits: recorded at once
    assert store.written.count(HEALTH_META) == 3 and store.get_meta(HEALTH_META)["backlog"] == 1
