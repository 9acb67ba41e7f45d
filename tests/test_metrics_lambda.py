"""On Lambda, metrics are CloudWatch EMF lines on stdout, written through Zappa's real handler.

The same cold-started process, DynamoDB (moto's server), Aimylogic emulator and Invoke API stand-in
as tests/test_lambda_handler.py, whose fixtures are used here.
"""

from __future__ import annotations

from tests.conftest import SECRET
from tests.servers import aws_env, moto_endpoint  # noqa: F401 - fixtures
from tests.test_lambda_handler import (  # noqa: F401 - fixtures
    FUNCTION,
    aws_module,
    body_of,
    created_table,
    http_event,
    invoke,
    isolated_process,
    lambda_api,
    module_lambda_api,
    module_store,
    one_lead,
    settings_dir,
    store,
)
from tests.test_metrics import assert_emf_line, emf_values


def emf_lines(out: str) -> list[str]:
    """The EMF lines among what the process printed."""
    return [line for line in out.splitlines() if line.startswith('{"_aws"')]


def test_a_webhook_writes_its_metrics_in_one_emf_line_at_the_end_of_the_invocation(invoke, capsys):  # noqa: F811 - fixtures
    capsys.readouterr()
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    assert response["statusCode"] == 202
    lines = emf_lines(capsys.readouterr().out)
    assert len(lines) == 2  # one flush per invocation: a line per set of label values
    for line in lines:
        body = assert_emf_line(line)
        assert body["service"] == FUNCTION  # the function name keeps dev and production apart
        assert "9123456789" not in line and SECRET not in line
    assert emf_values(lines, "crm2calls_webhooks_total", source="generic", outcome="accepted") == [1]
    assert emf_values(lines, "crm2calls_lead_transitions_total", source="generic", status="pending") == [1]


def test_a_refused_webhook_is_counted_on_lambda_too(invoke, capsys):  # noqa: F811 - fixtures
    capsys.readouterr()
    response = invoke(http_event("rest_v1", "POST", "/webhooks/generic", "key=wrong", one_lead()))
    assert response["statusCode"] == 401
    lines = emf_lines(capsys.readouterr().out)
    assert emf_values(lines, "crm2calls_webhooks_total", service=FUNCTION, source="generic", outcome="refused") == [1]


def test_the_async_delivery_pass_writes_the_addphones_request(invoke, lambda_api, capsys):  # noqa: F811 - fixtures
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    assert body_of(response)["leads"][0]["status"] == "accepted"
    capsys.readouterr()
    [payload] = lambda_api.payloads()
    assert "sent 1" in invoke(payload)
    lines = emf_lines(capsys.readouterr().out)
    [latencies] = emf_values(lines, "crm2calls_aimylogic_request_seconds", op="addPhones", result="ok")
    assert len(latencies) == 1 and 0 < latencies[0] < 30
    assert emf_values(lines, "crm2calls_addphones_entries_total", service=FUNCTION, result="ok") == [1]


def test_no_metrics_endpoint_on_lambda(invoke, monkeypatch):  # noqa: F811 - fixtures
    monkeypatch.setenv("METRICS_TOKEN", "a-token-that-does-not-matter-here")
    response = invoke(http_event("function_url", "GET", "/metrics", headers={
        "Authorization": "Bearer a-token-that-does-not-matter-here"}))
    assert response["statusCode"] == 404  # CloudWatch has them
