"""A CRM whose API settings are missing: the lead waits, then fails, and every word says MISSING, not refused."""

from __future__ import annotations

import logging

import pytest

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import FIXTURES, SECRET

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

# source, a webhook of it that carries only an id, its content type, the variables a person must set
CASES = [
    ("amocrm", "amocrm/lead_add.form", FORM, ["AMOCRM_BASE_URL", "AMOCRM_TOKEN"]),
    ("bitrix24", "bitrix24/lead_add.form", FORM, ["BITRIX24_WEBHOOK_URL"]),
    ("hubspot", "hubspot/events_batch.json", JSON, ["HUBSPOT_TOKEN"]),
    ("pipedrive", "pipedrive/v2_create_lead.json", JSON, ["PIPEDRIVE_API_TOKEN"]),
    ("zoho", "zoho/notification_insert_leads.json", JSON, ["ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET"]),
    ("close", "close/lead_created.json", JSON, ["CLOSE_API_KEY"]),
]


@pytest.mark.parametrize(("source", "fixture", "content_type", "variables"), CASES, ids=[c[0] for c in CASES])
def test_preview_says_the_settings_are_missing_and_names_them(client, source, fixture, content_type, variables):
    body = (FIXTURES / fixture).read_bytes()
    response = client.post(f"/preview/{source}?key={SECRET}", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    reasons = [lead["reason"] for lead in response.get_json()["leads"] if lead["status"] == "error"]
    assert reasons, response.get_json()
    for reason in reasons:
        assert "API settings are MISSING" in reason and "refused" not in reason
        assert all(name in reason for name in variables), reason


@pytest.mark.parametrize(
    ("source", "fixture"), [("amocrm", "amocrm/lead_add.form"), ("bitrix24", "bitrix24/lead_add.form")]
)
def test_the_lead_waits_then_fails_saying_the_settings_are_missing(client, services, clock, caplog, source, fixture):
    body = (FIXTURES / fixture).read_bytes()
    response = client.post(f"/webhooks/{source}?key={SECRET}", data=body, content_type=FORM)
    assert response.status_code == 200
    with caplog.at_level(logging.ERROR, logger="crm2calls.delivery"):
        deliver_pending(services)
    [record] = services.store.list(limit=10)
    assert record.status is Status.RECEIVED and record.attempts == 0  # kept: a person will set them
    assert "API settings are MISSING" in record.last_error
    logged = [r.getMessage() for r in caplog.records if r.name == "crm2calls.delivery"]
    assert logged and all("MISSING" in line and "refused" not in line for line in logged), logged

    clock.advance(hours=services.settings.policy.delivery.max_age_hours)
    deliver_pending(services)
    [record] = services.store.list(limit=10)
    assert record.status is Status.FAILED
    assert "API settings are MISSING" in record.last_error and "refused" not in record.last_error
    assert "MISSING" in record.history[-1]["note"] and "refused" not in record.history[-1]["note"]
