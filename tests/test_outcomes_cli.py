"""Call outcomes where people and dashboards read them: leads show, leads list --outcome, leads stats, metrics."""

from __future__ import annotations

import json

import pytest

from crm2calls import metrics
from crm2calls.model import Status
from tests.emulators.aimylogic import JobPlan
from tests.test_metrics import assert_emf_line, value
from tests.test_outcomes import run_minutes, send


@pytest.fixture
def prometheus():
    sink = metrics.PrometheusSink()
    previous = metrics.use(sink)
    yield sink
    metrics.use(previous)


@pytest.fixture
def followed(make_services, aimylogic, clock, prometheus):
    """Four leads followed to their end: called, noAnswer, canceled in Aimylogic, and one still calling."""
    from tests.conftest import TOKEN

    services = make_services(aimylogic_token=TOKEN, aimylogic_url=aimylogic.url, dry_run=False)
    plans = [
        JobPlan(final="longCallWithResult", wait=0, ring=30, duration=47, result="OK",
                report={"interested": "yes", "phone_back": "+7 912 345-67-89"}, tag=("hot", {"score": 9})),
        JobPlan(final="noAnswer", attempts=2, wait=0, ring=30, retry=60),
        JobPlan(final="canceled", attempts=0, wait=0),
        JobPlan(final=None, stuck="planned"),
    ]  # fmt: skip
    for n, plan in enumerate(plans):
        aimylogic.plan_job(f"7912{n:07d}", plan)
    leads = send(services, len(plans))
    run_minutes(services, clock, 5)
    return services, [services.store.get(lead.id) for lead in leads]


def cli(services, *args: str) -> str:
    from app import create_app

    result = create_app(services=services).test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_leads_show_prints_the_outcome(followed):
    services, leads = followed

    called = cli(services, "leads", "show", leads[0].id)
    calling = cli(services, "leads", "show", leads[3].id)

    assert "status called" in called
    assert "call: longCallWithResult, result OK, 1 attempt(s), talked 47 s" in called
    assert "tag hot" in called and '"interested": "yes"' in called
    assert "+7 912 345-67-89" not in called  # a phone in the bot's report is masked like every phone shown
    assert "call: planned" in calling and "polling its job: next 2026-11-26T09:0" in calling


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("noAnswer", [1]), ("not_reached", [1]), ("called", [0]), ("longCallWithResult", [0]), ("canceled", [2]),
     ("calling", [3]), ("planned", [3]), ("nonexistentNumber", [])],
)  # fmt: skip
def test_leads_list_filters_by_outcome(followed, outcome, expected):
    services, leads = followed

    output = cli(services, "leads", "list", "--outcome", outcome)

    listed = [lead.id for lead in leads if lead.id in output]
    assert listed == [leads[i].id for i in expected]
    assert f"outcome {outcome}" in output.splitlines()[-1]


def test_leads_list_refuses_an_outcome_that_does_not_exist(followed):
    from app import create_app

    services, _ = followed
    result = create_app(services=services).test_cli_runner().invoke(args=["leads", "list", "--outcome", "answered"])
    assert result.exit_code == 2 and "noAnswer" in result.output


def test_the_funnel_shows_calls_as_they_land(followed):
    services, _ = followed

    table = cli(services, "leads", "stats")
    document = json.loads(cli(services, "leads", "stats", "--json"))

    header = table.splitlines()[2].split()
    assert header[:9] == ["leads", "received", "duplicate", "rejected", "sent", "calling", "called", "not_reached",
                          "canceled"]  # fmt: skip
    total = document["total"]
    assert [total[name] for name in ("sent", "calling", "called", "not_reached", "canceled")] == [4, 1, 1, 1, 1]


def test_outcomes_and_getreport_requests_are_counted(followed, prometheus, aimylogic):
    assert value(prometheus, "crm2calls_call_outcomes_total", campaign="default", outcome="longCallWithResult") == 1
    assert value(prometheus, "crm2calls_call_outcomes_total", campaign="default", outcome="noAnswer") == 1
    assert value(prometheus, "crm2calls_call_outcomes_total", campaign="default", outcome="canceled") == 1
    asked = value(prometheus, "crm2calls_getreport_requests_total", campaign="default", result="ok")
    assert asked == aimylogic.count("getReport") > 0
    assert value(prometheus, "crm2calls_aimylogic_request_seconds_count", op="getReport", result="ok") == asked
    # the first poll (a minute after the send) found two calls over already: they never were `calling`
    assert value(prometheus, "crm2calls_lead_transitions_total", source="generic", status="calling") == 2


def test_a_failed_getreport_counts_under_its_result(make_services, aimylogic, clock, prometheus):
    from tests.conftest import TOKEN

    services = make_services(aimylogic_token=TOKEN, aimylogic_url=aimylogic.url, dry_run=False)
    send(services, 1)
    aimylogic.fail_next(503, only="getReport")
    run_minutes(services, clock, 1)
    assert value(prometheus, "crm2calls_getreport_requests_total", campaign="default", result="unavailable") == 1


def test_outcome_metrics_as_emf_lines():
    lines: list[str] = []
    sink = metrics.EmfSink("crm2calls-dev", write=lines.append)
    previous = metrics.use(sink)
    try:
        with metrics.batch():
            metrics.call_outcome("default", "noAnswer")
            metrics.call_outcome("default", "noAnswer")
            metrics.report_request("default", "ok")
    finally:
        metrics.use(previous)

    bodies = [assert_emf_line(line) for line in lines]
    outcome = next(body for body in bodies if "crm2calls_call_outcomes_total" in body)
    assert (outcome["campaign"], outcome["outcome"], outcome["crm2calls_call_outcomes_total"]) == ("default",
                                                                                                   "noAnswer", 2)
    directive = outcome["_aws"]["CloudWatchMetrics"][0]
    assert ["service", "outcome"] in directive["Dimensions"]
    request = next(body for body in bodies if "crm2calls_getreport_requests_total" in body)
    assert request["result"] == "ok" and request["crm2calls_getreport_requests_total"] == 1


def test_a_lead_status_for_each_outcome_column():
    from crm2calls.stats import CALL_COUNTS

    assert {Status(name) for name in CALL_COUNTS} == {Status.CALLING, Status.CALLED, Status.NOT_REACHED,
                                                      Status.CANCELED}  # fmt: skip
