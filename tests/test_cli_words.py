"""The commands a newcomer types first: one-line errors that name the option, answers that follow the question."""

from __future__ import annotations

import json

import pytest

from crm2calls.errors import UnusableLeadError
from crm2calls.model import PhoneCandidate, Status
from crm2calls.phones import pick_phone
from tests.conftest import FIXTURES, SECRET


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def dialer(make_services):
    """A CLI runner whose campaign token is set (no Aimylogic behind it: these calls must not get that far)."""
    from app import create_app

    services = make_services(aimylogic_token="8231.7056.x", aimylogic_url="http://127.0.0.1:9")
    return create_app(services=services).test_cli_runner()


def one_line_error(result) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("phone", ["12345", "not a number", "+7 000 123 45 67"])
def test_dialer_test_refuses_a_number_it_cannot_call_in_one_line(dialer, phone):
    line = one_line_error(dialer.invoke(args=["dialer", "test", phone]))
    assert line.startswith("Error: PHONE: ") and "+79123456789" in line


@pytest.mark.parametrize("payload", ["[1]", '"text"', "42", "null"])
def test_dialer_test_wants_a_json_object_as_payload_in_one_line(dialer, payload):
    line = one_line_error(dialer.invoke(args=["dialer", "test", "+79123456789", "--payload", payload]))
    assert line.startswith("Error: --payload: give a JSON object")


def add(client, url: str, body: bytes, content_type: str = "application/json") -> None:
    assert client.post(url, data=body, content_type=content_type).status_code in (200, 202)


def test_leads_list_totals_follow_the_filters(client, runner):
    leads = [{"id": "a", "phone": "+79123456789"}, {"id": "b"}, {"id": "c", "phone": "+79123456780"}]
    add(client, f"/webhooks/generic?key={SECRET}", json.dumps(leads).encode())
    add(client, f"/webhooks/bitrix24?key={SECRET}", (FIXTURES / "bitrix24" / "lead_add.form").read_bytes(),
        "application/x-www-form-urlencoded")  # fmt: skip
    result = runner.invoke(args=["leads", "list", "--source", "bitrix24"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "totals (source bitrix24): received 1"
    result = runner.invoke(args=["leads", "list", "--status", "pending"])
    assert result.output.strip().splitlines()[-1] == "totals (status pending): pending 2"
    result = runner.invoke(args=["leads", "list"])
    assert result.output.strip().splitlines()[-1] == "totals: pending 2, received 1, rejected 1"


def test_leads_list_shows_the_whole_last_error_with_its_fix(client, runner, services):
    add(client, f"/webhooks/generic?key={SECRET}", b'{"id": "a", "phone": "+79123456789"}')
    [record] = services.store.list(limit=10)
    record.status = Status.FAILED
    record.last_error = (
        "Bitrix24 API settings are MISSING: set BITRIX24_WEBHOOK_URL (an inbound webhook URL with the crm scope)"
    )
    services.store.update(record, owner=None)
    output = runner.invoke(args=["leads", "list"]).output
    assert record.last_error in output


@pytest.mark.parametrize(
    "args",
    [["leads", "list", "--since", "2x"], ["leads", "reconcile", "--source", "amocrm", "--since", "2x"]],
)
def test_a_bad_age_names_its_option(runner, args):
    result = runner.invoke(args=args)
    assert result.exit_code == 2
    assert "Invalid value for --since: '2x': use a number and a unit: 30d, 12h or 90m" in result.output


def test_a_bad_purge_age_names_its_option(runner):
    result = runner.invoke(args=["leads", "purge", "--older-than", "2x"])
    assert result.exit_code == 2 and "Invalid value for --older-than: '2x'" in result.output


TABLE_ARN = "arn:aws:dynamodb:eu-central-1:123456789012:table/crm2calls-production-leads"
FUNCTION_ARN = "arn:aws:lambda:eu-central-1:123456789012:function:crm2calls-production"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--table", "my table!"], "Error: --table: 'my table!' is neither a DynamoDB table name nor its ARN"),
        (["--table", "arn:aws:s3:::my-bucket"], "Error: --table: 'arn:aws:s3:::my-bucket' is neither"),
        (["--table", "crm2calls-production-leads"], "Error: --table: give the table's ARN, or --function's ARN"),
        (["--table", TABLE_ARN, "--function", "crm2calls-production"], "Error: --function: 'crm2calls-production' is"),
    ],
)
def test_aws_policy_refuses_what_is_neither_a_name_nor_an_arn(runner, args, expected):
    line = one_line_error(runner.invoke(args=["aws", "policy", *args]))
    assert line.startswith(expected), line


@pytest.mark.parametrize("table", [TABLE_ARN, "crm2calls-production-leads"])
def test_aws_policy_takes_the_table_by_arn_or_by_name_beside_the_function(runner, table):
    result = runner.invoke(args=["aws", "policy", "--table", table, "--function", FUNCTION_ARN])
    assert result.exit_code == 0, result.output
    [table_statement, *_] = json.loads(result.output)["Statement"]
    assert table_statement["Resource"][0] == TABLE_ARN


def test_a_value_without_digits_does_not_stutter():
    with pytest.raises(UnusableLeadError) as caught:
        pick_phone([PhoneCandidate("call me"), PhoneCandidate("12")], "RU", ("any",))
    assert caught.value.reason == "no valid number (a value with no digits; **: too short)"
