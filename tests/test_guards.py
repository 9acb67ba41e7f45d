"""Spend and compliance guards, attacked: floods, repeat calls to one person, blocked numbers, erasure."""

from __future__ import annotations

import pytest

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from crm2calls.policy import GuardPolicy
from tests.conftest import SECRET

URL = f"/webhooks/generic?key={SECRET}"


@pytest.fixture
def guarded(make_services, aimylogic):
    """An app whose guards are set per test: (services, client)."""
    from dataclasses import replace

    from app import create_app

    def make(duplicate_window_hours: int = 24, **caps):
        services = make_services(aimylogic_url=aimylogic.url, aimylogic_token=aimylogic.token)
        policy = replace(services.settings.policy, guards=GuardPolicy(**caps))
        policy = replace(policy, duplicate_window_hours=duplicate_window_hours)
        services.settings = replace(services.settings, policy=policy)
        return services, create_app(services=services).test_client()

    return make


def phone(n: int) -> str:
    return f"+7912{n:07d}"


def post(client, *leads):
    response = client.post(URL, json=list(leads))
    assert response.status_code == 202
    return response.get_json()["leads"]


def test_a_flood_cannot_place_more_than_the_caps(guarded, aimylogic, clock):
    services, client = guarded(calls_per_minute=10, calls_per_day=25)
    for chunk in range(6):  # 300 fake leads from a leaked URL
        post(client, *({"id": f"f{chunk}-{i}", "phone": phone(chunk * 100 + i)} for i in range(50)))
    for _ in range(120):  # two simulated hours of passes, one a minute
        deliver_pending(services)
        clock.advance(minutes=1)
    assert len(aimylogic.entries) == 25
    counts = services.store.count_by_status()
    assert counts["sent"] == 25 and counts["held"] == 275  # held, not dropped


def test_held_leads_go_out_when_the_window_moves(guarded, aimylogic, clock):
    services, client = guarded(calls_per_minute=5)
    post(client, *({"id": str(i), "phone": phone(i)} for i in range(12)))
    counts = services.store.count_by_status()
    assert (counts["pending"], counts["held"]) == (5, 7)
    assert deliver_pending(services).sent == 5
    clock.advance(minutes=1)
    assert deliver_pending(services).sent == 5
    clock.advance(minutes=1)
    assert deliver_pending(services).sent == 2
    assert len(aimylogic.entries) == 12


def test_health_says_the_guard_is_holding_leads(guarded, clock):
    services, client = guarded(calls_per_minute=1)
    post(client, {"id": "1", "phone": phone(1)}, {"id": "2", "phone": phone(2)}, {"id": "3", "phone": phone(3)})
    deliver_pending(services)
    clock.advance(minutes=1)
    deliver_pending(services)  # the worker re-admits one held lead and holds the other again
    body = client.get("/healthz").get_json()
    held = {"aimylogic": "inProcess", "delivery": "held", "held": 1, "oldest_waiting_s": 0}
    assert body["campaigns"]["default"] == held
    [reason] = [reason for reason in body["reasons"] if reason["code"] == "campaign_held"]
    assert "1 new calls a minute" in reason["message"]
    assert body["counts"]["held"] == 1
    clock.advance(minutes=1)
    deliver_pending(services)
    assert client.get("/healthz").get_json()["campaigns"]["default"]["delivery"] == "sending"


def test_per_number_cap_across_sources_and_days(guarded, aimylogic, clock):
    services, client = guarded(duplicate_window_hours=0, per_number_per_day=1, per_number_per_week=2)
    statuses = []
    for day in range(3):  # Tuesday 2026-12-01 onwards: one ISO week
        clock.now = clock.now.replace(year=2026, month=12, day=1 + day, hour=9)
        post(client, {"id": f"a{day}", "phone": "+79123456789"}, {"id": f"b{day}", "phone": "8 912 345 67 89"})
        deliver_pending(services)
    for record in services.store.list(limit=100):
        statuses.append((record.ref, record.status, record.last_error))
    sent = [s for s in statuses if s[1] is Status.SENT]
    assert len(sent) == 2 and len(aimylogic.entries) == 2
    reasons = {s[2] for s in statuses if s[1] is Status.REJECTED}
    assert reasons == {
        "per-number cap: 1 call(s) a day already placed",
        "per-number cap: 2 call(s) a week already placed",
    }


def test_blocked_numbers_are_never_sent(app, client, services, aimylogic):
    runner = app.test_cli_runner()
    assert "is on the do-not-call list" in runner.invoke(args=["leads", "block", "8 912 345-67-89"]).output
    [lead] = post(client, {"id": "1", "phone": "+79123456789"})
    assert lead["status"] == "rejected" and lead["reason"] == "on the do-not-call list"
    result = runner.invoke(args=["leads", "unblock", "+7 912 345 67 89"])
    assert "may be called again" in result.output
    [lead] = post(client, {"id": "2", "phone": "+79123456789"})
    assert lead["status"] == "accepted"


def test_a_number_blocked_after_acceptance_is_not_sent(guarded, aimylogic):
    services, client = guarded()
    [lead] = post(client, {"id": "1", "phone": "+79123456789"})
    assert lead["status"] == "accepted"
    from crm2calls.guards import block, phone_key

    block(services, phone_key("79123456789"), services.clock())
    deliver_pending(services)
    assert aimylogic.entries == []
    assert services.store.get(lead["lead_id"]).status is Status.REJECTED


def test_unblock_of_an_unknown_number(app):
    result = app.test_cli_runner().invoke(args=["leads", "unblock", "+79123456789"])
    assert result.exit_code == 1 and "was not on the do-not-call list" in result.output


def test_forget_erases_every_lead_of_a_person(app, client, services):
    post(client, {"id": "1", "phone": "+79123456789", "name": "Ivan"}, {"id": "2", "phone": "+79123450000"})
    post(client, {"id": "3", "phone": "8 912 345-67-89"})
    result = app.test_cli_runner().invoke(args=["leads", "forget", "+79123456789", "--yes"])
    assert result.exit_code == 0 and "erased 2 lead(s) of 7912*****89" in result.output
    remaining = services.store.list(limit=10)
    assert [r.ref for r in remaining] == ["2"]
    assert all("79123456789" not in (r.entry or "") for r in remaining)


def test_forget_asks_first(app, client, services):
    post(client, {"id": "1", "phone": "+79123456789"})
    result = app.test_cli_runner().invoke(args=["leads", "forget", "+79123456789"], input="n\n")
    assert result.exit_code == 1 and len(services.store.list()) == 1
