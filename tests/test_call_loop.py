"""The whole call loop per CRM, end to end: the CRM's lead webhook (its own fixture and authentication) through
the app, delivery to the Aimylogic emulator, follow-up passes on the injected clock until the job ends, and the
outcome written once on the CRM's stand-in (and signed to a results webhook); the CRM's own stop fixture
cancelling the queued job, and a stop for a record not seen yet cancelling its late lead. SQLite and DynamoDB."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from werkzeug.wrappers import Request, Response

from crm2calls.config import load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.followup import follow_up
from crm2calls.model import LeadRecord, Status
from tests.conftest import FIXTURES, ROOT, SECRET, TOKEN
from tests.emulators.aimylogic import JobPlan
from tests.emulators.amocrm import AmoCrmEmulator
from tests.emulators.bitrix24 import Bitrix24Emulator
from tests.emulators.close import CloseStandIn
from tests.emulators.crm_api import StandIn
from tests.emulators.hubspot import HubSpotStandIn
from tests.emulators.pipedrive import PipedriveStandIn
from tests.emulators.salesforce import SalesforceStandIn
from tests.emulators.zoho import ZohoStandIn
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_stop_events import (  # the fixtures' credentials and the CRMs' signatures, written once
    B24_TOKEN,
    CLOSE_KEY,
    HUBSPOT_SECRET,
    PIPEDRIVE_PASSWORD,
    PIPEDRIVE_USER,
    PUBLIC,
    SALESFORCE_ORG,
    ZOHO_TOKEN,
    close_headers,
    hubspot_headers,
    pipedrive_headers,
)

RESULTS_SECRET = "whsec_" + base64.b64encode(b"the call loop's secret, 32 bytes").decode()
FORM, JSON, XML = "application/x-www-form-urlencoded", "application/json", "text/xml; charset=utf-8"


def wire(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def json_wire(path: str) -> Any:
    return json.loads(wire(path))


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


@dataclass
class Crm:
    """One CRM as the loop drives it: how its webhooks are posted, which record its lead fixture names, what
    its stand-in recorded, and the bodies of its stop fixtures."""

    name: str
    url: str
    content_type: str
    ref: str  # the lead's ref as the lead webhook names it
    lead: Callable[[str | None], bytes]  # the lead webhook's body, for another record id when given
    stop: bytes  # the CRM's stop fixture naming the lead's record
    unseen: tuple[str, bytes]  # (record id, stop fixture) for a record never seen
    unseen_ref: str  # the ref a lead of that record gets
    writes: Callable[[], list[dict[str, Any]]]
    values: dict[str, Any] = field(default_factory=dict)  # CrmSettings and Settings for make_app
    headers: Callable[[bytes, datetime], dict[str, str]] = lambda body, now: {}
    close_record: Callable[[], None] | None = None  # a stop event that needs a lookup: the record is closed
    policy: str | None = None  # lines added to the shipped mapping file
    timed: bool = False  # the source compares signed timestamps with its `now`


@contextmanager
def amocrm(clock, variant: str = "main") -> Iterator[Crm]:
    lead_id = "32966269"  # lead_add.form; leads_status_closed.form moves it to 142 (won)
    with AmoCrmEmulator() as amo:
        amo.add_lead(json_wire("amocrm/api_lead.json"), [("37054081", True)])
        amo.add_contact(json_wire("amocrm/api_contact.json"))
        crm = Crm(
            "amocrm", f"/webhooks/amocrm?key={SECRET}", FORM, f"lead:{lead_id}",
            lambda other: wire("amocrm/lead_add.form").replace(lead_id.encode(), (other or lead_id).encode()),
            wire("amocrm/stops/leads_status_closed.form"),
            ("32966200", wire("amocrm/stops/leads_delete.form")), "lead:32966200", lambda: amo.notes,
            {"amocrm_base_url": amo.url, "amocrm_token": amo.token, "amocrm_account_id": "32427762"},
        )  # fmt: skip
        if variant == "other":  # a lead that came as a contact: its note goes on the contact, its delete stops it
            stop = wire("amocrm/stops/contacts_delete.form").replace(b"37054082", b"37054081")
            crm = replace(crm, ref="contact:37054081", lead=lambda other: wire("amocrm/contacts_add.form"), stop=stop)
        yield crm


@contextmanager
def bitrix24(clock, variant: str = "main") -> Iterator[Crm]:
    with Bitrix24Emulator() as b24:
        for entity in ("lead", "contact", "deal"):
            b24.add(entity, json_wire(f"bitrix24/crm.{entity}.get.json")["result"])

        def lead(other: str | None) -> bytes:
            return wire("bitrix24/lead_add.form").replace(b"ID%5D=1573", f"ID%5D={other or '1573'}".encode())

        crm = Crm(
            "bitrix24", "/webhooks/bitrix24", FORM, "lead:1573", lead, wire("bitrix24/stops/lead_update.form"),
            ("1574", wire("bitrix24/stops/lead_delete.form")), "lead:1574", lambda: b24.comments,
            {"bitrix24_webhook_url": b24.webhook_url, "bitrix24_application_tokens": (B24_TOKEN,)},
            close_record=lambda: b24.set_fields("lead", "1573", STATUS_ID="JUNK", STATUS_SEMANTIC_ID="F"),
        )  # fmt: skip
        if variant == "other":  # a deal, called on its contact's phone; the deal lost in the CRM
            crm = replace(crm, ref="deal:815", lead=lambda other: wire("bitrix24/deal_add.form"),
                          stop=wire("bitrix24/stops/deal_update.form").replace(b"ID%5D=311", b"ID%5D=815"),
                          close_record=lambda: b24.set_fields("deal", "815", STAGE_ID="C1:LOSE",
                                                              STAGE_SEMANTIC_ID="F"))  # fmt: skip
        yield crm


@contextmanager
def hubspot(clock, variant: str = "main") -> Iterator[Crm]:
    events = {event["eventId"]: event for event in json_wire("hubspot/stops/legacy_events.json")}
    creation = events[1840013006]  # contact.creation of 151000000106
    unqualified = {**events[1840013001], "objectId": creation["objectId"]}  # hs_lead_status -> UNQUALIFIED
    deletion = events[1840013004]  # contact.deletion of 151000000104, a contact never seen

    def lead(other: str | None) -> bytes:
        if other is None:
            return dumps([creation])
        return dumps([{**creation, "eventId": 1840019104, "objectId": int(other)}])

    with HubSpotStandIn() as hub:
        for contact in ("151000000106", "151000000104"):
            hub.add_contact(contact, firstname="Sam", lastname="Lee", phone="512-867-5309", city="Austin")
        crm = Crm(
            "hubspot", "/webhooks/hubspot", JSON, "151000000106", lead, dumps([unqualified]),
            ("151000000104", dumps([deletion])), "151000000104", lambda: hub.calls,
            {"hubspot_client_secrets": (HUBSPOT_SECRET,), "hubspot_token": hub.token, "hubspot_base_url": hub.url,
             "public_base_url": PUBLIC},
            hubspot_headers, timed=True,
        )  # fmt: skip
        if variant == "other":  # the v3 platform format's object.propertyChange
            [platform] = [e for e in json_wire("hubspot/stops/platform_events.json") if e["eventId"] == 1840014001]
            crm = replace(crm, stop=dumps([{**platform, "objectId": creation["objectId"]}]))
        yield crm


@contextmanager
def pipedrive(clock, variant: str = "main") -> Iterator[Crm]:
    lead_uuid = "adf21080-0e10-11eb-879b-05d71fb426ec"  # v2_create_lead.json; archived in v2_change_lead_archived
    unseen = "b0c1d2e3-0e10-11eb-879b-05d71fb426ec"  # v2_delete_lead.json

    def lead(other: str | None) -> bytes:
        body = wire("pipedrive/v2_create_lead.json")
        if other is None:
            return body
        body = body.replace(lead_uuid.encode(), other.encode())
        return body.replace(b"c3f1d2e4-5b6a-4c7d-9e8f-0a1b2c3d4e5f", b"c3f1d2e4-5b6a-4c7d-9e8f-0a1b2c3dffff")

    with PipedriveStandIn() as pipe:
        pipe.add_person(
            "1025",
            "Ольга Смирнова",
            [{"label": "mobile", "value": "+7 916 765-43-21", "primary": True}],
            postal_address_locality="Москва",
        )
        pipe.add_person("1024", "Светлана Орлова", [])  # v2_create_person.json's person, its phones in the event
        pipe.leads.update({lead_uuid, unseen})
        crm = Crm(
            "pipedrive", "/webhooks/pipedrive", JSON, lead_uuid, lead,
            wire("pipedrive/stops/v2_change_lead_archived.json"), (unseen, wire("pipedrive/stops/v2_delete_lead.json")),
            unseen, lambda: pipe.notes,
            {"pipedrive_webhook_user": PIPEDRIVE_USER, "pipedrive_webhook_passwords": (PIPEDRIVE_PASSWORD,),
             "pipedrive_api_token": pipe.token, "pipedrive_base_url": pipe.url},
            pipedrive_headers,
        )  # fmt: skip
        if variant == "other":  # a person; a deal of theirs won
            crm = replace(
                crm,
                ref="1024",
                lead=lambda other: wire("pipedrive/v2_create_person.json"),
                stop=wire("pipedrive/stops/v2_change_deal_won.json"),
            )
        yield crm


@contextmanager
def salesforce(clock, variant: str = "main") -> Iterator[Crm]:
    lead_id, unseen = "00Q5g00000XyZaBEAV", "00Q5g00000XyZaDEAV"  # lead_status_closed.xml / lead_converted.xml

    def lead(other: str | None) -> bytes:
        body = wire("salesforce/leads_two_notifications.xml")
        return body if other is None else body.replace(lead_id.encode(), other.encode())

    with SalesforceStandIn(clock) as org:
        for record in (lead_id, "00Q5g00000XyZaCEAV", unseen):
            org.add_record(record)
        org.add_record("0035g00000QwErTAAZ", "Contact")
        crm = Crm(
            "salesforce", f"/webhooks/salesforce?key={SECRET}", XML, lead_id, lead,
            wire("salesforce/stops/lead_status_closed.xml"), (unseen, wire("salesforce/stops/lead_converted.xml")),
            unseen, org.writes,
            {"salesforce_organization_id": SALESFORCE_ORG, "salesforce_instance_url": org.url,
             "salesforce_client_id": org.client_id, "salesforce_client_secret": org.client_secret},
            lambda body, now: {"SOAPAction": '""'},
        )  # fmt: skip
        if variant == "other":  # a contact's notification; a lead converted into that contact
            stop = wire("salesforce/stops/lead_converted.xml").replace(b"0035g00000QrStUAAV", b"0035g00000QwErTAAZ")
            crm = replace(
                crm, ref="0035g00000QwErTAAZ", lead=lambda other: wire("salesforce/contact_notification.xml"), stop=stop
            )
        yield crm


@contextmanager
def zoho(clock, variant: str = "main") -> Iterator[Crm]:
    lead_id, unseen = "5725767000003000010", "5725767000003000060"  # leads_edit.json / leads_delete.json

    def lead(other: str | None) -> bytes:
        body = json_wire("zoho/notification_insert_leads.json")
        return dumps({**body, "ids": [other or lead_id]})

    with ZohoStandIn(clock) as api:
        for record in (lead_id, unseen):
            api.add_record(
                "Leads",
                record,
                First_Name="Игорь",
                Last_Name="Белов",
                Full_Name="Игорь Белов",
                Mobile="+7 922 555-01-02",
                City="Екатеринбург",
                Lead_Status="Contacted",
            )
        api.add_record(
            "Contacts",
            "5725767000004000011",
            First_Name="Nadia",
            Last_Name="Olsen",
            Mobile="+1 720 555 0199",
            Mailing_City="Boulder",
        )
        crm = Crm(
            "zoho", "/webhooks/zoho", JSON, lead_id, lead, wire("zoho/stops/leads_edit.json"),
            (unseen, wire("zoho/stops/leads_delete.json")), unseen, api.written_notes,
            {"zoho_notify_tokens": (ZOHO_TOKEN,), "zoho_api_domain": api.url, "zoho_accounts_url": api.url,
             "zoho_client_id": api.client_id, "zoho_client_secret": api.client_secret,
             "zoho_refresh_token": api.refresh_token, "zoho_channel_id": "1000000068001", "public_base_url": PUBLIC},
            close_record=lambda: api.set_fields("Leads", lead_id, Lead_Status="Lost Lead"),
        )  # fmt: skip
        if variant == "other":  # a contact: its note on Contacts; deleted
            stop = wire("zoho/stops/contacts_delete.json").replace(b"5725767000004000010", b"5725767000004000011")
            crm = replace(
                crm,
                ref="5725767000004000011",
                stop=stop,
                close_record=None,
                lead=lambda other: wire("zoho/notification_insert_contact.json"),
            )
        yield crm


@contextmanager
def close(clock, variant: str = "main") -> Iterator[Crm]:
    lead_id = "lead_HrYdGbZ3o1wpN7rFKvTeVb6QDe2u3W9xJyQqfE1tPZa"  # lead_created.json, lead_updated_bad_fit.json
    unseen = "lead_Qm7vR2xT9pL4sN8wK3dF6gH1jB5cZ0aY2eU7iO4tQrX"  # lead_deleted.json

    def lead(other: str | None) -> bytes:
        body = wire("close/lead_created.json")
        if other is None:
            return body
        return body.replace(lead_id.encode(), other.encode()).replace(
            b"ev_5e3JqBGFMD9Z4DTgZsoUBG", b"ev_5e3JqBGFMD9Z4DTgZsoXXX"
        )

    with CloseStandIn() as api:
        for record in (lead_id, unseen):
            api.add_lead(
                record,
                "Bluebird Dental",
                [
                    {
                        "id": "cont_9sQw8eRt7y",
                        "name": "Dana Whitfield",
                        "phones": [{"phone": "+17205550199", "phone_formatted": "+1 720-555-0199", "type": "mobile"}],
                    }
                ],
                status_label="Potential",
            )
        crm = Crm(
            "close", "/webhooks/close", JSON, lead_id, lead, wire("close/stops/lead_updated_bad_fit.json"),
            (unseen, wire("close/stops/lead_deleted.json")), unseen, lambda: api.calls,
            {"close_signature_keys": (CLOSE_KEY,), "close_api_key": api.api_key, "close_base_url": api.url},
            close_headers, policy='stop_values = ["Bad Fit"]', timed=True,
        )  # fmt: skip
        if variant == "other":  # lead.updated without the status: the worker reads the lead
            crm = replace(
                crm,
                stop=wire("close/stops/lead_updated_without_data.json"),
                close_record=lambda: api.leads[lead_id].update(status_label="Bad Fit"),
            )
        yield crm


CRMS = {maker.__name__: maker for maker in (amocrm, bitrix24, hubspot, pipedrive, salesforce, zoho, close)}


@dataclass
class Loop:
    """The app for one CRM on one store, sending to the emulator, with the CRM's stand-in."""

    crm: Crm
    services: Any
    client: Any
    clock: Any
    aimylogic: Any

    def post(self, body: bytes) -> Any:
        response = self.client.post(
            self.crm.url, data=body, content_type=self.crm.content_type, headers=self.crm.headers(body, self.clock())
        )
        assert 200 <= response.status_code < 300, response.data
        return response

    def leads(self, ref: str) -> list[LeadRecord]:
        return [r for r in self.services.store.list(limit=1000) if r.source == self.crm.name and r.ref == ref]

    def sent(self) -> list[LeadRecord]:
        """The lead webhook posted and delivered: the leads it made, all sent (several where the fixture has
        several records)."""
        self.post(self.crm.lead(None))
        deliver_pending(self.services)
        leads = [r for r in self.services.store.list(limit=1000) if r.source == self.crm.name]
        assert leads and {r.status for r in leads} == {Status.SENT}, [(r.status, r.last_error) for r in leads]
        assert any(r.ref == self.crm.ref for r in leads)
        return leads

    def follow(self, lead_ids: list[str], step: timedelta = timedelta(minutes=1), passes: int = 240) -> None:
        """Follow-up passes as the clock moves until every lead is final with no work left."""
        for _ in range(passes):
            self.clock.advance(seconds=step.total_seconds())
            follow_up(self.services)
            records = [self.services.store.get(lead_id) for lead_id in lead_ids]
            if all(r.final and not r.work for r in records):
                return
        raise AssertionError([(r.status, r.work, r.history[-3:]) for r in records])


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request, tmp_path) -> str:
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")
        return f"dynamodb://call-loop-{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path / 'leads.db'}"


@pytest.fixture
def make_loop(make_app, aimylogic, clock, store_url, tmp_path):
    with ExitStack() as stack:

        def build(name: str, variant: str = "main", **values: Any) -> Loop:
            crm = stack.enter_context(CRMS[name](clock, variant))
            overrides: dict[str, Any] = {"leads_store": store_url, **crm.values, **values}
            if crm.policy:
                text = (ROOT / "leads.toml").read_text(encoding="utf-8")
                path = tmp_path / "leads.toml"
                path.write_text(text.replace(f"[sources.{name}]\n", f"[sources.{name}]\n{crm.policy}\n"), "utf-8")
                overrides["policy"] = load_policy(path, "RU")
            services, client = make_app(**overrides)
            if crm.timed:
                services.source(name).now = clock  # its signatures are checked against our clock
            return Loop(crm, services, client, clock, aimylogic)

        yield build


def naming(writes: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    """The writes whose text names the job (as "job <id>", never a longer id)."""
    return [w for w in writes if re.search(rf"\bjob {re.escape(job_id)}\b", json.dumps(w, ensure_ascii=False))]


# 1. The outcome written back once

ATTEMPTS = {"longCallWithResult": 1, "noAnswer": 2, "canceled": 0}


@pytest.mark.parametrize("variant", ["main", "other"])
@pytest.mark.parametrize("name", list(CRMS))
@pytest.mark.parametrize(
    ("final", "status"),
    [("longCallWithResult", Status.CALLED), ("noAnswer", Status.NOT_REACHED), ("canceled", Status.CANCELED)],
)  # canceled in Aimylogic
def test_a_lead_is_called_and_its_outcome_written_once_in_its_crm(make_loop, aimylogic, name, variant, final, status):
    aimylogic.default_plan = JobPlan(
        final=final, attempts=ATTEMPTS[final], wait=120, ring=45, retry=300, duration=52, report={"answer": "yes"}
    )
    loop = make_loop(name, variant)
    leads = loop.sent()

    loop.follow([r.id for r in leads])

    writes = loop.crm.writes()
    assert len(writes) == len(leads), writes
    for lead in leads:
        record = loop.services.store.get(lead.id)
        assert record.status is status, record.history
        assert record.outcome["job_status"] == final and record.job_id == lead.job_id
        assert len(naming(writes, record.job_id)) == 1, (record.job_id, writes)
        assert record.outcome["written"]["crm"] == name
    reports = aimylogic.count("getReport")

    for _ in range(5):  # more passes, hours later: nothing more is asked or written
        loop.clock.advance(hours=1)
        follow_up(loop.services)
    assert loop.crm.writes() == writes and aimylogic.count("getReport") == reports


class Receiver(StandIn):
    """The customer's results endpoint: records each POST."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    def handle(self, request: Request) -> Response:
        self.deliveries.append((dict(request.headers), request.get_data()))
        return Response(status=204)


@pytest.mark.parametrize("name", list(CRMS))
def test_the_results_webhook_gets_one_signed_call_finished(make_loop, aimylogic, clock, name):
    clock.now = datetime.now(UTC).replace(microsecond=0)  # the package verifies against the real time
    aimylogic.default_plan = JobPlan(wait=30, ring=20, duration=41)
    with Receiver() as receiver:
        loop = make_loop(name, results_webhook_url=receiver.url, results_webhook_secrets=(RESULTS_SECRET,))
        leads = loop.sent()
        loop.follow([r.id for r in leads], step=timedelta(seconds=20))
        for _ in range(3):
            loop.clock.advance(minutes=30)
            follow_up(loop.services)

    assert len(receiver.deliveries) == len(leads)  # one per call, never repeated
    messages = [Webhook(RESULTS_SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
                for headers, body in receiver.deliveries]  # fmt: skip
    [message] = [m for m in messages if m["data"]["ref"] == loop.crm.ref]
    [lead] = [r for r in leads if r.ref == loop.crm.ref]
    assert message["type"] == "call.finished"
    data = message["data"]
    assert (data["lead_id"], data["source"], data["ref"]) == (lead.id, name, loop.crm.ref)
    assert (data["job_id"], data["job_status"], data["duration_s"]) == (lead.job_id, "longCallWithResult", 41)
    assert len(naming(loop.crm.writes(), lead.job_id)) == 1  # the CRM's note as well


# 2. The CRM says stop


@pytest.mark.parametrize("variant", ["main", "other"])
@pytest.mark.parametrize("name", list(CRMS))
def test_the_crms_stop_cancels_the_queued_job_and_the_lead(make_loop, aimylogic, name, variant):
    aimylogic.default_plan = JobPlan(final=None)  # queued until cancelled
    loop = make_loop(name, variant)
    [lead] = [r for r in loop.sent() if r.ref == loop.crm.ref]
    assert lead.job_id in aimylogic.jobs_of()

    if loop.crm.close_record:
        loop.crm.close_record()  # the update event says only "changed": the worker asks the CRM
    loop.post(loop.crm.stop)
    for _ in range(5):
        loop.clock.advance(minutes=1)
        follow_up(loop.services)

    assert lead.job_id in aimylogic.cancelled_ids()
    assert any(lead.job_id in c["ids"] and c["token"] == TOKEN for c in aimylogic.cancels)  # its own campaign
    record = loop.services.store.get(lead.id)
    assert record.status is Status.CANCELED, record.history
    assert record.outcome["job_status"] == "canceled" and not record.work
    assert loop.crm.writes() == []  # closed by the manager: nothing written back

    cancels, sends = list(aimylogic.cancels), aimylogic.count("addPhones")
    loop.clock.advance(minutes=10)
    loop.post(loop.crm.stop)  # the CRM resends both, later: nothing new happens
    loop.post(loop.crm.lead(None))
    deliver_pending(loop.services)
    follow_up(loop.services)
    assert aimylogic.cancels == cancels and aimylogic.count("addPhones") == sends
    assert loop.services.store.get(lead.id).status is Status.CANCELED


@pytest.mark.parametrize("name", list(CRMS))
def test_a_stop_before_its_lead_cancels_the_late_lead(make_loop, aimylogic, name):
    loop = make_loop(name)
    record_id, stop = loop.crm.unseen
    loop.post(stop)
    loop.post(loop.crm.lead(record_id))
    deliver_pending(loop.services)
    loop.clock.advance(minutes=10)
    deliver_pending(loop.services)
    follow_up(loop.services)

    [late] = loop.leads(loop.crm.unseen_ref)
    assert late.status is Status.CANCELED, late.history
    assert late.job_id is None
    assert not any(record_id in json.dumps(entry) for entry in aimylogic.entries)
    if name != "salesforce":  # its fixture holds a second record, which is called
        assert aimylogic.entries == []


@pytest.mark.parametrize("variant", ["main", "other"])
@pytest.mark.parametrize("name", list(CRMS))
def test_a_stop_before_the_send_leaves_no_call(make_loop, aimylogic, name, variant):
    """The stop comes while the lead waits for its enrichment: it is never called (after an update event that
    needs a lookup, enrichment reads the record closed)."""
    aimylogic.default_plan = JobPlan(final=None)
    loop = make_loop(name, variant)
    loop.post(loop.crm.lead(None))
    [lead] = loop.leads(loop.crm.ref)
    if loop.crm.close_record:
        loop.crm.close_record()
    loop.post(loop.crm.stop)
    deliver_pending(loop.services)
    for _ in range(5):
        loop.clock.advance(minutes=1)
        follow_up(loop.services)
        deliver_pending(loop.services)

    record = loop.services.store.get(lead.id)
    assert record.status is Status.CANCELED, record.history
    assert not record.work and loop.crm.writes() == []
    assert record.job_id is None and aimylogic.cancels == []
    others = [r for r in loop.services.store.list(limit=100) if r.job_id]  # Salesforce's second record's call
    assert len(aimylogic.entries) == len(others) and all(r.ref != loop.crm.ref for r in others)


@pytest.mark.parametrize(("name", "variant"), [("bitrix24", "main"), ("bitrix24", "other"), ("zoho", "main"),
                                               ("close", "other")])  # fmt: skip
def test_an_update_that_leaves_the_record_open_lets_the_call_go_on(make_loop, aimylogic, name, variant):
    aimylogic.default_plan = JobPlan(wait=600, ring=30, duration=20)
    loop = make_loop(name, variant)
    [lead] = [r for r in loop.sent() if r.ref == loop.crm.ref]
    loop.post(loop.crm.stop)  # the record is still open in the CRM
    loop.follow([lead.id])

    record = loop.services.store.get(lead.id)
    assert record.status is Status.CALLED and aimylogic.cancels == []
    assert "the CRM record is still open: calls go on" in [step["note"] for step in record.history]
    assert len(naming(loop.crm.writes(), lead.job_id)) == 1


@pytest.mark.parametrize("name", list(CRMS))
def test_a_stop_after_the_call_ended_keeps_its_outcome_and_its_note(make_loop, aimylogic, name):
    aimylogic.default_plan = JobPlan(wait=30, ring=30, duration=20)
    loop = make_loop(name)
    [lead] = [r for r in loop.sent() if r.ref == loop.crm.ref]
    loop.clock.advance(minutes=2)
    follow_up(loop.services)
    assert loop.services.store.get(lead.id).status is Status.CALLED

    if loop.crm.close_record:
        loop.crm.close_record()
    loop.post(loop.crm.stop)
    loop.follow([lead.id])

    record = loop.services.store.get(lead.id)
    assert record.status is Status.CALLED and record.outcome["job_status"] == "longCallWithResult"
    assert aimylogic.cancels == [] and len(naming(loop.crm.writes(), lead.job_id)) == 1


# Job ids known only in part: Aimylogic answered fewer ids than the batch had entries


def test_a_job_known_only_by_phone_is_followed_and_written_once_naming_its_job(make_loop, aimylogic):
    aimylogic.default_plan = JobPlan(wait=60, ring=30, duration=33)
    aimylogic.omit_ids(1)
    loop = make_loop("salesforce")  # leads_two_notifications.xml: two leads, one addPhones request
    leads = loop.sent()
    assert len(leads) == 2 and aimylogic.count("addPhones") == 1

    loop.follow([r.id for r in leads])

    writes = loop.crm.writes()
    jobs = sorted(aimylogic.jobs)
    assert len(writes) == 2 and all(len(naming(writes, job)) == 1 for job in jobs), writes
    for lead in leads:
        record = loop.services.store.get(lead.id)
        assert record.status is Status.CALLED and record.job_id in jobs, record.job_id


@pytest.mark.parametrize("target", ["00Q5g00000XyZaBEAV", "00Q5g00000XyZaCEAV"])  # either entry of the batch
def test_a_stop_for_a_job_known_only_by_phone_cancels_it_by_phone(make_loop, aimylogic, target):
    aimylogic.default_plan = JobPlan(final=None)
    aimylogic.omit_ids(1)
    loop = make_loop("salesforce")
    leads = loop.sent()
    [lead] = [r for r in leads if r.ref == target]

    loop.post(loop.crm.stop.replace(loop.crm.ref.encode(), target.encode()))
    for _ in range(5):
        loop.clock.advance(minutes=1)
        follow_up(loop.services)

    record = loop.services.store.get(lead.id)
    assert record.status is Status.CANCELED, record.history
    [job] = [job.id for job in aimylogic.jobs.values() if job.phone == json.loads(record.entry)["phone"]]
    assert aimylogic.cancelled_ids() == [job]  # its own job, not the other lead's
    [other] = [r for r in leads if r.ref != target]
    assert loop.services.store.get(other.id).status is not Status.CANCELED


# One person, two records: the CRM sent the contact and its lead as two events, and one call was made


@pytest.mark.parametrize("order", ["contact first", "lead first"])
def test_a_stop_for_the_record_whose_event_was_a_duplicate_cancels_the_persons_call(make_loop, aimylogic, order):
    """amoCRM sends a form's contact and its lead as two events: one call is made, on whichever came first. The
    manager then wins the lead (or deletes the contact): the person's call is cancelled whichever record it holds."""
    aimylogic.default_plan = JobPlan(final=None)
    loop = make_loop("amocrm")
    contact, lead = wire("amocrm/contacts_add.form"), loop.crm.lead(None)
    for body in (contact, lead) if order == "contact first" else (lead, contact):
        loop.post(body)
        deliver_pending(loop.services)
    [called] = [r for r in loop.services.store.list(limit=100) if r.status is Status.SENT]
    [duplicate] = [r for r in loop.services.store.list(limit=100) if r.status is Status.DUPLICATE]
    assert aimylogic.calls_per_phone() == {"79123456789": 1}

    stop = (
        loop.crm.stop
        if duplicate.ref == "lead:32966269"
        else wire("amocrm/stops/contacts_delete.form").replace(b"37054082", b"37054081")
    )
    loop.post(stop)  # names the duplicate's record
    for _ in range(3):
        loop.clock.advance(minutes=1)
        follow_up(loop.services)

    record = loop.services.store.get(called.id)
    assert record.status is Status.CANCELED, record.history
    assert aimylogic.cancelled_ids() == [called.job_id]


def test_a_later_inquirys_duplicate_closed_leaves_the_first_call(make_loop, aimylogic):
    """A duplicate from hours later is another inquiry of the same person: losing it keeps the first one's call."""
    aimylogic.default_plan = JobPlan(final=None)
    loop = make_loop("amocrm")
    loop.post(wire("amocrm/contacts_add.form"))
    deliver_pending(loop.services)
    loop.clock.advance(hours=2)
    loop.post(loop.crm.lead(None))
    deliver_pending(loop.services)
    [called] = [r for r in loop.services.store.list(limit=100) if r.status is Status.SENT]
    assert called.ref == "contact:37054081"

    loop.post(loop.crm.stop)  # the later lead (a duplicate) is won
    follow_up(loop.services)

    assert loop.services.store.get(called.id).status is Status.CALLING and aimylogic.cancels == []


@pytest.mark.parametrize(("name", "variant"), [("bitrix24", "main"), ("bitrix24", "other"), ("zoho", "main"),
                                               ("close", "other")])  # fmt: skip
def test_a_record_closed_before_its_late_lead_webhook_is_not_called(make_loop, aimylogic, name, variant):
    """The update event (needs a lookup) comes first, while we have nothing for the record; the lead webhook
    comes late (CRMs retry out of order): the record is closed by then, so its lead must not be called."""
    aimylogic.default_plan = JobPlan(final=None)
    loop = make_loop(name, variant)
    loop.crm.close_record()
    loop.post(loop.crm.stop)
    loop.post(loop.crm.lead(None))
    deliver_pending(loop.services)
    for _ in range(5):
        loop.clock.advance(minutes=1)
        follow_up(loop.services)
        deliver_pending(loop.services)

    [lead] = loop.leads(loop.crm.ref)
    assert lead.status is Status.CANCELED and lead.job_id is None, lead.history
    said = {"bitrix24": "Bitrix24 ", "zoho": "Zoho CRM lead's Lead_Status is Lost Lead", "close": "Close lead status"}
    assert aimylogic.entries == [] and lead.last_error.startswith(said[name]), lead.last_error
