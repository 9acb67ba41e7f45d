"""Following each sent lead's job to its end through callJob/getReport (the follow-up task "poll").

Leads come grouped by campaign and asked for many at a time (CHUNK ids a request), each only when a change
is due (next_poll): within a minute while the job is being dialled or waits for a redial, or while its
calling window is open in the lead's zone; within 15 minutes otherwise; never after finishDateTime plus
GRACE. A job known only in part (the send got fewer job ids than entries, or none) is found by its phone,
and known by its id from then on. The lead's status follows the job through crm2calls/lifecycle.py.
A dry run's dialer has no getReport (it creates no job): leads sent for real wait, asked again hourly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from crm2calls import campaigns, lifecycle, metrics
from crm2calls.aimylogic import result_label
from crm2calls.errors import AuthError, ConfigError, OutboundError, UnavailableError
from crm2calls.followup import FollowUpPass
from crm2calls.lifecycle import FINAL_JOB_STATUSES
from crm2calls.model import LeadRecord
from crm2calls.zones import next_window_opening

log = logging.getLogger("crm2calls.outcomes")

CHUNK = 100  # ids (or phones) per getReport request: a few kilobytes each way; the API's own limit is UNKNOWN
# Passes run once a minute (the Lambda schedule, the worker's poll): due 5 s early, the next minute's pass
# takes the lead whatever its jitter, so a change is seen within a minute, not two.
FAST = timedelta(seconds=55)
SLOW = timedelta(minutes=15) - timedelta(seconds=5)
# After finishDateTime Aimylogic starts no new attempt, but an attempt begun just before it runs its length
# (minutes), and the platform then settles the job (notDone for one never dialled): an hour covers both with
# room to spare, and costs four slow polls. A job still not final then is never going to be: parked.
GRACE = timedelta(hours=1)
ACTIVE = frozenset({"inProcess", "onRetry"})  # being dialled, or a redial is coming: a change is near
MISSING_LIMIT = 3  # polls in a row whose answer lacks the job: then it is parked (Aimylogic does not know it)
MISSING_RETRY = timedelta(minutes=5)
BACKOFF_BASE = timedelta(minutes=1)  # getReport failed: 1, 2, 4, ... minutes, at most BACKOFF_CAP
BACKOFF_CAP = timedelta(minutes=15)
NO_DIALER_RETRY = timedelta(hours=1)  # no token for the campaign, or a dry run: look again in an hour


def poll_deadline(entry: dict[str, Any]) -> datetime | None:
    """The last moment worth polling the entry's job: finishDateTime plus GRACE (None: the entry has no end)."""
    finish = entry.get("finishDateTime")
    return datetime.fromisoformat(finish) + GRACE if finish else None


def next_poll(job_status: str | None, entry: dict[str, Any], now: datetime) -> datetime | None:
    """When to ask for the job's report next; None: never again (it is final, or past poll_deadline).

    job_status None: nothing is known yet (just sent, or the report was missing).
    """
    if job_status in FINAL_JOB_STATUSES:
        return None
    deadline = poll_deadline(entry)
    if deadline is not None and now >= deadline:
        return None
    if job_status in ACTIVE:
        due = now + FAST
    else:
        start = datetime.fromisoformat(entry["startDateTime"]) if entry.get("startDateTime") else now
        opens = next_window_opening(entry, max(now, start))
        if opens is not None and opens <= now:
            due = now + FAST
        elif opens is not None:
            due = min(now + SLOW, opens)  # the first minute of the window is seen like any other
        else:
            due = now + SLOW  # a window that never opens: Aimylogic will end the job; look now and then
    return due if deadline is None else min(due, deadline)


def outcome_of(report: dict[str, Any]) -> dict[str, Any]:
    """A getReport object as LeadRecord.outcome keeps it."""
    tag = {"name": report["tagName"], "payload": report.get("tagPayload")} if report.get("tagName") else None
    return {
        "job_status": report.get("jobStatus"),
        "call_result": report.get("callResult"),
        "attempts": int(report.get("attemptsCount") or 0),
        "duration_s": int(report.get("callDuration") or 0),
        "started_at": _iso(report.get("startedAt")),
        "finished_at": _iso(report.get("finishedAt")),
        "report": report.get("reportData"),
        "tag": tag,
    }


def _iso(millis: Any) -> str | None:
    if not isinstance(millis, (int, float)) or isinstance(millis, bool):
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat()


def report_phone(phone: Any) -> str:
    """A phone as Aimylogic's reports give it: digits, a Russian 8... as 7... (aimylogic-calls-api.md a.10)."""
    digits = "".join(ch for ch in str(phone) if ch.isdigit())
    return "7" + digits[1:] if len(digits) == 11 and digits.startswith("8") else digits


def exact_job(record: LeadRecord) -> bool:
    """Is the lead's job id its own? Not when the send got fewer ids than entries (a comma list) or none."""
    return bool(record.job_id) and "," not in (record.job_id or "")


def poll_jobs(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """The "poll" task: ask Aimylogic for these leads' jobs, a campaign at a time, and follow each one."""
    by_campaign: dict[str, list[LeadRecord]] = {}
    for record in leads:
        by_campaign.setdefault(record.campaign, []).append(record)
    for campaign, records in by_campaign.items():
        if run.out_of_time():
            return  # the rest keep their leases' time and their work: the next pass takes them
        _CampaignPoll(run, campaign).poll(records)


def _chunks(records: list[LeadRecord]) -> Iterator[list[LeadRecord]]:
    for start in range(0, len(records), CHUNK):
        yield records[start : start + CHUNK]


class _CampaignPoll:
    """One campaign's leads in one pass: its token checked once, its jobs asked in chunks."""

    def __init__(self, run: FollowUpPass, campaign: str):
        self.run, self.campaign = run, campaign
        self.services, self.owner = run.services, run.owner
        self.refused = False  # the campaign's token was refused before: a success says it works again

    def now(self) -> datetime:
        return self.services.clock()

    def poll(self, records: list[LeadRecord]) -> None:
        """Ask for every lead's job and follow it, or say why it waits."""
        services = self.services
        try:
            dialer = services.dialer_for(self.campaign)
        except ConfigError as exc:
            self._wait_all(records, self.now() + NO_DIALER_RETRY, "; ".join(exc.problems))
            return
        ask = getattr(dialer, "get_report", None)
        if ask is None:  # a dry run: no job exists to ask about; a process with a token polls it
            self._wait_all(records, self.now() + NO_DIALER_RETRY, "a dry run asks Aimylogic nothing")
            return
        state = campaigns.state(services, self.campaign)
        self.refused = state.get("delivery") == campaigns.TOKEN_REFUSED
        if self.refused and state.get("retry_at") and self.now() < datetime.fromisoformat(state["retry_at"]):
            self._wait_all(records, datetime.fromisoformat(state["retry_at"]), state.get("reason") or "token refused")
            return
        fingerprint = getattr(dialer, "fingerprint", None)
        by_id, by_phone = [], []
        for record in records:
            if record.job_token and fingerprint and record.job_token != fingerprint:
                reason = (
                    f"campaign {self.campaign}'s token was replaced after token {record.job_token} placed job "
                    f"{record.job_id}; the new token cannot read its report"
                )
                self._saved(lifecycle.stop_polling(services, record, self.now(), reason, self.owner), record)
            elif record.entry is None:
                self._saved(lifecycle.stop_polling(services, record, self.now(), "it has no entry", self.owner), record)
            else:
                (by_id if exact_job(record) else by_phone).append(record)
        if self._ask(ask, "ids", by_id, by_phone):
            self._ask(ask, "phones", by_phone, [])

    def _ask(self, ask: Any, kind: str, records: list[LeadRecord], by_phone: list[LeadRecord]) -> bool:
        """Request chunk after chunk; False when a failure held the rest (they are written already)."""
        chunks = list(_chunks(records))
        for number, chunk in enumerate(chunks):
            if self.run.out_of_time():
                return False
            held = self.run.renew(chunk)
            for record in chunk:
                if record.id not in held:
                    _lease_lost(record)
            chunk = [record for record in chunk if record.id in held]
            if not chunk:
                continue
            values = [r.job_id for r in chunk] if kind == "ids" else [_phone(r) for r in chunk]
            try:
                reports = ask(**{kind: values})
            except OutboundError as exc:
                metrics.report_request(self.campaign, result_label(exc))
                self._failed([*chunk, *(r for later in chunks[number + 1 :] for r in later), *by_phone], exc)
                return False
            metrics.report_request(self.campaign, "ok")
            if self.refused:
                campaigns.accepted(self.services, self.campaign)
                self.refused = False
            if kind == "ids":
                by_phone.extend(self._by_id(chunk, reports))
            else:
                self._by_phone(chunk, reports)
        return True

    def _by_id(self, chunk: list[LeadRecord], reports: list[dict[str, Any]]) -> list[LeadRecord]:
        """Follow each lead by its job's report; return the leads whose id proved not theirs (another phone)."""
        found = {report.get("callJobId"): report for report in reports}
        mismatched = []
        for record in chunk:
            report = found.get(record.job_id)
            if report is None:
                self._missing(record, f"job {record.job_id}")
            elif report.get("phone") and report_phone(report["phone"]) != _phone(record):
                mismatched.append(record)  # one id handed to several leads of a batch: find it by phone
            else:
                self._follow(record, report, None)
        return mismatched

    def _by_phone(self, chunk: list[LeadRecord], reports: list[dict[str, Any]]) -> None:
        by_phone: dict[str, list[dict[str, Any]]] = {}
        for report in reports:
            by_phone.setdefault(report_phone(report.get("phone", "")), []).append(report)
        for record in chunk:
            report = _pick(record, by_phone.get(_phone(record), []))
            if report is None:
                self._missing(record, f"its phone {record.phone_masked}")
            else:
                self._follow(record, report, str(report.get("callJobId")))

    def _follow(self, record: LeadRecord, report: dict[str, Any], matched: str | None) -> None:
        now = self.now()
        outcome = outcome_of(report)
        entry = json.loads(record.entry or "{}")
        due = next_poll(outcome["job_status"], entry, now)
        stop = None
        if due is None and outcome["job_status"] not in FINAL_JOB_STATUSES:
            stop = _never_ended(record, outcome["job_status"], entry)
        saved = lifecycle.follow_job(
            self.services, record, outcome, now, self.owner, due, matched_job=matched, stop_reason=stop
        )
        self._saved(saved, record)

    def _missing(self, record: LeadRecord, what: str) -> None:
        """Aimylogic answered without this lead's job: ask again a few times, then park it."""
        now = self.now()
        item = record.work.get("poll")
        attempts = (item.attempts if item else 0) + 1
        entry = json.loads(record.entry or "{}")
        if attempts >= MISSING_LIMIT:
            reason = f"Aimylogic has no report for {what} in campaign {self.campaign} (asked {attempts} times)"
            saved = lifecycle.stop_polling(self.services, record, now, reason, self.owner)
        elif next_poll(None, entry, now) is None:
            saved = lifecycle.stop_polling(self.services, record, now, _never_ended(record, None, entry), self.owner)
        else:
            due = now + MISSING_RETRY
            saved = lifecycle.poll_later(self.services, record, now, due, f"no report for {what} yet", owner=self.owner,
                                         attempts=attempts)  # fmt: skip
        self._saved(saved, record)

    def _failed(self, records: list[LeadRecord], exc: OutboundError) -> None:
        """getReport failed: a refused token holds the campaign's polls like its delivery; else back off."""
        now = self.now()
        if isinstance(exc, AuthError):
            doc = campaigns.token_refused(self.services, self.campaign, exc, now)
            self._wait_all(records, datetime.fromisoformat(doc["retry_at"]), exc.message)
            return
        log.warning(
            "campaign %s: getReport failed for %d leads: %s", self.campaign, len(records), exc.message,
            extra={"fields": {"event": "get_report_failed", "campaign": self.campaign, "leads": len(records)}},
        )  # fmt: skip
        for record in records:
            item = record.work.get("poll")
            attempts = (item.attempts if item else 0) + 1
            entry = json.loads(record.entry or "{}")
            deadline = poll_deadline(entry)
            if deadline is not None and now >= deadline:
                reason = f"its report could not be read by {deadline:%Y-%m-%d %H:%M} UTC ({exc.message})"
                self._saved(lifecycle.stop_polling(self.services, record, now, reason, self.owner), record)
                continue
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
            if isinstance(exc, UnavailableError) and exc.retry_after:
                delay = max(delay, timedelta(seconds=exc.retry_after))
            due = now + delay if deadline is None else min(now + delay, deadline)
            self._saved(
                lifecycle.poll_later(self.services, record, now, due, exc.message, owner=self.owner, attempts=attempts),
                record,
            )

    def _wait_all(self, records: list[LeadRecord], until: datetime, reason: str) -> None:
        """No request for these now (no token, a dry run, a refused token): poll again at `until`, nothing spent."""
        now = self.now()
        for record in records:
            self._saved(lifecycle.poll_later(self.services, record, now, until, reason, owner=self.owner), record)

    def _saved(self, saved: bool, record: LeadRecord) -> None:
        if not saved:
            _lease_lost(record)


def _never_ended(record: LeadRecord, job_status: str | None, entry: dict[str, Any]) -> str:
    seen = f"still {job_status}" if job_status else "never reported"
    return (
        f"job {record.job_id} was {seen} {GRACE.total_seconds() / 3600:g} h after its calling window closed "
        f"at {entry.get('finishDateTime')}: Aimylogic will not call it any more"
    )


def _pick(record: LeadRecord, reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report of this lead's job among its phone's: the first job created since the lead was sent (older
    ones belong to earlier leads of the number, later ones to later leads), one of the ids its send got first."""
    sent = _sent_at(record)
    if sent is not None:
        since = (sent - timedelta(minutes=1)).timestamp() * 1000  # a minute for clocks that disagree
        reports = [report for report in reports if (report.get("createdAt") or since) >= since]
    known = set((record.job_id or "").split(","))
    return min(
        reports,
        key=lambda report: (str(report.get("callJobId")) not in known, report.get("createdAt") or 0),
        default=None,
    )


def _sent_at(record: LeadRecord) -> datetime | None:
    for step in record.history:
        if step.get("status") == "sent":
            return datetime.fromisoformat(step["at"])
    return None


def _phone(record: LeadRecord) -> str:
    return report_phone(json.loads(record.entry or "{}").get("phone", ""))


def _lease_lost(record: LeadRecord) -> None:
    log.warning(
        "lead %s: another follow-up pass took it during a slow report; its write is left to that pass", record.id,
        extra={"fields": {"event": "lease_lost", "lead_id": record.id}},
    )  # fmt: skip
