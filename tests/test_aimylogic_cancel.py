"""AimylogicClient.cancel against the emulator's callJob/cancel: ids, phones, answers, errors, the token kept secret."""

from __future__ import annotations

import json

import pytest

from crm2calls.aimylogic import AimylogicClient
from crm2calls.errors import AuthError, RejectedError, UnavailableError
from tests.conftest import FIXTURES, TOKEN

ENTRY = json.loads((FIXTURES / "aimylogic" / "entry.json").read_text())


@pytest.fixture
def client(aimylogic, clock):
    return AimylogicClient(aimylogic.url, TOKEN, clock=clock)


def placed(client, *phones: str) -> list[str]:
    return client.add_phones([{**ENTRY, "phone": phone} for phone in phones])


def test_cancel_by_ids_answers_the_ids_cancelled_and_leaves_the_others(client, aimylogic):
    first, second, third = placed(client, "79123456701", "79123456702", "79123456703")
    aimylogic.finish_job(third)
    assert client.cancel(ids=[first, third]) == [first]
    assert aimylogic.cancels == [{"token": TOKEN, "ids": [first, third], "phones": [], "answer": [first]}]
    assert client.cancel(ids=[first]) == []  # cancelled already
    assert aimylogic.cancelled_ids() == [first] and second not in aimylogic.cancelled_ids()


def test_cancel_by_phones(client, aimylogic):
    [job] = placed(client, "79123456704")
    assert client.cancel(phones=["79123456704"]) == [job]
    assert aimylogic.cancels[-1]["phones"] == ["79123456704"]


@pytest.mark.parametrize("shape", ["object", "empty"])
def test_an_answer_that_is_not_a_list_of_ids_is_none(client, aimylogic, shape):
    [job] = placed(client, "79123456705")
    aimylogic.cancel_answer = shape
    assert client.cancel(ids=[job]) is None


def test_errors_are_typed_and_never_carry_the_token(client, aimylogic):
    aimylogic.fail_next(503, retry_after=30, only="callJob/cancel")
    with pytest.raises(UnavailableError) as unavailable:
        client.cancel(ids=["1"])
    assert unavailable.value.retry_after == 30 and "cancel: HTTP 503" in unavailable.value.message
    aimylogic.fail_next(400, body=f"bad ids for {TOKEN}", only="callJob/cancel")
    with pytest.raises(RejectedError) as rejected:
        client.cancel(ids=["1"])
    assert TOKEN not in str(rejected.value) and "***" in str(rejected.value)
    with pytest.raises(AuthError) as refused:
        AimylogicClient(aimylogic.url, "1.2.wrong").cancel(ids=["1"])
    assert "1.2.wrong" not in str(refused.value)
