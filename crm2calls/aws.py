"""AWS set-up for the Lambda deployment: the DynamoDB table and the least-privilege IAM policy.

Behind `flask --app app aws create-table` and `flask --app app aws policy`. boto3 finds the
credentials, the region and any endpoint (AWS_ENDPOINT_URL) the usual way. zappa_settings.json
has Zappa use an existing role (manage_roles false): its own default grants s3:*, dynamodb:* and
more on every resource; docs/deploy-lambda.md creates the role from trust_policy() and lambda_policy().
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO


def table_arn(table: str, region: str, account: str) -> str:
    """The ARN of a DynamoDB table."""
    return f"arn:aws:dynamodb:{region}:{account}:table/{table}"


def function_arn(function: str, region: str, account: str) -> str:
    """The ARN of a Lambda function (Zappa names it PROJECT-STAGE, e.g. crm2calls-production)."""
    return f"arn:aws:lambda:{region}:{account}:function:{function}"


_TABLE_ARN = re.compile(r"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:\d{12}:table/[A-Za-z0-9_.-]{3,255}")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_FUNCTION_ARN = re.compile(r"arn:aws[a-z-]*:lambda:([a-z0-9-]+):(\d{12}):function:[A-Za-z0-9_-]{1,64}")


def resolve_table_arn(table: str, function: str | None) -> str:
    """The table's ARN from an ARN, or from a name and the function's ARN (same region and account).

    ValueError names the option and the form expected: a policy for a mistyped resource grants nothing.
    """
    found = _FUNCTION_ARN.fullmatch(function) if function else None
    if function and not found:
        raise ValueError(
            f"--function: {function!r} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
        )
    if _TABLE_ARN.fullmatch(table):
        return table
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(
            f"--table: {table!r} is neither a DynamoDB table name nor its ARN "
            "(arn:aws:dynamodb:REGION:ACCOUNT:table/NAME)"
        )
    if not found:
        raise ValueError(
            f"--table: give the table's ARN, or --function's ARN, whose region and account {table!r} shares"
        )
    return table_arn(table, found[1], found[2])


def create_table(table: str) -> dict[str, Any]:
    """Create the lead table if missing (on-demand, the `due` index, TTL on expires_at); describe it."""
    import boto3

    from crm2calls.store.dynamodb import DynamoDBStore

    DynamoDBStore(table).migrate()  # creates, waits until active, enables TTL, records the schema version
    client = boto3.session.Session().client("dynamodb")
    described = client.describe_table(TableName=table)["Table"]
    ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    return {
        "table": described["TableName"],
        "arn": described["TableArn"],
        "status": described["TableStatus"],
        "billing": described.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED"),
        "indexes": [index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])],
        "ttl": f"{ttl.get('AttributeName', '-')} ({ttl.get('TimeToLiveStatus', 'DISABLED')})",
    }


def lambda_policy(table: str, function: str | None = None) -> dict[str, Any]:
    """The IAM policy the function's role needs: its table, its own logs, and invoking itself (the async pass).

    `table` and `function` are ARNs; without the function only the table statement is given.
    """
    from crm2calls.store.dynamodb import iam_policy

    policy = iam_policy(table)
    if function is None:
        return policy
    _, _, _, region, account, _, name = function.split(":", 6)
    log_group = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{name}"
    policy["Statement"] += [
        {"Effect": "Allow", "Action": "logs:CreateLogGroup", "Resource": log_group},
        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": f"{log_group}:*"},
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": [function, f"{function}:*"]},
    ]
    return policy


def trust_policy() -> dict[str, Any]:
    """Who may assume the function's role: Lambda, and EventBridge, whose PutRule insists on it (Zappa's schedule)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["lambda.amazonaws.com", "events.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def print_policy(table: str, function: str | None = None, file: TextIO | None = None) -> None:
    """Print lambda_policy() as JSON, ready for `aws iam put-role-policy` or Zappa's attach_policy."""
    print(json.dumps(lambda_policy(table, function), indent=2), file=file or sys.stdout)


def alarms(function: str, sns_topic: str | None = None) -> list[dict[str, Any]]:
    """CloudWatch alarms on the function's metrics (EMF, namespace crm2calls) and its errors, as PutMetricAlarm input.

    `function` is the Lambda function's name, the `service` dimension of every crm2calls metric.
    """
    from crm2calls import metrics

    service = [{"Name": "service", "Value": function}]
    common: dict[str, Any] = {"Period": 300, "ComparisonOperator": "GreaterThanThreshold"}
    common["ActionsEnabled"] = bool(sns_topic)
    if sns_topic:
        common |= {"AlarmActions": [sns_topic], "OKActions": [sns_topic]}
    return [
        {
            "AlarmName": f"{function}-oldest-waiting-lead",
            "AlarmDescription": "A lead has waited over 10 minutes to be sent, or nothing reports the queue "
            "(the delivery schedule stopped). docs/metrics.md says what to check.",
            "Namespace": metrics.NAMESPACE,
            "MetricName": metrics.OLDEST_WAITING.name,
            "Dimensions": service,
            "Statistic": "Maximum",
            "EvaluationPeriods": 1,
            "Threshold": 600.0,
            "TreatMissingData": "breaching",  # a dead schedule stops emitting: silence is an alarm too
            **common,
        },
        {
            "AlarmName": f"{function}-lead-failed",
            "AlarmDescription": "A lead failed in the last hour (gave up after its attempts or age limit): "
            "`flask --app app leads list --status failed`, then `leads retry`.",
            "Namespace": metrics.NAMESPACE,
            "MetricName": metrics.LEAD_TRANSITIONS.name,
            "Dimensions": [*service, {"Name": "status", "Value": "failed"}],
            "Statistic": "Sum",
            "EvaluationPeriods": 12,  # any of the last twelve 5-minute periods: the last hour
            "DatapointsToAlarm": 1,
            "Threshold": 0.0,
            "TreatMissingData": "notBreaching",
            **common,
        },
        {
            "AlarmName": f"{function}-campaign-held",
            "AlarmDescription": "A campaign's delivery is held (paused, token refused or a spend guard): "
            "GET /healthz says why.",
            "Namespace": metrics.NAMESPACE,
            "MetricName": metrics.CAMPAIGN_HELD.name,
            "Dimensions": service,
            "Statistic": "Maximum",
            "EvaluationPeriods": 1,
            "Threshold": 0.0,
            "TreatMissingData": "notBreaching",
            **common,
        },
        {
            "AlarmName": f"{function}-lambda-errors",
            "AlarmDescription": "The function failed (an exception, a timeout, out of memory): see its log group.",
            "Namespace": "AWS/Lambda",
            "MetricName": "Errors",
            "Dimensions": [{"Name": "FunctionName", "Value": function}],
            "Statistic": "Sum",
            "EvaluationPeriods": 1,
            "Threshold": 0.0,
            "TreatMissingData": "notBreaching",
            **common,
        },
    ]


def create_alarms(definitions: list[dict[str, Any]]) -> list[str]:
    """Create or update each alarm (PutMetricAlarm replaces an alarm of the same name); return their names."""
    import boto3

    client = boto3.session.Session().client("cloudwatch")
    for definition in definitions:
        client.put_metric_alarm(**definition)
    return [definition["AlarmName"] for definition in definitions]
