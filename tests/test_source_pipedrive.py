"""Pipedrive: Basic auth (rotation, the shared-key fallback), v1 and v2 person and lead events,
idempotency across retries, enrichment of a v2 lead's person, end to end to the dialer."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, EnrichmentError, UnavailableError
from crm2calls.model import LeadEvent, Status
from tests.conftest import FIXTURES, SECRET
from tests.emulators.pipedrive import PipedriveStandIn

USER = "crm2calls"
PASSWORD = "Kq8-2mZr_pWd-current"
PREVIOUS_PASSWORD = "Lz1-9xYt_pWd-previous"
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIXTURES / "pipedrive" / name).read_bytes()


LEAD_TITLE = json.loads(fixture("v2_create_lead.json"))["data"]["title"]  # Cyrillic, carried into the payload


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def pipedrive():
    with PipedriveStandIn() as api:
        yield api


@pytest.fixture
def make(make_app, pipedrive):
    def build(user: str | None = USER, passwords: tuple[str, ...] = (PASSWORD, PREVIOUS_PASSWORD)):
        return make_app(pipedrive_webhook_user=user, pipedrive_webhook_passwords=passwords,
                        pipedrive_api_token=pipedrive.token, pipedrive_base_url=pipedrive.url)

    return build


@pytest.fixture
def pd(make):
    return make()


def post(client, name: str, headers=None, url: str = "/webhooks/pipedrive"):
    headers = basic(USER, PASSWORD) if headers is None else headers
    return client.post(url, data=fixture(name), content_type=JSON, headers=headers)


def records(services):
    return services.store.list(limit=1000)


# Authentication


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("no credentials", {}),
        ("wrong password", basic(USER, "guess")),
        ("wrong user", basic("admin", PASSWORD)),
        ("password of another user", basic("", PASSWORD)),
        ("not basic", {"Authorization": f"Bearer {PASSWORD}"}),
        ("not base64", {"Authorization": "Basic %%%"}),
        ("no colon", {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}),
    ],
)
def test_wrong_basic_auth_is_401_and_nothing_happens(pd, pipedrive, aimylogic, case, headers):
    services, client = pd
    response = post(client, "v2_create_lead.json", headers)
    assert response.status_code == 401, case
    deliver_pending(services)
    assert records(services) == [] and pipedrive.hits == [] and aimylogic.requests == []


def test_the_previous_password_still_passes_during_rotation(pd):
    services, client = pd
    assert post(client, "v1_added_person.json", basic(USER, PREVIOUS_PASSWORD)).status_code == 202
    assert len(records(services)) == 1


def test_with_basic_auth_configured_the_shared_key_alone_does_not_pass(pd, pipedrive):
    services, client = pd
    response = post(client, "v1_added_person.json", {}, url=f"/webhooks/pipedrive?key={SECRET}")
    assert response.status_code == 401 and records(services) == []


def test_without_basic_auth_the_shared_key_is_required(make):
    services, client = make(user=None, passwords=())
    assert post(client, "v1_added_person.json", basic(USER, PASSWORD)).status_code == 401
    assert records(services) == []
    assert post(client, "v1_added_person.json", {}, url=f"/webhooks/pipedrive?key={SECRET}").status_code == 202
    assert len(records(services)) == 1


# Events


def test_v1_added_person_is_a_lead_with_the_mobile_number_first(pd, pipedrive):
    services, client = pd
    response = post(client, "v1_added_person.json")
    assert response.status_code == 202
    [record] = records(services)
    assert record.status is Status.PENDING and record.key == "pipedrive:v1:person:1023" and record.ref == "1023"
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789"  # "8 912 ..." labelled mobile, region RU, before the primary work one
    assert entry["gmtZone"] == "Asia/Yekaterinburg"  # postal_address_locality mapped by [zones.cities]
    assert entry["payload"] == {"name": "Иван Петров", "crm": "pipedrive", "crm_person_id": "1023",
                                "company": "ООО Ромашка"}  # noqa: RUF001 - Cyrillic on purpose
    assert pipedrive.hits == []  # nothing fetched on the request path


def test_a_v1_retry_maps_to_the_same_record(pd):
    services, client = pd
    first = post(client, "v1_added_person.json").get_json()["leads"][0]
    retried = json.loads(fixture("v1_added_person.json"))
    retried["retry"] = 1
    again = client.post("/webhooks/pipedrive", json=retried, headers=basic(USER, PASSWORD)).get_json()["leads"][0]
    assert again["lead_id"] == first["lead_id"] and again["reason"] == "already received"
    assert len(records(services)) == 1


def test_v2_create_person_reads_data_phones(pd):
    services, client = pd
    assert post(client, "v2_create_person.json").status_code == 202
    [record] = records(services)
    assert record.key == "pipedrive:v2:7d5e8f90-1c2b-4a3d-8e4f-5a6b7c8d9e0f"
    entry = json.loads(record.entry)
    assert entry["phone"] == "79221234567"  # the mobile label wins over the primary work number
    assert entry["payload"]["name"] == "Светлана Орлова" and entry["payload"]["crm_person_id"] == "1024"


def test_a_v2_retry_with_a_new_attempt_number_is_the_same_event(pd):
    services, client = pd
    post(client, "v2_create_person.json")
    retried = json.loads(fixture("v2_create_person.json"))
    retried["meta"]["attempt"] = 2
    again = client.post("/webhooks/pipedrive", json=retried, headers=basic(USER, PASSWORD)).get_json()["leads"][0]
    assert again["reason"] == "already received" and len(records(services)) == 1


def test_v2_create_person_also_takes_the_v1_phone_field_name(pd):
    services, client = pd
    body = json.loads(fixture("v2_create_person.json"))
    body["data"]["phone"] = body["data"].pop("phones")
    assert client.post("/webhooks/pipedrive", json=body, headers=basic(USER, PASSWORD)).status_code == 202
    assert json.loads(records(services)[0].entry)["phone"] == "79221234567"


def test_v2_create_lead_stores_the_person_id_for_the_worker(pd, pipedrive):
    services, client = pd
    response = post(client, "v2_create_lead.json")
    assert response.status_code == 202
    [record] = records(services)
    assert record.status is Status.RECEIVED and record.ref == "adf21080-0e10-11eb-879b-05d71fb426ec"
    assert json.loads(record.raw) == {"person_id": "1025", "lead_id": "adf21080-0e10-11eb-879b-05d71fb426ec",
                                      "lead_title": LEAD_TITLE}
    assert pipedrive.hits == []


def test_a_lead_of_an_organization_only_is_recorded_rejected_not_dropped(pd):
    services, client = pd
    [lead] = post(client, "v2_create_lead_org_only.json").get_json()["leads"]
    assert lead["status"] == "rejected" and lead["reason"] == "phone: no phone number"
    assert len(records(services)) == 1


@pytest.mark.parametrize("name", ["v1_updated_person.json", "v2_change_person.json"])
def test_changes_are_not_leads(pd, name):
    services, client = pd
    response = post(client, name)
    assert response.status_code == 202 and response.get_json()["leads"] == []
    assert records(services) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[]", "meta"),
        (b'{"event":"added.person","current":{"id":1}}', "meta"),
        (b'{"meta":{"action":"added","object":"person"},"current":{"name":"x"}}', "current.id"),
        (b'{"meta":{"action":"create","entity":"person","version":"2.0"},"data":{"id":"1"}}', "meta.id"),
        (b'{"meta":{"action":"create","entity":"person","version":"2.0","id":"e"},"data":{"id":"../x"}}', "data.id"),
    ],
)
def test_a_malformed_body_is_400(pd, body, field):
    services, client = pd
    response = client.post("/webhooks/pipedrive", data=body, content_type=JSON, headers=basic(USER, PASSWORD))
    assert response.status_code == 400 and response.get_json()["field"] == field
    assert records(services) == []


# Enrichment


def event(person_id: str = "1025") -> LeadEvent:
    return LeadEvent("v2:x", "lead-uuid", None, {"person_id": person_id, "lead_id": "lead-uuid", "lead_title": "T"})


def test_enrichment_fetches_the_person_with_the_token_in_the_query(pd, pipedrive, clock):
    services, _ = pd
    pipedrive.add_person("1025", "Пётр", [{"label": "home", "value": "+7 343 222-33-44", "primary": True}])
    lead = services.source("pipedrive").enrich(event(), clock())
    [hit] = pipedrive.hits
    assert hit.path == "/v1/persons/1025" and hit.query["api_token"] == [pipedrive.token]
    assert [(c.value, c.kind, c.primary) for c in lead.phones] == [("+7 343 222-33-44", "home", True)]
    assert lead.fields == {"name": "Пётр", "crm": "pipedrive", "crm_person_id": "1025", "crm_lead_id": "lead-uuid",
                           "lead_title": "T"}


def test_a_person_without_a_phone_yet_is_retryable(pd, pipedrive, clock):
    services, _ = pd
    pipedrive.add_person("1025", "Пётр", [{"value": "", "primary": True}])
    with pytest.raises(EnrichmentError) as caught:
        services.source("pipedrive").enrich(event(), clock())
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [(401, AuthError, False), (429, UnavailableError, True), (404, EnrichmentError, False),
     (500, UnavailableError, True)],
)
def test_api_failures_are_typed_and_never_show_the_token(pd, pipedrive, clock, caplog, status, error, retryable):
    services, _ = pd
    caplog.set_level(logging.DEBUG)
    pipedrive.fail_next(status, times=3, retry_after=3)
    with pytest.raises(error) as caught:
        services.source("pipedrive").enrich(event(), clock())
    assert caught.value.retryable is retryable
    assert pipedrive.token not in str(caught.value)
    ours = [record.getMessage() for record in caplog.records if not record.name.startswith("werkzeug")]
    assert any("api_token=***" in message for message in ours)  # urllib3's request lines, scrubbed
    assert not any(pipedrive.token in message for message in ours)


def test_a_slow_api_is_unavailable_not_a_hang(pd, pipedrive, clock):
    services, _ = pd
    source = services.source("pipedrive")
    source.timeout = (1.0, 0.2)
    pipedrive.add_person("1025", "Пётр", [{"label": "mobile", "value": "+79123456789", "primary": True}])
    pipedrive.delay = 0.6
    with pytest.raises(UnavailableError) as caught:
        source.enrich(event(), clock())
    assert caught.value.retryable


# End to end


def test_end_to_end_a_v2_lead_is_fetched_and_called(pd, pipedrive, aimylogic, clock, caplog):
    services, client = pd
    caplog.set_level(logging.DEBUG)
    pipedrive.add_person("1025", "Ольга Смирнова", [
        {"label": "work", "value": "+7 495 765-43-21", "primary": True},
        {"label": "mobile", "value": "+7 916 765-43-21", "primary": False},
    ], postal_address_locality="Москва")
    pipedrive.phone_hidden_for["1025"] = 1
    assert post(client, "v2_create_lead.json").status_code == 202
    deliver_pending(services)
    assert records(services)[0].status is Status.RECEIVED and aimylogic.entries == []
    clock.advance(minutes=5)
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.SENT
    [entry] = aimylogic.entries
    assert entry["phone"] == "79167654321" and entry["gmtZone"] == "Europe/Moscow"
    assert entry["payload"] == {"name": "Ольга Смирнова", "crm": "pipedrive", "crm_person_id": "1025",
                                "crm_lead_id": "adf21080-0e10-11eb-879b-05d71fb426ec",
                                "lead_title": LEAD_TITLE}
    assert not any(pipedrive.token in r.getMessage() for r in caplog.records if not r.name.startswith("werkzeug"))
