"""Canary secrets and phones pushed through every path that logs: none may reach a log record or a response.

tests/canaries.py scans every record of the session; here each test also checks its own records, and
checks that the path really logged (a masked phone, a redacted URL), so no test passes by logging nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from crm2calls.config import CrmSettings, load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.errors import StoreError
from crm2calls.logs import redact
from crm2calls.model import Status
from crm2calls.store import open_store
from tests.canaries import (
    CANARY_CRM_TOKEN,
    CANARY_PHONE,
    CANARY_PHONE_DIGITS,
    CANARY_PHONE_MASKED,
    CANARY_SECRET,
    CANARY_TOKEN,
    HANDLER,
    SECRETS,
    find_canaries,
    record_text,
)
from tests.conftest import FIXTURES
from tests.emulators.aimylogic import AimylogicEmulator
from tests.emulators.base import LocalServer
from tests.emulators.bitrix24 import Bitrix24Emulator
from tests.emulators.pipedrive import PipedriveStandIn

HERE = FIXTURES / "canaries"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
LIBRARY_LOGGERS = ("werkzeug", "urllib3", "requests")


class Seen(logging.Handler):
    """Every record, as a handler crm2calls does not own would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self, logger: str = "") -> list[str]:
        """The text of each record from `logger` (or a child of it)."""
        return [record_text(r) for r in self.records if r.name == logger or r.name.startswith(logger)]


@pytest.fixture
def seen(canary_leaks):
    """A plain handler on the root logger, libraries at DEBUG; at the end, no canary in this test's records."""
    handler = Seen()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *LIBRARY_LOGGERS)}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    assert canary_leaks() == []
    assert [found for text in handler.texts() for found in find_canaries(text)] == []


@pytest.fixture
def canary_policy():
    return load_policy(HERE / "leads.toml", "RU")


@pytest.fixture
def canary_app(make_services, canary_policy):
    """An app whose shared key is CANARY_SECRET, its services, built with overrides."""
    from app import create_app

    def build(store_factory=None, **overrides):
        services = make_services(policy=canary_policy, webhook_secrets=(CANARY_SECRET,), **overrides)
        services.store_factory = store_factory
        return create_app(services=services), services

    return build


def lead_body() -> bytes:
    return (HERE / "lead.json").read_bytes()


# The scanner itself


@pytest.mark.parametrize(
    "text",
    [CANARY_PHONE, CANARY_PHONE_DIGITS, "+" + CANARY_PHONE_DIGITS, "8" + CANARY_PHONE_DIGITS[1:], "8 (912) 000-42-42",
     "+7(912)000-42-42", "912.000.42.42", "phone=%2B79120004242"],
)
def test_the_scanner_sees_the_phone_in_any_common_format(text):
    assert find_canaries(f"lead: {text}.") == [CANARY_PHONE]


@pytest.mark.parametrize("secret", SECRETS)
def test_the_scanner_sees_each_secret(secret):
    assert find_canaries(f"GET /x?token={secret}") == [secret]


@pytest.mark.parametrize(
    "text", [CANARY_PHONE_MASKED, "+7912*****42", redact(CANARY_PHONE), redact(CANARY_PHONE_DIGITS)]
)
def test_the_scanner_lets_masked_phones_through(text):
    assert find_canaries(text) == []


def test_a_record_is_scanned_with_its_traceback_and_fields():
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m %s", ("a",), (type(exc), exc, exc.__traceback__))
    record.fields = {"phone": "raw"}
    text = record_text(record)
    assert "m a" in text and "ValueError: boom" in text and '"phone": "raw"' in text


def test_the_session_scanner_is_installed_on_the_root_logger_at_debug():
    assert HANDLER in logging.getLogger().handlers and HANDLER.level == logging.DEBUG
    before = HANDLER.records
    logging.getLogger("tests.canaries.probe").warning("probe")
    assert HANDLER.records == before + 1


# Redaction at record creation, whichever logger and handler


def test_library_records_are_redacted_when_created(app, seen):
    url = f"http://127.0.0.1:1/api/calls/campaign/{CANARY_TOKEN}/addPhones?api_token={CANARY_CRM_TOKEN}"
    logging.getLogger("urllib3.connectionpool").debug('%s "POST %s HTTP/1.1" 200 2', "http://127.0.0.1:1", url)
    rest = f"/rest/1/{CANARY_CRM_TOKEN}/crm.lead.get"
    logging.getLogger("some.library").info("calling %s about %s", rest, CANARY_PHONE)
    try:
        raise ConnectionError(f"Max retries exceeded with url: /rest/7/{CANARY_CRM_TOKEN}/x?key={CANARY_SECRET}")
    except ConnectionError:
        logging.getLogger("another.library").exception("request failed for %s", CANARY_PHONE_DIGITS)
    [pool] = seen.texts("urllib3.connectionpool")
    assert "/api/calls/campaign/***/addPhones?api_token=***" in pool
    [library] = seen.texts("some.library")
    assert "/rest/1/***/crm.lead.get" in library and "7912" in library
    [failure] = seen.texts("another.library")
    assert "/rest/7/***/x?key=***" in failure and CANARY_PHONE_MASKED in failure


# Webhooks: accepted, refused, served over real HTTP


def test_an_accepted_webhook_logs_the_masked_phone_only(canary_app, seen):
    app, _ = canary_app()
    response = app.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    assert response.status_code == 202
    [transition] = seen.texts("crm2calls.leads")
    assert CANARY_PHONE_MASKED in transition
    [access] = seen.texts("crm2calls.access")
    assert "/webhooks/generic" in access


@pytest.mark.parametrize(
    ("url", "body", "content_type", "status"),
    [
        (f"/webhooks/generic?key={CANARY_TOKEN}", "lead.json", JSON, 401),
        (f"/webhooks/generic?key={CANARY_SECRET}", "truncated.json", JSON, 400),
        (f"/webhooks/generic?key={CANARY_SECRET}", "lead.json", "text/plain", 415),
        (f"/webhooks/bitrix24?key={CANARY_SECRET}", "lead.json", FORM, 400),
    ],
)
def test_a_refused_webhook_logs_why_and_nothing_it_carried(canary_app, seen, url, body, content_type, status):
    app, _ = canary_app()
    response = app.test_client().post(url, data=(HERE / body).read_bytes(), content_type=content_type,
                                      headers={"X-Webhook-Secret": CANARY_TOKEN} if status == 401 else {})
    assert response.status_code == status
    [refused] = seen.texts("crm2calls.web")
    assert "refused POST /webhooks/" in refused and str(status) in refused


def test_the_http_servers_request_line_hides_the_key(canary_app, seen):
    app, _ = canary_app()
    with LocalServer(app) as server:
        answer = requests.post(f"{server.url}/webhooks/generic?key={CANARY_SECRET}", data=lead_body(),
                               headers={"Content-Type": JSON}, timeout=10)
    assert answer.status_code == 202
    lines = [text for text in seen.texts("werkzeug") if "/webhooks/generic" in text]
    assert lines and all("?key=***" in line for line in lines)
    assert any("/webhooks/generic" in text for text in seen.texts("urllib3"))  # requests' own debug lines


# Delivery: dry run, success and Aimylogic's errors


def test_the_dry_run_body_log_masks_phones_and_leaves_out_unmapped_fields(canary_app, seen):
    app, services = canary_app()
    app.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    report = deliver_pending(services)
    assert report.dry_run == 1
    [dry_run] = [r for r in seen.records if getattr(r, "fields", {}).get("event") == "dry_run"]
    [entry] = dry_run.fields["body"]
    assert entry["phone"] == CANARY_PHONE_MASKED and entry["payload"]["name"] == "Ирина"
    assert CANARY_PHONE_MASKED in entry["payload"]["comment"]  # the number typed into the comment, masked too


@pytest.fixture(scope="module")
def aimylogic_server():
    """The shared `aimylogic` fixture's emulator, for the canary campaign token."""
    with AimylogicEmulator(CANARY_TOKEN) as emulator:
        yield emulator


def test_delivery_to_aimylogic_logs_no_token_even_at_debug(canary_app, seen, aimylogic):
    app, services = canary_app(aimylogic_token=CANARY_TOKEN, aimylogic_url=aimylogic.url)
    app.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    assert deliver_pending(services).sent == 1
    assert aimylogic.entries[0]["phone"] == CANARY_PHONE_DIGITS
    assert any("/api/calls/campaign/***/addPhones" in text for text in seen.texts("urllib3"))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, f"internal error for +{CANARY_PHONE_DIGITS} on campaign {CANARY_TOKEN}"),
        (400, f"phone {CANARY_PHONE} is invalid"),
        (401, f"token {CANARY_TOKEN} is unknown"),
        (429, "slow down"),
    ],
)
def test_aimylogic_errors_are_logged_without_the_token_or_the_phone(canary_app, seen, aimylogic, status, body):
    app, services = canary_app(aimylogic_token=CANARY_TOKEN, aimylogic_url=aimylogic.url)
    app.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    aimylogic.fail_next(status, body=body)
    report = deliver_pending(services)
    assert report.sent == 0
    errors = [text for text in seen.texts("crm2calls") if str(status) in text and "Aimylogic" in text]
    assert errors, seen.texts("crm2calls")
    [record] = services.store.list()
    assert not find_canaries(record.last_error or "")


def test_aimylogic_unreachable_is_logged_without_the_token(canary_app, seen):
    with AimylogicEmulator(CANARY_TOKEN) as gone:
        url = gone.url  # a port nobody listens on once the block ends
    app, services = canary_app(aimylogic_token=CANARY_TOKEN, aimylogic_url=url)
    app.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    assert deliver_pending(services).sent == 0
    assert any("cannot connect" in text for text in seen.texts("crm2calls"))


# CRM enrichment: secrets in URL paths (Bitrix24) and query strings (Pipedrive)


def bitrix_lead() -> dict:
    lead = json.loads((FIXTURES / "bitrix24" / "crm.lead.get.json").read_text())["result"]
    lead["PHONE"] = [{"ID": "1", "VALUE_TYPE": "MOBILE", "VALUE": CANARY_PHONE, "TYPE_ID": "PHONE"}]
    return lead


@pytest.mark.parametrize("fail", [None, 500, 401, 503])
def test_bitrix24_enrichment_never_logs_the_webhook_code(canary_app, seen, fail):
    with Bitrix24Emulator(code=CANARY_CRM_TOKEN) as bitrix:
        bitrix.add("lead", bitrix_lead())
        if fail:
            bitrix.fail_next(fail, "ERROR", f"failed for {CANARY_PHONE}", times=5)
        app, services = canary_app(crm=CrmSettings(bitrix24_webhook_url=bitrix.webhook_url))
        body = (FIXTURES / "bitrix24" / "lead_add.form").read_bytes()
        response = app.test_client().post(f"/webhooks/bitrix24?key={CANARY_SECRET}", data=body, content_type=FORM)
        assert response.status_code == 200
        deliver_pending(services)
        assert bitrix.hits
    [record] = services.store.list()
    assert record.status is (Status.DRY_RUN if fail is None else Status.RECEIVED) or record.last_error
    assert any("/rest/1/***/" in text for text in seen.texts("urllib3"))
    assert not find_canaries(record.last_error or "")


@pytest.mark.parametrize("fail", [None, 500, 401, 404])
def test_pipedrive_enrichment_never_logs_the_api_token(canary_app, seen, fail):
    with PipedriveStandIn(token=CANARY_CRM_TOKEN) as pipedrive:
        pipedrive.add_person("1025", "Ирина", [{"label": "mobile", "value": CANARY_PHONE, "primary": True}])
        if fail:
            pipedrive.fail_next(fail, times=5)
        crm = CrmSettings(pipedrive_api_token=CANARY_CRM_TOKEN, pipedrive_base_url=pipedrive.url)
        app, services = canary_app(crm=crm)
        body = (FIXTURES / "pipedrive" / "v2_create_lead.json").read_bytes()
        response = app.test_client().post(f"/webhooks/pipedrive?key={CANARY_SECRET}", data=body, content_type=JSON)
        assert response.status_code == 202
        deliver_pending(services)
        assert pipedrive.hits
    assert any("api_token=***" in text for text in seen.texts("urllib3"))
    [record] = services.store.list()
    assert not find_canaries(record.last_error or "")


# Responses: every refusal says what is wrong without quoting credentials


class BrokenStore:
    """A SQLite store whose writes fail as a full disk would, reported as the store does (StoreError)."""

    def __init__(self, path: Path):
        self.inner = open_store(f"sqlite:///{path}")

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def insert(self, record, claims=None):
        cause = sqlite3.OperationalError("database or disk is full")
        raise StoreError(f"sqlite store: {cause}") from cause


def refusals(canary_app, tmp_path):
    """(status, response) for each refusal, every credential position holding a canary."""
    signed = {"Authorization": f"Bearer {CANARY_CRM_TOKEN}", "X-HubSpot-Signature-v3": CANARY_SECRET,
              "X-HubSpot-Request-Timestamp": str(int(time.time() * 1000)), "close-sig-hash": CANARY_SECRET}
    right = {**signed, "X-Webhook-Secret": CANARY_SECRET}
    wrong = {**signed, "X-Webhook-Secret": CANARY_TOKEN}
    key = f"key={CANARY_SECRET}"
    crm = CrmSettings(amocrm_account_id="1", bitrix24_application_tokens=(CANARY_SECRET,),
                      hubspot_client_secrets=(CANARY_SECRET,))
    client = canary_app(crm=crm, max_body_bytes=4096)[0].test_client()
    broken = canary_app(store_factory=lambda: BrokenStore(tmp_path / "broken.db"))[0].test_client()
    bitrix_body = f"event=ONCRMLEADADD&data[FIELDS][ID]=1&auth[application_token]={CANARY_CRM_TOKEN}".encode()
    amocrm_body = b"account[id]=2&leads[add][0][id]=1"
    lead = lead_body()
    return [
        (400, client.post(f"/webhooks/generic?{key}", data=b'{"id": ', content_type=JSON, headers=right)),
        (401, client.post(f"/webhooks/generic?key={CANARY_TOKEN}", data=lead, content_type=JSON, headers=wrong)),
        (401, client.post(f"/webhooks/bitrix24?{key}", data=bitrix_body, content_type=FORM, headers=right)),
        (401, client.post(f"/webhooks/hubspot?{key}", data=b"[]", content_type=JSON, headers=right)),
        (403, client.post(f"/webhooks/amocrm?{key}", data=amocrm_body, content_type=FORM, headers=right)),
        (404, client.post(f"/webhooks/nowhere?{key}", data=lead, content_type=JSON, headers=right)),
        (405, client.get(f"/webhooks/generic?{key}", headers=right)),
        (413, client.post(f"/webhooks/generic?{key}", data=b" " * 5000, content_type=JSON, headers=right)),
        (415, client.post(f"/webhooks/generic?{key}", data=lead, content_type="text/csv", headers=right)),
        (503, broken.post(f"/webhooks/generic?{key}", data=lead, content_type=JSON, headers=right)),
    ]


def test_refusals_never_echo_credentials_and_say_what_is_wrong(canary_app, seen, tmp_path):
    answers = refusals(canary_app, tmp_path)
    assert {status for status, _ in answers} == {400, 401, 403, 404, 405, 413, 415, 503}
    for status, response in answers:
        assert response.status_code == status, (status, response.get_data())
        body = response.get_json()
        assert body["error"] and body["message"], status
        assert find_canaries(response.get_data(as_text=True)) == [], (status, body)
        assert find_canaries(json.dumps(dict(response.headers))) == [], status


def test_the_503_of_a_broken_store_is_logged_with_its_cause(canary_app, seen, tmp_path):
    broken, _ = canary_app(store_factory=lambda: BrokenStore(tmp_path / "broken.db"))
    response = broken.test_client().post(f"/webhooks/generic?key={CANARY_SECRET}", data=lead_body(), content_type=JSON)
    assert response.status_code == 503
    assert any("database or disk is full" in text for text in seen.texts("crm2calls.web"))


def test_services_settings_never_show_secrets_in_repr(canary_app):
    _, services = canary_app(aimylogic_token=CANARY_TOKEN, crm=CrmSettings(pipedrive_api_token=CANARY_CRM_TOKEN))
    assert find_canaries(repr(services)) == [] and find_canaries(repr(replace(services.settings))) == []
