"""Reconciliation: with no webhook at all, listing the CRM's recent leads gets each one called once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from crm2calls.config import CrmSettings, load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, ConfigError
from crm2calls.model import Status
from crm2calls.reconcile import ReconcileReport, reconcile
from tests.conftest import FIXTURES, SECRET, TOKEN
from tests.emulators.amocrm import AmoCrmEmulator
from tests.emulators.bitrix24 import Bitrix24Emulator

FORM = "application/x-www-form-urlencoded"
WINDOW = timedelta(hours=2)
# minutes before "now", phone as a manager typed it, the number Aimylogic must get
IN_WINDOW = [(30, "8 (912) 345-67-89", "79123456789"), (60, "+7 (922) 111-22-33", "79221112233"),
             (110, "8 343 212 34 56 доб. 7", "73432123456")]
TOO_OLD = (150, "+7 900 000-00-01")


def fixture_json(path: str) -> dict:
    return json.loads((FIXTURES / path).read_text(encoding="utf-8"))


@pytest.fixture
def amo(clock):
    """Three leads created within the last two hours and one before, each with its own contact."""
    lead, contact = fixture_json("amocrm/api_lead.json"), fixture_json("amocrm/api_contact.json")
    with AmoCrmEmulator() as emulator:
        emulator.page_size = 2  # three leads in the window: two pages
        for n, (minutes, phone, *_) in enumerate([*IN_WINDOW, TOO_OLD]):
            created = int((clock.now - timedelta(minutes=minutes)).timestamp())
            field = {"field_code": "PHONE", "values": [{"value": phone, "enum_code": "MOB"}]}
            emulator.add_contact({**contact, "id": 50000000 + n, "custom_fields_values": [field]})
            status = 76789231 if n == 0 else 76789230
            emulator.add_lead({**lead, "id": 33000000 + n, "created_at": created, "status_id": status},
                              [(50000000 + n, True)])
        yield emulator


@pytest.fixture
def b24(clock):
    lead = fixture_json("bitrix24/crm.lead.get.json")["result"]
    with Bitrix24Emulator() as emulator:
        emulator.page_size = 2
        for n, (minutes, phone, *_) in enumerate([*IN_WINDOW, TOO_OLD]):
            created = (clock.now - timedelta(minutes=minutes)).astimezone().isoformat(timespec="seconds")
            emulator.add("lead", {**lead, "ID": str(4000 + n), "DATE_CREATE": created, "ADDRESS_CITY": None,
                                  "PHONE": [{"ID": "1", "VALUE_TYPE": "MOBILE", "VALUE": phone, "TYPE_ID": "PHONE"}]})
        yield emulator


@pytest.fixture
def make(make_services, amo, b24, aimylogic):
    def build(**overrides):
        crm = CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token, bitrix24_webhook_url=b24.webhook_url)
        return make_services(crm=crm, aimylogic_url=aimylogic.url, aimylogic_token=TOKEN, **overrides)

    return build


@pytest.mark.parametrize("source", ["amocrm", "bitrix24"])
def test_with_no_webhook_at_all_reconciliation_gets_every_lead_called_once(make, aimylogic, source):
    services = make()
    report = reconcile(services, source, WINDOW)
    assert report == ReconcileReport(listed=3, enqueued=3, already_known=0)
    deliver_pending(services)
    assert aimylogic.calls_per_phone() == {number: 1 for *_, number in IN_WINDOW}
    assert {r.status for r in services.store.list(limit=100)} == {Status.SENT}

    again = reconcile(services, source, WINDOW)
    assert again == ReconcileReport(listed=3, enqueued=0, already_known=3)
    requests_before = len(aimylogic.requests)
    deliver_pending(services)
    assert len(aimylogic.requests) == requests_before
    assert len(services.store.list(limit=100)) == 3


def test_amocrm_is_listed_by_creation_time_page_by_page(make, amo, clock):
    reconcile(make(), "amocrm", WINDOW)
    lists = [hit for hit in amo.hits if hit.path == "/api/v4/leads"]
    assert [hit.query["page"] for hit in lists] == ["1", "2"]
    assert lists[0].query["filter[created_at][from]"] == str(int((clock.now - WINDOW).timestamp()))
    assert lists[0].query["filter[created_at][to]"] == str(int(clock.now.timestamp()))
    assert {hit.authorization for hit in amo.hits} == {f"Bearer {amo.token}"}


def test_bitrix24_is_listed_by_creation_time_page_by_page(make, b24, clock):
    reconcile(make(), "bitrix24", WINDOW)
    lists = [hit for hit in b24.hits if hit.method_name == "crm.lead.list"]
    assert [hit.params["start"] for hit in lists] == ["0", "2"]
    assert lists[0].params["filter[>=DATE_CREATE]"] == (clock.now - WINDOW).isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("source", "fixture", "key"),
    [("amocrm", "amocrm/lead_add.form", "lead:33000000"), ("bitrix24", "bitrix24/lead_add.form", "lead:4000")],
)
def test_a_lead_a_webhook_already_brought_is_known(make, source, fixture, key):
    from app import create_app

    services = make()
    body = (FIXTURES / fixture).read_bytes().replace(b"32966269", b"33000000").replace(b"ID%5D=1573", b"ID%5D=4000")
    response = create_app(services=services).test_client().post(
        f"/webhooks/{source}?key={SECRET}", data=body, content_type=FORM
    )
    assert response.status_code == 200
    assert [r.key for r in services.store.list(limit=10)] == [f"{source}:{key}"]
    assert reconcile(services, source, WINDOW) == ReconcileReport(listed=3, enqueued=2, already_known=1)


def test_in_stage_mode_amocrm_lists_the_leads_in_the_stages_under_the_webhooks_key(make, tmp_path):
    from app import create_app

    path = tmp_path / "policy.toml"
    path.write_text('[sources.amocrm]\nstatus_ids = ["76789231"]\n', encoding="utf-8")
    services = make(policy=load_policy(path, "RU"))
    assert reconcile(services, "amocrm", WINDOW) == ReconcileReport(listed=1, enqueued=1, already_known=0)
    [record] = services.store.list(limit=10)
    assert record.key == "amocrm:status:33000000:76789231"
    # the leads[status] webhook for that move, arriving late, is the same lead
    body = (FIXTURES / "amocrm/leads_status.form").read_bytes().replace(b"32966269", b"33000000")
    client = create_app(services=services).test_client()
    response = client.post(f"/webhooks/amocrm?key={SECRET}", data=body, content_type=FORM)
    assert response.status_code == 200
    assert len(services.store.list(limit=10)) == 1


def test_a_refused_token_stores_nothing_and_says_so(make_services, amo):
    services = make_services(crm=CrmSettings(amocrm_base_url=amo.url, amocrm_token="revoked-token"))
    with pytest.raises(AuthError, match="AMOCRM_TOKEN"):
        reconcile(services, "amocrm", WINDOW)
    assert services.store.list(limit=10) == []


def test_a_source_without_an_api_listing_is_refused(services):
    with pytest.raises(ConfigError, match="generic"):
        reconcile(services, "generic", WINDOW)
