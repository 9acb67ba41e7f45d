"""POST /webhooks/generic and /preview/generic through the app: statuses, summaries, nothing lost."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from crm2calls.config import load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import FIXTURES, SECRET

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
URL = f"/webhooks/generic?key={SECRET}"


def fixture(name: str) -> bytes:
    return (FIXTURES / "generic" / name).read_bytes()


def post(client, name: str, content_type: str = JSON, url: str = URL, **kwargs):
    return client.post(url, data=fixture(name), content_type=content_type, **kwargs)


def stored(services):
    return services.store.list(limit=1000)


def test_one_lead_is_stored_pending_with_a_frozen_entry(client, services):
    response = post(client, "one_lead.json")
    assert response.status_code == 202
    body = response.get_json()
    assert body["source"] == "generic"
    [lead] = body["leads"]
    assert lead["status"] == "accepted" and lead["ref"] == "lead-1001"
    record = services.store.get(lead["lead_id"])
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789"
    assert entry["gmtZone"] == "Asia/Yekaterinburg"  # the mapped city wins over the mobile number's 16 zones
    assert entry["payload"]["name"] == "Алексей" and entry["payload"]["utm_source"] == "yandex"
    assert "phone" not in entry["payload"] and "id" not in entry["payload"]
    assert record.phone_masked == "7912*****89"
    assert record.raw is None


def test_an_array_gives_one_result_per_lead(client, services):
    response = post(client, "three_leads.json")
    assert response.status_code == 202
    assert [lead["ref"] for lead in response.get_json()["leads"]] == ["1", "2", "3"]
    phones = sorted(json.loads(r.entry)["phone"] for r in stored(services))
    assert phones == ["73432123456", "74951234567", "79123456789"]


def test_an_array_at_the_configured_path(make_services, tmp_path):
    from app import create_app

    toml = tmp_path / "leads.toml"
    toml.write_text('[sources.generic]\nrecords_path = "data.leads"\n')
    services = make_services(policy=load_policy(toml, "RU"))
    client = create_app(services=services).test_client()
    response = post(client, "nested_leads.json")
    assert response.status_code == 202
    assert [lead["ref"] for lead in response.get_json()["leads"]] == ["a1", "a2"]


def test_a_form_lead(client, services):
    response = post(client, "one_lead.form", FORM)
    assert response.status_code == 202
    [record] = stored(services)
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789"
    assert entry["payload"] == {"name": "Анна", "comment": "call me"}


@pytest.mark.parametrize(
    ("name", "field", "reason"),
    [("no_phone.json", "phone", "no phone number"), ("invalid_phone.json", "phone", "")],
)
def test_an_unusable_lead_is_accepted_and_recorded_as_rejected(client, services, name, field, reason):
    response = post(client, name)
    assert response.status_code == 202
    [lead] = response.get_json()["leads"]
    assert lead["status"] == "rejected" and lead["field"] == field
    assert lead["reason"].startswith(f"{field}: ") and reason in lead["reason"]
    [record] = stored(services)
    assert record.status is Status.REJECTED and record.last_error
    assert record.entry is None


def test_usable_and_unusable_leads_in_one_request(client, services):
    response = post(client, "mixed.json")
    statuses = [lead["status"] for lead in response.get_json()["leads"]]
    assert response.status_code == 202 and statuses == ["accepted", "rejected", "rejected"]
    assert len(stored(services)) == 3


@pytest.mark.parametrize(
    ("name", "content_type", "status", "error"),
    [
        ("truncated.json", JSON, 400, "malformed"),
        ("top_level_string.json", JSON, 400, "malformed"),
        ("array_with_number.json", JSON, 400, "malformed"),
        ("nan.json", JSON, 400, "malformed"),
        ("not_utf8.json", JSON, 400, "malformed"),
        ("one_lead.json", "text/plain", 415, "unsupported_media_type"),
        ("one_lead.json", "application/xml", 415, "unsupported_media_type"),
    ],
)
def test_malformed_requests_get_a_json_4xx_and_store_nothing(client, services, name, content_type, status, error):
    response = post(client, name, content_type)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == error and body["message"]
    assert stored(services) == []


def test_a_bom_is_tolerated(client):
    assert post(client, "bom.json").status_code == 202


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/webhooks/generic", {}),
        ("/webhooks/generic?key=", {}),
        ("/webhooks/generic?key=wrong", {}),
        ("/webhooks/generic", {"X-Webhook-Secret": "wrong"}),
        (f"/webhooks/generic?key={SECRET}x", {}),
        (f"/webhooks/generic?key={SECRET[:-1]}", {}),
    ],
)
def test_missing_or_wrong_key_is_401_and_touches_nothing(client, services, url, headers):
    response = post(client, "one_lead.json", url=url, headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "unauthorized" and body["field"] == "key"
    assert SECRET not in response.get_data(as_text=True)
    assert stored(services) == []


def test_the_key_may_come_in_a_header(client):
    response = post(client, "one_lead.json", url="/webhooks/generic", headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 202


def test_the_previous_key_still_works_during_rotation(make_services):
    from app import create_app

    client = create_app(services=make_services(webhook_secrets=("new-key", SECRET))).test_client()
    assert post(client, "one_lead.json").status_code == 202
    assert post(client, "three_leads.json", url="/webhooks/generic?key=new-key").status_code == 202
    assert post(client, "three_leads.json", url="/webhooks/generic?key=older").status_code == 401


def test_without_a_secret_only_dev_mode_accepts(make_services):
    from app import create_app

    locked = create_app(services=make_services(webhook_secrets=())).test_client()
    assert post(locked, "one_lead.json", url="/webhooks/generic").status_code == 401
    dev = create_app(services=make_services(webhook_secrets=(), dev_mode=True)).test_client()
    assert post(dev, "one_lead.json", url="/webhooks/generic").status_code == 202


def test_unknown_source_is_404(client):
    response = client.post(f"/webhooks/nosuchcrm?key={SECRET}", data=b"{}", content_type=JSON)
    assert response.status_code == 404 and response.get_json()["error"] == "unknown_source"


def test_other_methods_are_405_json(client):
    response = client.get(URL)
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"


def test_a_body_over_the_limit_is_413(make_services):
    from app import create_app

    client = create_app(services=make_services(max_body_bytes=2048)).test_client()
    response = client.post(URL, data=b"[" + b'{"id": 1},' * 400 + b"{}]", content_type=JSON)
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"


def test_ten_deliveries_of_one_lead_store_it_once(client, services):
    responses = [post(client, "one_lead.json") for _ in range(10)]
    assert {r.status_code for r in responses} == {202}
    assert len({r.get_json()["leads"][0]["lead_id"] for r in responses}) == 1
    assert len(stored(services)) == 1


def test_a_second_lead_with_the_same_phone_is_a_duplicate(client, services):
    first = client.post(URL, json={"id": "x1", "phone": "+79123456789"}).get_json()["leads"][0]
    second = client.post(URL, json={"id": "x2", "phone": "8 912 345 67 89"}).get_json()["leads"][0]
    assert first["status"] == "accepted"
    assert second["status"] == "duplicate" and "generic:id:x1" in second["reason"]


def test_a_lead_without_id_is_keyed_by_its_content(client, services):
    lead = {"phone": "+79123456789", "name": "Anon"}
    assert client.post(URL, json=lead).status_code == 202
    assert client.post(URL, json=lead).get_json()["leads"][0]["reason"] == "already received"
    assert len(stored(services)) == 1


@pytest.mark.parametrize("broken", ["parent_is_a_file", "not_a_database"])
def test_a_store_failure_is_503_so_the_crm_retries(make_services, tmp_path, broken):
    from app import create_app

    blocker = tmp_path / "blocker"
    if broken == "parent_is_a_file":
        blocker.write_text("a file where the store's folder should be")
        path = blocker / "leads.db"
    else:
        path = tmp_path / "leads.db"
        path.write_bytes(b"this is not an SQLite database" * 100)
    services = make_services(leads_store=f"sqlite:///{path}")
    response = post(create_app(services=services).test_client(), "one_lead.json")
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"


def test_preview_shows_the_addphones_body_and_stores_nothing(client, services):
    response = client.post(f"/preview/generic?key={SECRET}", data=fixture("mixed.json"), content_type=JSON)
    assert response.status_code == 200
    body = response.get_json()
    assert [e["phone"] for e in body["addPhones"]] == ["79123456701"]
    assert [lead["status"] for lead in body["leads"]] == ["ok", "rejected", "rejected"]
    assert stored(services) == []


def test_preview_needs_the_key(client):
    assert client.post("/preview/generic", data=fixture("one_lead.json"), content_type=JSON).status_code == 401


def test_healthz_calls_a_dry_run_outside_development_degraded(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded" and body["dry_run"] is True
    [reason] = [reason for reason in body["reasons"] if reason["code"] == "dry_run"]
    assert "AIMYLOGIC_TOKEN" in reason["message"]


@pytest.mark.parametrize(("overrides", "status"), [({"dev_mode": True}, "ok"), ({"aimylogic_token": "t"}, "ok")])
def test_healthz_is_ok_in_development_or_with_a_token(make_services, overrides, status):
    from app import create_app

    services = make_services(**overrides)
    deliver_pending(services)  # a delivery pass has run: else the check says none has
    body = create_app(services=services).test_client().get("/healthz").get_json()
    assert (body["status"], body["reasons"]) == (status, [])


def test_healthz_counts_leads_by_status(client):
    post(client, "mixed.json")
    counts = client.get("/healthz").get_json()["counts"]
    assert (counts["pending"], counts["rejected"]) == (1, 2)


def test_healthz_says_when_delivery_is_paused(client, services):
    services.store.put_meta(
        "campaign:default",
        {"delivery": "token_refused", "paused": True, "reason": "Aimylogic refused the campaign token"},
    )
    body = client.get("/healthz").get_json()
    assert body["campaigns"]["default"]["delivery"] == "token_refused"
    [reason] = [reason for reason in body["reasons"] if reason["code"] == "token_refused"]
    assert "Aimylogic refused the campaign token" in reason["message"]


def test_settings_replace_keeps_policy(settings):
    assert replace(settings, port=1).policy is settings.policy
