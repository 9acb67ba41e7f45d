# ruff: noqa: F811  (fixtures imported from other test modules are redefined as parameters)
"""Leads by status and each campaign's oldest waiting lead, as /healthz, /metrics and CloudWatch show them.

On a server the leads-by-status gauge is read from the store's counts when Prometheus scrapes; on
Lambda the minute's scheduled sweep writes it, never a web request. The oldest waiting lead is a
gauge per campaign, set by every delivery pass.
"""

from __future__ import annotations

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import SECRET, TOKEN
from tests.servers import aws_env, moto_endpoint  # noqa: F401 - fixtures
from tests.test_lambda_handler import (  # noqa: F401 - fixtures
    aws_module,
    body_of,
    created_table,
    http_event,
    invoke,
    isolated_process,
    lambda_api,
    load_event,
    module_lambda_api,
    module_store,
    one_lead,
    settings_dir,
    store,
)
from tests.test_metrics import METRICS_TOKEN, URL, emf_values, metrics_client, scrape  # noqa: F401 - fixtures
from tests.test_metrics_lambda import emf_lines


def leads_gauge(samples: dict, status: str) -> float | None:
    return samples.get(("crm2calls_leads", (("status", status),)))


def test_a_scrape_reads_leads_by_status_from_the_counts(metrics_client):
    for n in range(3):
        assert metrics_client.post(URL, json={"id": f"c{n}", "phone": f"+7912345670{n}"}).status_code == 202
    assert metrics_client.post(URL, json={"id": "bad", "phone": "12"}).status_code == 202  # rejected
    samples = scrape(metrics_client)
    assert leads_gauge(samples, "pending") == 3 and leads_gauge(samples, "rejected") == 1
    assert leads_gauge(samples, "sent") == 0  # every status has its series once scraped
    assert metrics_client.post(URL, json={"id": "c9", "phone": "+79123456709"}).status_code == 202
    assert leads_gauge(scrape(metrics_client), "pending") == 4  # read again at each scrape


def test_healthz_counts_every_status_from_the_counts(metrics_client):
    metrics_client.post(URL, json={"id": "h1", "phone": "+79123456701"})
    body = metrics_client.get("/healthz").get_json()
    assert body["counts"] == {status.value: 0 for status in Status} | {"pending": 1}


def test_each_campaign_has_its_oldest_waiting_lead_in_the_gauge_and_in_healthz(make_services, clock, aimylogic):
    from app import create_app

    services = make_services(aimylogic_url=aimylogic.url, aimylogic_token=TOKEN, metrics_tokens=(METRICS_TOKEN,))
    client = create_app(services=services).test_client()
    aimylogic.fail_next(503, times=50)  # Aimylogic is down: the lead waits
    assert client.post(URL, json={"id": "w1", "phone": "+79123456701"}).status_code == 202
    deliver_pending(services)
    clock.advance(seconds=90)
    deliver_pending(services)  # nothing due yet (backoff): the pass still reports the wait
    assert scrape(client)[("crm2calls_oldest_waiting_seconds", (("campaign", "default"),))] == 90
    body = client.get("/healthz").get_json()
    assert body["campaigns"]["default"]["oldest_waiting_s"] == 90 and body["oldest_waiting_s"] == 90
    assert body["backlog"] == 1 and body["counts"]["pending"] == 1


def test_on_lambda_the_sweep_writes_leads_by_status_and_a_webhook_does_not(invoke, capsys):
    capsys.readouterr()
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    assert response["statusCode"] == 202
    assert emf_values(emf_lines(capsys.readouterr().out), "crm2calls_leads") == []  # not per request
    invoke(load_event("scheduled"))
    lines = emf_lines(capsys.readouterr().out)
    counted = {status.value: emf_values(lines, "crm2calls_leads", status=status.value) for status in Status}
    assert all(len(found) == 1 for found in counted.values())  # every status, once a sweep
    assert sum(found[0] for found in counted.values()) >= 1
    assert emf_values(lines, "crm2calls_oldest_waiting_seconds", campaign="default")


def test_leads_list_of_a_campaign_totals_from_the_counts_and_recount_repairs_them(app, client, services):
    import sqlite3

    runner = app.test_cli_runner()
    for n in range(2):
        assert client.post(URL, json={"id": f"r{n}", "phone": f"+7912345670{n}"}).status_code == 202
    listed = runner.invoke(args=["leads", "list", "--campaign", "default"]).output
    assert "totals (campaign default): pending 2" in listed
    with sqlite3.connect(services.store.path) as conn:  # a hand edit the triggers never saw
        conn.execute("UPDATE lead_counts SET leads = 7 WHERE status = 'pending'")
    assert "totals: pending 7" in runner.invoke(args=["leads", "list"]).output
    result = runner.invoke(args=["leads", "recount"])
    assert result.exit_code == 0 and "counted: pending 2" in result.output
    assert "totals: pending 2" in runner.invoke(args=["leads", "list"]).output
