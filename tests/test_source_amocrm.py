"""amoCRM / Kommo: webhooks in through the app, phones fetched over HTTP from an API v4 stand-in,
entries out at the Aimylogic emulator."""

from __future__ import annotations

import json
import time
from urllib.parse import quote_plus

import pytest

from crm2calls.config import load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import FIXTURES, SECRET
from tests.emulators.amocrm import AmoCrmEmulator

FORM = "application/x-www-form-urlencoded"
URL = f"/webhooks/amocrm?key={SECRET}"
LEAD, CONTACT = "32966269", "37054081"


def wire(name: str) -> bytes:
    return (FIXTURES / "amocrm" / name).read_bytes()


def api(name: str) -> dict:
    return json.loads((FIXTURES / "amocrm" / name).read_text(encoding="utf-8"))


def records(services):
    return services.store.list(limit=1000)


def record_for(services, key: str):
    [record] = [r for r in records(services) if r.key == key]
    return record


def phone_field(*values: tuple[str, str]) -> dict:
    return {
        "field_id": 735649, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
        "values": [{"value": value, "enum_id": 1, "enum_code": code} for value, code in values],
    }


@pytest.fixture
def amo():
    with AmoCrmEmulator() as emulator:
        emulator.add_lead(api("api_lead.json"), [(CONTACT, True)])
        emulator.add_contact(api("api_contact.json"))
        yield emulator


@pytest.fixture
def make(make_app, amo):
    """(services, test client) for an app whose amoCRM settings default to the stand-in."""

    def build(**values):
        return make_app(**{"amocrm_base_url": amo.url, "amocrm_token": amo.token, **values})

    return build


@pytest.fixture
def app_client(make):
    return make()


def toml_policy(tmp_path, text: str):
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path, "RU")


def post(client, body: bytes, url: str = URL, content_type: str = FORM, **kwargs):
    return client.post(url, data=body, content_type=content_type, **kwargs)


# The webhook: what is stored, and that the answer does not wait for amoCRM's API


def test_leads_add_is_stored_for_enrichment_and_answered_200_without_calling_the_api(app_client, amo):
    services, client = app_client
    amo.delay = 3.0  # a slow API must not slow the webhook: amoCRM allows 2 s
    started = time.perf_counter()
    response = post(client, wire("leads_add.form"))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.get_json() == {"ok": True, "leads": 2}
    assert elapsed < 1.0
    assert amo.hits == []
    stored = {r.key: r for r in records(services)}
    assert set(stored) == {"amocrm:lead:32966269", "amocrm:lead:32966270"}
    for key, record in stored.items():
        assert record.status is Status.RECEIVED
        assert json.loads(record.raw) == {"lead_id": key.rsplit(":", 1)[1]}  # ids only: no names, no account


def test_a_contact_with_phones_is_settled_from_the_body_and_companies_are_not_called(app_client, amo):
    services, client = app_client
    response = post(client, wire("contacts_add.form"))
    assert response.status_code == 200 and response.get_json()["leads"] == 1
    [record] = records(services)
    assert record.key == f"amocrm:contact:{CONTACT}" and record.status is Status.PENDING
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789"  # "8 (912) 345-67-89", the mobile of the two
    assert entry["payload"] == {"name": "Анна Смирнова", "crm": "amocrm", "crm_contact_id": CONTACT}
    assert amo.hits == []


def test_a_contact_sent_before_its_fields_is_fetched_from_the_api(app_client, amo, aimylogic):
    services, client = app_client
    post(client, wire("contacts_add_no_fields.form"))  # the capture: amoCRM fills the fields in later
    [record] = records(services)
    assert record.status is Status.RECEIVED and json.loads(record.raw) == {"contact_id": CONTACT}
    deliver_pending(services)
    assert [hit.path for hit in amo.hits] == [f"/api/v4/contacts/{CONTACT}"]
    [entry] = aimylogic.entries
    assert str(entry["phone"]) == "79123456789"
    assert entry["payload"]["crm_contact_id"] == CONTACT and "crm_lead_id" not in entry["payload"]


def test_several_entities_in_one_body_fan_out_and_other_actions_are_ignored(app_client):
    services, client = app_client
    response = post(client, wire("mixed.form"))  # leads[add], leads[update], leads[delete], contacts[add]
    assert response.status_code == 200 and response.get_json()["leads"] == 2
    assert {r.key for r in records(services)} == {"amocrm:lead:32966271", "amocrm:contact:37054082"}


def test_an_unsorted_lead_with_a_phone_is_called_and_keyed_as_its_lead(app_client):
    services, client = app_client
    response = post(client, wire("unsorted_add.form"))  # a form with a phone, and a chat without one
    assert response.get_json()["leads"] == 1
    [record] = records(services)
    assert record.key == "amocrm:lead:32966275" and record.status is Status.PENDING
    assert json.loads(record.entry)["phone"] == "79221112233"
    # the same lead's leads[add] is then the same lead, not a second one
    again = post(client, wire("lead_add.form").replace(LEAD.encode(), b"32966275"))
    assert again.status_code == 200
    assert len(records(services)) == 1


def test_a_retried_webhook_adds_nothing(app_client):
    services, client = app_client
    post(client, wire("leads_add.form"))
    response = post(client, wire("leads_add.form"))
    assert response.status_code == 200
    assert len(records(services)) == 2


@pytest.mark.parametrize(
    ("status_ids", "fixture", "keys"),
    [
        ([], "leads_status.form", set()),  # without stages, stage changes call nobody
        (["76789231"], "leads_status.form", {"amocrm:status:32966269:76789231"}),
        (["9621010:76789232"], "leads_status.form", {"amocrm:status:32966270:76789232"}),
        (["1111:76789232"], "leads_status.form", set()),  # that stage, but in another pipeline
        (["76789231", "76789232"], "leads_status.form",
         {"amocrm:status:32966269:76789231", "amocrm:status:32966270:76789232"}),
        (["76789230"], "leads_add.form", {"amocrm:status:32966269:76789230", "amocrm:status:32966270:76789230"}),
        (["76789231"], "leads_add.form", set()),  # created in another stage
        (["76789231"], "contacts_add.form", set()),  # stage mode calls leads in the stages only
        (["76789231"], "unsorted_add.form", set()),
    ],
)
def test_stage_triggers(make, tmp_path, status_ids, fixture, keys):
    policy = toml_policy(tmp_path, f"[sources.amocrm]\nstatus_ids = {json.dumps(status_ids)}\n")
    services, client = make(policy=policy)
    response = post(client, wire(fixture))
    assert response.status_code == 200
    assert {r.key for r in records(services)} == keys
    assert all(json.loads(r.raw)["lead_id"] for r in records(services))


@pytest.mark.parametrize(
    "body",
    [
        b"leads%5Badd%5D%5B0%5D%5Bid%5D=..%2Fcontacts%2F1",  # an id is digits: it goes into an API path
        b"leads%5Badd%5D%5B0%5D%5Bid%5D=12%3Fwith%3Dx",
        b"leads%5Badd%5D%5B0%5D%5Bname%5D=no+id",
        b"contacts%5Badd%5D%5B0%5D%5Bname%5D=no+id",
        b"leads=1",
        b"leads%5Badd%5D=1",
        b"leads%5Badd%5D%5B0%5D=1",
        b"leads%5Badd%5D%5B0%5D%5Bid%5D=%zz",
        b"leads%5Badd%5D%5B0%5D%5Bname%5D=%D0",
        b"leads" + b"%5Bx%5D" * 40 + b"=1",
    ],
)
def test_malformed_bodies_get_400_json_and_store_nothing(app_client, amo, body):
    services, client = app_client
    response = post(client, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed" and response.get_json()["message"]
    assert records(services) == [] and amo.hits == []


def test_a_json_body_gets_415(app_client):
    services, client = app_client
    response = post(client, b'{"leads": {"add": [{"id": 1}]}}', content_type="application/json")
    assert response.status_code == 415
    assert records(services) == []


# Authentication: amoCRM signs nothing, so the shared key is always required


def _nothing_happened(services, amo, aimylogic):
    deliver_pending(services)
    assert records(services) == []
    assert amo.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/webhooks/amocrm", {}),
        ("/webhooks/amocrm?key=wrong-key", {}),
        ("/webhooks/amocrm?key=", {}),
        ("/webhooks/amocrm", {"X-Webhook-Secret": "wrong-key"}),
        (f"/webhooks/amocrm?key={SECRET}x", {}),
    ],
)
def test_a_missing_or_wrong_key_is_401_and_nothing_happens(make, amo, aimylogic, url, headers):
    services, client = make(amocrm_account_id="32427762")
    response = post(client, wire("leads_add.form"), url=url, headers=headers)
    assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    _nothing_happened(services, amo, aimylogic)


def test_an_unauthenticated_garbage_body_is_401_not_400(make, amo, aimylogic):
    services, client = make(amocrm_account_id="32427762")
    response = post(client, b"leads%5Badd%5D%5B0%5D%5Bid%5D=%zz", url="/webhooks/amocrm")
    assert response.status_code == 401
    _nothing_happened(services, amo, aimylogic)


def test_the_key_in_a_header_is_accepted(app_client):
    services, client = app_client
    response = post(client, wire("lead_add.form"), url="/webhooks/amocrm", headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 200 and len(records(services)) == 1


def test_the_previous_key_is_accepted_while_rotating(make):
    services, client = make(webhook_secrets=("new-secret-value-0123456789", SECRET))
    assert post(client, wire("lead_add.form")).status_code == 200
    new_key_url = "/webhooks/amocrm?key=new-secret-value-0123456789"
    assert post(client, wire("lead_add.form"), url=new_key_url).status_code == 200
    assert len(records(services)) == 1


@pytest.mark.parametrize(
    "crm",
    [
        {"amocrm_account_id": "99999999"},
        {"amocrm_subdomain": "another"},
        {"amocrm_account_id": "32427762", "amocrm_subdomain": "another.amocrm.ru"},
    ],
)
def test_valid_key_from_another_account_is_403_and_nothing_happens(make, amo, aimylogic, crm):
    services, client = make(**crm)
    response = post(client, wire("leads_add.form"))
    assert response.status_code == 403 and response.get_json()["error"] == "forbidden"
    _nothing_happened(services, amo, aimylogic)


def test_a_body_without_an_account_is_403_when_the_account_is_configured(make, amo, aimylogic):
    services, client = make(amocrm_account_id="32427762")
    response = post(client, b"leads%5Badd%5D%5B0%5D%5Bid%5D=32966269")
    assert response.status_code == 403
    _nothing_happened(services, amo, aimylogic)


@pytest.mark.parametrize("subdomain", ["etesttask", "ETestTask", "etesttask.amocrm.ru"])
def test_the_right_account_is_accepted(make, subdomain):
    services, client = make(amocrm_account_id="32427762", amocrm_subdomain=subdomain)
    assert post(client, wire("leads_add.form")).status_code == 200
    assert len(records(services)) == 2


# The API host comes from configuration, never from the webhook body


def _pointing_at(body: bytes, url: str) -> bytes:
    return body.replace(quote_plus("https://etesttask.amocrm.ru").encode(), quote_plus(url).encode())


def test_a_body_naming_another_api_host_sends_nothing_there(app_client, amo, aimylogic):
    services, client = app_client
    with AmoCrmEmulator(token=amo.token) as trap:
        trap.add_lead(api("api_lead.json"), [(CONTACT, True)])
        trap.add_contact(api("api_contact.json"))
        body = _pointing_at(wire("lead_add.form"), trap.url)
        assert quote_plus(trap.url).encode() in body
        assert post(client, body).status_code == 200
        deliver_pending(services)
        assert trap.hits == []
    assert len(amo.hits) == 2 and len(aimylogic.entries) == 1


def test_without_api_settings_the_lead_is_kept_naming_them_and_the_body_host_is_not_used(make, aimylogic):
    services, client = make(amocrm_base_url=None, amocrm_token=None)
    with AmoCrmEmulator() as trap:
        post(client, _pointing_at(wire("lead_add.form"), trap.url))
        deliver_pending(services)
        assert trap.hits == []
    [record] = records(services)
    assert record.status is Status.RECEIVED and record.attempts == 0  # kept until a person sets them
    assert "AMOCRM_BASE_URL" in record.last_error and "AMOCRM_TOKEN" in record.last_error
    assert aimylogic.requests == []


# Enrichment over HTTP


def test_enrichment_sends_the_bearer_token_and_reads_the_main_contact_first(app_client, amo, aimylogic):
    services, client = app_client
    other = {**api("api_contact.json"), "id": 40000001, "name": "Секретарь",
             "custom_fields_values": [phone_field(("+7 (495) 123-45-67", "WORK"))]}
    amo.add_contact(other)
    amo.add_lead(api("api_lead.json"), [(40000001, False), (CONTACT, True)])
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    assert [hit.path for hit in amo.hits] == [f"/api/v4/leads/{LEAD}", f"/api/v4/contacts/{CONTACT}"]
    assert amo.hits[0].query == {"with": "contacts"}
    assert {hit.authorization for hit in amo.hits} == {f"Bearer {amo.token}"}
    [entry] = aimylogic.entries
    assert str(entry["phone"]) == "79123456789"


def test_a_main_contact_without_a_phone_falls_back_to_the_next_contact(app_client, amo, aimylogic):
    services, client = app_client
    amo.add_contact({**api("api_contact.json"), "id": 40000002, "custom_fields_values": []})
    work_only = {**api("api_contact.json"), "id": 40000003,
                 "custom_fields_values": [phone_field(("8 (343) 212-34-56 доб. 12", "WORK"))]}
    amo.add_contact(work_only)
    amo.add_lead(api("api_lead.json"), [(40000002, True), (40000003, False)])
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [entry] = aimylogic.entries
    assert str(entry["phone"]) == "73432123456" and entry["gmtZone"] == "Asia/Yekaterinburg"
    assert entry["payload"]["crm_contact_id"] == "40000003"


def test_a_contact_linked_a_moment_later_is_waited_for(app_client, amo, aimylogic, clock):
    services, client = app_client
    amo.add_lead(api("api_lead.json"), [(CONTACT, True)], linked_after=2)
    post(client, wire("lead_add.form"))
    for _ in range(2):
        deliver_pending(services)
        record = record_for(services, f"amocrm:lead:{LEAD}")
        assert record.status is Status.RECEIVED and "no contact linked yet" in record.last_error
        assert record.next_attempt_at > clock.now
        clock.advance(minutes=10)
    deliver_pending(services)
    assert record_for(services, f"amocrm:lead:{LEAD}").status is Status.SENT
    assert [str(e["phone"]) for e in aimylogic.entries] == ["79123456789"]


def test_contacts_that_never_get_a_phone_end_rejected_with_the_reason(app_client, amo, aimylogic, clock):
    services, client = app_client
    amo.add_contact({**api("api_contact.json"), "custom_fields_values": []})
    post(client, wire("lead_add.form"))
    for _ in range(services.settings.policy.delivery.enrich_max_attempts):
        deliver_pending(services)
        clock.advance(minutes=10)
    record = record_for(services, f"amocrm:lead:{LEAD}")
    assert record.status is Status.REJECTED and "contacts have no phone" in record.last_error
    assert aimylogic.requests == []


def test_a_deleted_lead_is_rejected_at_once(app_client, amo, aimylogic):
    services, client = app_client
    post(client, wire("lead_add.form").replace(LEAD.encode(), b"11111111"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.REJECTED and "no lead 11111111" in record.last_error
    assert record.attempts == 1


def test_a_refused_token_keeps_the_lead_and_names_the_variable_not_the_token(make, amo, aimylogic):
    services, client = make(amocrm_token="revoked-token-abcdef")
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED
    assert "AMOCRM_TOKEN" in record.last_error and "revoked-token-abcdef" not in record.last_error
    assert [hit.status for hit in amo.hits] == [401]
    assert aimylogic.requests == []


def test_429_is_retried_after_retry_after(app_client, amo, aimylogic, clock):
    services, client = app_client
    amo.fail_next(429, retry_after=900)
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    record = record_for(services, f"amocrm:lead:{LEAD}")
    assert record.status is Status.RECEIVED and "429" in record.last_error
    assert (record.next_attempt_at - clock.now).total_seconds() >= 900
    clock.advance(seconds=901)
    deliver_pending(services)
    assert record_for(services, f"amocrm:lead:{LEAD}").status is Status.SENT


def test_a_slow_answer_times_out_and_is_retried(app_client, amo, aimylogic, clock):
    services, client = app_client
    services.source("amocrm").timeout = (1.0, 0.3)
    amo.delay = 1.0
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    record = record_for(services, f"amocrm:lead:{LEAD}")
    # urllib3 reports a read timeout it will not retry as a connection error: either way, retried later
    assert record.status is Status.RECEIVED and record.last_error.startswith("amoCRM API")
    assert record.next_attempt_at > clock.now and len(amo.hits) == 1
    amo.delay = 0.0
    clock.advance(minutes=10)
    deliver_pending(services)
    assert record_for(services, f"amocrm:lead:{LEAD}").status is Status.SENT


# End to end


def test_end_to_end_webhook_to_addphones(app_client, amo, aimylogic):
    services, client = app_client
    second_contact = {**api("api_contact.json"), "id": 40000004, "name": "Пётр", "first_name": "Пётр",
                      "custom_fields_values": [phone_field(("+7 343 212-34-56 доб. 12", "WORK"))]}
    amo.add_contact(second_contact)
    amo.add_lead({**api("api_lead.json"), "id": 32966270, "custom_fields_values": []}, [(40000004, True)])
    assert post(client, wire("leads_add.form")).status_code == 200
    report = deliver_pending(services)
    assert report.sent == 2
    by_phone = {str(entry["phone"]): entry for entry in aimylogic.entries}
    assert set(by_phone) == {"79123456789", "73432123456"}
    assert by_phone["79123456789"]["gmtZone"] == "Europe/Moscow"  # a mobile: any of 16 zones, the default
    assert by_phone["79123456789"]["payload"] == {
        "name": "Анна Смирнова",
        "crm": "amocrm",
        "crm_lead_id": LEAD,
        "crm_contact_id": CONTACT,
        "utm_source": "yandex",
        "utm_campaign": "зимняя_распродажа",
    }
    assert by_phone["73432123456"]["gmtZone"] == "Asia/Yekaterinburg"
    assert by_phone["73432123456"]["payload"] == {
        "name": "Пётр", "crm": "amocrm", "crm_lead_id": "32966270", "crm_contact_id": "40000004"
    }
    assert {r.status for r in records(services)} == {Status.SENT}


@pytest.mark.parametrize("order", [("lead_add.form", "contacts_add.form"), ("contacts_add.form", "lead_add.form")])
def test_a_lead_and_its_contact_as_two_events_make_one_call(app_client, amo, aimylogic, order):
    services, client = app_client
    for name in order:
        assert post(client, wire(name)).status_code == 200
        deliver_pending(services)
    assert aimylogic.calls_per_phone() == {"79123456789": 1}
    statuses = {r.key: r.status for r in records(services)}
    assert sorted(statuses.values()) == sorted([Status.SENT, Status.DUPLICATE])


def test_the_payload_can_be_mapped_from_the_fetched_lead_and_contact(make, tmp_path, aimylogic):
    policy = toml_policy(
        tmp_path,
        '[sources.amocrm.payload]\nclient = "contact.first_name"\ndeal = "lead.name"\n'
        'utm = "lead.fields.UTM_SOURCE"\nposition = "contact.fields.POSITION"\nmissing = "lead.nothing"\n',
    )
    services, client = make(policy=policy)
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [entry] = aimylogic.entries
    deal = api("api_lead.json")["name"]
    expected = {"client": "Анна", "deal": deal, "utm": "yandex", "position": "Главный бухгалтер"}
    assert entry["payload"] == expected
