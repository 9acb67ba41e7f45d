"""Salesforce write-back: a completed call Task through a client-credentials connected app, over real HTTP
to the stand-in (token cached, refreshed once on 401), error mapping, find_written by SOQL, settings."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from crm2calls.config import DEFAULT_SALESFORCE_API_VERSION, CrmSettings, check_configuration
from crm2calls.errors import WriteBackError
from crm2calls.sources.salesforce import task_subject
from tests.canaries import CANARY_CRM_TOKEN, CANARY_SECRET
from tests.emulators.salesforce import SalesforceStandIn
from tests.ended_leads import ended_lead

LEAD = "00Q5g00000XyZaBEAV"
CONTACT = "0035g00000AbCdEfGH"
NOTE = "Robot call: reached, 74 s, result: interested"


@pytest.fixture
def org(clock):
    with SalesforceStandIn(clock, client_secret=CANARY_SECRET) as api:
        api.add_record(LEAD)
        api.add_record(CONTACT, "Contact")
        yield api


@pytest.fixture
def make_source(make_services, org, clock):
    def build(**crm):
        values = {
            "salesforce_instance_url": org.url,
            "salesforce_client_id": org.client_id,
            "salesforce_client_secret": org.client_secret,
            **crm,
        }
        source = make_services(crm=CrmSettings(**values)).source("salesforce")
        source.now = clock
        return source

    return build


@pytest.fixture
def source(make_source):
    return make_source()


def lead(clock, ref: str = LEAD, **fields):
    return ended_lead("salesforce", ref, clock(), **fields)


def test_a_completed_outbound_call_task_is_written_on_the_lead(source, org, clock):
    record = lead(clock)
    written = source.write_back(record, NOTE, record.outcome)
    [task] = org.writes()
    assert written.id == task["Id"]
    assert task["WhoId"] == LEAD
    assert task["Subject"] == "Robot call (job 9051123)"
    assert (task["TaskSubtype"], task["Status"], task["CallType"]) == ("Call", "Completed", "Outbound")
    assert task["CallDurationInSeconds"] == 74
    assert task["CallDisposition"] == "interested"
    assert task["Description"] == NOTE
    assert task["ActivityDate"] == "2026-11-26"
    [token_hit] = [hit for hit in org.hits if hit.path == "/services/oauth2/token"]
    assert b"grant_type=client_credentials" in token_hit.body
    assert CANARY_SECRET not in json.dumps(task)


def test_a_contact_gets_the_task_too_and_the_disposition_falls_back_to_the_job_status(source, org, clock):
    record = lead(clock, CONTACT, call_result=None, job_status="longCallWithNoResult", duration_s=None)
    source.write_back(record, NOTE, record.outcome)
    [task] = org.writes()
    assert (task["WhoId"], task["CallDisposition"], task["CallDurationInSeconds"]) == (
        CONTACT, "longCallWithNoResult", 0)


def test_the_api_version_is_the_configured_one(make_source, org, clock):
    source = make_source(salesforce_api_version="v62.0")
    record = lead(clock)
    source.write_back(record, NOTE, record.outcome)
    assert "/services/data/v62.0/sobjects/Task" in org.paths()
    assert DEFAULT_SALESFORCE_API_VERSION == "v67.0"


def test_the_token_is_cached_until_its_hour_is_up(source, org, clock):
    for job in ("1", "2"):
        record = lead(clock, job_id=job)
        source.write_back(record, NOTE, record.outcome)
    assert org.token_requests == 1
    clock.advance(minutes=61)
    record = lead(clock, job_id="3")
    source.write_back(record, NOTE, record.outcome)
    assert org.token_requests == 2
    assert len(org.writes()) == 3


def test_a_refused_token_is_replaced_once_and_the_task_written(source, org, clock):
    record = lead(clock, job_id="1")
    source.write_back(record, NOTE, record.outcome)
    org.revoke_tokens()  # an admin revoked the app's sessions, or the org's timeout is shorter than ours
    record = lead(clock, job_id="2")
    source.write_back(record, NOTE, record.outcome)
    assert org.token_requests == 2
    assert [task["Subject"] for task in org.writes()] == [task_subject("1"), task_subject("2")]


def test_a_token_refused_twice_is_retried_later_not_again_now(source, org, clock):
    org.session_timeout = timedelta(0)  # every token Salesforce issues is refused at once
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope
    assert "HTTP 401 INVALID_SESSION_ID" in exc.value.message
    assert org.token_requests == 2  # the first token and one refresh, then the worker's backoff
    assert org.writes() == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"salesforce_client_secret": CANARY_CRM_TOKEN}, "HTTP 400 invalid_client"),
        ({"salesforce_client_id": "3MVG9-not-the-app"}, "HTTP 400 invalid_client"),
    ],
)
def test_wrong_app_credentials_hold_the_write_backs_and_name_the_variables(make_source, org, clock, change, expected):
    source = make_source(**change)
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.scope
    assert expected in exc.value.message
    assert "SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET" in exc.value.message
    assert CANARY_CRM_TOKEN not in exc.value.message and CANARY_SECRET not in exc.value.message
    assert org.writes() == []


def test_an_app_without_a_run_as_user_is_held_with_the_fix(source, org, clock):
    org.run_as_user = False
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.scope
    assert "invalid_grant" in exc.value.message and "Run As user" in exc.value.message


def test_a_403_holds_them_and_names_the_permission_to_grant(source, org, clock):
    org.refused_code = "API_DISABLED_FOR_ORG"
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.scope
    assert "HTTP 403 API_DISABLED_FOR_ORG" in exc.value.message
    assert "API Enabled and Create on Tasks" in exc.value.message


def test_the_daily_api_limit_is_a_retry_in_an_hour_not_a_scope(source, org, clock):
    org.refused_code = "REQUEST_LIMIT_EXCEEDED"
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope
    assert exc.value.retry_after == 3600


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_outage_is_retryable_with_its_retry_after(source, org, clock, status):
    source.write_back(lead(clock, job_id="warm"), NOTE, lead(clock).outcome)  # a token in the cache
    org.fail_next(status, retry_after=120)
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope
    assert exc.value.retry_after == 120
    assert len(org.writes()) == 1


def test_salesforce_unreachable_is_retryable(make_source, clock):
    source = make_source(salesforce_instance_url="http://127.0.0.1:9")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock), NOTE, lead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope
    assert "unreachable" in exc.value.message


@pytest.mark.parametrize(
    ("setup", "code"), [("deleted", "ENTITY_IS_DELETED"), ("unknown", "INVALID_CROSS_REFERENCE_KEY")]
)
def test_a_deleted_or_unknown_record_is_not_retried(source, org, clock, setup, code):
    ref = LEAD if setup == "deleted" else "00Q5g00000ZZZZZZZZ"
    if setup == "deleted":
        org.deleted.add(LEAD)
    with pytest.raises(WriteBackError) as exc:
        source.write_back(lead(clock, ref), NOTE, lead(clock).outcome)
    assert not exc.value.retryable
    assert code in exc.value.message


def test_a_lead_without_a_salesforce_id_is_refused_without_a_request(source, org, clock):
    record = lead(clock, "04l5g000001AbCdAAC")  # a notification id: Id was not ticked in Fields to Send
    with pytest.raises(WriteBackError) as exc:
        source.write_back(record, NOTE, record.outcome)
    assert not exc.value.retryable
    assert "tick Id" in exc.value.message
    assert org.hits == []


def test_a_long_note_is_cut_to_the_description_limit(source, org, clock):
    record = lead(clock, call_result="x" * 400)
    source.write_back(record, "n" * 40000, record.outcome)
    [task] = org.writes()
    assert len(task["Description"]) == 32000
    assert len(task["CallDisposition"]) == 255


def test_a_write_whose_answer_was_lost_is_found_by_its_job(source, org, clock):
    source.timeout = (1.0, 0.3)  # read by the API client when first built
    source.write_back(lead(clock, job_id="warm"), NOTE, lead(clock).outcome)
    org.slow_writes = 1.0  # Salesforce stores the Task, then the answer never reaches us
    record = lead(clock, job_id="777")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(record, NOTE, record.outcome)
    assert exc.value.retryable and "timed out" in exc.value.message
    found = source.find_written(record, "777")
    assert found is not None and found.id == org.writes()[-1]["Id"]


def test_find_written_finds_only_this_jobs_task_on_this_record(source, org, clock):
    record = lead(clock, job_id="123")
    written = source.write_back(record, NOTE, record.outcome)
    assert source.find_written(record, "123") == written
    assert source.find_written(record, "12") is None  # "(job 12)" is not "(job 123)"
    assert source.find_written(record, "23") is None
    assert source.find_written(lead(clock, CONTACT), "123") is None


@pytest.mark.parametrize("job_id", ["a_b", "50%", "it's", "back\\slash"])
def test_find_written_escapes_the_job_id(source, org, clock, job_id):
    record = lead(clock, job_id=job_id)
    written = source.write_back(record, NOTE, record.outcome)
    assert source.find_written(record, job_id) == written
    assert source.find_written(record, job_id.replace("_", "x").replace("%", "0").replace("'", "-")
                               .replace("\\", "/")) is None


def test_can_write_back_only_with_the_three_settings(make_source):
    assert make_source().can_write_back()
    assert not make_source(salesforce_client_secret=None).can_write_back()


# Settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    names = ("SALESFORCE_INSTANCE_URL", "SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET", "SALESFORCE_API_VERSION")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret-for-the-config-tests")
    monkeypatch.setenv("DRY_RUN", "1")
    return monkeypatch


def test_the_settings_load_and_the_version_is_normalised(env):
    env.setenv("SALESFORCE_INSTANCE_URL", "https://acme.my.salesforce.com/")
    env.setenv("SALESFORCE_CLIENT_ID", "3MVG9app")
    env.setenv("SALESFORCE_CLIENT_SECRET", CANARY_SECRET)
    env.setenv("SALESFORCE_API_VERSION", "62.0")
    check = check_configuration()
    assert check.problems == []
    crm = check.settings.crm
    assert (crm.salesforce_instance_url, crm.salesforce_api_version) == ("https://acme.my.salesforce.com", "v62.0")
    assert CANARY_SECRET not in repr(check.settings)


def test_the_default_version_is_current(env):
    assert check_configuration().settings.crm.salesforce_api_version == "v67.0"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"SALESFORCE_CLIENT_ID": "3MVG9app"}, "SALESFORCE_INSTANCE_URL, SALESFORCE_CLIENT_SECRET: set together with"),
        ({"SALESFORCE_INSTANCE_URL": "http://acme.my.salesforce.com", "SALESFORCE_CLIENT_ID": "a",
          "SALESFORCE_CLIENT_SECRET": CANARY_SECRET}, "SALESFORCE_INSTANCE_URL: use https"),
        ({"SALESFORCE_API_VERSION": "latest"}, "SALESFORCE_API_VERSION: 'latest' is not an API version; give e.g."),
        ({"SALESFORCE_API_VERSION": "v62"}, "SALESFORCE_API_VERSION: 'v62' is not an API version"),
    ],
)
def test_bad_settings_are_named_with_their_fix(env, values, expected):
    for name, value in values.items():
        env.setenv(name, value)
    problems = check_configuration().problems
    assert any(problem.startswith(expected) for problem in problems), problems
    assert not any(CANARY_SECRET in problem for problem in problems)
