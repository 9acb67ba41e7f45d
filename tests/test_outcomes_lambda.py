"""Following calls on Lambda: the scheduled crm2calls.lambda_tasks.follow_up through Zappa's own handler,
the store in DynamoDB at moto's server, getReport at the Aimylogic emulator, all over real HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crm2calls import lifecycle
from crm2calls.model import Status
from crm2calls.outcomes import GRACE
from tests.conftest import SECRET
from tests.emulators.aimylogic import JobPlan
from tests.servers import aws_env, moto_endpoint  # noqa: F401 - fixtures
from tests.test_lambda_handler import (  # noqa: F401 - fixtures
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

PHONE = "79123456789"  # tests/fixtures/generic/one_lead.json


def follow_up_event() -> dict[str, Any]:
    """The minute's scheduled event of the follow_up rule, as EventBridge sends it."""
    event = load_event("scheduled")
    event["resources"] = ["arn:aws:events:eu-central-1:123456789012:rule/crm2calls-dev-follow_up-"
                          "crm2calls.lambda_tasks.follow_up"]  # fmt: skip
    return event


def sent_lead(invoke, store, lambda_api) -> str:  # noqa: F811
    """A generic webhook, and the async pass it kicks sends the lead: its id."""
    [summary] = body_of(invoke(http_event("function_url", "POST", "/webhooks/generic", f"key={SECRET}", one_lead())))[
        "leads"
    ]
    [invocation] = lambda_api.invocations
    invoke(invocation["payload"])
    assert store.get(summary["lead_id"]).status is Status.SENT
    return summary["lead_id"]


def poll_due_now(store, lead_id: str, **entry_changes: Any) -> None:  # noqa: F811
    """A minute has passed since the send (the Lambda's clock is the real one): its first poll is due."""
    record = store.get(lead_id)
    if entry_changes:
        record.entry = json.dumps({**json.loads(record.entry), **entry_changes})
    lifecycle.set_work(record, "poll", datetime.now(UTC) - timedelta(seconds=1))
    assert store.update(record, None)


def test_the_scheduled_follow_up_follows_a_call_to_its_end(invoke, store, lambda_api, aimylogic):  # noqa: F811
    aimylogic.plan_job(PHONE, JobPlan(final="longCallWithResult", wait=0, ring=0, duration=51,
                                      report={"interested": "yes"}))  # fmt: skip
    lead_id = sent_lead(invoke, store, lambda_api)
    poll_due_now(store, lead_id)

    result = invoke(follow_up_event())

    assert "poll 1" in result
    record = store.get(lead_id)
    assert record.status is Status.CALLED
    assert record.outcome["job_status"] == "longCallWithResult" and record.outcome["duration_s"] == 51
    assert record.outcome["report"] == {"interested": "yes"}
    assert "poll" not in record.work and "write_back" in record.work
    assert aimylogic.count("getReport") == 1


def test_a_job_that_never_ends_is_parked_by_the_scheduled_pass(invoke, store, lambda_api, aimylogic):  # noqa: F811
    aimylogic.plan_job(PHONE, JobPlan(final=None, stuck="planned"))
    lead_id = sent_lead(invoke, store, lambda_api)
    closed = datetime.now(UTC) - GRACE - timedelta(minutes=5)
    poll_due_now(store, lead_id, finishDateTime=closed.replace(microsecond=0).isoformat())

    invoke(follow_up_event())
    again = invoke(follow_up_event())

    record = store.get(lead_id)
    assert record.status is Status.CALLING and record.final
    assert record.work["poll"].due is None and "still planned" in record.work["poll"].error
    assert "nothing due" in again and aimylogic.count("getReport") == 1
