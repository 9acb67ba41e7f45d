"""GET /openapi.json describes our API truthfully: schemathesis checks the app against it."""

from __future__ import annotations

import json

import pytest
import schemathesis
from openapi_spec_validator import validate

from crm2calls.model import Status
from crm2calls.sources import SOURCES
from crm2calls.sources.base import IntakeResult
from schemas.api import ErrorSchema, HealthSchema, LeadsAckSchema, LeadSummarySchema, PreviewSchema
from tests.conftest import FIXTURES, ROOT, SECRET

WEBHOOK = "/webhooks/{source}"


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def test_the_description_is_valid_openapi_3(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_it_is_built_on_first_request_and_then_reused(app, client):
    assert "crm2calls.openapi" not in app.extensions  # nothing built at start-up (Lambda cold start)
    first = client.get("/openapi.json").get_data()
    built = app.extensions["crm2calls.openapi"]
    assert client.get("/openapi.json").get_data() == first
    assert app.extensions["crm2calls.openapi"] is built


def test_every_registered_source_and_its_content_types_are_described(spec, services):
    for path in (WEBHOOK, "/preview/{source}"):
        [source] = [p for p in spec["paths"][path]["parameters"] if p["name"] == "source"]
        assert source["in"] == "path" and sorted(source["schema"]["enum"]) == sorted(SOURCES)
        described = set(spec["paths"][path]["post"]["requestBody"]["content"])
        for name in SOURCES:
            assert set(services.source(name).content_types) <= described
            assert f"`{name}`" in source["description"]


def test_the_key_and_the_secret_header_are_the_documented_credentials(spec):
    schemes = spec["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {("query", "key"), ("header", "X-Webhook-Secret")}
    for path in (WEBHOOK, "/preview/{source}"):
        assert spec["paths"][path]["post"]["security"] == [{name: []} for name in schemes]


@pytest.mark.parametrize("status", ["400", "401", "403", "404", "405", "413", "415", "503"])
def test_each_refusal_is_documented_with_the_error_body(spec, status):
    for path in (WEBHOOK, "/preview/{source}"):
        response = spec["paths"][path]["post"]["responses"][status]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_each_source_success_answer_is_documented_with_its_own_status_and_media_type(spec, services):
    responses = spec["paths"][WEBHOOK]["post"]["responses"]
    for name in SOURCES:
        ack = services.source(name).acknowledge([])
        assert ack.content_type.split(";")[0] in responses[str(ack.status)]["content"], name


def test_the_health_check_is_described_as_one_document_with_every_reason_code(spec):
    responses = spec["paths"]["/healthz"]["get"]["responses"]
    for status in ("200", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    health = spec["components"]["schemas"]["Health"]["properties"]
    assert set(health) == {
        "status", "reasons", "dry_run", "campaigns", "oldest_waiting_s", "backlog", "cancels_retrying", "counts"
    }
    assert health["status"]["enum"] == ["ok", "degraded", "failing"]
    documented = (ROOT / "docs" / "operations.md").read_text()
    codes = spec["components"]["schemas"]["Reason"]["properties"]["code"]["enum"]
    assert codes and all(f"| `{code}` |" in documented for code in codes)


@pytest.mark.parametrize("status", list(Status))
def test_every_lead_summary_fits_its_schema(status):
    summary = IntakeResult("k", "ref", status, "abc", reason="why", field="phone").as_json()
    assert LeadSummarySchema().validate(summary) == {}


def test_real_answers_fit_their_schemas(client):
    lead = (FIXTURES / "generic" / "mixed.json").read_bytes()
    accepted = client.post(f"/webhooks/generic?key={SECRET}", data=lead, content_type="application/json")
    assert accepted.status_code == 202 and LeadsAckSchema().validate(accepted.get_json()) == {}
    assert {lead["status"] for lead in accepted.get_json()["leads"]} == {"accepted", "rejected"}
    preview = client.post(f"/preview/generic?key={SECRET}", data=lead, content_type="application/json")
    assert preview.status_code == 200 and PreviewSchema().validate(preview.get_json()) == {}
    refused = client.post("/webhooks/generic", data=lead, content_type="application/json")
    assert refused.status_code == 401 and ErrorSchema().validate(refused.get_json()) == {}
    health = client.get("/healthz")
    assert health.status_code == 200 and HealthSchema().validate(health.get_json()) == {}


# schemathesis: generated requests, valid and invalid, against the app and its own description.

CONFIG = {
    "generation": {"mode": "all", "max-examples": 40, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "auth": {"openapi": {"key": {"api_key": SECRET}, "secretHeader": {"api_key": SECRET}}},
    "checks": {
        "positive_data_acceptance": {"enabled": False},  # a schema-valid object may still be no event (400)
        "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415]},
    },
}


@pytest.fixture
def api_schema(app):
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32's lazy loader renames the test node through `_nodeid`, which pytest 9 no longer sets.
    request.node._nodeid = request.node.nodeid


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@lazy_schema.parametrize()
def test_the_app_keeps_to_its_description(case):
    case.call_and_validate()


MALFORMED = {
    "application/json": [b'{"phone": ', b'"a top-level string"', b"42", b"null", b"[1]", b"\xff\xfe"],
    "application/x-www-form-urlencoded": [b"\xff=\xfe"],
    "text/xml": [b"<a>", b"not xml"],
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_malformed_requests_are_refused_as_described(api_schema, client, services, spec, source):
    """Unparseable, wrong top-level shape, wrong content type: a 4xx the description documents, nothing stored."""
    operation = api_schema["/webhooks/{source}"]["POST"]
    documented = spec["paths"][WEBHOOK]["post"]["responses"]
    url = f"/webhooks/{source}?key={SECRET}"
    sent = []
    for content_type in sorted(services.source(source).content_types):
        sent += [(body, content_type, 400) for body in MALFORMED.get(content_type, [])]
    sent.append((b"{}", "text/plain", 415))
    for body, content_type, status in sent:
        response = client.post(url, data=body, content_type=content_type)
        assert response.status_code == status and str(status) in documented, (body, content_type)
        operation.validate_response(response)
    assert services.store.list() == []


def test_the_description_round_trips_as_json(spec):
    assert json.loads(json.dumps(spec)) == spec
