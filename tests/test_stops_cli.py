"""The operator's stops: `leads cancel`, and `leads block` / `leads forget` cancelling the number's queued jobs.

Through Flask's CLI runner against the app of tests/test_stops.py (SQLite and DynamoDB, the Aimylogic emulator).
"""

from __future__ import annotations

from dataclasses import replace

from crm2calls.delivery import deliver_pending
from crm2calls.model import Status
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_stops import stand  # noqa: F401  (fixture)


def run(stand, *args: str):  # noqa: F811
    result = stand.app.test_cli_runner().invoke(args=["leads", *args])
    return result


def sent(stand, lead_id: str, phone: str) -> str:  # noqa: F811
    our_id = stand.lead(lead_id, phone)
    deliver_pending(stand.services)
    assert stand.get(our_id).status is Status.SENT
    return our_id


def test_cancel_by_id_of_a_lead_not_sent(stand):  # noqa: F811
    lead_id = stand.lead("c-1", "+79123456750")
    result = run(stand, "cancel", lead_id)
    assert result.exit_code == 0, result.output
    assert result.output == f"lead {lead_id}: canceled; it was never sent and will not be\n"
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and record.last_error == "canceled by an operator"


def test_cancel_by_source_and_ref_cancels_the_queued_job_now(stand):  # noqa: F811
    lead_id = sent(stand, "c-2", "+79123456751")
    job = stand.get(lead_id).job_id
    result = run(stand, "cancel", "--source", "generic", "--ref", "c-2", "--reason", "customer asked")
    assert result.exit_code == 0, result.output
    assert result.output == f"lead {lead_id}: canceled; Aimylogic cancelled job {job}\n"
    assert stand.aimylogic.cancelled_ids() == [job]
    record = stand.get(lead_id)
    assert record.status is Status.CANCELED and record.outcome["reason"] == "customer asked"


def test_a_cancel_that_fails_is_left_to_the_worker_and_shown_by_leads_show(stand):  # noqa: F811
    lead_id = sent(stand, "c-3", "+79123456752")
    stand.aimylogic.fail_next(503, only="callJob/cancel")
    result = run(stand, "cancel", lead_id)
    assert result.exit_code == 0
    assert f"lead {lead_id}: cancel failed (Aimylogic cancel: HTTP 503: scripted 503); the worker retries it" in (
        result.output
    )
    shown = run(stand, "show", lead_id).output
    assert "work: cancel due " in shown and "1 attempt(s); last error: Aimylogic cancel: HTTP 503" in shown


def test_cancel_names_what_is_missing(stand):  # noqa: F811
    assert "give a lead id, or --source and --ref" in run(stand, "cancel").output
    assert "give a lead id, or --source and --ref" in run(stand, "cancel", "--ref", "x").output
    assert run(stand, "cancel", "nope").output == "Error: no lead nope\n"
    missing = run(stand, "cancel", "--source", "generic", "--ref", "nope").output
    assert missing == "Error: no lead of generic record nope\n"


def test_a_lead_whose_call_ended_is_only_recorded(stand):  # noqa: F811
    lead_id = sent(stand, "c-4", "+79123456753")
    stand.aimylogic.finish_job(stand.get(lead_id).job_id)
    result = run(stand, "cancel", lead_id)
    assert "Aimylogic did not cancel job" in result.output and "its report tells how it ended" in result.output
    assert stand.get(lead_id).status is Status.SENT


def test_block_cancels_the_numbers_queued_jobs(stand):  # noqa: F811
    lead_id = sent(stand, "c-5", "+79123456754")
    other = sent(stand, "c-6", "+79123456755")
    result = run(stand, "block", "+7 912 345-67-54", "--note", "asked by phone")
    assert result.exit_code == 0, result.output
    job = stand.get(lead_id).job_id
    assert result.output.splitlines() == [
        "7912*****54 is on the do-not-call list", f"lead {lead_id}: canceled; Aimylogic cancelled job {job}"
    ]
    assert stand.aimylogic.cancelled_ids() == [job]
    assert stand.get(other).status is Status.SENT  # another number is untouched


def test_forget_keeps_only_the_job_id_until_aimylogic_confirms(stand):  # noqa: F811
    lead_id = sent(stand, "c-7", "+79123456756")
    pending = stand.lead("c-8", "+79123456756")  # a second lead of the number, not sent
    job = stand.get(lead_id).job_id
    stand.aimylogic.fail_next(503, only="callJob/cancel")

    result = run(stand, "forget", "+79123456756", "--yes")

    assert result.exit_code == 0, result.output
    assert "erased 1 lead(s) of 7912*****56" in result.output
    assert "1 queued job(s) keep their id and campaign, with no phone, until Aimylogic confirms" in result.output
    assert stand.get(pending) is None
    kept = stand.get(lead_id)
    assert (kept.phone_key, kept.phone_masked, kept.entry, kept.raw) == (None, None, None, None)
    assert "79123456756" not in repr(kept) and "7912*****56" not in repr(kept)
    assert kept.job_id == job and kept.work["cancel"].attempts == 1

    stand.services.clock.now = kept.work["cancel"].due
    from crm2calls.followup import follow_up

    follow_up(stand.services)
    done = stand.get(lead_id)
    assert done.status is Status.CANCELED and done.final and stand.aimylogic.cancelled_ids() == [job]


def test_forget_of_a_job_known_by_phone_only_erases_nothing_while_aimylogic_is_down(stand):  # noqa: F811
    lead_id = sent(stand, "c-9", "+79123456757")
    record = stand.get(lead_id)
    stand.services.store.update(replace(record, job_id=f"{record.job_id},5"), owner=None)  # a batch's ids
    stand.aimylogic.fail_next(503, only="callJob/cancel")
    result = run(stand, "forget", "+79123456757", "--yes")
    assert result.exit_code == 1
    assert "known by its phone only and Aimylogic did not take its cancel: nothing was erased" in result.output
    assert stand.get(lead_id).phone_key is not None
    result = run(stand, "forget", "+79123456757", "--yes")  # Aimylogic answers again
    assert result.exit_code == 0, result.output
    assert stand.aimylogic.cancels[-1]["phones"] == ["79123456757"]
    assert stand.get(lead_id) is None


def test_a_lead_a_worker_holds_is_not_stopped_behind_its_back_and_forget_erases_nothing(stand):  # noqa: F811
    services = stand.services
    lead_id = sent(stand, "c-10", "+79123456758")
    services.clock.advance(seconds=61)  # its poll is due: a follow-up pass takes it
    [held] = services.store.claim(Status.SENT, services.clock(), 300, 1, "follow-up:busy")

    result = run(stand, "cancel", lead_id)
    assert result.exit_code == 1
    assert result.output == (f"lead {lead_id}: not stopped: a worker holds it right now (sending or polling it): "
                             "run the command again in a few seconds\n")  # fmt: skip
    result = run(stand, "forget", "+79123456758", "--yes")
    assert result.exit_code == 1 and "is busy: nothing was erased" in result.output
    assert stand.get(lead_id).phone_key == held.phone_key and stand.get(lead_id).status is Status.SENT
