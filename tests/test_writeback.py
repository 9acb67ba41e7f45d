"""Write-back of call outcomes, the durable part, over real HTTP to the amoCRM stand-in, on SQLite and DynamoDB.

Each test stores a lead whose call has ended (tests/writeback_leads.py) and runs follow-up passes
(crm2calls.followup.follow_up) on the injected clock: written once, through an hour's outage, after a
lost answer or a save that never happened, a 429, an expired token, a refused scope, a dead letter
and its replay.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from crm2calls import metrics, writeback
from crm2calls.config import CrmSettings
from crm2calls.errors import StoreError
from crm2calls.followup import follow_up
from crm2calls.health import check
from tests.emulators.amocrm import AmoCrmEmulator
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.writeback_leads import store_ended


class RecordingSink:
    """Keeps every metric value recorded, to read back what the write-back counted."""

    def __init__(self) -> None:
        self.values: list[tuple[str, tuple[str, ...], float]] = []

    def record(self, metric: metrics.Metric, values: tuple[str, ...], amount: float) -> None:
        self.values.append((metric.name, values, amount))

    def write_backs(self) -> list[tuple[str, ...]]:
        return [values for name, values, _ in self.values if name == metrics.WRITE_BACKS.name]


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")
        return f"dynamodb://writeback-{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path / 'leads.db'}"


@pytest.fixture
def amo():
    with AmoCrmEmulator() as emulator:
        emulator.add_lead({"id": 31000001, "name": "Site form", "created_at": 1764147600})
        emulator.add_lead({"id": 31000002, "name": "Site form", "created_at": 1764147600})
        emulator.add_contact({"id": 52000001, "name": "Ivan"})
        yield emulator


@pytest.fixture
def sink():
    recording = RecordingSink()
    metrics.use(recording)
    return recording


@pytest.fixture
def services(make_services, amo, store_url):
    return make_services(crm=CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token), leads_store=store_url)


def run_until_written(services, clock, record_id: str, limit: int = 200) -> int:
    """Run passes, the clock moved to each retry's due time, until the write-back is done; the passes run."""
    for passes in range(1, limit + 1):
        follow_up(services)
        item = services.store.get(record_id).work.get("write_back")
        if item is None or item.due is None:
            return passes
        clock.now = max(item.due, clock.now + timedelta(seconds=1))
    raise AssertionError("the write-back never ended")


def written_lines(record) -> list[str]:
    return [step["note"] for step in record.history if "written" in step["note"]]


# Written once


def test_an_ended_call_is_written_once_as_a_note_on_its_lead(services, amo, sink):
    record = store_ended(services, "amocrm", "lead:31000001")

    report = follow_up(services)
    again = follow_up(services)

    [note] = amo.notes
    assert note["entity_type"] == "leads" and note["entity_id"] == 31000001 and note["note_type"] == "common"
    text = note["params"]["text"]
    assert "разговор состоялся, есть результат" in text  # amocrm's region is RU: the Russian default note
    assert "Результат: interested" in text and "Длительность 95 с, попыток 2" in text  # noqa: RUF001 - Russian
    assert "tariff: Premium; callback: tomorrow" in text
    assert text.endswith("crm2calls job 7001")
    stored = services.store.get(record.id)
    assert "write_back" not in stored.work and stored.next_attempt_at is None and stored.final
    assert stored.outcome["written"]["id"] == str(note["id"]) and stored.outcome["written"]["crm"] == "amocrm"
    assert written_lines(stored) == [f"written to amocrm: note {note['id']}"]
    assert report.tasks == {"write_back": 1} and again.claimed == 0
    assert [hit.method for hit in amo.hits] == ["POST"]  # a first attempt writes without looking first
    assert sink.write_backs() == [("amocrm", "written")]


def test_a_lead_that_came_as_a_contact_gets_the_note_on_the_contact(services, amo):
    store_ended(services, "amocrm", "contact:52000001", "not_reached")

    follow_up(services)

    [note] = amo.notes
    assert (note["entity_type"], note["entity_id"]) == ("contacts", 52000001)
    assert "не дозвонились: нет ответа" in note["params"]["text"]


def test_the_crm_down_for_an_hour_then_the_note_is_written_once(services, amo, clock):
    record = store_ended(services, "amocrm", "lead:31000001")
    start = clock.now
    amo.down_status = 503

    tries = 0
    while clock.now - start < timedelta(hours=1):
        follow_up(services)
        tries += 1
        item = services.store.get(record.id).work["write_back"]
        assert item.due is not None and "HTTP 503" in item.error  # retried, never given up within the hour
        clock.now = max(item.due, clock.now + timedelta(seconds=1))
    amo.down_status = None
    follow_up(services)

    stored = services.store.get(record.id)
    assert len(amo.notes) == 1 and "write_back" not in stored.work
    assert 5 <= tries <= 15  # backoff from 30 s to 30 min: an hour's outage costs a handful of tries
    assert written_lines(stored) == [f"written to amocrm: note {amo.notes[0]['id']}"]
    # Every try after the first looked for a note the lost answers might have written, then wrote.
    assert [hit.method for hit in amo.hits[-2:]] == ["GET", "POST"]


def test_a_lost_answer_is_not_written_twice(services, amo, clock, sink):
    record = store_ended(services, "amocrm", "lead:31000001")
    amo.lose_next_answers(504)  # amoCRM stored the note; its answer never reached us

    run_until_written(services, clock, record.id)

    [note] = amo.notes
    stored = services.store.get(record.id)
    assert written_lines(stored) == [f"found written before in amocrm: note {note['id']}"]
    assert [hit.method for hit in amo.hits] == ["POST", "GET"]
    assert sink.write_backs() == [("amocrm", "retry"), ("amocrm", "found")]


class DiesAfterTheWrite:
    """The real store, but the save that would record a written outcome fails once: the process 'died' there."""

    def __init__(self, store: Any):
        self.store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def update(self, record, owner, *args: Any) -> bool:
        if not self.failed and (record.outcome or {}).get("written"):
            self.failed = True
            raise StoreError("the process was killed")
        return self.store.update(record, owner, *args)


def test_killed_after_the_crm_took_the_note_it_is_found_not_written_again(settings, amo, store_url, clock):
    from dataclasses import replace

    from crm2calls.services import Services
    from crm2calls.store import open_store

    dying = DiesAfterTheWrite(open_store(store_url))
    crm = CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token)
    services = Services(replace(settings, crm=crm, leads_store=store_url), clock=clock, store_factory=lambda: dying)
    record = store_ended(services, "amocrm", "lead:31000001")

    follow_up(services)  # writes, then dies before recording it: the lead keeps its lease
    assert dying.failed and len(amo.notes) == 1
    follow_up(services)  # still leased to the dead pass: nothing happens
    clock.advance(minutes=6)  # its lease runs out
    follow_up(services)

    stored = services.store.get(record.id)
    assert len(amo.notes) == 1
    assert written_lines(stored) == [f"found written before in amocrm: note {amo.notes[0]['id']}"]


def test_a_429_waits_for_its_retry_after(services, amo, clock):
    record = store_ended(services, "amocrm", "lead:31000001")
    amo.fail_next(429, retry_after=900)

    follow_up(services)

    item = services.store.get(record.id).work["write_back"]
    assert item.due >= clock.now + timedelta(seconds=900) and item.attempts == 1 and "HTTP 429" in item.error
    clock.now = item.due
    follow_up(services)
    assert len(amo.notes) == 1


def test_an_expired_token_is_retried_and_health_says_so_until_it_works(services, amo, clock):
    record = store_ended(services, "amocrm", "lead:31000001")
    amo.fail_next(401, times=2)

    follow_up(services)
    health, _ = check(services)

    assert "crm_credentials_refused" in [reason["code"] for reason in health["reasons"]]
    run_until_written(services, clock, record.id)
    health, _ = check(services)
    assert len(amo.notes) == 1
    assert "crm_credentials_refused" not in [reason["code"] for reason in health["reasons"]]


# A refused scope holds the CRM's write-backs


def test_a_refused_scope_holds_every_write_back_of_the_crm_loudly_then_writes_them_all(services, amo, clock, caplog):
    first = store_ended(services, "amocrm", "lead:31000001")
    second = store_ended(services, "amocrm", "lead:31000002")
    amo.notes_forbidden = True

    follow_up(services)

    assert [hit.method for hit in amo.hits] == ["POST"]  # one refusal; the other lead was not tried
    health, status = check(services)
    [reason] = [r for r in health["reasons"] if r["code"] == "write_back_refused"]
    assert status == 200 and "amocrm" in reason["message"] and '"crm" access' in reason["message"]
    assert "WRITE-BACK HELD for amocrm" in caplog.text
    for record in (first, second):
        item = services.store.get(record.id).work["write_back"]
        assert item.attempts == 0 and item.due is not None and item.error.startswith("held:")

    for _ in range(20):  # an afternoon of passes while nobody grants the scope
        clock.advance(minutes=15)
        follow_up(services)
    assert all(services.store.get(r.id).work["write_back"].attempts == 0 for r in (first, second))
    assert len(amo.hits) <= 21  # one probe per SCOPE_PROBE, not one request per lead per pass

    amo.notes_forbidden = False  # a person granted the scope
    clock.advance(minutes=15)
    follow_up(services)

    assert sorted(note["entity_id"] for note in amo.notes) == [31000001, 31000002]
    health, _ = check(services)
    assert "write_back_refused" not in [r["code"] for r in health["reasons"]]


# Dead letters and replay


def test_a_write_back_that_cannot_succeed_is_a_dead_letter_shown_and_replayed(services, amo, clock, app):
    record = store_ended(services, "amocrm", "lead:31000001")
    amo.fail_next(400, body='{"title": "Bad Request"}')  # refused for good, as amoCRM answers a bad note

    follow_up(services)

    stored = services.store.get(record.id)
    item = stored.work["write_back"]
    assert item.due is None and "HTTP 400" in item.error and stored.next_attempt_at is None
    assert any("gave up after 1 attempts" in step["note"] for step in stored.history)
    health, _ = check(services)
    [reason] = [r for r in health["reasons"] if r["code"] == "write_back_dead_letters"]
    assert reason["message"].startswith("1 call outcome(s) could not be written to amocrm")
    runner = app.test_cli_runner()
    shown = runner.invoke(args=["leads", "show", record.id])
    assert "write-back: DEAD LETTER" in shown.output and "HTTP 400" in shown.output

    replayed = runner.invoke(args=["leads", "replay", record.id])
    follow_up(services)

    assert replayed.exit_code == 0, replayed.output
    assert f"{record.id}: write_back planned again" in replayed.output
    assert len(amo.notes) == 1
    stored = services.store.get(record.id)
    assert "write_back" not in stored.work
    assert [hit.method for hit in amo.hits[-2:]] == ["GET", "POST"]  # a replay looks first: the try may have written
    health, _ = check(services)
    assert "write_back_dead_letters" not in [r["code"] for r in health["reasons"]]
    assert "written to amocrm" in runner.invoke(args=["leads", "show", record.id]).output


def test_the_attempt_limit_makes_a_dead_letter(services, amo, clock, monkeypatch):
    monkeypatch.setattr(writeback, "MAX_ATTEMPTS", 3)
    record = store_ended(services, "amocrm", "lead:31000001")
    amo.down_status = 502

    run_until_written(services, clock, record.id)

    item = services.store.get(record.id).work["write_back"]
    assert item.due is None and item.attempts == 3 and "HTTP 502" in item.error
    assert amo.notes == []


def test_replay_dead_finds_every_dead_letter_and_recounts_them(services, amo, app):
    records = [store_ended(services, "amocrm", f"lead:3100000{n}") for n in (1, 2)]
    amo.fail_next(400, times=2)
    follow_up(services)
    services.store.put_meta(writeback.WRITE_BACK_META, {"amocrm": {"dead": 7}})  # a count a race left wrong

    runner = app.test_cli_runner()
    result = runner.invoke(args=["leads", "replay", "--dead"])
    follow_up(services)

    assert "2 write-back(s) planned again" in result.output
    assert sorted(note["entity_id"] for note in amo.notes) == [31000001, 31000002]
    assert all("write_back" not in services.store.get(r.id).work for r in records)
    assert (services.store.get_meta(writeback.WRITE_BACK_META) or {}).get("amocrm", {}).get("dead", 0) == 0


def test_replay_refuses_a_lead_whose_write_back_is_not_parked(services, app):
    record = store_ended(services, "amocrm", "lead:31000001")

    result = app.test_cli_runner().invoke(args=["leads", "replay", record.id])

    assert result.exit_code != 0 and "has no follow-up work that gave up: nothing to replay" in result.output


# On or off


def test_write_back_off_in_the_mapping_drops_the_work_without_a_request(make_services, amo, store_url, settings):
    from dataclasses import replace

    from crm2calls.policy import ResultsPolicy

    policy = settings.policy
    source = replace(policy.source("amocrm"), results=ResultsPolicy(write_back=False))
    off = replace(policy, sources={**policy.sources, "amocrm": source})
    crm = CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token)
    services = make_services(crm=crm, leads_store=store_url, policy=off)
    record = store_ended(services, "amocrm", "lead:31000001")

    follow_up(services)

    stored = services.store.get(record.id)
    assert amo.hits == [] and "write_back" not in stored.work and stored.final
    assert len(stored.history) == 1  # nothing to tell: the user turned it off


def test_without_credentials_write_back_is_off_by_default(make_services, store_url):
    services = make_services(leads_store=store_url)
    record = store_ended(services, "amocrm", "lead:31000001")

    follow_up(services)

    stored = services.store.get(record.id)
    assert "write_back" not in stored.work and len(stored.history) == 1


def test_turned_on_without_credentials_it_waits_and_health_names_the_variables(make_services, store_url, settings):
    from dataclasses import replace

    from crm2calls.policy import ResultsPolicy

    policy = settings.policy
    source = replace(policy.source("amocrm"), results=ResultsPolicy(write_back=True))
    on = replace(policy, sources={**policy.sources, "amocrm": source})
    services = make_services(leads_store=store_url, policy=on)
    record = store_ended(services, "amocrm", "lead:31000001")

    follow_up(services)

    item = services.store.get(record.id).work["write_back"]
    assert item.due is not None and "AMOCRM_BASE_URL and AMOCRM_TOKEN" in item.error
    health, _ = check(services)
    assert any("AMOCRM_BASE_URL" in r["message"] for r in health["reasons"] if r["code"] == "crm_credentials_refused")


def test_an_unsorted_lead_has_nowhere_to_write_and_says_so(services, amo):
    record = store_ended(services, "amocrm", "unsorted:7d0c5e")

    follow_up(services)

    item = services.store.get(record.id).work["write_back"]
    assert amo.hits == [] and item.due is None and "names no lead or contact" in item.error


def test_a_pass_out_of_time_starts_no_write(services, amo, monkeypatch):
    from crm2calls import followup

    record = store_ended(services, "amocrm", "lead:31000001")
    monkeypatch.setattr(followup.FollowUpPass, "out_of_time", lambda self: True)

    follow_up(services)

    assert amo.hits == [] and services.store.get(record.id).work["write_back"].attempts == 0


def test_config_check_says_per_source_whether_it_writes_back_and_the_scopes(monkeypatch, tmp_path):
    from app import create_app

    monkeypatch.setenv("AMOCRM_BASE_URL", "https://example.amocrm.ru")
    monkeypatch.setenv("AMOCRM_TOKEN", "amo-token-for-config-check")
    monkeypatch.delenv("HUBSPOT_TOKEN", raising=False)
    monkeypatch.setenv("LEADS_STORE", f"sqlite:///{tmp_path / 'x.db'}")

    result = CliRunner().invoke(create_app().cli, ["config", "check"], catch_exceptions=False)

    assert "amocrm: on (default note in ru); the token needs a private integration's long-lived token" in result.output
    assert "hubspot: off until its API credentials are set; the token needs crm.objects.contacts.write" in result.output
    assert "generic: off (this CRM takes no call outcomes)" in result.output
