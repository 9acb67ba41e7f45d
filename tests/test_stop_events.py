"""What means stop, per CRM: each CRM's stop events from wire-format fixtures (tests/fixtures/<crm>/stops/),
through the same authentication as its webhooks; idempotency keys; the lookups of check=True events
against the CRM stand-ins over real HTTP; stop_values and stop_property checked at start-up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm2calls.config import CrmSettings, load_policy
from crm2calls.errors import (
    ConfigError,
    EnrichmentError,
    ForbiddenError,
    MalformedRequestError,
    MissingCredentialsError,
    UnauthorizedError,
    UnavailableError,
)
from crm2calls.model import StopEvent
from tests.conftest import FIXTURES, SECRET
from tests.emulators.amocrm import AmoCrmEmulator
from tests.emulators.bitrix24 import Bitrix24Emulator
from tests.emulators.close import CloseStandIn
from tests.emulators.zoho import ZohoStandIn

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PUBLIC = "https://crm2calls.example.com"
B24_TOKEN = "b24apptoken0123456789abcdefghijk"  # the fixtures' auth[application_token]
HUBSPOT_SECRET = "c0ffee00-1111-4222-8333-444455556666"
PIPEDRIVE_USER, PIPEDRIVE_PASSWORD = "crm2calls", "Kq8-2mZr_pWd-current"
SALESFORCE_ORG = "00D5g000004Hs9bEAC"  # the fixtures' OrganizationId
ZOHO_TOKEN = "zN7q-notify-2026-current"  # the fixtures' token
CLOSE_KEY = "5f1c0a9e3b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f0a"
CLOSE_LEAD = "lead_HrYdGbZ3o1wpN7rFKvTeVb6QDe2u3W9xJyQqfE1tPZa"


def hubspot_headers(body: bytes, now: datetime) -> dict[str, str]:
    """HubSpot's v3 signature, written again here so the test does not trust the code under test."""
    timestamp = str((now - EPOCH) // timedelta(milliseconds=1))
    message = b"POST" + f"{PUBLIC}/webhooks/hubspot".encode() + body + timestamp.encode()
    signature = base64.b64encode(hmac.new(HUBSPOT_SECRET.encode(), message, hashlib.sha256).digest()).decode()
    return {"X-HubSpot-Request-Timestamp": timestamp, "X-HubSpot-Signature-v3": signature}


def close_headers(body: bytes, now: datetime) -> dict[str, str]:
    """close-sig-hash over timestamp + raw body with the hex-decoded key."""
    timestamp = str((now - EPOCH) // timedelta(seconds=1))
    signature = hmac.new(bytes.fromhex(CLOSE_KEY), timestamp.encode() + body, hashlib.sha256).hexdigest()
    return {"close-sig-timestamp": timestamp, "close-sig-hash": signature}


def pipedrive_headers(body: bytes, now: datetime) -> dict[str, str]:
    token = base64.b64encode(f"{PIPEDRIVE_USER}:{PIPEDRIVE_PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def no_headers(body: bytes, now: datetime) -> dict[str, str]:
    return {}


def json_edit(change: Callable[[dict | list], None]) -> Callable[[bytes], bytes]:
    def edit(body: bytes) -> bytes:
        data = json.loads(body)
        change(data)
        return json.dumps(data, ensure_ascii=False).encode()

    return edit


def _set_hubspot_attempts(events: list) -> None:
    for event in events:
        event["attemptNumber"] += 1


def _set_pipedrive_attempt(body: dict) -> None:
    if body.get("v") == 1:
        body["retry"] += 1
    else:
        body["meta"]["attempt"] += 1


@dataclass(frozen=True)
class Crm:
    """How one CRM's requests are authenticated here, and how it resends one."""

    name: str
    content_type: str
    url: str
    crm: dict
    headers: Callable[[bytes, datetime], dict[str, str]]
    spoil: Callable[[bytes], bytes]  # the same body, failing authentication
    retried: Callable[[bytes], bytes] = field(default=lambda body: body)  # what the CRM sends when it resends


CRMS = {
    crm.name: crm
    for crm in (
        Crm("amocrm", "application/x-www-form-urlencoded", f"/webhooks/amocrm?key={SECRET}",
            {"amocrm_account_id": "32427762"}, no_headers,
            lambda body: body.replace(b"account%5Bid%5D=32427762", b"account%5Bid%5D=32427763")),
        # Bitrix24 never resends: a retry is only the same body again.
        Crm("bitrix24", "application/x-www-form-urlencoded", "/webhooks/bitrix24",
            {"bitrix24_application_tokens": (B24_TOKEN,)}, no_headers,
            lambda body: body.replace(B24_TOKEN.encode(), b"b24apptokenGUESSED")),
        Crm("hubspot", "application/json", "/webhooks/hubspot", {"hubspot_client_secrets": (HUBSPOT_SECRET,)},
            hubspot_headers, lambda body: body.replace(b"}]", b",\"x\":1}]"), json_edit(_set_hubspot_attempts)),
        Crm("pipedrive", "application/json", "/webhooks/pipedrive",
            {"pipedrive_webhook_user": PIPEDRIVE_USER, "pipedrive_webhook_passwords": (PIPEDRIVE_PASSWORD,)},
            pipedrive_headers, lambda body: body,  # spoiled through its headers, see spoiled_headers()
            json_edit(_set_pipedrive_attempt)),
        Crm("salesforce", "text/xml", f"/webhooks/salesforce?key={SECRET}",
            {"salesforce_organization_id": SALESFORCE_ORG}, no_headers, lambda body: body),  # wrong ?key=
        Crm("zoho", "application/json", "/webhooks/zoho", {"zoho_notify_tokens": (ZOHO_TOKEN,)}, no_headers,
            lambda body: body.replace(ZOHO_TOKEN.encode(), b"zN7q-guessed")),
        Crm("close", "application/json", "/webhooks/close", {"close_signature_keys": (CLOSE_KEY,)}, close_headers,
            lambda body: body.replace(b"lead_", b"lead-", 1)),
    )
}


def spoiled(crm: Crm, body: bytes, now: datetime) -> tuple[str, bytes, dict[str, str]]:
    """(url, body, headers) of the request with its authentication broken."""
    if crm.name == "pipedrive":
        wrong = base64.b64encode(f"{PIPEDRIVE_USER}:guess".encode()).decode()
        return crm.url, body, {"Authorization": f"Basic {wrong}"}
    if crm.name == "salesforce":
        return "/webhooks/salesforce?key=wrong", body, {}
    return crm.url, crm.spoil(body), crm.headers(body, now)  # signed before the change, as an attacker would


def fixture_cases() -> list:
    """(crm, fixture, case) for every expectation in tests/fixtures/<crm>/stops/expected.json."""
    cases = []
    for crm in CRMS:
        expected = json.loads((FIXTURES / crm / "stops" / "expected.json").read_text(encoding="utf-8"))
        for name, variants in expected.items():
            for index, case in enumerate(variants):
                cases.append(pytest.param(crm, name, case, id=f"{crm}/{name}/{index}"))
    return cases


def stop_fixtures() -> list[Path]:
    return sorted(path for crm in CRMS for path in (FIXTURES / crm / "stops").iterdir()
                  if path.name not in ("expected.json", "README.md"))


def wire(crm: str, name: str) -> bytes:
    return (FIXTURES / crm / "stops" / name).read_bytes()


@pytest.fixture
def build(make_services, clock, tmp_path):
    """(services, app) for a CRM, its authentication configured, the mapping file's [sources] from `policy`."""
    from app import create_app

    def make(crm: Crm, policy: str | None = None, **crm_values):
        overrides = {}
        if policy is not None:
            path = tmp_path / "policy.toml"
            path.write_text(policy, encoding="utf-8")
            overrides["policy"] = load_policy(path, "RU")
        services = make_services(crm=CrmSettings(**{**crm.crm, **crm_values}), public_base_url=PUBLIC, **overrides)
        source = services.source(crm.name)
        if hasattr(source, "now"):
            source.now = clock  # HubSpot and Close compare the signed timestamp with our clock
        return services, create_app(services=services)

    return make


def parsed(app, crm: Crm, body: bytes, now: datetime, *, url: str | None = None, headers=None):
    """(lead events, stop events) of a request, verified exactly as the webhook view verifies it."""
    from crm2calls.web import verified

    headers = crm.headers(body, now) if headers is None else headers
    with app.test_request_context(url or crm.url, method="POST", data=body, content_type=crm.content_type,
                                  headers=headers):
        _, source, request = verified(crm.name)
        return source.parse(request), source.parse_stops(request)


# Every fixture parses into the expected stop events


def test_every_stop_fixture_has_its_expectation():
    for path in stop_fixtures():
        expected = json.loads((path.parent / "expected.json").read_text(encoding="utf-8"))
        assert path.name in expected, f"{path.relative_to(FIXTURES)} has no entry in expected.json"
    assert len(stop_fixtures()) >= 30


@pytest.mark.parametrize(("crm", "name", "case"), fixture_cases())
def test_a_fixture_parses_into_its_stop_events(build, clock, crm, name, case):
    _, app = build(CRMS[crm], case.get("policy"))
    leads, stops = parsed(app, CRMS[crm], wire(crm, name), clock())
    assert [[s.key, s.record, s.check, s.reason] for s in stops] == case["stops"]
    assert [lead.ref for lead in leads] == case["leads"]  # a stop is never a lead: nobody is called for it
    for stop in stops:
        assert json.loads(json.dumps(stop.raw)) == stop.raw  # stored with the event, read by check_stop


@pytest.mark.parametrize("path", stop_fixtures(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_stop_events_are_authenticated_like_the_webhooks(build, clock, path):
    crm = CRMS[path.parent.parent.name]
    _, app = build(crm)
    url, body, headers = spoiled(crm, path.read_bytes(), clock())
    # amoCRM signs nothing: the key passes, the account in the body is another one
    with pytest.raises(ForbiddenError if crm.name == "amocrm" else UnauthorizedError):
        parsed(app, crm, body, clock(), url=url, headers=headers)


@pytest.mark.parametrize("path", stop_fixtures(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_a_stop_only_body_gets_the_crms_usual_answer_and_stores_no_lead(build, clock, aimylogic, path):
    crm = CRMS[path.parent.parent.name]
    services, app = build(crm)
    body = path.read_bytes()
    response = app.test_client().post(crm.url, data=body, content_type=crm.content_type,
                                      headers=crm.headers(body, clock()))
    assert 200 <= response.status_code < 300
    if crm.name == "salesforce":
        assert b"<Ack>true</Ack>" in response.data  # or Salesforce resends for a day
    expected = json.loads((path.parent / "expected.json").read_text(encoding="utf-8"))[path.name][0]["leads"]
    assert sorted(r.ref for r in services.store.list(limit=100)) == sorted(expected)


@pytest.mark.parametrize(
    ("crm", "body"),
    [
        ("bitrix24", b"data%5BFIELDS%5D%5BID%5D=1573&auth%5Bapplication_token%5D=" + B24_TOKEN.encode()),  # no event
        ("bitrix24", b"event=ONCRMLEADDELETE&data%5BFIELDS%5D%5BID%5D=..%2F1&auth%5Bapplication_token%5D="
         + B24_TOKEN.encode()),
        ("pipedrive", b'{"data": {"is_archived": true}}'),
        ("pipedrive", b'{"meta": {"action": "delete", "entity": "person", "version": "2.0"}, "data": null}'),
        ("close", b'{"subscription_id": "whsub_1"}'),
        ("close", b'{"event": {"object_type": "lead", "action": "deleted", "id": "ev_1", "lead_id": "nope"}}'),
        ("zoho", b'{"ids": ["1"], "operation": "delete", "module": "Leads", "token": "' + ZOHO_TOKEN.encode() + b'"}'),
        ("zoho", b'{"channel_id": "1", "ids": ["../1"], "operation": "delete", "module": "Leads", "token": "'
         + ZOHO_TOKEN.encode() + b'"}'),
        ("hubspot", b'{"eventId": 1'),
        ("amocrm", b"account%5Bid%5D=32427762&leads%5Bdelete%5D%5B0%5D%5Bid%5D=x1"),
    ],
)
def test_a_body_with_neither_leads_nor_stops_is_a_clear_400(build, clock, crm, body):
    """Refused by parse() or parse_stops(), whichever reads it first: a 400 naming the field."""
    _, app = build(CRMS[crm])
    with pytest.raises(MalformedRequestError) as caught:
        parsed(app, CRMS[crm], body, clock())
    assert caught.value.status == 400 and caught.value.field


# Idempotency keys


@pytest.mark.parametrize("crm", sorted(CRMS))
def test_keys_differ_per_event_and_repeat_when_the_crm_resends(build, clock, crm):
    config = CRMS[crm]
    keys: list[str] = []
    _, app = build(config)
    for path in stop_fixtures():
        if path.parent.parent.name != crm:
            continue
        first = [s.key for s in parsed(app, config, path.read_bytes(), clock())[1]]
        clock.advance(minutes=3)  # the CRM's retry comes later, with a fresh signature
        again = [s.key for s in parsed(app, config, config.retried(path.read_bytes()), clock())[1]]
        assert again == first, path.name
        keys += first
    assert keys and len(keys) == len(set(keys))


def test_a_record_closed_twice_gets_two_keys(build, clock):
    """Reopened and closed again, or updated twice: each event is its own, the record the same."""
    pairs = [("amocrm", "leads_status_closed.form", "leads_status_lost_later.form", "lead:32966269"),
             ("bitrix24", "lead_update.form", "lead_update_later.form", "lead:1573"),
             ("zoho", "leads_edit.json", "leads_edit_later.json", "5725767000003000010")]
    for crm, first, later, record in pairs:
        _, app = build(CRMS[crm])
        one = next(s for s in parsed(app, CRMS[crm], wire(crm, first), clock())[1] if s.record == record)
        two = next(s for s in parsed(app, CRMS[crm], wire(crm, later), clock())[1] if s.record == record)
        assert one.key != two.key, crm


# Records are named like the lead events' refs


@pytest.mark.parametrize(
    ("crm", "lead_fixture", "stop_fixture", "policy"),
    [
        ("bitrix24", "../lead_add.form", "lead_update.form", None),  # lead:1573
        ("zoho", "../notification_insert_leads.json", "leads_edit.json", None),  # 5725767000003000010
        ("close", "../lead_created.json", "lead_updated_without_data.json",
         '[sources.close]\nstop_values = ["Bad Fit"]\n'),  # the lead id
        ("pipedrive", "../v2_create_lead.json", "v2_change_lead_archived.json", None),  # the lead's UUID
        ("pipedrive", "../v2_create_person.json", "v2_change_deal_won.json", None),  # the person id 1024
        ("amocrm", "../mixed.form", "leads_status_closed.form",
         '[sources.amocrm]\nstop_values = ["9621010:76789232"]\n'),  # lead:32966271
        ("amocrm", "../mixed.form", "contacts_delete.form", None),  # contact:37054082
    ],
)
def test_a_stop_names_the_record_as_the_lead_event_named_it(build, clock, crm, lead_fixture, stop_fixture, policy):
    _, app = build(CRMS[crm], policy)
    leads, _ = parsed(app, CRMS[crm], wire(crm, lead_fixture), clock())
    _, stops = parsed(app, CRMS[crm], wire(crm, stop_fixture), clock())
    assert {lead.ref for lead in leads} & {stop.record for stop in stops}


def test_hubspot_and_salesforce_stops_name_the_lead_events_refs(build, clock):
    _, app = build(CRMS["hubspot"])
    creation = json.loads(wire("hubspot", "legacy_events.json"))[5]
    deletion = {**creation, "eventId": 1840019999, "subscriptionType": "contact.deletion"}
    body = json.dumps([creation, deletion]).encode()
    leads, stops = parsed(app, CRMS["hubspot"], body, clock())
    assert [lead.ref for lead in leads] == [stop.record for stop in stops] == ["151000000106"]
    _, app = build(CRMS["salesforce"])
    leads, _ = parsed(app, CRMS["salesforce"], (FIXTURES / "salesforce" / "leads_two_notifications.xml").read_bytes(),
                      clock())
    _, stops = parsed(app, CRMS["salesforce"], wire("salesforce", "lead_status_closed.xml"), clock())
    assert stops[0].record in {lead.ref for lead in leads}


# check=True events: the record read in the worker, over real HTTP


@pytest.fixture
def b24():
    with Bitrix24Emulator() as api:
        yield api


@pytest.mark.parametrize(
    ("entity", "fields", "stop_values", "reason"),
    [
        ("lead", {"STATUS_ID": "IN_PROCESS", "STATUS_SEMANTIC_ID": "P"}, None, None),
        ("lead", {"STATUS_ID": "CONVERTED", "STATUS_SEMANTIC_ID": "S"}, None,
         "Bitrix24 lead 1573 is won (STATUS_ID CONVERTED)"),
        ("lead", {"STATUS_ID": "JUNK", "STATUS_SEMANTIC_ID": "F"}, None, "Bitrix24 lead 1573 is lost (STATUS_ID JUNK)"),
        ("lead", {"STATUS_ID": "UC_7KQ2X1", "STATUS_SEMANTIC_ID": "P"}, ["UC_7KQ2X1"],
         "Bitrix24 lead 1573 is in STATUS_ID UC_7KQ2X1 (stop_values)"),
        ("lead", {"STATUS_ID": "UC_7KQ2X1", "STATUS_SEMANTIC_ID": "P"}, ["C1:LOSE"], None),
        ("deal", {"STAGE_ID": "C1:WON", "STAGE_SEMANTIC_ID": "S"}, None, "Bitrix24 deal 311 is won (STAGE_ID C1:WON)"),
        ("deal", {"STAGE_ID": "C1:LOSE", "STAGE_SEMANTIC_ID": "F"}, None,
         "Bitrix24 deal 311 is lost (STAGE_ID C1:LOSE)"),
        ("deal", {"STAGE_ID": "C1:PREPAYMENT_INVOICE", "STAGE_SEMANTIC_ID": "P"}, ["C1:PREPAYMENT_INVOICE"],
         "Bitrix24 deal 311 is in STAGE_ID C1:PREPAYMENT_INVOICE (stop_values)"),
        ("deal", {"STAGE_ID": "C1:NEW", "STAGE_SEMANTIC_ID": "P"}, None, None),
    ],
)
def test_bitrix24_checks_the_lead_or_deal(build, clock, b24, entity, fields, stop_values, reason):
    policy = None if stop_values is None else f"[sources.bitrix24]\nstop_values = {json.dumps(stop_values)}\n"
    services, app = build(CRMS["bitrix24"], policy, bitrix24_webhook_url=b24.webhook_url)
    entity_id = "1573" if entity == "lead" else "311"
    b24.add(entity, {"ID": entity_id, "TITLE": "Кухня на заказ", **fields})
    [stop] = parsed(app, CRMS["bitrix24"], wire("bitrix24", f"{entity}_update.form"), clock())[1]
    assert services.source("bitrix24").check_stop(stop, clock()) == reason
    [hit] = b24.hits
    assert hit.method_name == f"crm.{entity}.get" and hit.params["id"] == entity_id


def test_bitrix24_sees_the_manager_close_the_lead_between_two_updates(build, clock, b24):
    services, app = build(CRMS["bitrix24"], bitrix24_webhook_url=b24.webhook_url)
    source = services.source("bitrix24")
    b24.add("lead", {"ID": "1573", "STATUS_ID": "IN_PROCESS", "STATUS_SEMANTIC_ID": "P"})
    [first] = parsed(app, CRMS["bitrix24"], wire("bitrix24", "lead_update.form"), clock())[1]
    assert source.check_stop(first, clock()) is None
    b24.set_fields("lead", "1573", STATUS_ID="JUNK", STATUS_SEMANTIC_ID="F")
    [later] = parsed(app, CRMS["bitrix24"], wire("bitrix24", "lead_update_later.form"), clock())[1]
    assert source.check_stop(later, clock()) == "Bitrix24 lead 1573 is lost (STATUS_ID JUNK)"


def test_bitrix24_check_errors_are_the_enrichment_errors(build, clock, b24):
    services, app = build(CRMS["bitrix24"], bitrix24_webhook_url=b24.webhook_url)
    [stop] = parsed(app, CRMS["bitrix24"], wire("bitrix24", "lead_update.form"), clock())[1]
    with pytest.raises(EnrichmentError) as caught:  # no such lead (deleted: its own event stops it)
        services.source("bitrix24").check_stop(stop, clock())
    assert caught.value.retryable is False
    b24.fail_next(503, "QUERY_LIMIT_EXCEEDED", "Too many requests", times=3)
    with pytest.raises(UnavailableError):  # worth a retry later
        services.source("bitrix24").check_stop(stop, clock())


@pytest.fixture
def zoho(clock):
    with ZohoStandIn(clock) as api:
        yield api


def zoho_values(zoho: ZohoStandIn) -> dict:
    return {"zoho_api_domain": zoho.url, "zoho_accounts_url": zoho.url, "zoho_client_id": zoho.client_id,
            "zoho_client_secret": zoho.client_secret, "zoho_refresh_token": zoho.refresh_token}


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("Contacted", None),
        ("Lost Lead", "Zoho CRM lead's Lead_Status is Lost Lead"),
        ("Junk Lead", "Zoho CRM lead's Lead_Status is Junk Lead"),
        ("Not Qualified", "Zoho CRM lead's Lead_Status is Not Qualified"),
        (None, None),
    ],
)
def test_zoho_checks_the_leads_status(build, clock, zoho, status, reason):
    services, app = build(CRMS["zoho"], **zoho_values(zoho))
    zoho.add_record("Leads", "5725767000003000010", Last_Name="Орлова", Phone="+7 922 123-45-67", Lead_Status=status)
    [stop] = parsed(app, CRMS["zoho"], wire("zoho", "leads_edit.json"), clock())[1]
    assert services.source("zoho").check_stop(stop, clock()) == reason
    assert zoho.api_hits() == ["/crm/v8/Leads/5725767000003000010"]


def test_zoho_a_lead_gone_from_leads_is_a_stop_and_a_refused_token_is_refreshed(build, clock, zoho):
    services, app = build(CRMS["zoho"], **zoho_values(zoho))
    source = services.source("zoho")
    [stop] = parsed(app, CRMS["zoho"], wire("zoho", "leads_edit.json"), clock())[1]
    assert source.check_stop(stop, clock()) == "Zoho CRM lead 5725767000003000010 is gone (deleted or converted)"
    zoho.add_record("Leads", "5725767000003000010", Lead_Status="Contacted")
    zoho.set_fields("Leads", "5725767000003000010", Lead_Status="Lost Lead")
    zoho.revoke_tokens()
    assert source.check_stop(stop, clock()) == "Zoho CRM lead's Lead_Status is Lost Lead"
    assert zoho.token_requests == 2


@pytest.fixture
def close_api():
    with CloseStandIn() as api:
        yield api


@pytest.mark.parametrize(
    ("status_label", "status_id", "reason"),
    [
        ("Potential", "stat_1ZdiZqcSIkoGVnNOyxiEY58eTGQmFNG3LPlEVQ4V7Nk", None),
        ("Bad Fit", "stat_8kQw2ErT5yUi9oPa3sDf6gHj1kLz4xCv7bNm0qWe2rT", "Close lead status_label is Bad Fit"),
        ("Not Interested", "stat_0aZx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA9zYx8", "Close lead status_id is "
         "stat_0aZx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA9zYx8"),
    ],
)
def test_close_checks_the_leads_status_when_the_event_left_it_out(build, clock, close_api, status_label, status_id,
                                                                    reason):
    policy = '[sources.close]\nstop_values = ["Bad Fit", "stat_0aZx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA9zYx8"]\n'
    services, app = build(CRMS["close"], policy, close_api_key=close_api.api_key, close_base_url=close_api.url)
    close_api.add_lead(CLOSE_LEAD, "Bluebird Dental", [], status_label=status_label, status_id=status_id)
    [stop] = parsed(app, CRMS["close"], wire("close", "lead_updated_without_data.json"), clock())[1]
    assert stop.check is True
    assert services.source("close").check_stop(stop, clock()) == reason
    assert close_api.paths() == [f"/api/v1/lead/{CLOSE_LEAD}/"]


def test_a_check_stop_without_credentials_names_the_variable(build, clock):
    services, _ = build(CRMS["close"], '[sources.close]\nstop_values = ["Bad Fit"]\n')
    stop = StopEvent("stop:event:ev_1", CLOSE_LEAD, "Close lead status changed", check=True,
                     raw={"lead_id": CLOSE_LEAD})
    with pytest.raises(MissingCredentialsError, match="CLOSE_API_KEY"):
        services.source("close").check_stop(stop, clock())


def test_sources_without_lookups_never_ask_for_one(build, clock):
    """Only Bitrix24, Zoho and Close make check=True events; the others decide from the body."""
    for crm in ("amocrm", "hubspot", "pipedrive", "salesforce"):
        _, app = build(CRMS[crm])
        for path in (FIXTURES / crm / "stops").iterdir():
            if path.name not in ("expected.json", "README.md"):
                assert not any(s.check for s in parsed(app, CRMS[crm], path.read_bytes(), clock())[1])


def test_amocrm_reconciliation_skips_leads_already_won_or_lost(build, clock):
    """A lead created into a stop stage is never called: not from its webhook, not from the listing."""
    lead = json.loads((FIXTURES / "amocrm" / "api_lead.json").read_text(encoding="utf-8"))
    created = int((clock() - timedelta(minutes=5)).timestamp())
    with AmoCrmEmulator() as amo:
        for lead_id, status_id in ((34000001, 142), (34000002, 76789230), (34000003, 143)):
            amo.add_lead({**lead, "id": lead_id, "created_at": created, "status_id": status_id,
                          "pipeline_id": 9621010})
        services, _ = build(CRMS["amocrm"], amocrm_base_url=amo.url, amocrm_token=amo.token)
        events = services.source("amocrm").list_since(clock() - timedelta(hours=1), clock())
    assert [event.ref for event in events] == ["lead:34000002"]


# Settings: stop_values and stop_property, checked at start-up


def problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "leads.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(path, "RU")
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[sources.amocrm]\nstatus_ids = ["142"]\n', "sources.amocrm.stop_values",
         ["'142'", "status_ids", "defaults"]),
        ('[sources.amocrm]\nstatus_ids = ["76789231"]\nstop_values = ["9621010:76789231"]\n',
         "sources.amocrm.stop_values", ["'9621010:76789231'", "status_ids", "'76789231'"]),
        ('[sources.amocrm]\nstatus_ids = ["9621010:143"]\n', "sources.amocrm.stop_values", ["'143'", "status_ids"]),
        ('[sources.amocrm]\nstop_values = ["won"]\n', "sources.amocrm.stop_values", ["'won'", "pipeline_id:status_id"]),
        ('[sources.pipedrive]\nstop_values = ["lost"]\n', "sources.pipedrive.stop_values", ["fixed"]),
        ('[sources.zoho]\nstop_property = "lead_status"\n', "sources.zoho.stop_property", ["only hubspot"]),
        ('[sources.hubspot]\nstop_property = "Lead Status"\n', "sources.hubspot.stop_property", ["hs_lead_status"]),
        ('[sources.close]\nstop_values = [""]\n', "sources.close.stop_values", []),
        ('[sources.close]\nstop_values = "Bad Fit"\n', "sources.close.stop_values", ["list"]),
    ],
)
def test_stop_settings_are_checked_at_start_up_naming_the_key(tmp_path, text, key, words):
    found = problems(tmp_path, text)
    assert any(key in line for line in found), found
    line = next(line for line in found if key in line)
    for word in words:
        assert word in line, line


@pytest.mark.parametrize(
    ("text", "source", "stops", "prop"),
    [
        ("", "amocrm", ("142", "143"), "hs_lead_status"),
        ("", "hubspot", ("UNQUALIFIED",), "hs_lead_status"),
        ("", "salesforce", ("Closed - Converted", "Closed - Not Converted"), "hs_lead_status"),
        ("", "zoho", ("Lost Lead", "Junk Lead", "Not Qualified"), "hs_lead_status"),
        ("", "close", (), "hs_lead_status"),
        ("", "bitrix24", (), "hs_lead_status"),
        ('[sources.amocrm]\nstatus_ids = ["76789231"]\nstop_values = ["9621010:143"]\n', "amocrm", ("9621010:143",),
         "hs_lead_status"),
        ('[sources.amocrm]\nstatus_ids = ["142"]\nstop_values = ["143"]\n', "amocrm", ("143",), "hs_lead_status"),
        ('[sources.hubspot]\nstop_property = "lifecyclestage"\nstop_values = ["other"]\n', "hubspot", ("other",),
         "lifecyclestage"),
        ('[sources.close]\nstop_values = ["Bad Fit"]\n', "close", ("Bad Fit",), "hs_lead_status"),
        ('[sources.zoho]\nstop_values = []\n', "zoho", (), "hs_lead_status"),
    ],
)
def test_stop_values_default_per_crm(tmp_path, text, source, stops, prop):
    path = tmp_path / "leads.toml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path, "RU").source(source)
    assert policy.stop_statuses == stops and policy.stop_property == prop


def test_the_shipped_mapping_file_loads_with_the_defaults(shipped_policy):
    assert shipped_policy.source("amocrm").stop_statuses == ("142", "143")
    assert shipped_policy.source("close").stop_statuses == ()
