"""The operator's commands, run through Flask's CLI runner against a real SQLite store."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from crm2calls.model import Status
from tests.conftest import SECRET

URL = f"/webhooks/generic?key={SECRET}"


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def add_leads(client, *leads: dict) -> list[str]:
    response = client.post(URL, json=list(leads))
    assert response.status_code == 202
    return [lead["lead_id"] for lead in response.get_json()["leads"]]


def test_list_shows_masked_phones_and_totals(client, runner):
    add_leads(client, {"id": "a", "phone": "+79123456789"}, {"id": "b"})
    result = runner.invoke(args=["leads", "list"])
    assert result.exit_code == 0, result.output
    assert "7912*****89" in result.output and "79123456789" not in result.output
    assert "pending" in result.output and "no phone number" in result.output
    assert "totals: pending 1, rejected 1" in result.output


def test_list_filters_by_status(client, runner):
    add_leads(client, {"id": "a", "phone": "+79123456789"}, {"id": "b"})
    result = runner.invoke(args=["leads", "list", "--status", "rejected"])
    lines = [line for line in result.output.splitlines() if " generic " in line]
    assert len(lines) == 1 and "rejected" in lines[0]


def test_show_masks_the_entry_unless_revealed(client, runner):
    [lead_id] = add_leads(client, {"id": "a", "phone": "+79123456789", "name": "Ivan"})
    masked = runner.invoke(args=["leads", "show", lead_id]).output
    assert '"phone": "7912*****89"' in masked and "79123456789" not in masked
    assert "history:" in masked and "pending" in masked
    revealed = runner.invoke(args=["leads", "show", lead_id, "--reveal"]).output
    assert '"phone": "79123456789"' in revealed


def test_show_unknown_lead(runner):
    result = runner.invoke(args=["leads", "show", "nope"])
    assert result.exit_code == 1 and "no lead nope" in result.output


def test_deliver_runs_one_pass_in_dry_run(client, runner, services):
    [lead_id] = add_leads(client, {"id": "a", "phone": "+79123456789"})
    result = runner.invoke(args=["leads", "deliver"])
    assert result.exit_code == 0, result.output
    record = services.store.get(lead_id)
    assert record.status is Status.DRY_RUN and record.job_id is None  # logged, never sent


def test_follow_up_runs_one_pass_and_says_what_it_did(runner, services, clock):
    from crm2calls.model import LeadRecord, WorkItem

    now = clock()
    record = LeadRecord(
        id="lead-1", source="generic", key="generic:1", ref="1", status=Status.SENT, created_at=now, updated_at=now,
        next_attempt_at=now + timedelta(hours=2), work={"summarise": WorkItem(now + timedelta(hours=2))},
    )
    services.store.insert(record)
    assert runner.invoke(args=["leads", "follow-up"]).output.startswith("follow-up: 0 leads (nothing due)")
    clock.advance(hours=2)
    result = runner.invoke(args=["leads", "follow-up"])  # work this release does not know: kept, put off
    assert result.exit_code == 0 and result.output.startswith("follow-up: 1 leads"), result.output
    assert services.store.get("lead-1").next_attempt_at == clock() + timedelta(hours=1)


def test_retry_puts_failed_leads_back(client, runner, services, clock):
    ids = add_leads(client, {"id": "a", "phone": "+79123456789"}, {"id": "b", "phone": "+79123456788"})
    for lead_id in ids:
        record = services.store.get(lead_id)
        record.status, record.attempts = Status.FAILED, 50
        services.store.update(record, owner=None)
    result = runner.invoke(args=["leads", "retry", "--failed"])
    assert result.exit_code == 0 and "2 lead(s) queued again (pending 2)" in result.output
    for lead_id in ids:
        record = services.store.get(lead_id)
        assert (record.status, record.attempts, record.next_attempt_at) == (Status.PENDING, 0, clock())


def test_retry_needs_an_id_or_failed(runner):
    assert runner.invoke(args=["leads", "retry"]).exit_code == 2


def test_purge_removes_only_old_finished_leads(client, runner, services, clock):
    [old_rejected] = add_leads(client, {"id": "old"})
    clock.advance(days=40)
    [new_rejected, new_pending] = add_leads(client, {"id": "new"}, {"id": "p", "phone": "+79123456789"})
    result = runner.invoke(args=["leads", "purge", "--older-than", "30d"])
    assert result.exit_code == 0 and "purged 1 final lead(s)" in result.output
    assert services.store.get(old_rejected) is None
    assert services.store.get(new_rejected) and services.store.get(new_pending)


def test_purge_keeps_idempotency_keys_long_enough(runner):
    result = runner.invoke(args=["leads", "purge", "--older-than", "2d"])
    assert result.exit_code == 2 and "keep at least 8d" in result.output


@pytest.mark.parametrize("age", ["30", "d30", "30w", ""])
def test_purge_refuses_an_unclear_age(runner, age):
    result = runner.invoke(args=["leads", "purge", "--older-than", age])
    assert result.exit_code == 2 and "30d, 12h or 90m" in result.output


def test_dialer_test_refuses_in_dry_run(runner):
    result = runner.invoke(args=["dialer", "test", "+79123456789"])
    assert result.exit_code == 2 and "AIMYLOGIC_TOKEN is not set" in result.output


def test_dialer_test_places_one_call_through_the_test_method(make_services, aimylogic, tmp_path):
    from app import create_app

    services = make_services(aimylogic_url=aimylogic.url, aimylogic_token=aimylogic.token)
    runner = create_app(services=services).test_cli_runner()
    result = runner.invoke(args=["dialer", "test", "8 912 345-67-89", "--payload", '{"name": "Alex"}'])
    assert result.exit_code == 0, result.output
    assert "Test call to 7912*****89 queued" in result.output
    [request] = aimylogic.requests
    assert request.path.endswith("/test/addPhone")
    assert request.query["phone"] == "79123456789" and request.query["name"] == "Alex"
    assert aimylogic.token not in result.output


def test_dialer_test_says_when_the_token_is_refused(make_services, aimylogic):
    from app import create_app

    services = make_services(aimylogic_url=aimylogic.url, aimylogic_token="0000.0000.wrong")
    result = create_app(services=services).test_cli_runner().invoke(args=["dialer", "test", "+79123456789"])
    assert result.exit_code == 1
    assert "refused the token of campaign default" in result.output and "0000.0000.wrong" not in result.output


def test_payload_must_be_json(make_services):
    from app import create_app

    services = make_services(aimylogic_token="8231.7056.x", aimylogic_url="http://127.0.0.1:9")
    result = create_app(services=services).test_cli_runner().invoke(
        args=["dialer", "test", "+79123456789", "--payload", "{name"]
    )
    assert result.exit_code == 2 and "--payload" in result.output


def test_entry_json_is_sorted_and_compact(client, services):
    [lead_id] = add_leads(client, {"id": "a", "phone": "+79123456789", "b": 1, "a": 2})
    entry = services.store.get(lead_id).entry
    assert entry == json.dumps(json.loads(entry), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def test_each_transition_is_one_structured_line(client, services, clock, caplog):
    from crm2calls.delivery import deliver_pending

    caplog.set_level("INFO", logger="crm2calls.leads")
    [lead_id] = add_leads(client, {"id": "a", "phone": "+79123456789"})
    clock.advance(seconds=90)
    deliver_pending(services)
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("lead_id") == lead_id]
    assert [line["status"] for line in lines] == ["pending", "dry_run"]
    logged = lines[-1]
    assert logged["source"] == "generic" and logged["ref"] == "a" and logged["attempt"] == 1
    assert "job_id" not in logged and logged["phone"] == "7912*****89" and logged["age_s"] == 90.0
