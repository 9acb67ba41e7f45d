"""Stops on Lambda, through Zappa's real handler: a stop webhook kicks an async follow-up pass that cancels the job.

The fixtures of tests/test_lambda_handler.py: DynamoDB on moto's server, the Aimylogic emulator, Lambda's Invoke
API on 127.0.0.1, every invocation through zappa.handler.LambdaHandler.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm2calls.model import Status
from tests.conftest import SECRET
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_lambda_handler import (  # noqa: F401  (fixtures)
    aws_module,
    body_of,
    created_table,
    http_event,
    invoke,
    isolated_process,
    lambda_api,
    load_event,
    module_lambda_api,
    module_store,
    one_lead,
    settings_dir,
    store,
)

FOLLOW_UP_TASK = {**load_event("async_task"), "task_path": "crm2calls.lambda_tasks.follow_up_task"}


@pytest.fixture(autouse=True)
def fresh_kicks(monkeypatch):
    """The kicks' debounce is per process: each test starts cold."""
    from crm2calls import lambda_tasks

    monkeypatch.setattr(lambda_tasks.kick_follow_up, "_last", None)
    monkeypatch.setattr(lambda_tasks.kick_delivery, "_last", None)


def post(invoke, body: Any) -> dict[str, Any]:  # noqa: F811
    response = invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}",
                                 json.dumps(body).encode()))  # fmt: skip
    assert response["statusCode"] == 202, response
    return body_of(response)


def sent_lead(invoke, store, lambda_api) -> Any:  # noqa: F811
    """The fixture lead, received and sent by the async pass its webhook kicked."""
    [summary] = body_of(invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead())))[
        "leads"
    ]
    [kick] = lambda_api.payloads()
    assert "sent 1" in invoke(kick)
    lambda_api.invocations.clear()
    record = store.get(summary["lead_id"])
    assert record.status is Status.SENT
    return record


def test_a_stop_kicks_an_async_follow_up_pass_that_cancels_the_job(invoke, store, lambda_api, aimylogic):  # noqa: F811
    record = sent_lead(invoke, store, lambda_api)

    answer = post(invoke, {"event": "lead.closed", "id": "lead-1001", "reason": "lost"})

    assert answer["stops"] == [{"record": "lead-1001", "reason": "closed in the CRM: lost",
                                "leads": [{"lead_id": record.id, "did": "cancel_planned"}]}]  # fmt: skip
    assert lambda_api.payloads() == [FOLLOW_UP_TASK]  # at once, not at the minute's schedule
    assert aimylogic.cancels == []  # nothing is cancelled from the webhook itself
    assert "cancel 1" in invoke(FOLLOW_UP_TASK)
    assert aimylogic.cancelled_ids() == [record.job_id]
    assert store.get(record.id).status is Status.CANCELED

    again = post(invoke, {"event": "lead.closed", "id": "lead-1001", "reason": "lost"})
    assert again["stops"][0]["status"] == "already received"
    assert lambda_api.payloads() == [FOLLOW_UP_TASK]  # a repeat kicks nothing


def test_the_schedule_cancels_when_the_kick_is_refused(invoke, store, lambda_api, aimylogic):  # noqa: F811
    record = sent_lead(invoke, store, lambda_api)
    lambda_api.refuse = True  # the role may not invoke the function

    answer = post(invoke, {"event": "lead.deleted", "id": "lead-1001"})

    assert answer["stops"][0]["leads"] == [{"lead_id": record.id, "did": "cancel_planned"}]
    scheduled = {**load_event("scheduled"), "resources": [
        "arn:aws:events:eu-central-1:123456789012:rule/crm2calls-dev-follow_up-crm2calls.lambda_tasks.follow_up"]}
    assert "cancel 1" in invoke(scheduled)
    assert aimylogic.cancelled_ids() == [record.job_id]
    assert store.get(record.id).status is Status.CANCELED


def test_a_tombstone_on_dynamodb_stops_a_late_lead_webhook(invoke, store, lambda_api, aimylogic):  # noqa: F811
    assert post(invoke, {"event": "lead.closed", "id": "lead-1001"})["stops"][0]["tombstone"] is True
    [late] = body_of(invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead())))[
        "leads"
    ]
    assert late["status"] == "canceled" and store.get(late["lead_id"]).status is Status.CANCELED
    assert lambda_api.invocations == []  # nothing to deliver: no kick
