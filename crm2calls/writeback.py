"""Write-back: a call's outcome as one note on the CRM record the lead came from, durable and written once.

The follow-up pass hands this module the leads whose "write_back" item is due (planned by
lifecycle.plan_results when the call ended). Per lead: off for its source -> the item is dropped
with no request; else the attempt is counted in the store first, then, if an earlier attempt may
have reached the CRM (attempts before this one), the CRM is asked whether the note is there (every
note names its job: sources.base.job_mark), and only then written. The CRM's answer is recorded
before anything else (lifecycle.written_back).

Failures: an outage, a 429 or an expired token -> retried with backoff (Retry-After honoured) until
MAX_ATTEMPTS or MAX_AGE, then a dead letter (due None, the error kept; `leads replay`). A scope
refusal (403) holds every write-back of that CRM instead (one probe every SCOPE_PROBE, attempts
not spent) and /healthz says which scope to grant. One store document (WRITE_BACK_META) keeps,
per source, the hold and the number of dead letters, so /healthz counts them without a scan.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls import lifecycle, metrics
from crm2calls.errors import AuthError, MissingCredentialsError, OutboundError, WriteBackError
from crm2calls.health import WRITE_BACK_META
from crm2calls.logs import redact
from crm2calls.model import LeadRecord
from crm2calls.policy import SourcePolicy

if TYPE_CHECKING:
    from crm2calls.followup import FollowUpPass
    from crm2calls.services import Services
    from crm2calls.sources.base import Source, Written

log = logging.getLogger("crm2calls.writeback")

TASK = lifecycle.WRITE_BACK
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(minutes=30)  # a CRM down for hours is tried every 15-30 minutes
MAX_ATTEMPTS = 60  # with the backoff above, about a day of tries
MAX_AGE = timedelta(hours=48)  # from the call's end: a note this late helps nobody; replay it by hand
SCOPE_PROBE = timedelta(minutes=15)  # a held CRM is tried with one write this often: a granted scope is seen

DEFAULT_NOTES = {
    "en": (
        "Robot call (Aimylogic): {outcome}\n"
        "Result: {call_result}\n"
        "Duration {duration_s} s, attempts {attempts}, finished {finished_at}\n"
        "Campaign: {campaign}\n"
        "{report}"
    ),
    "ru": (
        "Звонок робота (Aimylogic): {outcome}\n"
        "Результат: {call_result}\n"
        "Длительность {duration_s} с, попыток {attempts}, завершён {finished_at}\n"  # noqa: RUF001 - Russian
        "Кампания: {campaign}\n"
        "{report}"
    ),
}
# Aimylogic's final jobStatus in words, per note language.
OUTCOME_WORDS = {
    "en": {
        "longCallWithResult": "talked to the customer, with a result",
        "longCallWithNoResult": "talked to the customer, no result",
        "noAnswer": "not reached: no answer",
        "nonexistentNumber": "not reached: the number does not exist",
        "notDone": "not reached: the call did not take place",
        "canceled": "the call was canceled",
    },
    "ru": {
        "longCallWithResult": "разговор состоялся, есть результат",
        "longCallWithNoResult": "разговор состоялся, без результата",
        "noAnswer": "не дозвонились: нет ответа",
        "nonexistentNumber": "не дозвонились: номер не существует",
        "notDone": "не дозвонились: звонок не состоялся",
        "canceled": "звонок отменён",
    },
}
OTHER_STATUS = {"en": "job status {}", "ru": "статус задания {}"}


# The note


def job_of(record: LeadRecord) -> str:
    """What the note names the call by: Aimylogic's job id, or our lead id when the job's id is not known."""
    return str((record.outcome or {}).get("job_id") or record.job_id or f"lead-{record.id}")


def _text(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "-"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_text(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    return str(value)


def _finished(value: Any) -> str:
    try:
        return f"{datetime.fromisoformat(str(value)):%Y-%m-%d %H:%M} UTC"
    except ValueError:
        return _text(value)


def note_values(record: LeadRecord, language: str) -> dict[str, str]:
    """The placeholders of a note (policy.NOTE_PLACEHOLDERS) for this lead's outcome."""
    outcome = record.outcome or {}
    status = str(outcome.get("job_status") or "")
    words = OUTCOME_WORDS[language].get(status) or OTHER_STATUS[language].format(status or "-")
    return {
        "outcome": words,
        "job_status": _text(status or None),
        "call_result": _text(outcome.get("call_result")),
        "duration_s": _text(outcome.get("duration_s")),
        "attempts": _text(outcome.get("attempts")),
        "campaign": record.campaign,
        "finished_at": _finished(outcome.get("finished_at")),
        "report": "" if not outcome.get("report") else _text(outcome.get("report")),
        "job_id": job_of(record),
    }


def render_note(record: LeadRecord, policy: SourcePolicy) -> str:
    """The note for this lead: the source's template (or the default of its language), then the job's mark line."""
    from crm2calls.sources.base import job_mark

    language = policy.results.language_for(policy.region)
    template = policy.results.note or DEFAULT_NOTES[language]
    text = template.format(**note_values(record, language))
    lines = [line.rstrip() for line in text.strip().splitlines()]
    kept = [line for i, line in enumerate(lines) if line or (i and lines[i - 1])]  # no runs of blank lines
    return "\n".join([*kept, "", job_mark(job_of(record))])


# Whether a source writes back


def enabled(source: Source, policy: SourcePolicy) -> bool:
    """Write-back on for this source: as set in [sources.X.results], else when its API credentials are set."""
    wanted = policy.results.write_back
    return source.can_write_back() if wanted is None else wanted


def writes_back(source: Source) -> bool:
    """Does this source's adapter implement write_back() at all?"""
    from crm2calls.sources.base import Source

    return type(source).write_back is not Source.write_back


def describe(source: Source, policy: SourcePolicy) -> str:
    """For `config check`: whether the source writes outcomes back, and what its token needs."""
    wanted, able = policy.results.write_back, source.can_write_back()
    if not writes_back(source):
        return "off (this CRM takes no call outcomes)" if not wanted else "ON, but this CRM takes no call outcomes"
    scopes = source.write_back_scopes or f"write access to its records (docs/crm/{source.name}.md)"
    if wanted is False:
        return f"off ([sources.{source.name}.results] write_back = false)"
    language = policy.results.language_for(policy.region)
    note = "own note" if policy.results.note else f"default note in {language}"
    if not able:
        state = "ON but its API credentials are MISSING" if wanted else "off until its API credentials are set"
        return f"{state}; the token needs {scopes}"
    return f"on ({note}); the token needs {scopes}"


# The meta document: per source {"dead": n, "held": {"reason", "since", "retry_at"}}


def _doc(services: Services) -> dict[str, Any]:
    return services.store.get_meta(WRITE_BACK_META) or {}


def _update(services: Services, source: str, **changes: Any) -> None:
    """Change one source's entry (a read and a write: entries change rarely, `leads replay --dead` recounts)."""
    doc = _doc(services)
    entry = {**doc.get(source, {}), **changes}
    entry = {key: value for key, value in entry.items() if value not in (None, 0)}
    rest = {name: value for name, value in doc.items() if name != source}
    services.store.put_meta(WRITE_BACK_META, {**rest, source: entry} if entry else rest or None)


def held_until(services: Services, source: str, now: datetime) -> datetime | None:
    """While a CRM refuses the write scope: when to probe it again (None: not held, or time to probe)."""
    held = _doc(services).get(source, {}).get("held")
    if not held:
        return None
    retry_at = datetime.fromisoformat(held["retry_at"])
    return retry_at if now < retry_at else None


def _hold(services: Services, source: str, reason: str, now: datetime) -> datetime:
    held = _doc(services).get(source, {}).get("held") or {}
    retry_at = now + SCOPE_PROBE
    since = held.get("since") or now.isoformat()
    _update(services, source, held={"reason": reason, "since": since, "retry_at": retry_at.isoformat()})
    log.error(
        "WRITE-BACK HELD for %s: %s. Call outcomes wait (nothing is lost) and are written within %d min of the fix",
        source, reason, SCOPE_PROBE.total_seconds() // 60,
        extra={"fields": {"event": "write_back_held", "source": source}},
    )  # fmt: skip
    return retry_at


def _release(services: Services, source: str) -> None:
    if _doc(services).get(source, {}).get("held"):
        _update(services, source, held=None)
        log.warning("%s accepts call outcomes again: write-back resumed", source,
                    extra={"fields": {"event": "write_back_resumed", "source": source}})  # fmt: skip


def count_dead(services: Services, source: str, change: int) -> None:
    """Add `change` to the source's dead-letter count (never below 0)."""
    doc = _doc(services)
    _update(services, source, dead=max(0, doc.get(source, {}).get("dead", 0) + change))


def set_dead_counts(services: Services, counts: dict[str, int]) -> None:
    """Rewrite every source's dead-letter count from a full count (`leads replay --dead` makes one)."""
    doc = _doc(services)
    for source in set(doc) | set(counts):
        _update(services, source, dead=counts.get(source, 0))


# The handler


def write_back(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """The "write_back" task: each lead's outcome onto its CRM record (followup.TASKS)."""
    by_source: dict[str, list[LeadRecord]] = {}
    for record in leads:
        by_source.setdefault(record.source, []).append(record)
    for name, records in by_source.items():
        _write_source(run, name, records)


def _write_source(run: FollowUpPass, name: str, records: list[LeadRecord]) -> None:
    services, now, owner = run.services, run.now, run.owner
    policy = services.settings.policy.source(name)
    source = services.source(name)
    if not enabled(source, policy) or not writes_back(source):
        note = ""
        if policy.results.write_back and not writes_back(source):
            note = f"no write-back: {name} has no way to take call outcomes"
        for record in records:
            lifecycle.write_back_dropped(services, record, now, note, owner=owner)
            metrics.write_back(name, "off")
        _release(services, name)  # a hold from before it was turned off no longer means anything
        return
    until = held_until(services, name, now)
    if until is not None:  # the scope is still refused: wait for the probe, attempts not spent
        reason = _held_reason(services, name)
        for record in records:
            lifecycle.write_back_later(services, record, now, until, reason, owner=owner, count=False)
        return
    accepted = False
    for index, record in enumerate(records):
        if run.out_of_time():
            return  # the rest keep their work; their leases expire and the next pass takes them
        outcome = _write_one(run, source, policy, record)
        if outcome in ("written", "found") and not accepted:  # once a pass: the CRM takes our writes
            from crm2calls.health import crm_accepted

            _release(services, name)
            crm_accepted(services, name)
            accepted = True
        if outcome == "scope_refused":
            until = held_until(services, name, services.clock()) or now + SCOPE_PROBE
            reason = _held_reason(services, name)
            for rest in records[index + 1 :]:
                lifecycle.write_back_later(services, rest, now, until, reason, owner=owner, count=False)
            return


def _held_reason(services: Services, source: str) -> str:
    held = _doc(services).get(source, {}).get("held") or {}
    return f"held: {held.get('reason') or f'{source} refuses the write scope'}"


def _write_one(run: FollowUpPass, source: Source, policy: SourcePolicy, record: LeadRecord) -> str:
    """Write one lead's outcome; the metrics' result."""
    services, owner = run.services, run.owner
    name = source.name
    # One conditional write renews the lease and counts the try before the requests (run.renew's job, and more).
    until = services.clock() + lifecycle_lease()
    if not lifecycle.writing_back(services, record, until, owner=owner):
        return "lost"  # another pass has the lead now
    item = record.work[TASK]
    job = job_of(record)
    written: Written | None = None
    found = False
    try:
        if item.attempts > 1:  # an earlier attempt may have reached the CRM before we recorded it
            try:
                written = source.find_written(record, job)
                found = written is not None
            except NotImplementedError:
                pass  # the CRM cannot list notes: at least once (the guide says so)
        if written is None:
            written = source.write_back(record, render_note(record, policy), record.outcome or {})
    except MissingCredentialsError as exc:  # write_back = true, but the credentials are not set
        return _failed(run, record, WriteBackError(exc.message, retryable=True), credentials=True)
    except WriteBackError as exc:
        return _failed(run, record, exc)
    except OutboundError as exc:  # an adapter that raised its client's own errors: retry what may pass later
        retryable = bool(getattr(exc, "retryable", False)) or isinstance(exc, AuthError)
        return _failed(run, record, WriteBackError(exc.message, retryable, exc.retry_after),
                       credentials=isinstance(exc, AuthError))  # fmt: skip
    now = services.clock()
    lifecycle.written_back(services, record, name, written.id, now, found=found, owner=owner)
    result = "found" if found else "written"
    metrics.write_back(name, result, _delay(record, now))
    return result


def lifecycle_lease() -> timedelta:
    """The lease a write keeps (the follow-up pass's)."""
    from crm2calls.followup import LEASE

    return LEASE


def _delay(record: LeadRecord, now: datetime) -> float | None:
    finished = (record.outcome or {}).get("finished_at")
    try:
        return (now - datetime.fromisoformat(str(finished))).total_seconds() if finished else None
    except ValueError:
        return None


def _age(record: LeadRecord, now: datetime) -> timedelta:
    finished = (record.outcome or {}).get("finished_at")
    try:
        start = datetime.fromisoformat(str(finished)) if finished else record.created_at
    except ValueError:
        start = record.created_at
    return now - start


def backoff(attempts: int) -> timedelta:
    """The wait before try n+1: exponential from BACKOFF_BASE, capped at BACKOFF_CAP, half of it random."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(max(attempts - 1, 0), 20))
    return ceiling / 2 + ceiling / 2 * random.random()


def _failed(run: FollowUpPass, record: LeadRecord, exc: WriteBackError, credentials: bool = False) -> str:
    services, owner, name = run.services, run.owner, record.source
    now = services.clock()
    message = redact(exc.message)
    item = record.work[TASK]
    fields = {"event": "write_back_failed", "lead_id": record.id, "source": name, "attempts": item.attempts}
    if exc.scope:
        until = _hold(services, name, message, now)
        lifecycle.write_back_later(services, record, now, until, f"held: {message}", owner=owner, count=False)
        metrics.write_back(name, "scope_refused")
        return "scope_refused"
    if credentials or "HTTP 401" in message:
        from crm2calls.health import crm_refused

        crm_refused(services, name, message, now)
    if not exc.retryable or item.attempts >= MAX_ATTEMPTS or _age(record, now) >= MAX_AGE:
        lifecycle.write_back_given_up(services, record, now, message, owner=owner)
        count_dead(services, name, 1)
        metrics.write_back(name, "dead_letter")
        log.error("lead %s: write-back to %s is a dead letter: %s", record.id, name, message,
                  extra={"fields": fields})  # fmt: skip
        return "dead_letter"
    delay = max(backoff(item.attempts), timedelta(seconds=exc.retry_after or 0))
    lifecycle.write_back_later(services, record, now, now + delay, message, owner=owner, count=True)
    metrics.write_back(name, "retry")
    log.warning("lead %s: write-back to %s failed (%s), tried again in %d s", record.id, name, message,
                delay.total_seconds(), extra={"fields": fields})  # fmt: skip
    return "retry"


# Replay


def parked(record: LeadRecord) -> bool:
    """Is this lead's write-back a dead letter?"""
    item = record.work.get(TASK)
    return item is not None and item.due is None


def replay(services: Services, records: list[LeadRecord], now: datetime) -> int:
    """Start these parked write-backs again; how many were parked. Their dead-letter counts go down."""
    started = 0
    for record in records:
        if parked(record) and lifecycle.replay_write_back(services, record, now):
            count_dead(services, record.source, -1)
            started += 1
    if started:
        services.notify_follow_up()
    return started


def dead_letters(services: Services) -> list[LeadRecord]:
    """Every lead whose write-back is parked (a scan: the CLI's, never /healthz's)."""
    from crm2calls.model import FOLLOWED_STATUSES

    found = []
    for status in FOLLOWED_STATUSES:
        found += [record for record in services.store.list(status, limit=10_000_000) if parked(record)]
    return found
