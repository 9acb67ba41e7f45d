"""Zoho CRM: notification callbacks (token, fan-out, idempotency), workflow bodies (generic mapping),
OAuth access tokens (cached, refreshed on expiry and on 401, once), renew_watch, end to end."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from crm2calls.config import CrmSettings
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, ConfigError, EnrichmentError, RejectedError
from crm2calls.model import LeadEvent, Status
from crm2calls.sources.zoho import renew_watch
from tests.conftest import FIXTURES, SECRET
from tests.emulators.zoho import ZohoStandIn

NOTIFY_TOKEN = "zN7q-notify-2026-current"  # as in the fixtures
PREVIOUS_NOTIFY_TOKEN = "zN7q-notify-2026-previous"
CHANNEL = "1000000068001"
PUBLIC = "https://crm2calls.example.com"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
LEAD_IDS = ["5725767000003000010", "5725767000003000020", "5725767000003000030"]


def fixture(name: str) -> bytes:
    return (FIXTURES / "zoho" / name).read_bytes()


@pytest.fixture
def zoho(clock):
    with ZohoStandIn(clock) as api:
        yield api


@pytest.fixture
def make(make_app, zoho):
    def build(tokens: tuple[str, ...] = (NOTIFY_TOKEN, PREVIOUS_NOTIFY_TOKEN), **overrides):
        return make_app(**{
            "zoho_notify_tokens": tokens, "zoho_api_domain": zoho.url, "zoho_accounts_url": zoho.url,
            "zoho_client_id": zoho.client_id, "zoho_client_secret": zoho.client_secret,
            "zoho_refresh_token": zoho.refresh_token, "zoho_channel_id": CHANNEL, "public_base_url": PUBLIC,
            **overrides,
        })

    return build


@pytest.fixture
def zh(make):
    return make()


def post(client, body: bytes, url: str = "/webhooks/zoho", content_type: str = JSON):
    return client.post(url, data=body, content_type=content_type)


def with_token(token: str | None) -> bytes:
    body = json.loads(fixture("notification_insert_leads.json"))
    if token is None:
        del body["token"]
    else:
        body["token"] = token
    return json.dumps(body).encode()


def records(services):
    return sorted(services.store.list(limit=1000), key=lambda r: r.ref)


# Notifications


def test_a_notification_fans_out_one_event_per_id(zh, zoho, aimylogic):
    services, client = zh
    response = post(client, fixture("notification_insert_leads.json"))
    assert response.status_code == 202
    stored = records(services)
    assert [r.ref for r in stored] == LEAD_IDS and {r.status for r in stored} == {Status.RECEIVED}
    assert stored[0].key == f"zoho:notification:{CHANNEL}:{LEAD_IDS[0]}:insert"
    assert json.loads(stored[0].raw) == {"module": "Leads", "id": LEAD_IDS[0]}
    assert zoho.hits == [] and aimylogic.requests == []


def test_a_repeated_notification_changes_nothing(zh):
    services, client = zh
    post(client, fixture("notification_insert_leads.json"))
    again = post(client, fixture("notification_insert_leads.json")).get_json()["leads"]
    assert {lead["reason"] for lead in again} == {"already received"} and len(records(services)) == 3


@pytest.mark.parametrize("token", ["zN7q-notify-2026-wrong", "", None, "zN7q-notify-2026-current "])
def test_a_wrong_or_missing_token_is_401_and_nothing_happens(zh, zoho, aimylogic, token):
    services, client = zh
    assert post(client, with_token(token)).status_code == 401
    deliver_pending(services)
    assert records(services) == [] and zoho.hits == [] and aimylogic.requests == []


def test_a_token_that_is_not_a_string_is_401(zh):
    services, client = zh
    body = json.loads(fixture("notification_insert_leads.json"))
    body["token"] = [NOTIFY_TOKEN]
    assert post(client, json.dumps(body).encode()).status_code == 401 and records(services) == []


def test_the_previous_token_still_passes_during_rotation(zh):
    services, client = zh
    assert post(client, with_token(PREVIOUS_NOTIFY_TOKEN)).status_code == 202 and len(records(services)) == 3


def test_with_a_notify_token_the_shared_key_alone_does_not_pass(zh, zoho):
    services, client = zh
    response = post(client, with_token("zN7q-notify-2026-wrong"), url=f"/webhooks/zoho?key={SECRET}")
    assert response.status_code == 401 and records(services) == []


def test_without_a_notify_token_notifications_need_the_shared_key(make):
    services, client = make(tokens=())
    assert post(client, fixture("notification_insert_leads.json")).status_code == 401
    assert records(services) == []
    response = post(client, fixture("notification_insert_leads.json"), url=f"/webhooks/zoho?key={SECRET}")
    assert response.status_code == 202 and len(records(services)) == 3


def test_updates_are_not_leads(zh):
    services, client = zh
    response = post(client, fixture("notification_update.json"))
    assert response.status_code == 202 and response.get_json()["leads"] == [] and records(services) == []


def test_another_module_is_not_a_lead(zh):
    services, client = zh
    body = json.loads(fixture("notification_insert_leads.json"))
    body["module"] = "Deals"
    assert post(client, json.dumps(body).encode()).get_json()["leads"] == [] and records(services) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [({"ids": "5725767000003000010"}, "ids"), ({"ids": ["../../settings"]}, "ids[0]"), ({"channel_id": None}, "ids")],
)
def test_a_malformed_notification_is_400(zh, change, field):
    services, client = zh
    body = {**json.loads(fixture("notification_insert_leads.json")), **change}
    response = post(client, json.dumps(body).encode())
    assert response.status_code == 400 and response.get_json()["field"] == field and records(services) == []


# Workflow webhooks (a body the admin designs)


def test_a_workflow_json_body_is_mapped_by_the_configured_fields(zh, zoho):
    services, client = zh
    response = post(client, fixture("workflow_lead.json"), url=f"/webhooks/zoho?key={SECRET}")
    assert response.status_code == 202
    [record] = records(services)
    assert record.status is Status.PENDING and record.key == "zoho:workflow:id:5725767000003000031"
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789" and entry["gmtZone"] == "Asia/Novosibirsk"
    assert entry["payload"] == {"name": "Андрей Соколов", "city": "Новосибирск", "lead_source": "Сайт"}
    assert zoho.hits == []


def test_a_workflow_form_body_is_mapped_too(zh):
    services, client = zh
    response = post(client, fixture("workflow_lead.form"), url=f"/webhooks/zoho?key={SECRET}", content_type=FORM)
    assert response.status_code == 202
    [record] = records(services)
    assert json.loads(record.entry)["phone"] == "73832123456"  # "8 (383) ..." read in region RU


@pytest.mark.parametrize("url", ["/webhooks/zoho", "/webhooks/zoho?key=wrong"])
def test_a_workflow_body_needs_the_shared_key_even_with_a_notify_token(zh, url):
    services, client = zh
    assert post(client, fixture("workflow_lead.json"), url=url).status_code == 401 and records(services) == []


# Enrichment and OAuth


def event(record_id: str = LEAD_IDS[0], module: str = "Leads") -> LeadEvent:
    return LeadEvent(f"notification:{CHANNEL}:{record_id}:insert", record_id, None, {"module": module, "id": record_id})


def add_lead(zoho, record_id: str = LEAD_IDS[0], **fields):
    zoho.add_record("Leads", record_id, First_Name="Игорь", Last_Name="Белов", Full_Name="Игорь Белов",
                    Mobile="+7 922 555-01-02", Phone="+7 343 555-01-02", Company="Уралмаш", Lead_Source="Web Form",
                    City="Екатеринбург", **fields)


def test_enrichment_gets_a_token_by_form_post_and_reads_the_record(zh, zoho, clock):
    services, _ = zh
    add_lead(zoho)
    lead = services.source("zoho").enrich(event(), clock())
    token_hit, api_hit = zoho.hits
    assert token_hit.path == "/oauth/v2/token" and token_hit.query == {}  # secrets in the body, not the URL
    assert b"grant_type=refresh_token" in token_hit.body
    assert api_hit.path == f"/crm/v8/Leads/{LEAD_IDS[0]}"
    assert api_hit.headers["Authorization"].startswith("Zoho-oauthtoken 1000.")
    assert [(c.value, c.kind) for c in lead.phones] == [("+7 922 555-01-02", "mobile"), ("+7 343 555-01-02", "")]
    assert lead.fields == {"name": "Игорь Белов", "crm": "zoho", "crm_module": "Leads",
                           "crm_record_id": LEAD_IDS[0], "company": "Уралмаш", "lead_source": "Web Form"}
    assert lead.city == "Екатеринбург"


def test_the_access_token_is_cached_until_it_expires(zh, zoho, clock):
    services, _ = zh
    source = services.source("zoho")
    add_lead(zoho)
    source.enrich(event(), clock())
    clock.advance(minutes=50)
    source.enrich(event(), clock())
    assert zoho.token_requests == 1
    clock.advance(minutes=9, seconds=30)  # inside the one-minute margin before Zoho's hour is up
    source.enrich(event(), clock())
    assert zoho.token_requests == 2 and len(zoho.api_hits()) == 3


def test_a_refused_token_is_refreshed_once_and_the_call_repeated(zh, zoho, clock):
    services, _ = zh
    source = services.source("zoho")
    add_lead(zoho)
    source.enrich(event(), clock())
    zoho.revoke_tokens()
    lead = source.enrich(event(), clock())
    assert lead.external_id == LEAD_IDS[0] and zoho.token_requests == 2 and len(zoho.api_hits()) == 3


def test_a_token_refused_again_after_the_refresh_is_an_auth_error(zh, zoho, clock):
    services, _ = zh
    add_lead(zoho)
    zoho.refuse_all_tokens = True
    with pytest.raises(AuthError):
        services.source("zoho").enrich(event(), clock())
    api = f"/crm/v8/Leads/{LEAD_IDS[0]}"
    assert zoho.paths() == ["/oauth/v2/token", api, "/oauth/v2/token", api]  # one refresh, one repeat, no loop


def test_a_wrong_refresh_token_is_an_auth_error_naming_the_variables(make, zoho, clock):
    services, _ = make(zoho_refresh_token="1000.revoked.refresh")
    with pytest.raises(AuthError) as caught:
        services.source("zoho").enrich(event(), clock())
    assert "invalid_code" in caught.value.message and "ZOHO_REFRESH_TOKEN" in caught.value.message
    assert "1000.revoked.refresh" not in caught.value.message and zoho.api_hits() == []


def test_without_oauth_credentials_enrichment_waits_for_them(make_services, clock):
    with pytest.raises(AuthError, match="ZOHO_CLIENT_ID"):
        make_services(crm=CrmSettings()).source("zoho").enrich(event(), clock())


def test_a_record_without_a_phone_yet_is_retryable_and_an_unknown_one_is_not(zh, zoho, clock):
    services, _ = zh
    zoho.add_record("Contacts", "5725767000004000011", Full_Name="Без Телефона")
    with pytest.raises(EnrichmentError) as caught:
        services.source("zoho").enrich(event("5725767000004000011", "Contacts"), clock())
    assert caught.value.retryable
    with pytest.raises(EnrichmentError) as caught:
        services.source("zoho").enrich(event("5725767000009999999"), clock())
    assert caught.value.retryable is False


# renew_watch


def test_renew_watch_enables_the_channel_for_a_week_less_a_margin(zh, zoho, clock):
    services, _ = zh
    result = renew_watch(services, clock())
    [watch] = zoho.watches
    assert watch["channel_id"] == int(CHANNEL)
    events = ["Leads.create", "Contacts.create", "Leads.edit", "Leads.delete", "Contacts.delete"]  # edits: stops
    assert watch["events"] == events
    assert watch["notify_url"] == f"{PUBLIC}/webhooks/zoho" and watch["token"] == NOTIFY_TOKEN
    expiry = datetime.fromisoformat(watch["channel_expiry"])
    assert expiry == clock() + timedelta(days=7) - timedelta(hours=1) and expiry.utcoffset() == timedelta(0)
    assert result == {"channel_id": CHANNEL, "events": events,
                      "notify_url": f"{PUBLIC}/webhooks/zoho", "channel_expiry": watch["channel_expiry"]}
    assert NOTIFY_TOKEN not in json.dumps(result)


def test_renew_watch_names_every_missing_variable(make_services, clock):
    services = make_services(crm=CrmSettings(zoho_client_id="id", zoho_client_secret="s", zoho_refresh_token="r"))
    with pytest.raises(ConfigError) as caught:
        renew_watch(services, clock())
    assert {line.split(":")[0] for line in caught.value.problems} == {
        "ZOHO_CHANNEL_ID", "ZOHO_NOTIFY_TOKEN", "PUBLIC_BASE_URL"}


def test_renew_watch_refuses_a_token_zoho_would_refuse(make, clock):
    services, _ = make(tokens=("x" * 51,))
    with pytest.raises(ConfigError, match="at most 50"):
        renew_watch(services, clock())


def test_a_refused_subscription_is_a_rejected_error(zh, zoho, clock):
    services, _ = zh
    renew_watch(services, clock())  # holds an access token now
    zoho.fail_next(400)
    with pytest.raises(RejectedError):
        renew_watch(services, clock())
    assert len(zoho.watches) == 1


# End to end


def test_end_to_end_three_new_leads_are_fetched_and_called(zh, zoho, aimylogic, clock):
    services, client = zh
    add_lead(zoho, LEAD_IDS[0])
    zoho.add_record("Leads", LEAD_IDS[1], Full_Name="Ольга Ким", Mobile="8 914 555-01-03", City="Владивосток")
    zoho.add_record("Leads", LEAD_IDS[2], Full_Name="Пётр Ли", Phone="+7 383 555-01-04")
    zoho.phone_hidden_for[LEAD_IDS[2]] = 1
    assert post(client, fixture("notification_insert_leads.json")).status_code == 202
    deliver_pending(services)
    assert [r.status for r in records(services)] == [Status.SENT, Status.SENT, Status.RECEIVED]
    clock.advance(minutes=5)
    deliver_pending(services)
    assert {r.status for r in records(services)} == {Status.SENT}
    by_phone = {entry["phone"]: entry for entry in aimylogic.entries}
    assert set(by_phone) == {"79225550102", "79145550103", "73835550104"}
    assert by_phone["79225550102"]["gmtZone"] == "Asia/Yekaterinburg"
    assert by_phone["79145550103"]["gmtZone"] == "Asia/Vladivostok"
    assert by_phone["73835550104"]["payload"] == {"name": "Пётр Ли", "crm": "zoho", "crm_module": "Leads",
                                                   "crm_record_id": LEAD_IDS[2]}
    assert zoho.token_requests == 1  # one access token served every fetch


def test_end_to_end_a_new_contact_uses_the_contacts_module(zh, zoho, aimylogic, clock):
    services, client = zh
    zoho.add_record("Contacts", "5725767000004000011", First_Name="Nadia", Last_Name="Olsen", Mobile="+1 720 555 0199",
                    Account_Name={"name": "Olsen Dental", "id": "5725767000002000001"}, Mailing_City="Boulder")
    assert post(client, fixture("notification_insert_contact.json")).status_code == 202
    deliver_pending(services)
    [entry] = aimylogic.entries
    assert zoho.api_hits() == ["/crm/v8/Contacts/5725767000004000011"]
    assert entry["phone"] == "17205550199" and entry["gmtZone"] == "America/Denver"
    assert entry["payload"] == {"name": "Nadia Olsen", "crm": "zoho", "crm_module": "Contacts",
                                "crm_record_id": "5725767000004000011", "company": "Olsen Dental"}
