"""Zoho CRM and Close write-back over real HTTP to their stand-ins: a note on the Zoho lead or contact
(OAuth token refreshed once on 401), a call activity on the Close lead; scopes, outages, deleted
records, and find_written listing the record's notes or calls."""

from __future__ import annotations

import json

import pytest

from crm2calls.config import CrmSettings
from crm2calls.errors import WriteBackError
from crm2calls.sources.base import Written
from tests.canaries import CANARY_CRM_TOKEN, CANARY_SECRET
from tests.emulators.close import CloseStandIn
from tests.emulators.zoho import ZohoStandIn
from tests.ended_leads import ended_lead

ZOHO_LEAD = "5725767000003000010"
ZOHO_CONTACT = "5725767000004000020"
CLOSE_LEAD = "lead_IIDHIStmFDYuWsp5FeDzTSBFo3q2a2V6zOOwLwtIhpF"
NOTE = "Robot call: reached, 74 s\nresult: interested"


# Zoho CRM


@pytest.fixture
def zoho(clock):
    with ZohoStandIn(clock, client_secret=CANARY_SECRET, refresh_token=CANARY_CRM_TOKEN) as api:
        api.add_record("Leads", ZOHO_LEAD, Last_Name="Reyes")
        api.add_record("Contacts", ZOHO_CONTACT, Last_Name="Ortiz")
        yield api


@pytest.fixture
def make_zoho(make_services, zoho, clock):
    def build(**crm):
        values = {"zoho_api_domain": zoho.url, "zoho_accounts_url": zoho.url, "zoho_client_id": zoho.client_id,
                  "zoho_client_secret": zoho.client_secret, "zoho_refresh_token": zoho.refresh_token, **crm}
        source = make_services(crm=CrmSettings(**values)).source("zoho")
        source.now = clock
        return source

    return build


@pytest.fixture
def zsource(make_zoho):
    return make_zoho()


def zlead(clock, ref: str = ZOHO_LEAD, module: str | None = "Leads", **fields):
    payload = {"crm": "zoho", "crm_module": module, "crm_record_id": ref} if module else {}
    return ended_lead("zoho", ref, clock(), payload=payload, **fields)


def test_zoho_a_note_titled_with_the_job_is_added_to_the_lead(zsource, zoho, clock):
    record = zlead(clock)
    written = zsource.write_back(record, NOTE, record.outcome)
    [note] = zoho.written_notes()
    assert (note["module"], note["record"]) == ("Leads", ZOHO_LEAD)
    assert note["Note_Title"] == "Robot call (job 9051123)"
    assert note["Note_Content"] == NOTE
    assert written == Written(note["id"])
    [post] = [hit for hit in zoho.hits if hit.method == "POST" and hit.path.endswith("/Notes")]
    assert post.headers["Authorization"].startswith("Zoho-oauthtoken 1000.")


def test_zoho_a_contact_gets_its_note_on_the_contact(zsource, zoho, clock):
    record = zlead(clock, ZOHO_CONTACT, "Contacts")
    zsource.write_back(record, NOTE, record.outcome)
    assert [(n["module"], n["record"]) for n in zoho.written_notes()] == [("Contacts", ZOHO_CONTACT)]


def test_zoho_a_lead_from_a_workflow_body_is_written_on_leads(zsource, zoho, clock):
    record = zlead(clock, module=None)  # a workflow webhook's own payload: no crm_module
    zsource.write_back(record, NOTE, record.outcome)
    assert [n["module"] for n in zoho.written_notes()] == ["Leads"]


def test_zoho_the_token_is_cached_and_refreshed_once_when_refused(zsource, zoho, clock):
    for job in ("1", "2"):
        zsource.write_back(zlead(clock, job_id=job), NOTE, zlead(clock).outcome)
    assert zoho.token_requests == 1
    zoho.revoke_tokens()
    zsource.write_back(zlead(clock, job_id="3"), NOTE, zlead(clock).outcome)
    assert zoho.token_requests == 2
    clock.advance(minutes=59)  # Zoho's hour, less our margin: a new token before the old one runs out
    zsource.write_back(zlead(clock, job_id="4"), NOTE, zlead(clock).outcome)
    assert zoho.token_requests == 3
    assert len(zoho.written_notes()) == 4


def test_zoho_a_token_without_the_notes_scope_holds_them_and_names_the_scope(zsource, zoho, clock):
    zoho.notes_scope = False  # Zoho answers 401 OAUTH_SCOPE_MISMATCH: a new token would not help
    with pytest.raises(WriteBackError) as exc:
        zsource.write_back(zlead(clock), NOTE, zlead(clock).outcome)
    assert exc.value.scope
    assert "OAUTH_SCOPE_MISMATCH" in exc.value.message
    assert "ZohoCRM.modules.notes.CREATE" in exc.value.message
    assert zoho.token_requests == 1


def test_zoho_a_profile_without_permission_holds_them(zsource, zoho, clock):
    zoho.notes_permission = False
    with pytest.raises(WriteBackError) as exc:
        zsource.write_back(zlead(clock), NOTE, zlead(clock).outcome)
    assert exc.value.scope and "HTTP 403 NO_PERMISSION" in exc.value.message


def test_zoho_a_refused_refresh_token_holds_them_without_showing_it(make_zoho, zoho, clock):
    source = make_zoho(zoho_refresh_token="1000.revoked.refresh.token")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(zlead(clock), NOTE, zlead(clock).outcome)
    assert exc.value.scope
    assert "ZOHO_REFRESH_TOKEN" in exc.value.message
    assert "revoked" not in exc.value.message and CANARY_SECRET not in exc.value.message
    assert zoho.written_notes() == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_zoho_an_outage_is_retryable_with_its_retry_after(zsource, zoho, clock, status):
    zsource.write_back(zlead(clock, job_id="warm"), NOTE, zlead(clock).outcome)
    zoho.fail_next(status, retry_after=90)
    with pytest.raises(WriteBackError) as exc:
        zsource.write_back(zlead(clock), NOTE, zlead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope
    assert exc.value.retry_after == 90


def test_zoho_accounts_down_is_retryable(make_zoho, zoho, clock):
    source = make_zoho(zoho_accounts_url="http://127.0.0.1:9")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(zlead(clock), NOTE, zlead(clock).outcome)
    assert exc.value.retryable and not exc.value.scope


def test_zoho_a_deleted_record_is_not_retried(zsource, zoho, clock):
    with pytest.raises(WriteBackError) as exc:
        zsource.write_back(zlead(clock, "5725767000009999999"), NOTE, zlead(clock).outcome)
    assert not exc.value.retryable and "INVALID_DATA" in exc.value.message


def test_zoho_a_lead_without_a_record_id_is_refused_without_a_request(zsource, zoho, clock):
    with pytest.raises(WriteBackError) as exc:
        zsource.write_back(zlead(clock, "-"), NOTE, zlead(clock).outcome)
    assert not exc.value.retryable
    assert zoho.hits == []


def test_zoho_find_written_lists_the_notes_for_this_job(zsource, zoho, clock):
    record = zlead(clock, job_id="123")
    assert zsource.find_written(record, "123") is None  # 204: no notes yet
    written = zsource.write_back(record, NOTE, record.outcome)
    assert zsource.find_written(record, "123") == written
    assert zsource.find_written(record, "12") is None
    assert zsource.find_written(zlead(clock, ZOHO_CONTACT, "Contacts"), "123") is None


def test_zoho_find_written_reads_past_the_first_page(zsource, zoho, clock):
    for job in range(250):
        zoho.notes.setdefault(("Leads", ZOHO_LEAD), []).append(
            {"id": f"n{job}", "Note_Title": f"Robot call (job {job})", "Note_Content": "", "module": "Leads",
             "record": ZOHO_LEAD})
    assert zsource.find_written(zlead(clock), "240") == Written("n240")
    pages = [hit.query["page"] for hit in zoho.hits if hit.method == "GET" and hit.path.endswith("/Notes")]
    assert pages == [["1"], ["2"]]


def test_zoho_can_write_back_only_with_the_oauth_client(make_zoho):
    assert make_zoho().can_write_back()
    assert not make_zoho(zoho_refresh_token=None).can_write_back()


# Close


@pytest.fixture
def close():
    with CloseStandIn(api_key=CANARY_CRM_TOKEN) as api:
        api.add_lead(CLOSE_LEAD, "Acme", [{"id": "cont_1", "name": "Jo", "phones": []}])
        yield api


@pytest.fixture
def make_close(make_services, close):
    def build(**crm):
        values = {"close_base_url": close.url, "close_api_key": close.api_key, **crm}
        return make_services(crm=CrmSettings(**values)).source("close")

    return build


@pytest.fixture
def csource(make_close):
    return make_close()


def clead(clock, ref: str = CLOSE_LEAD, **fields):
    return ended_lead("close", ref, clock(), **fields)


def test_close_a_completed_outbound_call_is_logged_on_the_lead(csource, close, clock):
    record = clead(clock)
    written = csource.write_back(record, NOTE, record.outcome)
    [call] = close.calls
    assert written.id == call["id"]
    assert (call["lead_id"], call["direction"], call["status"]) == (CLOSE_LEAD, "outbound", "completed")
    assert call["duration"] == 74
    assert call["phone"] == "+79120004242"
    assert call["note_html"] == "<p>Robot call: reached, 74 s<br>result: interested</p><p>Aimylogic job 9051123</p>"


def test_close_the_note_is_escaped_html(csource, close, clock):
    record = clead(clock)
    csource.write_back(record, 'answer: <b>"yes"</b> & more', record.outcome)
    assert close.calls[0]["note_html"].startswith("<p>answer: &lt;b&gt;&quot;yes&quot;&lt;/b&gt; &amp; more</p>")


def test_close_a_wrong_api_key_holds_them_without_showing_it(make_close, close, clock):
    source = make_close(close_api_key="api_not_the_key")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(clead(clock), NOTE, clead(clock).outcome)
    assert exc.value.scope and "check CLOSE_API_KEY" in exc.value.message
    assert "api_not_the_key" not in exc.value.message
    assert close.calls == []


def test_close_a_user_who_may_not_log_calls_holds_them_and_names_the_fix(csource, close, clock):
    close.may_create_calls = False
    with pytest.raises(WriteBackError) as exc:
        csource.write_back(clead(clock), NOTE, clead(clock).outcome)
    assert exc.value.scope
    assert "HTTP 403" in exc.value.message and "role that may create call activities" in exc.value.message


@pytest.mark.parametrize("status", [429, 502])
def test_close_an_outage_is_retryable_with_its_retry_after(csource, close, clock, status):
    close.fail_next(status, retry_after=7)
    with pytest.raises(WriteBackError) as exc:
        csource.write_back(clead(clock), NOTE, clead(clock).outcome)
    assert exc.value.retryable and exc.value.retry_after == 7
    assert close.calls == []


def test_close_unreachable_is_retryable(make_close, clock):
    source = make_close(close_base_url="http://127.0.0.1:9")
    with pytest.raises(WriteBackError) as exc:
        source.write_back(clead(clock), NOTE, clead(clock).outcome)
    assert exc.value.retryable and "unreachable" in exc.value.message


def test_close_a_deleted_lead_is_not_retried(csource, close, clock):
    with pytest.raises(WriteBackError) as exc:
        csource.write_back(clead(clock, "lead_gone0000"), NOTE, clead(clock).outcome)
    assert not exc.value.retryable and "HTTP 400" in exc.value.message


def test_close_a_record_without_a_lead_id_is_refused_without_a_request(csource, close, clock):
    with pytest.raises(WriteBackError) as exc:
        csource.write_back(clead(clock, "cont_1"), NOTE, clead(clock).outcome)
    assert not exc.value.retryable
    assert close.hits == []


def test_close_find_written_lists_the_leads_calls_for_this_job(csource, close, clock):
    record = clead(clock, job_id="123")
    assert csource.find_written(record, "123") is None
    written = csource.write_back(record, NOTE, record.outcome)
    assert csource.find_written(record, "123") == written
    assert csource.find_written(record, "12") is None
    assert csource.find_written(record, "1234") is None


def test_close_find_written_reads_past_the_first_page(csource, close, clock):
    for job in range(150):
        close.calls.append({"id": f"acti_{job}", "lead_id": CLOSE_LEAD,
                            "note_html": f"<p>n</p><p>Aimylogic job {job}</p>"})
    close.calls.append({"id": "acti_other", "lead_id": "lead_other", "note_html": "<p>Aimylogic job 149</p>"})
    assert csource.find_written(clead(clock), "149") == Written("acti_149")
    skips = [hit.query["_skip"] for hit in close.hits if hit.method == "GET"]
    assert skips == [["0"], ["100"]]


def test_close_can_write_back_only_with_an_api_key(make_close):
    assert make_close().can_write_back()
    assert not make_close(close_api_key=None).can_write_back()


def test_close_sends_no_phone_when_the_entry_has_none(csource, close, clock):
    record = clead(clock)
    record.entry = json.dumps({"finishDateTime": "2026-11-27T09:00:00+00:00"})
    csource.write_back(record, NOTE, record.outcome)
    assert "phone" not in close.calls[0]
