"""crm2calls on Lambda, through Zappa's real handler: event shapes, the schedule, the async pass, the logs.

Every invocation goes through zappa.handler.LambdaHandler.lambda_handler with a zappa_settings
module generated from zappa_settings.json by Zappa's own code (what `zappa package` writes), the
store in DynamoDB (moto's server on 127.0.0.1), addPhones at the Aimylogic emulator and the async
invocation at a stand-in of Lambda's Invoke API, all over real HTTP.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from werkzeug.wrappers import Request, Response

from crm2calls.model import Status
from tests.conftest import FIXTURES, ROOT, SECRET, TOKEN
from tests.emulators.base import LocalServer
from tests.servers import aws_env, moto_endpoint, point_boto3_at  # noqa: F401 - fixtures

EVENTS = Path(__file__).resolve().parent / "events"
STAGE = "dev"
FUNCTION = f"crm2calls-{STAGE}"  # Zappa's Lambda name: project_name-stage
TABLE = "crm2calls-dev-leads"  # zappa_settings.json: the dev stage's LEADS_STORE
HUBSPOT_SECRET = "hubspot-client-secret-for-tests"
# Every way a webhook reaches the function: REST API (v1) and HTTP API (v2) with the stage in the
# URL, HTTP API behind a custom domain (no stage in the path), and a function URL.
SHAPES = ["rest_v1", "http_api_v2", "http_api_v2_custom_domain", "function_url"]
CUSTOM_DOMAIN = "hooks.example.com"


def load_event(name: str) -> dict[str, Any]:
    """A JSON event fixture from tests/events/."""
    return json.loads((EVENTS / f"{name}.json").read_text())


def http_event(
    shape: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """The event API Gateway or a function URL hands Lambda for this request, as AWS builds it."""
    fixture = {"rest_v1": "rest_v1", "function_url": "function_url"}.get(shape, "http_api_v2")
    event = load_event(fixture)
    sent = dict(headers or {})
    if not any(name.lower() == "content-type" for name in sent):
        sent["Content-Type"] = "application/json"
    pairs = parse_qsl(query, keep_blank_values=True)
    text = base64.b64encode(body).decode() if base64_body else body.decode("utf-8")
    if shape == "rest_v1":
        # REST APIs keep the client's header case, drop the stage from `path` and decode the query.
        kept = {k: v for k, v in event["headers"].items() if k.lower() not in {h.lower() for h in sent}}
        event["headers"] = {**kept, **sent}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
        multi: dict[str, list[str]] = {}
        for name, value in pairs:
            multi.setdefault(name, []).append(value)
        event["queryStringParameters"] = {k: v[-1] for k, v in multi.items()} or None
        event["multiValueQueryStringParameters"] = multi or None
        event["httpMethod"] = event["requestContext"]["httpMethod"] = method
        event["path"] = path
        event["requestContext"]["path"] = f"/{STAGE}{path}"
        event["pathParameters"] = {"proxy": path.lstrip("/")}
    else:
        # HTTP APIs and function URLs lower-case header names and pass the path and query raw.
        raw_path = f"/{STAGE}{path}" if shape == "http_api_v2" else path
        kept = {k: v for k, v in event["headers"].items() if k not in {h.lower() for h in sent}}
        event["headers"] = {**kept, **{k.lower(): v for k, v in sent.items()}, "content-length": str(len(body))}
        if shape == "http_api_v2_custom_domain":
            event["headers"]["host"] = event["requestContext"]["domainName"] = CUSTOM_DOMAIN
        event["rawPath"] = event["requestContext"]["http"]["path"] = raw_path
        event["rawQueryString"] = query
        grouped: dict[str, list[str]] = {}
        for name, value in pairs:
            grouped.setdefault(name, []).append(value)
        event["queryStringParameters"] = {k: ",".join(v) for k, v in grouped.items()} or None
        event["requestContext"]["http"]["method"] = method
    event["body"] = text or None
    event["isBase64Encoded"] = base64_body
    return event


def public_url(shape: str, path: str, query: str = "") -> str:
    """The URL the CRM called for this shape (what a signature covers)."""
    if shape == "function_url":
        base = "https://" + load_event("function_url")["headers"]["host"]
    elif shape == "http_api_v2_custom_domain":
        base = f"https://{CUSTOM_DOMAIN}"
    else:
        base = "https://" + load_event("rest_v1")["headers"]["Host"] + f"/{STAGE}"
    return base + path + (f"?{query}" if query else "")


class Context:
    """What the Lambda runtime passes as `context`."""

    function_name = FUNCTION
    aws_request_id = "0f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0"
    invoked_function_arn = f"arn:aws:lambda:eu-central-1:123456789012:function:{FUNCTION}"

    def __init__(self, remaining_ms: int = 120_000):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class LambdaInvokeApi:
    """Lambda's Invoke API on 127.0.0.1: records asynchronous invocations, so a test can run them itself."""

    def __init__(self) -> None:
        self.invocations: list[dict[str, Any]] = []
        self.refuse = False  # answer AccessDenied, as a role without lambda:InvokeFunction gets
        self._server = LocalServer(self._app)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> LambdaInvokeApi:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def payloads(self) -> list[dict[str, Any]]:
        """The events the recorded invocations would have run with."""
        return [invocation["payload"] for invocation in self.invocations]

    @Request.application
    def _app(self, request: Request) -> Response:
        match = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", request.path)
        if request.method != "POST" or not match:
            return Response(status=404)
        if self.refuse:
            body = json.dumps({"Message": f"not authorized to perform: lambda:InvokeFunction on {match[1]}"})
            return Response(body, status=403, headers={"x-amzn-ErrorType": "AccessDeniedException"})
        self.invocations.append(
            {
                "function": match[1],
                "type": request.headers.get("X-Amz-Invocation-Type"),
                "payload": json.loads(request.get_data()),
            }
        )
        return Response(b"", status=202)


@pytest.fixture(scope="session")
def settings_dir(tmp_path_factory) -> Path:
    """zappa_settings.py generated from zappa_settings.json by Zappa's own code, as `zappa package` does."""
    from zappa.cli import ZappaCLI

    work = tmp_path_factory.mktemp("zappa-settings")
    (work / "zappa_settings.json").write_text((ROOT / "zappa_settings.json").read_text())
    cwd = Path.cwd()
    os.chdir(work)  # Zappa scans the working directory for websocket handlers; keep it to this file
    try:
        cli = ZappaCLI()
        cli.api_stage = STAGE
        cli.load_credentials = False
        cli.load_settings("zappa_settings.json")
        source = cli.get_zappa_settings_string()
    finally:
        os.chdir(cwd)
    module_dir = work / "module"
    module_dir.mkdir()
    (module_dir / "zappa_settings.py").write_text(source)
    return module_dir


@pytest.fixture(scope="module")
def aws_module(moto_endpoint) -> Iterator[None]:  # noqa: F811
    """aws_env for module-scoped fixtures: boto3 at the moto server with dummy credentials."""
    with pytest.MonkeyPatch.context() as patch:
        point_boto3_at(patch, moto_endpoint)
        yield


@pytest.fixture(scope="module")
def created_table(aws_module) -> Iterator[dict[str, Any]]:
    """The dev stage's table, made once per module by crm2calls.aws.create_table."""
    import boto3

    from crm2calls.aws import create_table

    yield create_table(TABLE)
    boto3.session.Session().client("dynamodb").delete_table(TableName=TABLE)


@pytest.fixture(scope="module")
def module_store(created_table) -> Any:
    """One store for the tests' own reads (building boto3 clients is slow)."""
    from crm2calls.store.dynamodb import DynamoDBStore

    return DynamoDBStore(TABLE)


@pytest.fixture
def store(aws_env, module_store) -> Any:  # noqa: F811
    """The table's store, emptied of every item but its schema version."""
    client = module_store._client
    keys = [
        item["pk"]
        for page in client.get_paginator("scan").paginate(TableName=TABLE, ProjectionExpression="pk")
        for item in page["Items"]
        if item["pk"]["S"] != "SCHEMA"
    ]
    for start in range(0, len(keys), 25):
        requests = [{"DeleteRequest": {"Key": {"pk": key}}} for key in keys[start : start + 25]]
        client.batch_write_item(RequestItems={TABLE: requests})
    return module_store


@pytest.fixture(scope="module")
def module_lambda_api(aws_module) -> Iterator[tuple[LambdaInvokeApi, Any]]:
    import boto3

    with LambdaInvokeApi() as api:
        yield api, boto3.session.Session().client("lambda", endpoint_url=api.url)


@pytest.fixture
def lambda_api(aws_env, module_lambda_api, monkeypatch) -> LambdaInvokeApi:  # noqa: F811
    """Zappa's async dispatch goes to the local Invoke API: a real boto3 Lambda client pointed at it."""
    import zappa.asynchronous

    api, client = module_lambda_api
    api.invocations.clear()
    api.refuse = False
    monkeypatch.setattr(zappa.asynchronous, "LAMBDA_CLIENT", client)
    return api


@pytest.fixture
def isolated_process(monkeypatch) -> Iterator[None]:
    """Undo what a Lambda cold start does to this process: environment, loggers, loaded modules."""
    from zappa.handler import LambdaHandler

    from crm2calls import lambda_tasks

    saved_env = dict(os.environ)
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:])
    requests_log = logging.getLogger("zappa.wsgi")
    saved_filters = requests_log.filters[:]
    for name in ("app", "zappa_settings"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(LambdaHandler, "_LambdaHandler__instance", None)
    monkeypatch.setattr(lambda_tasks.kick_delivery, "_last", None)  # the debounce is per process
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    requests_log.filters[:] = saved_filters


@pytest.fixture
def invoke(isolated_process, settings_dir, store, aimylogic, lambda_api, monkeypatch) -> Callable[..., Any]:
    """Call the handler as the Lambda runtime would, in a process that starts cold at the first call."""
    from zappa.handler import LambdaHandler

    monkeypatch.syspath_prepend(str(settings_dir))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
    # Secrets come from the function's configuration (aws_environment_variables), never from the zip.
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AIMYLOGIC_TOKEN", TOKEN)
    monkeypatch.delenv("DRY_RUN", raising=False)  # the test session's own default
    monkeypatch.setenv("AIMYLOGIC_URL", aimylogic.url)
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", HUBSPOT_SECRET)

    def call(event: dict[str, Any], context: Context | None = None) -> Any:
        return LambdaHandler.lambda_handler(copy.deepcopy(event), context or Context())

    return call


# Stored and waiting for a delivery pass: pending, or held while the spend guards are on (leads.toml).
AWAITING = {Status.PENDING, Status.HELD}


def awaiting(store: Any) -> int:
    """How many leads wait for delivery."""
    counts = store.count_by_status()
    return sum(counts[str(status)] for status in AWAITING)


def body_of(response: dict[str, Any]) -> Any:
    """The JSON body of a handler response, base64 or not."""
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


# The generated settings and the schedule in zappa_settings.json


def test_generated_settings_are_quiet_and_ship_no_secret(settings_dir):
    settings: dict[str, Any] = {}
    exec((settings_dir / "zappa_settings.py").read_text(), settings)  # noqa: S102 - generated from our file
    assert settings["DEBUG"] is False  # True puts tracebacks in responses and logs every raw event
    assert settings["LOG_LEVEL"] == "INFO"
    assert settings["APP_MODULE"] == "app" and settings["APP_FUNCTION"] == "app"
    assert settings["BINARY_SUPPORT"] is True  # else base64 bodies reach the app still encoded
    assert settings["ENVIRONMENT_VARIABLES"]["LEADS_STORE"] == f"dynamodb://{TABLE}"
    assert not [name for name in settings["ENVIRONMENT_VARIABLES"] if re.search("SECRET|TOKEN|PASSWORD|KEY", name)]


@pytest.mark.parametrize("stage", ["dev", "production"])
def test_every_scheduled_function_exists_and_gets_a_valid_rule_name(stage):
    from zappa.core import Zappa

    from crm2calls import lambda_tasks

    config = json.loads((ROOT / "zappa_settings.json").read_text())
    events = config["base"]["events"]
    assert {event["function"] for event in events} == {
        f"crm2calls.lambda_tasks.{name}"
        for name in ("deliver", "follow_up", "reconcile_amocrm", "reconcile_bitrix24", "renew_zoho")
    }
    for event in events:
        module, name = event["function"].rsplit(".", 1)
        assert module == "crm2calls.lambda_tasks"
        assert callable(getattr(lambda_tasks, name))
        rule = Zappa(load_credentials=False, aws_region="eu-central-1").get_scheduled_event_name(
            event, event["function"], f"crm2calls-{stage}"
        )
        assert len(rule) <= 64 and rule.split("-")[-1] == event["function"]  # how the handler finds the function


# HTTP through every event shape


@pytest.mark.parametrize("shape", SHAPES)
def test_healthz_through_each_event_shape(invoke, shape):
    invoke(load_event("scheduled"))  # the minute's sweep records its pass: the check reads that record
    response = invoke(http_event(shape, "GET", "/healthz"))
    assert response["statusCode"] == 200
    body = body_of(response)
    assert body["status"] == "ok" and body["dry_run"] is False and body["backlog"] == 0
    sending = {"aimylogic": None, "delivery": "sending", "held": 0, "oldest_waiting_s": 0}
    assert body["campaigns"] == {"default": sending}
    assert sum(body["counts"][str(status)] for status in AWAITING) == 0


def one_lead() -> bytes:
    return (FIXTURES / "generic" / "one_lead.json").read_bytes()


@pytest.mark.parametrize("base64_body", [False, True], ids=["text", "base64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_keyed_generic_webhook_is_stored_byte_exact_through_each_shape(invoke, store, lambda_api, shape, base64_body):
    body = one_lead()
    assert "Алексей".encode() in body  # non-ASCII, raw UTF-8
    response = invoke(http_event(shape, "POST", "/webhooks/generic", f"key={SECRET}", body, base64_body=base64_body))
    assert response["statusCode"] == 202, response
    [summary] = body_of(response)["leads"]
    assert summary["ref"] == "lead-1001"
    record = store.get(summary["lead_id"])
    assert record.status in AWAITING
    sent = json.loads(body)
    entry = json.loads(record.entry)
    assert entry["payload"]["name"] == sent["name"] and entry["payload"]["product"] == sent["product"]
    assert [payload["task_path"] for payload in lambda_api.payloads()] == ["crm2calls.lambda_tasks.deliver_task"]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_wrong_key_is_refused_through_each_shape(invoke, store, lambda_api, shape):
    response = invoke(http_event(shape, "POST", "/webhooks/generic", "key=wrong", one_lead()))
    assert response["statusCode"] == 401
    assert body_of(response)["error"] == "unauthorized"
    assert awaiting(store) == 0
    assert lambda_api.invocations == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json", "X-Webhook-Secret": SECRET},
        {"content-type": "application/json", "x-webhook-secret": SECRET},
        {"CONTENT-TYPE": "application/json; charset=UTF-8", "X-WEBHOOK-SECRET": SECRET},
    ],
    ids=["canonical", "lower", "upper"],
)
@pytest.mark.parametrize("shape", ["rest_v1", "function_url"])
def test_header_case_does_not_matter(invoke, store, shape, headers):
    response = invoke(http_event(shape, "POST", "/webhooks/generic", "", one_lead(), headers=headers))
    assert response["statusCode"] == 202, response
    assert awaiting(store) == 1


# HubSpot v3 signs the URI as called: which shapes hand the app that URI intact?


def hubspot_headers(url: str, body: bytes) -> dict[str, str]:
    from crm2calls.sources.hubspot import signature_v3

    timestamp = str(int(time.time() * 1000))
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature-v3": signature_v3(HUBSPOT_SECRET, "POST", url, body, timestamp),
    }


# REST APIs (v1) give Lambda the query decoded and grouped by name; Zappa re-encodes it with
# urlencode, so only a query that survives that round trip keeps its signature.
HUBSPOT_QUERIES = {
    "no_query": ("", set()),
    "plain_query": ("portal=48807704&app=crm2calls", set()),
    "space_as_%20": ("note=new%20lead", {"rest_v1"}),
    "repeated_name": ("tag=a&portal=1&tag=b", {"rest_v1"}),
}


@pytest.mark.parametrize("query_case", list(HUBSPOT_QUERIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_hubspot_v3_signature_through_each_shape(invoke, store, shape, query_case):
    query, broken_on = HUBSPOT_QUERIES[query_case]
    body = (FIXTURES / "hubspot" / "workflow_contact_v3.json").read_bytes()
    assert "Ольга".encode() in body
    headers = hubspot_headers(public_url(shape, "/webhooks/hubspot", query), body)
    base64_body = shape == "function_url"  # function URLs may base64-encode any body; the signature must hold
    response = invoke(http_event(shape, "POST", "/webhooks/hubspot", query, body, headers, base64_body=base64_body))
    if shape in broken_on:
        assert response["statusCode"] == 401, response
        assert body_of(response)["field"] == "X-HubSpot-Signature-v3"
        return
    assert 200 <= response["statusCode"] < 300, response
    [record] = store.list()
    assert record.source == "hubspot" and record.status in AWAITING
    assert json.loads(record.entry)["phone"] == "15128675309"


def test_a_changed_body_byte_fails_the_hubspot_signature(invoke, store):
    body = (FIXTURES / "hubspot" / "workflow_contact_v3.json").read_bytes()
    headers = hubspot_headers(public_url("function_url", "/webhooks/hubspot"), body)
    tampered = body.replace("Ольга".encode(), "Олега".encode())
    response = invoke(http_event("function_url", "POST", "/webhooks/hubspot", "", tampered, headers, base64_body=True))
    assert response["statusCode"] == 401
    assert store.list() == []


# The key never reaches the logs


class LambdaLoggerHandler(logging.Handler):
    """Stands in for awslambdaric's root handler: it prints every record unredacted, request id first."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"[{record.levelname}]\t{Context.aws_request_id}\t{record.getMessage()}")


def record_text(record: logging.LogRecord) -> str:
    """Everything a formatter could print from a record."""
    parts = [record.getMessage(), json.dumps(getattr(record, "fields", {}), ensure_ascii=False, default=str)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_webhook_key_reaches_no_log_record_and_no_output(invoke, shape, caplog, capfd):
    runtime = LambdaLoggerHandler()
    logging.getLogger().addHandler(runtime)
    caplog.set_level(logging.DEBUG)
    query = f"key={SECRET}&utm=1"
    response = invoke(http_event(shape, "POST", "/webhooks/generic", query, one_lead()))
    assert response["statusCode"] == 202
    assert runtime not in logging.getLogger().handlers  # only our redacting JSON handler writes to CloudWatch
    access = [r for r in caplog.records if r.name == "zappa.wsgi"]
    assert access and "/webhooks/generic?key=***" in access[0].getMessage()  # Zappa's line is kept, redacted
    logged = [record_text(record) for record in caplog.records]
    captured = capfd.readouterr()
    for text in [*logged, *runtime.lines, captured.out, captured.err]:
        assert SECRET not in text
        assert "9123456789" not in text  # and the phone is masked wherever it appears


# The schedule, the async pass, keep-warm


def test_a_webhook_kicks_one_async_pass_that_delivers_to_aimylogic(invoke, store, lambda_api, aimylogic):
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    [summary] = body_of(response)["leads"]
    assert store.get(summary["lead_id"]).status in AWAITING
    [invocation] = lambda_api.invocations
    assert invocation["function"] == FUNCTION and invocation["type"] == "Event"
    assert invocation["payload"] == load_event("async_task")  # Zappa's task message, as in tests/events
    assert aimylogic.entries == []  # nothing is sent from the webhook itself

    result = invoke(invocation["payload"])

    assert "sent 1" in result
    [entry] = aimylogic.entries
    assert entry["phone"] == "79123456789" and entry["payload"]["name"] == "Алексей"
    record = store.get(summary["lead_id"])
    assert record.status is Status.SENT and record.job_id


def test_a_webhook_inside_the_debounce_window_rides_on_the_running_task(invoke, store, lambda_api, aimylogic):
    import threading

    first = body_of(invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead())))
    [invocation] = lambda_api.invocations
    task = threading.Thread(target=invoke, args=(invocation["payload"],))  # the kicked task, in its own invocation
    task.start()
    while not aimylogic.entries:  # the task has sent the first lead and now looks for more
        time.sleep(0.01)
    later = {**json.loads(one_lead()), "id": "later", "phone": "+79123456700"}
    second = body_of(
        invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", json.dumps(later).encode()))
    )
    task.join(timeout=30)

    assert len(lambda_api.invocations) == 1  # within the window: no second task
    for summary in (first["leads"][0], second["leads"][0]):
        assert store.get(summary["lead_id"]).status is Status.SENT  # both went out before the minute's sweep


def test_a_paused_campaign_holds_its_leads_on_lambda_and_a_sweep_sends_them_once_it_runs(
    invoke, store, lambda_api, aimylogic
):
    from dataclasses import replace
    from datetime import datetime, timedelta

    aimylogic.pause()
    [summary] = body_of(invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead())))[
        "leads"
    ]
    [invocation] = lambda_api.invocations

    assert "sent 0" in invoke(invocation["payload"])
    held = store.get(summary["lead_id"])
    assert held.status is Status.HELD and held.last_error == "campaign default is paused in Aimylogic"
    assert aimylogic.entries == [] and aimylogic.count("status") == 1
    health = body_of(invoke(http_event("function_url", "GET", "/healthz")))
    assert health["campaigns"]["default"] == {
        "aimylogic": "paused", "delivery": "held", "held": 1, "reason": "campaign default is paused in Aimylogic",
        "oldest_waiting_s": 0,
    }  # fmt: skip

    # A minute later (in the store: each invocation is a new process, the cache lives there), it runs again.
    aimylogic.resume()
    state = store.get_meta("campaign:default")
    earlier = (datetime.fromisoformat(state["checked_at"]) - timedelta(seconds=61)).isoformat()
    store.put_meta("campaign:default", {**state, "checked_at": earlier})
    store.update(replace(held, next_attempt_at=held.next_attempt_at - timedelta(seconds=61)), owner=None)

    assert "sent 1" in invoke(load_event("scheduled"))
    assert store.get(summary["lead_id"]).status is Status.SENT and len(aimylogic.entries) == 1
    assert body_of(invoke(http_event("function_url", "GET", "/healthz")))["campaigns"]["default"]["held"] == 0


def test_a_burst_of_webhooks_kicks_one_pass_until_the_window_passes(invoke, lambda_api, store, monkeypatch):
    from crm2calls import lambda_tasks

    now = [1000.0]
    monkeypatch.setattr(lambda_tasks.kick_delivery, "clock", lambda: now[0])
    for n in range(5):
        lead = json.dumps({"id": f"burst-{n}", "phone": f"+7 912 345-67-{10 + n}", "name": "Ира"}).encode()
        response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", lead))
        assert response["statusCode"] == 202
    assert len(lambda_api.invocations) == 1
    assert awaiting(store) == 5
    now[0] += lambda_tasks.DEBOUNCE_SECONDS
    lead = json.dumps({"id": "later", "phone": "+7 912 345-67-99"}).encode()
    invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", lead))
    assert len(lambda_api.invocations) == 2


def test_a_refused_kick_still_stores_the_lead_and_the_sweep_sends_it(invoke, lambda_api, store, aimylogic, caplog):
    lambda_api.refuse = True
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    assert response["statusCode"] == 202
    assert awaiting(store) == 1
    assert any("could not start an asynchronous pass" in r.getMessage() for r in caplog.records)

    result = invoke(load_event("scheduled"))

    assert "sent 1" in result
    assert [entry["phone"] for entry in aimylogic.entries] == ["79123456789"]


def test_the_scheduled_sweep_delivers_pending_leads(invoke, store, aimylogic):
    for n in range(3):
        lead = json.dumps({"id": f"s-{n}", "phone": f"+7 912 345-67-{20 + n}"}).encode()
        invoke(http_event("rest_v1", "POST", "/webhooks/generic", f"key={SECRET}", lead))
    assert awaiting(store) == 3

    result = invoke(load_event("scheduled"))

    assert "sent 3" in result
    assert sorted(entry["phone"] for entry in aimylogic.entries) == ["79123456720", "79123456721", "79123456722"]
    assert store.count_by_status()["sent"] == 3


def test_the_sweep_stops_claiming_when_the_invocation_is_nearly_out_of_time(invoke, store, aimylogic):
    from crm2calls.lambda_tasks import SEND_MARGIN_SECONDS

    invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    almost_over = Context(remaining_ms=int(SEND_MARGIN_SECONDS * 1000) - 1)

    result = invoke(load_event("scheduled"), almost_over)

    assert "sent 0" in result
    assert aimylogic.entries == []
    assert awaiting(store) == 1


def scheduled_event(name: str) -> dict[str, Any]:
    """The event EventBridge sends for zappa_settings.json's schedule of lambda_tasks.`name`."""
    from zappa.core import Zappa

    event = load_event("scheduled")
    config = json.loads((ROOT / "zappa_settings.json").read_text())
    [scheduled] = [e for e in config["base"]["events"] if e["function"].endswith(f".{name}")]
    rule = Zappa(load_credentials=False, aws_region="eu-central-1").get_scheduled_event_name(
        scheduled, scheduled["function"], FUNCTION
    )
    event["resources"] = [f"arn:aws:events:eu-central-1:123456789012:rule/{rule}"]
    return event


@pytest.mark.parametrize("name", ["reconcile_amocrm", "reconcile_bitrix24", "renew_zoho"])
def test_scheduled_crm_jobs_skip_a_crm_that_is_not_configured(invoke, name):
    result = invoke(scheduled_event(name))

    assert "is not configured" in result


def test_the_scheduled_amocrm_reconciliation_stores_a_missed_lead_once_and_the_sweep_calls_it(
    invoke, store, aimylogic, monkeypatch
):
    from tests.emulators.amocrm import AmoCrmEmulator

    lead = json.loads((FIXTURES / "amocrm" / "api_lead.json").read_text())
    contact = json.loads((FIXTURES / "amocrm" / "api_contact.json").read_text())
    phone = {"field_code": "PHONE", "values": [{"value": "8 (912) 345-67-89", "enum_code": "MOB"}]}
    with AmoCrmEmulator() as amo:
        amo.add_contact({**contact, "id": 50000001, "custom_fields_values": [phone]})
        created = int(time.time()) - 30 * 60  # its webhook was lost half an hour ago
        amo.add_lead({**lead, "id": 33000001, "created_at": created}, [(50000001, True)])
        monkeypatch.setenv("AMOCRM_BASE_URL", amo.url)
        monkeypatch.setenv("AMOCRM_TOKEN", amo.token)

        first = invoke(scheduled_event("reconcile_amocrm"))
        again = invoke(scheduled_event("reconcile_amocrm"))
        delivered = invoke(load_event("scheduled"))

    assert "listed=1, enqueued=1, already_known=0" in first
    assert "listed=1, enqueued=0, already_known=1" in again
    assert "sent 1" in delivered
    assert [entry["phone"] for entry in aimylogic.entries] == ["79123456789"]


def test_the_scheduled_zoho_renewal_subscribes_the_function_url(invoke, monkeypatch):
    from crm2calls.clock import utcnow
    from tests.emulators.zoho import ZohoStandIn

    with ZohoStandIn(utcnow) as zoho:
        url = "https://" + load_event("function_url")["headers"]["host"]
        for name, value in {
            "ZOHO_API_DOMAIN": zoho.url,
            "ZOHO_ACCOUNTS_URL": zoho.url,
            "ZOHO_CLIENT_ID": zoho.client_id,
            "ZOHO_CLIENT_SECRET": zoho.client_secret,
            "ZOHO_REFRESH_TOKEN": zoho.refresh_token,
            "ZOHO_CHANNEL_ID": "1000000068001",
            "ZOHO_NOTIFY_TOKEN": "zoho-notify-token-for-tests",
            "PUBLIC_BASE_URL": url,
        }.items():
            monkeypatch.setenv(name, value)

        invoke(scheduled_event("renew_zoho"))

    [watch] = zoho.watches
    assert watch["notify_url"] == f"{url}/webhooks/zoho" and watch["channel_id"] == 1000000068001


def test_keep_warm_loads_the_app_and_touches_nothing(invoke, store, lambda_api, aimylogic):
    from zappa.handler import LambdaHandler

    invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead()))
    before = store.count_by_status()
    kicks = len(lambda_api.invocations)

    assert invoke(load_event("keep_warm")) is None

    assert LambdaHandler().settings.API_STAGE == STAGE  # the container is warm: settings and app loaded
    assert store.count_by_status() == before
    assert aimylogic.entries == [] and len(lambda_api.invocations) == kicks


# The debounce and the AWS set-up helpers


def test_a_kicker_starts_once_per_window_and_retries_after_a_failure(caplog):
    from crm2calls.lambda_tasks import Kicker

    now = [0.0]
    starts: list[float] = []
    failing = [True]

    def start() -> None:
        if failing[0]:
            raise RuntimeError("AccessDenied")
        starts.append(now[0])

    kick = Kicker(start, window=2.0, clock=lambda: now[0])
    assert kick() is False  # failed: logged, not raised
    assert "could not start" in caplog.text
    failing[0] = False
    assert kick() is True  # a failure does not hold the window
    now[0] = 1.9
    assert kick() is False
    now[0] = 2.0
    assert kick() is True
    assert starts == [0.0, 2.0]


def test_create_table_is_on_demand_with_its_indexes_and_ttl(created_table):
    table = created_table
    assert table["table"] == TABLE and table["status"] == "ACTIVE"
    assert table["billing"] == "PAY_PER_REQUEST"
    assert table["indexes"] == ["due", "ref", "waiting"]
    assert table["ttl"].startswith("expires_at (")
    from crm2calls.aws import create_table

    assert create_table(TABLE)["arn"] == table["arn"]  # again: idempotent


def test_the_printed_policy_grants_the_table_the_logs_and_self_invoke_only():
    from crm2calls.aws import function_arn, print_policy, table_arn

    table = table_arn(TABLE, "eu-central-1", "123456789012")
    function = function_arn(FUNCTION, "eu-central-1", "123456789012")
    out = io.StringIO()
    print_policy(table, function, file=out)
    policy = json.loads(out.getvalue())
    granted = {
        (action, resource)
        for statement in policy["Statement"]
        for action in _list(statement["Action"])
        for resource in _list(statement["Resource"])
    }
    assert ("dynamodb:UpdateItem", table) in granted and ("dynamodb:Query", f"{table}/index/due") in granted
    assert ("lambda:InvokeFunction", function) in granted
    log_group = f"arn:aws:logs:eu-central-1:123456789012:log-group:/aws/lambda/{FUNCTION}"
    assert ("logs:PutLogEvents", f"{log_group}:*") in granted
    assert all("*" not in resource.split(":")[4] for _, resource in granted)  # no wildcard accounts
    assert not [action for action, _ in granted if action.endswith(":*") or action == "*"]
    assert not [a for a, _ in granted if a in ("dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:UpdateTable")]


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value
