"""Each CRM's write-back over real HTTP to its stand-in, on SQLite and DynamoDB: the documented shape of the
write, written once, a lost answer found rather than written again, a refused scope held, another job's
note on the same record not mistaken for this one's."""

from __future__ import annotations

import html
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from crm2calls.config import CrmSettings
from crm2calls.followup import follow_up
from crm2calls.health import check
from tests.emulators.amocrm import AmoCrmEmulator
from tests.emulators.bitrix24 import Bitrix24Emulator
from tests.emulators.hubspot import HubSpotStandIn
from tests.emulators.pipedrive import PipedriveStandIn
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.writeback_leads import store_ended

PIPEDRIVE_LEAD = "adf21080-0e10-11eb-879b-05d71fb426ec"


@dataclass
class Crm:
    """One CRM's stand-in as the tests drive it."""

    name: str
    stand_in: Any
    crm: CrmSettings
    ref: str  # the CRM record the lead came from
    writes: Callable[[], list[dict[str, Any]]]  # what the stand-in recorded, in order
    text: Callable[[dict[str, Any]], str]  # the note's text of one write
    refuse_scope: Callable[[], None]
    grant_scope: Callable[[], None]
    scope_words: str  # what the hold's reason must name


@contextmanager
def amocrm() -> Iterator[Crm]:
    with AmoCrmEmulator() as amo:
        amo.add_lead({"id": 31000001, "name": "Site form", "created_at": 1764147600})
        yield Crm("amocrm", amo, CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token), "lead:31000001",
                  lambda: amo.notes, lambda w: w["params"]["text"], lambda: setattr(amo, "notes_forbidden", True),
                  lambda: setattr(amo, "notes_forbidden", False), '"crm" access')  # fmt: skip


@contextmanager
def bitrix24() -> Iterator[Crm]:
    with Bitrix24Emulator() as b24:
        b24.add("deal", {"ID": "4401", "TITLE": "Deal"})
        yield Crm("bitrix24", b24, CrmSettings(bitrix24_webhook_url=b24.webhook_url), "deal:4401",
                  lambda: b24.comments, lambda w: w["COMMENT"], lambda: setattr(b24, "scopes", set()),
                  lambda: setattr(b24, "scopes", {"crm"}), "crm scope")  # fmt: skip


@contextmanager
def hubspot() -> Iterator[Crm]:
    with HubSpotStandIn() as hub:
        hub.add_contact("1501", firstname="Ann", phone="+15128675309")
        full = set(hub.scopes)
        hub.base = CrmSettings(hubspot_token=hub.token, hubspot_base_url=hub.url)
        yield Crm("hubspot", hub, hub.base, "1501", lambda: hub.calls,
                  lambda w: html.unescape(w["properties"]["hs_call_body"].replace("<br>", "\n")),
                  lambda: setattr(hub, "scopes", {"crm.objects.contacts.read"}),
                  lambda: setattr(hub, "scopes", full), "crm.objects.contacts.write")  # fmt: skip


@contextmanager
def pipedrive() -> Iterator[Crm]:
    with PipedriveStandIn() as pipe:
        pipe.leads.add(PIPEDRIVE_LEAD)
        crm = CrmSettings(pipedrive_api_token=pipe.token, pipedrive_base_url=pipe.url)
        yield Crm("pipedrive", pipe, crm, PIPEDRIVE_LEAD, lambda: pipe.notes,
                  lambda w: html.unescape(w["content"].replace("<br>", "\n")),
                  lambda: setattr(pipe, "notes_forbidden", True), lambda: setattr(pipe, "notes_forbidden", False),
                  "add notes")  # fmt: skip


CRMS = {"amocrm": amocrm, "bitrix24": bitrix24, "hubspot": hubspot, "pipedrive": pipedrive}


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")
        return f"dynamodb://writeback-crm-{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path / 'leads.db'}"


@pytest.fixture(params=list(CRMS))
def crm(request: pytest.FixtureRequest) -> Iterator[Crm]:
    with CRMS[request.param]() as case:
        yield case


@pytest.fixture
def services(make_services, crm, store_url):
    return make_services(crm=crm.crm, leads_store=store_url)


def run_until_done(services, clock, record_id: str) -> None:
    for _ in range(50):
        follow_up(services)
        item = services.store.get(record_id).work.get("write_back")
        if item is None or item.due is None:
            return
        clock.now = max(item.due, clock.now + timedelta(seconds=1))
    raise AssertionError("the write-back never ended")


def test_the_outcome_is_written_once_naming_its_job(services, crm):
    record = store_ended(services, crm.name, crm.ref)

    follow_up(services)
    follow_up(services)

    [write] = crm.writes()
    text = crm.text(write)
    assert text.rstrip().endswith("crm2calls job 7001")
    assert "interested" in text and "95" in text
    stored = services.store.get(record.id)
    assert "write_back" not in stored.work
    assert stored.outcome["written"]["crm"] == crm.name
    assert [s["note"] for s in stored.history][-1].startswith(f"written to {crm.name}: note ")


def test_the_write_has_the_crms_documented_shape(services, crm):
    store_ended(services, crm.name, crm.ref)

    follow_up(services)

    [write] = crm.writes()
    [hit] = crm.stand_in.hits
    if crm.name == "amocrm":
        assert (hit.method, hit.path) == ("POST", "/api/v4/leads/notes") and write["note_type"] == "common"
    elif crm.name == "bitrix24":
        assert hit.method_name == "crm.timeline.comment.add" and "fields" in hit.params  # lower-case fields
        assert (write["ENTITY_TYPE"], write["ENTITY_ID"]) == ("deal", "4401")
    elif crm.name == "hubspot":
        props = write["properties"]
        assert hit.path == "/crm/v3/objects/calls" and write["contact_id"] == "1501"
        assert props["hs_call_direction"] == "OUTBOUND" and props["hs_call_status"] == "COMPLETED"
        assert props["hs_call_duration"] == "95000" and props["hs_timestamp"] == "2026-11-26T08:57:35+00:00"
        assert props["hs_call_title"] == "Robot call (crm2calls job 7001)"
        assert "talked to the customer, with a result" in crm.text(write)  # region US: the English note
    else:
        assert hit.path == "/v1/notes" and write["lead_id"] == PIPEDRIVE_LEAD and write["person_id"] is None


def test_a_lost_answer_is_found_in_the_crm_not_written_twice(services, crm, clock):
    record = store_ended(services, crm.name, crm.ref)
    crm.stand_in.lose_next_answers(502)

    run_until_done(services, clock, record.id)

    [write] = crm.writes()
    stored = services.store.get(record.id)
    assert "write_back" not in stored.work
    assert [s["note"] for s in stored.history][-1].startswith(f"found written before in {crm.name}: note ")
    assert stored.outcome["written"]["id"] in str(write)


def test_another_jobs_note_on_the_same_record_is_not_taken_for_this_ones(services, crm, clock):
    first = store_ended(services, crm.name, crm.ref)
    follow_up(services)
    second = store_ended(services, crm.name, crm.ref, "not_reached", outcome={"job_id": "700"})  # 700 ⊂ 7001
    crm.stand_in.down_status = 503  # its first try fails: the next one looks first
    follow_up(services)
    crm.stand_in.down_status = None

    run_until_done(services, clock, second.id)

    assert len(crm.writes()) == 2
    assert crm.text(crm.writes()[1]).rstrip().endswith("crm2calls job 700")
    assert "write_back" not in services.store.get(first.id).work


def test_a_refused_scope_holds_and_health_names_the_scope(services, crm, clock):
    record = store_ended(services, crm.name, crm.ref)
    crm.refuse_scope()

    follow_up(services)

    health, _ = check(services)
    [reason] = [r for r in health["reasons"] if r["code"] == "write_back_refused"]
    assert crm.name in reason["message"] and crm.scope_words in reason["message"]
    item = services.store.get(record.id).work["write_back"]
    assert item.attempts == 0 and item.due is not None and crm.writes() == []

    crm.grant_scope()
    clock.advance(minutes=15)
    follow_up(services)

    assert len(crm.writes()) == 1
