"""Metrics: one set of names, EMF lines in the spec's shape, /metrics behind its token, the edges counted.

Outbound requests go over real HTTP to the Aimylogic emulator and to a local CRM stand-in; the
Prometheus values are read back from the sink's registry or from GET /metrics.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.wrappers import Request, Response

from crm2calls import metrics
from crm2calls.config import load_settings
from crm2calls.errors import AuthError, EnrichmentError, RejectedError, UnavailableError
from tests.conftest import FIXTURES, SECRET, TOKEN
from tests.emulators.crm_api import StandIn

METRICS_TOKEN = "metrics-token-for-tests-0123456789"
URL = f"/webhooks/generic?key={SECRET}"
# The units CloudWatch accepts (EMF spec, MetricDefinition.Unit).
CLOUDWATCH_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def assert_emf_line(line: str) -> dict[str, Any]:
    """Check one log line against the EMF specification's shape; return the parsed object."""
    body = json.loads(line)
    assert isinstance(body, dict) and "\n" not in line
    aws = body["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000  # milliseconds
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
        assert isinstance(directive["Dimensions"], list)
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for name in dimension_set:  # each a root-level member holding a string
                assert isinstance(body[name], str) and body[name], name
        assert 1 <= len(directive["Metrics"]) <= 100
        for definition in directive["Metrics"]:
            assert set(definition) <= {"Name", "Unit", "StorageResolution"}
            assert definition.get("Unit", "None") in CLOUDWATCH_UNITS
            value = body[definition["Name"]]  # a root-level member: a number or an array of numbers
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return body


def emf_values(lines: list[str], name: str, **dimensions: str) -> list[Any]:
    """The values of metric `name` in lines whose dimension members match `dimensions`."""
    found = []
    for line in lines:
        body = assert_emf_line(line)
        if name in body and all(body.get(key) == value for key, value in dimensions.items()):
            found.append(body[name])
    return found


@pytest.fixture
def prometheus():
    """A fresh in-process Prometheus sink, put back as it was after the test."""
    sink = metrics.PrometheusSink()
    previous = metrics.use(sink)
    yield sink
    metrics.use(previous)


def value(sink: metrics.PrometheusSink, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return sink.registry.get_sample_value(name, labels) or 0.0


# The names


@pytest.mark.parametrize("metric", metrics.METRICS, ids=lambda m: m.name)
def test_each_name_follows_the_conventions(metric):
    assert re.fullmatch(r"crm2calls_[a-z_]+", metric.name)
    assert metric.name.endswith("_total") == (metric.kind == "counter")
    if metric.kind == "histogram" or metric.unit == "Seconds":
        assert metric.name.endswith("_seconds") and metric.unit == "Seconds"
    assert all(set(rollup) < set(metric.labels) for rollup in metric.rollups)
    # A label is a small fixed set: nothing that identifies a person, a lead or a credential.
    assert not set(metric.labels) & {"phone", "token", "lead_id", "id", "key", "ref", "job_id", "url"}
    assert metric.help and metric.unit in CLOUDWATCH_UNITS


def test_names_are_unique_and_every_exported_series_is_listed(prometheus):
    assert len({m.name for m in metrics.METRICS}) == len(metrics.METRICS)
    for metric in metrics.METRICS:
        prometheus.record(metric, tuple("x" for _ in metric.labels), 1)
    body, content_type = prometheus.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {sample.name for family in text_string_to_metric_families(body.decode()) for sample in family.samples}
    assert samples == metrics.exported_names()  # no *_created: the same names as in multiprocess mode


def test_no_gauge_has_a_value_before_it_is_set(prometheus):
    # A gauge reading 0 from start-up would hide a worker that never reports (absent() alerts on that).
    body, _ = prometheus.exposition()
    samples = {sample.name for family in text_string_to_metric_families(body.decode()) for sample in family.samples}
    assert not samples & {metric.name for metric in metrics.METRICS if metric.kind == "gauge"}


# CloudWatch EMF


class Lines(list):
    """What an EmfSink writes."""

    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def emf():
    lines = Lines()
    sink = metrics.EmfSink("crm2calls-dev", write=lines, clock=lambda: 1_764_147_600.5)
    previous = metrics.use(sink)
    yield lines
    metrics.use(previous)


def test_outside_a_batch_each_value_is_written_at_once(emf):
    lines = emf
    metrics.webhook("amocrm", "accepted")
    assert len(lines) == 1
    body = assert_emf_line(lines[0])
    assert body["_aws"]["Timestamp"] == 1_764_147_600_500
    assert body["_aws"]["CloudWatchMetrics"] == [{
        "Namespace": "crm2calls",
        "Dimensions": [["service", "source", "outcome"], ["service", "outcome"]],  # the alarms' roll-up too
        "Metrics": [{"Name": "crm2calls_webhooks_total", "Unit": "Count"}],
    }]
    assert (body["service"], body["source"], body["outcome"], body["crm2calls_webhooks_total"]) == (
        "crm2calls-dev", "amocrm", "accepted", 1
    )


def test_a_batch_writes_one_line_per_set_of_dimension_values_when_it_ends(emf):
    lines = emf
    with metrics.batch():
        metrics.webhook("amocrm", "accepted")
        metrics.webhook("amocrm", "accepted", 2)
        metrics.webhook("amocrm", "rejected")
        metrics.oldest_waiting("default", 30)
        metrics.oldest_waiting("default", 12.5)  # a gauge keeps its last value
        metrics.campaign_held("default", False)
        metrics.speed_to_lead("amocrm", 0.2)
        metrics.speed_to_lead("amocrm", 0.4)
        metrics.delivery_pass()
        assert lines == []
    assert len(lines) == 5  # (amocrm, accepted), (amocrm, rejected), (campaign default), (no labels), (amocrm)
    assert emf_values(lines, "crm2calls_webhooks_total", source="amocrm", outcome="accepted") == [3]
    assert emf_values(lines, "crm2calls_webhooks_total", outcome="rejected") == [1]
    assert emf_values(lines, "crm2calls_oldest_waiting_seconds", campaign="default") == [12.5]
    assert emf_values(lines, "crm2calls_delivery_passes_total") == [1]
    assert emf_values(lines, "crm2calls_speed_to_lead_seconds", source="amocrm") == [[0.2, 0.4]]
    [campaign] = [assert_emf_line(line) for line in lines if "crm2calls_oldest_waiting_seconds" in line]
    # Metrics sharing a line keep their own directives (units, dimension sets).
    units = {d["Metrics"][0]["Name"]: d["Metrics"][0]["Unit"] for d in campaign["_aws"]["CloudWatchMetrics"]}
    assert units == {"crm2calls_oldest_waiting_seconds": "Seconds", "crm2calls_campaign_held": "None"}
    assert campaign["crm2calls_campaign_held"] == 0


def test_nested_batches_write_once_at_the_outermost_end(emf):
    lines = emf
    with metrics.batch():
        with metrics.batch():
            metrics.delivery_pass()
        assert lines == []
        metrics.delivery_pass()
    assert emf_values(lines, "crm2calls_delivery_passes_total") == [2]


def test_more_observations_than_the_spec_allows_spill_over_lines(emf):
    lines = emf
    with metrics.batch():
        for index in range(250):
            metrics.aimylogic_request("addPhones", "ok", index / 1000, entries=2)
    arrays = emf_values(lines, "crm2calls_aimylogic_request_seconds", op="addPhones", result="ok")
    assert [len(array) for array in arrays] == [100, 100, 50]
    assert sorted(v for array in arrays for v in array) == [index / 1000 for index in range(250)]
    assert emf_values(lines, "crm2calls_addphones_entries_total", result="ok") == [500]


def test_values_recorded_by_threads_inside_a_batch_are_written_with_it(emf):
    lines = emf
    with metrics.batch():
        threads = [threading.Thread(target=lambda: [metrics.crm_api_call("hubspot", "ok") for _ in range(50)])
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert emf_values(lines, "crm2calls_crm_api_requests_total", crm="hubspot", result="ok") == [200]


def test_gauges_of_campaigns_roll_up_to_the_service(emf):
    lines = emf
    metrics.campaign_held("default", True)
    body = assert_emf_line(lines[-1])
    assert body["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "campaign"], ["service"]]
    assert body["crm2calls_campaign_held"] == 1 and body["campaign"] == "default"


def test_the_lifecycle_functions_record_what_they_say(prometheus):
    metrics.lead_entered("amocrm", "failed")
    metrics.lead_entered("amocrm", "failed")
    metrics.lead_counts({"pending": 4, "held": 2, "failed": 0})
    metrics.oldest_waiting("default", -3)  # a clock step back is no negative age
    metrics.campaign_held("default", False)
    metrics.speed_to_lead("generic", 0.015)
    assert value(prometheus, "crm2calls_lead_transitions_total", source="amocrm", status="failed") == 2
    assert value(prometheus, "crm2calls_leads", status="pending") == 4
    assert value(prometheus, "crm2calls_leads", status="held") == 2
    assert value(prometheus, "crm2calls_oldest_waiting_seconds", campaign="default") == 0
    assert value(prometheus, "crm2calls_campaign_held", campaign="default") == 0
    assert value(prometheus, "crm2calls_speed_to_lead_seconds_bucket", source="generic", le="0.02") == 1
    assert value(prometheus, "crm2calls_speed_to_lead_seconds_bucket", source="generic", le="0.01") == 0


# Which sink a process gets


def test_configure_picks_the_sink_from_the_settings(settings, tmp_path):
    assert isinstance(metrics.configure(settings), metrics.NullSink)
    assert metrics.exposition() is None
    assert isinstance(metrics.configure(replace(settings, metrics_tokens=("t",))), metrics.PrometheusSink)
    assert metrics.exposition() is not None
    on_lambda = replace(settings, on_lambda=True, lambda_function="crm2calls-production", metrics_tokens=("t",))
    sink = metrics.configure(on_lambda)
    assert isinstance(sink, metrics.EmfSink) and sink.service == "crm2calls-production"
    assert metrics.exposition() is None


def test_settings_read_the_metrics_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AIMYLOGIC_TOKEN", TOKEN)
    monkeypatch.setenv("METRICS_TOKEN", " current , previous ")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "crm2calls-dev")
    settings = load_settings()
    assert settings.metrics_tokens == ("current", "previous")
    assert settings.metrics_dir == str(tmp_path) and settings.lambda_function == "crm2calls-dev"
    assert "current" not in repr(settings)


def test_a_multiprocess_directory_that_does_not_exist_is_named(monkeypatch, tmp_path):
    from crm2calls.errors import ConfigError

    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AIMYLOGIC_TOKEN", TOKEN)
    monkeypatch.setenv("METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert any(p.startswith("PROMETHEUS_MULTIPROC_DIR:") and "missing" in p for p in error.value.problems)
    assert METRICS_TOKEN not in str(error.value)


def test_gunicorns_master_gets_a_directory_only_with_a_token(monkeypatch, tmp_path):
    from crm2calls.config import prepare_metrics_dir

    monkeypatch.setenv("METRICS_TOKEN", "")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # empty is unset; monkeypatch restores what prepare sets
    assert prepare_metrics_dir() is None
    monkeypatch.setenv("METRICS_TOKEN", METRICS_TOKEN)
    made = prepare_metrics_dir()
    import os

    assert os.path.isdir(made) and os.environ["PROMETHEUS_MULTIPROC_DIR"] == made  # the workers inherit it
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert prepare_metrics_dir() == str(tmp_path)
    metrics.clear_multiprocess_dir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # a previous run's values are not added to this one's
    os.rmdir(made)


# GET /metrics


@pytest.fixture
def metrics_client(make_app):
    """A test client of an app with METRICS_TOKEN set (current and previous).

    Not a dry run (a dry run claims no phone, so finds no duplicate); no worker runs, so nothing is sent.
    """
    return make_app(metrics_tokens=(METRICS_TOKEN, "previous-metrics-token"))[1]


def test_metrics_are_not_served_without_a_token(client):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"Basic {METRICS_TOKEN}", METRICS_TOKEN,
     f"Bearer {METRICS_TOKEN}x", f"Bearer {METRICS_TOKEN[:-1]}"],
    ids=["absent", "empty", "scheme-only", "blank", "wrong", "basic", "no-scheme", "longer", "shorter"],
)
def test_metrics_refuse_anything_but_the_bearer_token(metrics_client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = metrics_client.get("/metrics", headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "unauthorized" and body["field"] == "Authorization"
    assert "Bearer <METRICS_TOKEN>" in body["message"] and METRICS_TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize("token", [METRICS_TOKEN, "previous-metrics-token"], ids=["current", "previous"])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_metrics_are_served_to_the_bearer_of_the_token(metrics_client, token, scheme):
    response = metrics_client.get("/metrics", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert families == {m.name.removesuffix("_total") for m in metrics.METRICS}


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics as a Prometheus server would: {(name, sorted labels): value}."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def webhooks(scraped: dict, source: str, outcome: str) -> float:
    return scraped.get(("crm2calls_webhooks_total", (("outcome", outcome), ("source", source))), 0.0)


def test_each_lead_of_a_webhook_counts_under_its_outcome(metrics_client):
    mixed = (FIXTURES / "generic" / "mixed.json").read_bytes()  # one callable lead, two without a usable phone
    assert metrics_client.post(URL, data=mixed, content_type="application/json").status_code == 202
    same_phone = [{"id": "other", "phone": "+79123456701"}]  # the same person within the duplicate window
    assert metrics_client.post(URL, json=same_phone).status_code == 202
    scraped = scrape(metrics_client)
    assert webhooks(scraped, "generic", "accepted") == 1
    assert webhooks(scraped, "generic", "rejected") == 2
    assert webhooks(scraped, "generic", "duplicate") == 1
    assert webhooks(scraped, "generic", "refused") == 0


@pytest.mark.parametrize(
    ("path", "body", "headers", "source", "status"),
    [
        ("/webhooks/generic?key=wrong", b'{"id": "1", "phone": "+79123456789"}', {}, "generic", 401),
        (URL, b'{"id": ', {}, "generic", 400),
        (URL, b"id=1", {"Content-Type": "text/csv"}, "generic", 415),
        ("/webhooks/no-such-crm?key=x", b"{}", {}, "unknown", 404),  # a name from the URL never becomes a label
    ],
    ids=["wrong-key", "malformed", "media-type", "unknown-source"],
)
def test_a_refused_webhook_counts_once_as_refused(metrics_client, path, body, headers, source, status):
    sent = {"Content-Type": "application/json", **headers}
    assert metrics_client.post(path, data=body, headers=sent).status_code == status
    scraped = scrape(metrics_client)
    assert webhooks(scraped, source, "refused") == 1
    assert sum(v for (name, _), v in scraped.items() if name == "crm2calls_webhooks_total") == 1
    assert not any("no-such-crm" in str(labels) for _, labels in scraped)


def test_a_webhook_the_store_cannot_take_counts_as_error(make_services):
    from app import create_app
    from crm2calls.errors import StoreError

    class BrokenStore:
        def migrate(self) -> None:
            raise StoreError("the lead store is unavailable")

    services = make_services(metrics_tokens=(METRICS_TOKEN,))
    services.store_factory = BrokenStore
    client = create_app(services=services).test_client()
    assert client.post(URL, json={"id": "1", "phone": "+79123456789"}).status_code == 503
    assert webhooks(scrape(client), "generic", "error") == 1


# Aimylogic requests, over HTTP to the emulator


def entries(count: int) -> list[dict]:
    return [{"phone": f"7912345{index:04d}", "payload": {"n": str(index)}} for index in range(count)]


@pytest.fixture
def dialer(aimylogic):
    from crm2calls.aimylogic import AimylogicClient

    return AimylogicClient(aimylogic.url, TOKEN, timeout=(1.0, 2.0))


def test_a_successful_addphones_counts_its_request_latency_and_entries(prometheus, dialer, aimylogic):
    aimylogic.delay = 0.05
    assert len(dialer.add_phones(entries(3))) == 3
    labels = {"op": "addPhones", "result": "ok"}
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", **labels) == 1
    assert 0.05 <= value(prometheus, "crm2calls_aimylogic_request_seconds_sum", **labels) < 2.0
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_bucket", le="0.025", **labels) == 0
    assert value(prometheus, "crm2calls_addphones_entries_total", result="ok") == 3


@pytest.mark.parametrize(
    ("status", "error", "result"),
    [(401, AuthError, "auth"), (404, AuthError, "auth"), (302, AuthError, "auth"), (400, RejectedError, "rejected"),
     (429, UnavailableError, "unavailable"), (503, UnavailableError, "unavailable")],
)
def test_a_failed_addphones_counts_under_its_result(prometheus, dialer, aimylogic, status, error, result):
    aimylogic.fail_next(status, headers={"Location": "https://elsewhere.example/"} if status == 302 else None)
    with pytest.raises(error):
        dialer.add_phones(entries(2))
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", op="addPhones", result=result) == 1
    assert value(prometheus, "crm2calls_addphones_entries_total", result=result) == 2
    assert value(prometheus, "crm2calls_addphones_entries_total", result="ok") == 0


def test_a_silent_aimylogic_counts_as_unavailable_after_the_timeout(prometheus, aimylogic):
    from crm2calls.aimylogic import AimylogicClient

    aimylogic.hang(2.0)
    with pytest.raises(UnavailableError):
        AimylogicClient(aimylogic.url, TOKEN, timeout=(1.0, 0.3)).add_phones(entries(1))
    labels = {"op": "addPhones", "result": "unavailable"}
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", **labels) == 1
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_sum", **labels) >= 0.3


def test_an_unreachable_aimylogic_and_other_operations_are_labelled(prometheus, aimylogic):
    from bench.common import free_port
    from crm2calls.aimylogic import AimylogicClient

    closed = AimylogicClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=(0.5, 0.5))
    with pytest.raises(UnavailableError):
        closed.add_phones(entries(1))
    AimylogicClient(aimylogic.url, TOKEN).campaign_status()
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", op="addPhones", result="unavailable") == 1
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", op="status", result="ok") == 1


# CRM API requests, over HTTP to a local stand-in


class ScriptedCrm(StandIn):
    """A CRM API on 127.0.0.1 answering each request with the next scripted status."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle(self, request: Request) -> Response:
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Location": "https://elsewhere.example/"} if 300 <= status < 400 else {}
        return Response(json.dumps({"status": status}), status=status, headers=headers, content_type="application/json")


@pytest.fixture(scope="module")
def crm_server():
    with ScriptedCrm() as server:
        yield server


@pytest.fixture
def crm(crm_server):
    crm_server.statuses, crm_server.hits = [], []
    return crm_server


@pytest.mark.parametrize(
    ("statuses", "error", "result"),
    [
        ([200], None, "ok"),
        ([401], AuthError, "auth"),
        ([403], AuthError, "auth"),
        ([404], EnrichmentError, "not_found"),
        ([422], EnrichmentError, "rejected"),
        ([429], UnavailableError, "unavailable"),
        ([302], UnavailableError, "unavailable"),
        ([503, 503, 200], None, "ok"),  # urllib3's retries are inside one call: one request counted
        ([503, 503, 503], UnavailableError, "unavailable"),
    ],
)
def test_each_crm_api_call_counts_once_under_its_result(prometheus, crm, statuses, error, result):
    from crm2calls.sources.client import CrmHttpClient

    crm.statuses = list(statuses)
    client = CrmHttpClient(crm.url, service="HubSpot", secret_hint="HUBSPOT_TOKEN", timeout=(1.0, 2.0))
    if error is None:
        assert client.get("/crm/v3/objects/contacts/1") == {"status": 200}
    else:
        with pytest.raises(error):
            client.get("/crm/v3/objects/contacts/1")
    assert len(crm.hits) == len(statuses)
    assert value(prometheus, "crm2calls_crm_api_requests_total", crm="hubspot", result=result) == 1
    total = sum(s.value for f in prometheus.registry.collect() for s in f.samples
                if s.name == "crm2calls_crm_api_requests_total")
    assert total == 1


def test_an_unreachable_crm_counts_as_unavailable_under_its_short_name(prometheus):
    from bench.common import free_port
    from crm2calls.sources.client import CrmHttpClient

    client = CrmHttpClient(f"http://127.0.0.1:{free_port()}", service="Zoho accounts", secret_hint="ZOHO_*", retries=0)
    with pytest.raises(UnavailableError):
        client.request("POST", "/oauth/v2/token", data={"grant_type": "refresh_token"})
    assert value(prometheus, "crm2calls_crm_api_requests_total", crm="zoho", result="unavailable") == 1


def test_the_openapi_description_lists_metrics_and_its_answers(metrics_client):
    described = metrics_client.get("/openapi.json").get_json()["paths"]["/metrics"]["get"]["responses"]
    assert set(described) == {"200", "401", "404"}
    assert metrics_client.get("/metrics").status_code == 401
