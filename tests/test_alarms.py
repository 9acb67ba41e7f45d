"""`flask --app app aws alarms`: CloudWatch alarms that botocore accepts, on the metrics the EMF lines really carry.

--create runs against moto's server on 127.0.0.1 with a real boto3 client.
"""

from __future__ import annotations

import json

import pytest
from botocore.session import get_session
from botocore.validate import ParamValidator

from crm2calls import metrics
from tests.servers import aws_env, moto_endpoint  # noqa: F401 - fixtures
from tests.test_metrics import assert_emf_line

FUNCTION = "crm2calls-production"


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def printed(runner, *extra: str) -> list[dict]:
    result = runner.invoke(args=["aws", "alarms", "--function", FUNCTION, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_definition_is_valid_putmetricalarm_input(runner):
    shape = get_session().get_service_model("cloudwatch").operation_model("PutMetricAlarm").input_shape
    definitions = printed(runner)
    assert len(definitions) == 4
    for definition in definitions:
        report = ParamValidator().validate(definition, shape)
        assert not report.has_errors(), report.generate_report()
        assert definition["AlarmName"].startswith(f"{FUNCTION}-")
        assert definition["ActionsEnabled"] is False and "AlarmActions" not in definition  # no topic given


def test_the_oldest_waiting_alarm_treats_silence_as_breaching(runner):
    by_name = {d["AlarmName"].removeprefix(f"{FUNCTION}-"): d for d in printed(runner)}
    assert set(by_name) == {"oldest-waiting-lead", "lead-failed", "campaign-held", "lambda-errors"}
    oldest = by_name["oldest-waiting-lead"]
    assert (oldest["Threshold"], oldest["ComparisonOperator"], oldest["Statistic"]) == (
        600.0, "GreaterThanThreshold", "Maximum"
    )
    assert oldest["TreatMissingData"] == "breaching"
    failed = by_name["lead-failed"]
    assert failed["Period"] * failed["EvaluationPeriods"] == 3600 and failed["DatapointsToAlarm"] == 1
    errors = by_name["lambda-errors"]
    assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": FUNCTION}]


def test_each_crm2calls_alarm_watches_a_metric_and_dimensions_the_emf_lines_carry(runner):
    lines: list[str] = []
    previous = metrics.use(metrics.EmfSink(FUNCTION, write=lines.append))
    try:
        metrics.oldest_waiting("default", 700)
        metrics.lead_entered("amocrm", "failed")
        metrics.campaign_held("default", True)
    finally:
        metrics.use(previous)
    # What CloudWatch extracts: (namespace, metric, {dimension: value}) for every dimension set.
    extracted = set()
    for line in lines:
        body = assert_emf_line(line)
        for directive in body["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                for definition in directive["Metrics"]:
                    dims = frozenset((name, body[name]) for name in dimension_set)
                    extracted.add((directive["Namespace"], definition["Name"], dims))
    for alarm in printed(runner):
        if alarm["Namespace"] == "AWS/Lambda":
            continue
        dims = frozenset((d["Name"], d["Value"]) for d in alarm["Dimensions"])
        wanted = (alarm["Namespace"], alarm["MetricName"], dims)
        assert wanted in extracted, alarm["AlarmName"]


@pytest.mark.parametrize("topic", ["not-an-arn", "arn:aws:sqs:eu-central-1:123456789012:queue", "arn:aws:sns:eu:1:t"])
def test_a_wrong_topic_is_named(runner, topic):
    result = runner.invoke(args=["aws", "alarms", "--function", FUNCTION, "--sns-topic", topic])
    assert result.exit_code == 2
    assert "--sns-topic" in result.output and "arn:aws:sns:REGION:ACCOUNT:NAME" in result.output


def test_create_puts_the_alarms_with_the_topic_and_is_repeatable(runner, aws_env):  # noqa: F811
    import boto3

    session = boto3.session.Session()
    topic = session.client("sns").create_topic(Name="crm2calls-alarms")["TopicArn"]
    for _ in range(2):  # a second run updates the same alarms
        result = runner.invoke(args=["aws", "alarms", "--function", FUNCTION, "--sns-topic", topic, "--create"])
        assert result.exit_code == 0, result.output
        assert result.output.count("created or updated alarm") == 4
    described = session.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"{FUNCTION}-")["MetricAlarms"]
    assert len(described) == 4
    by_name = {alarm["AlarmName"]: alarm for alarm in described}
    oldest = by_name[f"{FUNCTION}-oldest-waiting-lead"]
    assert oldest["TreatMissingData"] == "breaching" and oldest["Threshold"] == 600.0
    assert oldest["MetricName"] == "crm2calls_oldest_waiting_seconds" and oldest["Namespace"] == "crm2calls"
    for alarm in described:
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic] and alarm["ActionsEnabled"]
    session.client("cloudwatch").delete_alarms(AlarmNames=list(by_name))
