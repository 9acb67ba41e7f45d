"""The polling schedule (outcomes.next_poll) and the window it reads (zones.next_window_opening), rule by rule."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from crm2calls.lifecycle import FINAL_JOB_STATUSES, JOB_STATUSES
from crm2calls.model import Status
from crm2calls.outcomes import FAST, GRACE, SLOW, next_poll, outcome_of, poll_deadline, report_phone
from crm2calls.zones import next_window_opening
from tests.conftest import FIXTURES

# Thursday 2026-11-26; the fixture's window: mon 10:00-11:30 and 13:00-14:30, other days but sunday
# 10:00-18:00, at +03:00; start 2026-11-26T09:00Z, finish 2026-11-29T09:00Z.
ENTRY = json.loads((FIXTURES / "aimylogic" / "entry.json").read_text())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def entry(**changes) -> dict:
    return {**copy.deepcopy(ENTRY), **changes}


@pytest.mark.parametrize(
    ("moment", "changes", "expected"),
    [
        ("2026-11-26T12:00+03:00", {}, "2026-11-26T12:00+03:00"),  # open: now
        ("2026-11-26T09:59+03:00", {}, "2026-11-26T10:00+03:00"),  # opens in a minute
        ("2026-11-26T18:00+03:00", {}, "2026-11-27T10:00+03:00"),  # the end is not in the window
        ("2026-11-28T19:00+03:00", {}, "2026-11-30T10:00+03:00"),  # saturday night: no sunday, monday's own hours
        ("2026-11-30T12:00+03:00", {}, "2026-11-30T13:00+03:00"),  # monday's gap between its two spans
        ("2026-11-26T12:00+03:00", {"gmtZone": "America/New_York"}, "2026-11-26T10:00-05:00"),  # 04:00 there
        ("2026-11-26T12:00+03:00", {"allowedDays": ["fri"]}, "2026-11-27T10:00+03:00"),
        ("2026-11-26T12:00+03:00", {"allowedTime": None, "allowedDays": None}, "2026-11-26T12:00+03:00"),
    ],
)
def test_the_window_opens_in_the_leads_zone(moment, changes, expected):
    assert next_window_opening(entry(**changes), at(moment)) == at(expected)


def test_a_window_without_an_hour_never_opens():
    assert next_window_opening(entry(allowedDays=["sun"], allowedTime={"mon": []}), at("2026-11-26T12:00Z")) is None


OPEN = "2026-11-26T12:00+03:00"


@pytest.mark.parametrize("job_status", sorted(FINAL_JOB_STATUSES))
def test_a_final_job_is_never_polled_again(job_status):
    assert next_poll(job_status, entry(), at(OPEN)) is None


@pytest.mark.parametrize("job_status", ["inProcess", "onRetry"])
@pytest.mark.parametrize("moment", [OPEN, "2026-11-26T23:00+03:00"])
def test_a_job_being_dialled_or_awaiting_a_redial_is_polled_within_a_minute_window_or_not(job_status, moment):
    assert next_poll(job_status, entry(), at(moment)) == at(moment) + FAST


@pytest.mark.parametrize("job_status", ["planned", None, "someNewStatus"])
def test_a_planned_job_is_polled_within_a_minute_while_its_window_is_open(job_status):
    assert next_poll(job_status, entry(), at(OPEN)) == at(OPEN) + FAST


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-11-26T23:00+03:00", "2026-11-26T23:00+03:00"),  # closed for hours: within 15 minutes
        ("2026-11-27T09:50+03:00", "2026-11-27T10:00+03:00"),  # closed, opens in 10 minutes: at the opening
    ],
)
def test_a_planned_job_is_polled_within_15_minutes_while_its_window_is_closed(moment, expected):
    due = next_poll("planned", entry(), at(moment))
    assert due == min(at(expected) + (SLOW if moment == expected else timedelta(0)), at(moment) + SLOW)
    assert FAST < due - at(moment) <= timedelta(minutes=15)


def test_before_its_start_a_job_is_polled_from_its_start_not_from_the_window():
    moment = at("2026-11-26T12:00+03:00")
    start = moment + timedelta(minutes=7)
    assert next_poll("planned", entry(startDateTime=start.isoformat()), moment) == start


def test_the_last_poll_is_at_finish_plus_grace_and_none_after():
    finish = at("2026-11-29T09:00Z")
    deadline = finish + GRACE
    assert poll_deadline(entry()) == deadline
    assert next_poll("onRetry", entry(), deadline - timedelta(seconds=10)) == deadline
    assert next_poll("planned", entry(), deadline - timedelta(seconds=10)) == deadline
    assert next_poll("onRetry", entry(), deadline) is None
    assert next_poll(None, entry(), deadline + timedelta(days=1)) is None


def test_each_job_status_has_its_lead_status():
    assert {status for status in JOB_STATUSES.values()} == {
        Status.CALLING, Status.CALLED, Status.NOT_REACHED, Status.CANCELED,
    }  # fmt: skip
    assert sorted(job for job, status in JOB_STATUSES.items() if status is Status.CALLING) == [
        "inProcess", "onRetry", "planned",
    ]  # fmt: skip


def test_a_report_becomes_the_leads_outcome():
    report = json.loads((FIXTURES / "aimylogic" / "report.json").read_text())

    assert outcome_of(report) == {
        "job_status": "longCallWithResult",
        "call_result": "OK",
        "attempts": 2,
        "duration_s": 47,
        "started_at": "2026-11-26T09:01:00+00:00",
        "finished_at": "2026-11-26T09:13:47+00:00",
        "report": {"interested": "yes", "callback": "tomorrow"},
        "tag": {"name": "hot", "payload": {"score": 9}},
    }
    assert outcome_of({"callJobId": "1", "jobStatus": "planned", "finishedAt": None})["finished_at"] is None


@pytest.mark.parametrize(("phone", "reported"), [("89120000001", "79120000001"), ("79120000001", "79120000001"),
                                                 ("16500000000", "16500000000"), (89120000001, "79120000001")])
def test_phones_compare_as_reports_give_them(phone, reported):
    assert report_phone(phone) == reported
