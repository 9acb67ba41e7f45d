"""Salesforce Outbound Messages: namespaces and xsi:nil, one event per notification, the SOAP Ack,
OrganizationId (18 and 15 characters), the shared key, XML bombs and external entities."""

from __future__ import annotations

import json
import time
from xml.etree.ElementTree import fromstring

import pytest

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import FIXTURES, SECRET

ORG_ID = "00D5g000004Hs9bEAC"
URL = f"/webhooks/salesforce?key={SECRET}"
XML = "text/xml; charset=utf-8"
ACK_PATH = ".//{http://soap.sforce.com/2005/09/outbound}notificationsResponse/{http://soap.sforce.com/2005/09/outbound}Ack"


def fixture(name: str) -> bytes:
    return (FIXTURES / "salesforce" / name).read_bytes()


@pytest.fixture
def make(make_app):
    def build(organization_id: str | None = ORG_ID):
        return make_app(salesforce_organization_id=organization_id)

    return build


@pytest.fixture
def sf(make):
    return make()


def post(client, body: bytes, url: str = URL, content_type: str = XML):
    return client.post(url, data=body, content_type=content_type, headers={"SOAPAction": '""'})


def records(services):
    return sorted(services.store.list(limit=1000), key=lambda r: r.key)


def acknowledged(response) -> bool:
    if response.status_code != 200 or not response.content_type.startswith("text/xml"):
        return False
    return fromstring(response.data).findtext(ACK_PATH) == "true"  # noqa: S314 - our own answer


def test_two_notifications_are_two_leads_and_one_ack(sf, aimylogic):
    services, client = sf
    response = post(client, fixture("leads_two_notifications.xml"))
    assert acknowledged(response)
    assert response.content_type == "text/xml; charset=utf-8"
    first, second = records(services)
    assert (first.key, first.ref, first.status) == (
        "salesforce:notification:04l5g00000AbCdEAAV", "00Q5g00000XyZaBEAV", Status.PENDING)
    entry = json.loads(first.entry)
    assert entry["phone"] == "13035550148"  # "(303) 555-0148" in the source's region, US; MobilePhone is nil
    assert entry["payload"] == {"name": "Jordan Reyes", "crm": "salesforce", "crm_record_id": "00Q5g00000XyZaBEAV",
                                "company": "Rocky Mountain Kitchens", "lead_source": "Web"}
    entry = json.loads(second.entry)
    assert entry["phone"] == "79165550148"  # MobilePhone before Phone
    assert entry["gmtZone"] == "Europe/Moscow"  # City mapped by [zones.cities]
    assert entry["payload"]["name"] == "Дмитрий Иванов"
    assert aimylogic.requests == []


def test_a_resent_message_is_acknowledged_and_changes_nothing(sf):
    services, client = sf
    post(client, fixture("leads_two_notifications.xml"))
    before = [(r.id, r.status) for r in records(services)]
    assert acknowledged(post(client, fixture("leads_two_notifications.xml")))
    assert [(r.id, r.status) for r in records(services)] == before


def test_a_contact_falls_back_from_an_invalid_mobile_to_the_home_phone(sf):
    services, client = sf
    assert acknowledged(post(client, fixture("contact_notification.xml")))
    [record] = records(services)
    entry = json.loads(record.entry)
    assert entry["phone"] == "17205550199"
    assert entry["payload"] == {"name": "Priya Natarajan", "crm": "salesforce", "crm_record_id": "0035g00000QwErTAAZ"}


def test_a_lead_sent_without_phone_fields_is_recorded_rejected_and_still_acknowledged(sf):
    services, client = sf
    assert acknowledged(post(client, fixture("lead_without_phone_fields.xml")))
    [record] = records(services)
    assert record.status is Status.REJECTED and record.last_error == "phone: no phone number"


@pytest.mark.parametrize("configured", [ORG_ID, ORG_ID[:15], None])
def test_the_organization_id_matches_as_18_characters_or_their_15_character_prefix(make, configured):
    services, client = make(configured)
    assert acknowledged(post(client, fixture("leads_two_notifications.xml")))
    assert len(records(services)) == 2


@pytest.mark.parametrize("configured", ["00D5g000004Hs9cEAC", "00D5g000004Hs9c", ORG_ID[:15].lower(), ORG_ID[:14]])
def test_another_organization_is_403_never_acknowledged(make, aimylogic, configured):
    services, client = make(configured)
    response = post(client, fixture("leads_two_notifications.xml"))
    assert response.status_code == 403 and not acknowledged(response)
    assert response.get_json()["field"] == "OrganizationId"
    deliver_pending(services)
    assert records(services) == [] and aimylogic.requests == []


@pytest.mark.parametrize("url", ["/webhooks/salesforce", "/webhooks/salesforce?key=wrong"])
def test_without_the_shared_key_it_is_401(sf, aimylogic, url):
    services, client = sf
    response = post(client, fixture("leads_two_notifications.xml"), url=url)
    assert response.status_code == 401 and not acknowledged(response)
    deliver_pending(services)
    assert records(services) == [] and aimylogic.requests == []


@pytest.mark.parametrize("content_type", ["application/json", "application/soap+xml", "application/xml"])
def test_only_soap_1_1_text_xml_is_taken(sf, content_type):
    services, client = sf
    response = post(client, fixture("leads_two_notifications.xml"), content_type=content_type)
    assert response.status_code == 415 and records(services) == []


def test_an_xml_bomb_is_400_without_expansion(sf):
    services, client = sf
    started = time.perf_counter()
    response = post(client, fixture("billion_laughs.xml"))
    assert response.status_code == 400 and not acknowledged(response)
    assert time.perf_counter() - started < 1.0  # a billion "lol"s were never built
    assert records(services) == []


def test_an_external_entity_is_400_and_the_file_is_never_read(sf, tmp_path):
    services, client = sf
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("MARKER-7f3a9c-not-for-crm")
    body = fixture("xxe_file.xml").replace(b"__SECRET_FILE__", str(secret_file).encode())
    response = post(client, body)
    assert response.status_code == 400 and not acknowledged(response)
    assert b"MARKER-7f3a9c" not in response.data
    assert records(services) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<soapenv:Envelope", "not well-formed"),
        (b"", "not well-formed"),
        (None, "no notifications element"),
        (b'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>x</OrganizationId>'
         b"<Notification><Id>1</Id></Notification></notifications>", "no Id or sObject"),
    ],
)
def test_a_body_that_is_not_an_outbound_message_is_400_without_ack(make, body, reason):
    services, client = make(None)
    response = post(client, fixture("not_an_outbound_message.xml") if body is None else body)
    assert response.status_code == 400 and not acknowledged(response)
    assert reason in response.get_json()["message"]
    assert records(services) == []


def test_end_to_end_both_leads_reach_the_dialer(sf, aimylogic):
    services, client = sf
    assert acknowledged(post(client, fixture("leads_two_notifications.xml")))
    deliver_pending(services)
    assert {r.status for r in records(services)} == {Status.SENT}
    by_phone = {entry["phone"]: entry for entry in aimylogic.entries}
    assert set(by_phone) == {"13035550148", "79165550148"}
    assert by_phone["13035550148"]["gmtZone"] == "America/Denver"  # from the 303 number
    assert by_phone["79165550148"]["payload"]["crm_record_id"] == "00Q5g00000XyZaCEAV"
