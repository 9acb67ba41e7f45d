"""Bitrix24: outbound-webhook events in through the app, records fetched over HTTP from a REST stand-in
behind the inbound webhook URL, entries out at the Aimylogic emulator."""

from __future__ import annotations

import json
import logging

import pytest

from crm2calls.config import load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.conftest import FIXTURES, SECRET
from tests.emulators.bitrix24 import Bitrix24Emulator

FORM = "application/x-www-form-urlencoded"
APP_TOKEN = "b24apptoken0123456789abcdefghijk"  # the one in the fixtures' auth[application_token]
URL = "/webhooks/bitrix24"


def wire(name: str) -> bytes:
    return (FIXTURES / "bitrix24" / name).read_bytes()


def result(name: str) -> dict:
    return json.loads((FIXTURES / "bitrix24" / name).read_text(encoding="utf-8"))["result"]


def records(services):
    return services.store.list(limit=1000)


@pytest.fixture
def b24():
    with Bitrix24Emulator() as emulator:
        emulator.add("lead", result("crm.lead.get.json"))
        emulator.add("contact", result("crm.contact.get.json"))
        emulator.add("deal", result("crm.deal.get.json"))
        yield emulator


@pytest.fixture
def make(make_app, b24):
    """(services, test client); the application token is required unless tokens=() is given."""

    def build(tokens=(APP_TOKEN,), **values):
        return make_app(**{"bitrix24_webhook_url": b24.webhook_url, "bitrix24_application_tokens": tokens, **values})

    return build


@pytest.fixture
def app_client(make):
    return make()


def post(client, body: bytes, url: str = URL, content_type: str = FORM, **kwargs):
    return client.post(url, data=body, content_type=content_type, **kwargs)


def _nothing_happened(services, b24, aimylogic):
    deliver_pending(services)
    assert records(services) == []
    assert b24.hits == [] and aimylogic.requests == []


# The webhook


@pytest.mark.parametrize(
    ("fixture", "key", "raw"),
    [
        ("lead_add.form", "bitrix24:lead:1573", {"entity": "lead", "id": "1573"}),
        ("contact_add.form", "bitrix24:contact:2069", {"entity": "contact", "id": "2069"}),
        ("deal_add.form", "bitrix24:deal:815", {"entity": "deal", "id": "815"}),
    ],
)
def test_an_event_is_stored_for_enrichment_and_answered_200_without_calling_the_api(app_client, b24, fixture, key, raw):
    services, client = app_client
    response = post(client, wire(fixture))
    assert response.status_code == 200 and response.get_json() == {"ok": True, "leads": 1}
    [record] = records(services)
    assert record.key == key and record.status is Status.RECEIVED
    assert json.loads(record.raw) == raw  # ids only: never the application token
    assert b24.hits == []


def test_other_events_are_acknowledged_and_ignored(app_client):
    services, client = app_client
    response = post(client, wire("lead_update.form"))
    assert response.status_code == 200 and response.get_json()["leads"] == 0
    assert records(services) == []


def test_the_same_event_twice_is_one_lead(app_client):
    services, client = app_client
    post(client, wire("lead_add.form"))
    assert post(client, wire("lead_add.form")).status_code == 200
    assert len(records(services)) == 1


@pytest.mark.parametrize(
    "replace",
    [
        (b"data%5BFIELDS%5D%5BID%5D=1573", b"data%5BFIELDS%5D%5BID%5D=abc"),
        (b"data%5BFIELDS%5D%5BID%5D=1573", b"data%5BFIELDS%5D%5BID%5D=..%2F1"),
        (b"data%5BFIELDS%5D%5BID%5D=1573", b"data%5BFIELDS%5D%5BNAME%5D=x"),
        (b"data%5BFIELDS%5D%5BID%5D=1573", b"data=1573"),
        (b"event=ONCRMLEADADD", b"event%5B0%5D=ONCRMLEADADD"),
        (b"event=ONCRMLEADADD", b"type=ONCRMLEADADD"),
        (b"ts=1739049397", b"ts=%G1"),
    ],
)
def test_malformed_events_get_400_json_and_store_nothing(make, b24, replace):
    services, client = make(tokens=())  # with an application token, an unreadable body is a 401
    body = wire("lead_add.form").replace(*replace)
    assert body != wire("lead_add.form")
    response = post(client, body, url=f"{URL}?key={SECRET}")
    assert response.status_code == 400 and response.get_json()["error"] == "malformed"
    assert records(services) == [] and b24.hits == []


# Authentication


@pytest.mark.parametrize(
    ("body", "url", "content_type"),
    [
        (wire("lead_add.form").replace(APP_TOKEN.encode(), b"wrong-token-0123456789abcdefghij"), URL, FORM),
        (wire("lead_add.form").replace(APP_TOKEN.encode(), b""), URL, FORM),
        (wire("lead_add.form").replace(b"auth%5Bapplication_token%5D", b"auth%5Bother%5D"), URL, FORM),
        # the shared key alone does not pass once the application token is configured
        (wire("lead_add.form").replace(APP_TOKEN.encode(), b"x"), f"{URL}?key={SECRET}", FORM),
        (b"auth%5Bapplication_token%5D=%zz&event=ONCRMLEADADD", URL, FORM),  # unreadable: no token to check
        (json.dumps({"auth": {"application_token": APP_TOKEN}}).encode(), URL, "application/json"),
    ],
)
def test_a_missing_or_wrong_application_token_is_401_and_nothing_happens(app_client, b24, aimylogic, body, url,
                                                                          content_type):
    services, client = app_client
    response = post(client, body, url=url, content_type=content_type)
    assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    assert APP_TOKEN not in response.get_data(as_text=True)
    _nothing_happened(services, b24, aimylogic)


def test_the_previous_application_token_is_accepted_while_rotating(make):
    services, client = make(tokens=("new-token-after-rotation-0123456", APP_TOKEN))
    assert post(client, wire("lead_add.form")).status_code == 200
    assert len(records(services)) == 1


@pytest.mark.parametrize("url", [URL, f"{URL}?key=wrong-key"])
def test_without_an_application_token_the_shared_key_is_required(make, b24, aimylogic, url):
    services, client = make(tokens=())
    response = post(client, wire("lead_add.form"), url=url)
    assert response.status_code == 401
    _nothing_happened(services, b24, aimylogic)


def test_without_an_application_token_the_shared_key_passes(make):
    services, client = make(tokens=())
    assert post(client, wire("lead_add.form"), url=f"{URL}?key={SECRET}").status_code == 200
    assert len(records(services)) == 1


# Enrichment through the inbound webhook URL


def _one_entry(services, aimylogic) -> dict:
    deliver_pending(services)
    [entry] = aimylogic.entries
    return entry


def test_end_to_end_lead_webhook_to_addphones(app_client, b24, aimylogic):
    services, client = app_client
    assert post(client, wire("lead_add.form")).status_code == 200
    entry = _one_entry(services, aimylogic)
    assert [(hit.method_name, hit.params) for hit in b24.hits] == [("crm.lead.get", {"id": "1573"})]
    assert str(entry["phone"]) == "79123456789"  # "+7 912 345 67 89", MOBILE, over the WORK "8 (343) ... #404"
    assert entry["gmtZone"] == "Asia/Yekaterinburg"  # ADDRESS_CITY Екатеринбург, mapped in leads.toml
    assert entry["payload"] == {
        "name": "Мария Иванова",
        "crm": "bitrix24",
        "crm_lead_id": "1573",
        "utm_source": "yandex",
        "utm_medium": "cpc",
        "utm_campaign": "зимняя_распродажа",
    }
    [record] = records(services)
    assert record.status is Status.SENT


def test_a_work_number_with_an_extension_is_dialled_without_it(app_client, b24, aimylogic):
    services, client = app_client
    lead = result("crm.lead.get.json")
    lead["PHONE"] = [p for p in lead["PHONE"] if p["VALUE_TYPE"] == "WORK"]  # "8 (343) 212-34-56 #404"
    b24.add("lead", lead)
    post(client, wire("lead_add.form"))
    assert str(_one_entry(services, aimylogic)["phone"]) == "73432123456"


def test_a_repeat_lead_without_a_phone_takes_its_contacts(app_client, b24, aimylogic):
    services, client = app_client
    lead = {**result("crm.lead.get.json"), "PHONE": [], "HAS_PHONE": "N", "CONTACT_ID": "2069", "NAME": None,
            "LAST_NAME": None, "ADDRESS_CITY": None}
    b24.add("lead", lead)
    post(client, wire("lead_add.form"))
    entry = _one_entry(services, aimylogic)
    assert [hit.method_name for hit in b24.hits] == ["crm.lead.get", "crm.contact.get"]
    assert str(entry["phone"]) == "79221112233"
    assert entry["payload"]["name"] == "Олег Петров" and entry["payload"]["crm_contact_id"] == "2069"
    assert entry["payload"]["crm_lead_id"] == "1573" and entry["payload"]["utm_source"] == "yandex"


def test_a_lead_without_any_phone_is_rejected_with_that_reason(app_client, b24, aimylogic):
    services, client = app_client
    b24.add("lead", {**result("crm.lead.get.json"), "PHONE": [], "HAS_PHONE": "N"})
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.REJECTED and "HAS_PHONE=N" in record.last_error
    assert record.attempts == 1 and aimylogic.requests == []


def test_a_new_contact_is_called(app_client, b24, aimylogic):
    services, client = app_client
    post(client, wire("contact_add.form"))
    entry = _one_entry(services, aimylogic)
    assert str(entry["phone"]) == "79221112233"
    assert entry["payload"] == {"name": "Олег Петров", "crm": "bitrix24", "crm_contact_id": "2069"}


def test_a_deal_is_called_on_its_contacts_phone(app_client, b24, aimylogic):
    services, client = app_client
    post(client, wire("deal_add.form"))
    entry = _one_entry(services, aimylogic)
    assert [hit.method_name for hit in b24.hits] == ["crm.deal.get", "crm.contact.get"]
    assert str(entry["phone"]) == "79221112233"
    assert entry["payload"] == {
        "name": "Олег Петров", "crm": "bitrix24", "crm_deal_id": "815", "crm_contact_id": "2069",
        "utm_source": "vk", "utm_medium": "social",
    }


def test_a_deal_whose_contact_is_linked_later_is_waited_for(app_client, b24, aimylogic, clock):
    services, client = app_client
    b24.add("deal", {**result("crm.deal.get.json"), "CONTACT_ID": "0"})
    post(client, wire("deal_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and "no contact linked yet" in record.last_error
    b24.add("deal", result("crm.deal.get.json"))
    clock.advance(minutes=10)
    deliver_pending(services)
    assert [str(e["phone"]) for e in aimylogic.entries] == ["79221112233"]


def test_a_lead_deleted_before_enrichment_is_rejected_at_once(app_client, b24, aimylogic):
    services, client = app_client
    post(client, wire("lead_add.form").replace(b"ID%5D=1573", b"ID%5D=9999"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.REJECTED and "lead 9999" in record.last_error
    assert [hit.status for hit in b24.hits] == [400]


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, "expired_token"), (401, "NO_AUTH_FOUND"), (401, "INVALID_CREDENTIALS"), (401, "insufficient_scope")],
)
def test_refused_credentials_keep_the_lead_and_never_show_the_url_secret(app_client, b24, aimylogic, status, error):
    services, client = app_client
    b24.fail_next(status, error, "refused")
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and record.attempts == 0  # kept until a person fixes the URL
    assert "BITRIX24_WEBHOOK_URL" in record.last_error and b24.code not in record.last_error
    assert aimylogic.requests == []


def test_a_wrong_webhook_url_secret_is_an_auth_error(make, b24, aimylogic):
    services, client = make(bitrix24_webhook_url=b24.webhook_url.replace(b24.code, "revoked-code-42"))
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and "BITRIX24_WEBHOOK_URL" in record.last_error
    assert "revoked-code-42" not in record.last_error
    assert [hit.status for hit in b24.hits] == [401]


def test_query_limit_exceeded_is_retried_later(app_client, b24, aimylogic, clock):
    services, client = app_client
    b24.fail_next(503, "QUERY_LIMIT_EXCEEDED", "Too many requests", times=3)  # the client's own 2 retries too
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and "503" in record.last_error
    assert len(b24.hits) == 3
    clock.advance(minutes=10)
    deliver_pending(services)
    assert len(aimylogic.entries) == 1


def test_an_operation_time_limit_honours_retry_after(app_client, b24, aimylogic, clock):
    services, client = app_client
    b24.fail_next(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit", retry_after=1200)
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and (record.next_attempt_at - clock.now).total_seconds() >= 1200


def test_a_slow_portal_is_retried(app_client, b24, aimylogic, clock):
    services, client = app_client
    services.source("bitrix24").timeout = (1.0, 0.3)
    b24.delay = 1.0
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and record.last_error.startswith("Bitrix24 API")
    assert b24.code not in record.last_error
    b24.delay = 0.0
    clock.advance(minutes=10)
    deliver_pending(services)
    assert len(aimylogic.entries) == 1


def test_without_a_webhook_url_the_lead_is_kept_naming_the_variable(make, b24, aimylogic):
    services, client = make(bitrix24_webhook_url=None)
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.RECEIVED and "BITRIX24_WEBHOOK_URL" in record.last_error
    assert record.attempts == 0  # kept until a person sets the variable
    assert b24.hits == []


def test_the_url_secret_never_reaches_the_logs(app_client, b24, aimylogic, caplog, clock):
    services, client = app_client
    caplog.set_level(logging.DEBUG)
    b24.fail_next(503, "QUERY_LIMIT_EXCEEDED", "Too many requests", times=3)
    post(client, wire("lead_add.form"))
    deliver_pending(services)
    clock.advance(minutes=10)
    deliver_pending(services)
    assert len(aimylogic.entries) == 1
    assert "crm.lead.get" in caplog.text  # urllib3 did log the calls...
    assert b24.code not in caplog.text  # ...with the code in the path redacted


def test_the_payload_can_be_mapped_from_the_fetched_records(make, tmp_path, b24, aimylogic):
    path = tmp_path / "policy.toml"
    path.write_text(
        '[sources.bitrix24.payload]\ntitle = "lead.TITLE"\ntariff = "lead.UF_CRM_1704817278"\n'
        'comment = "lead.COMMENTS"\nnone = "deal.TITLE"\n',
        encoding="utf-8",
    )
    services, client = make(policy=load_policy(path, "RU"))
    post(client, wire("lead_add.form"))
    entry = _one_entry(services, aimylogic)
    lead = result("crm.lead.get.json")
    expected = {"title": lead["TITLE"], "tariff": lead["UF_CRM_1704817278"], "comment": lead["COMMENTS"]}
    assert entry["payload"] == expected
