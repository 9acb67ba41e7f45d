"""The lead's life: every status, every allowed transition, and what each one writes.

Intake, delivery, the CLI and the Lambda tasks change a lead only through this module. Every change
is one store write that carries, in the same transaction, what the new status takes or gives back
(the one-person-one-call slot, the guard counters), then one history line and one log line. A write
the store refuses leaves the record as it was and logs nothing.

    received --enriched--> pending | held | duplicate | rejected      (or stays received, or failed)
    pending  --claimed by a worker (the store)--> sending
    sending  --> sent | dry_run | pending (retry later) | held (its campaign) | rejected | failed | expired
    held     --> pending | held | rejected | expired
    received, pending, held --a stop (the CRM closed the lead, an operator)--> canceled
    sent     --its job, followed (crm2calls/followup.py)--> calling --> called | not_reached | canceled
    failed, rejected, expired, dry_run --`leads retry`--> admitted anew (a fresh calling window)

After the send a lead carries follow-up work (LeadRecord.work: poll its job, cancel it, write its
outcome back), each item with its own due time; in the followed statuses next_attempt_at is the
earliest one, so the store's due index finds the work. A lead is final when its status is an end
status and no work is due (LeadRecord.final).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TypeVar

from crm2calls import guards, metrics
from crm2calls.errors import Crm2CallsError, UnusableLeadError
from crm2calls.logs import log_transition
from crm2calls.model import FOLLOWED_STATUSES, Lead, LeadRecord, Status, WorkItem
from crm2calls.services import Services
from crm2calls.store.base import NO_CLAIMS, ClaimRefusedError, Claims

log = logging.getLogger("crm2calls.lifecycle")

T = TypeVar("T")

# Where each status may go next by itself (delivery, intake); SENDING is entered by the store's claim.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset(
        {
            Status.RECEIVED,
            Status.PENDING,
            Status.HELD,
            Status.DUPLICATE,
            Status.REJECTED,
            Status.FAILED,
            Status.CANCELED,
        }
    ),
    Status.PENDING: frozenset({Status.SENDING, Status.CANCELED}),
    Status.SENDING: frozenset(
        {
            Status.SENT,
            Status.DRY_RUN,
            Status.PENDING,
            Status.HELD,
            Status.REJECTED,
            Status.FAILED,
            Status.EXPIRED,
            Status.CANCELED,
        }
    ),
    Status.HELD: frozenset(
        {Status.PENDING, Status.HELD, Status.DUPLICATE, Status.REJECTED, Status.EXPIRED, Status.CANCELED}
    ),
    Status.SENT: frozenset({Status.CALLING, Status.CALLED, Status.NOT_REACHED, Status.CANCELED}),
    Status.CALLING: frozenset({Status.CALLING, Status.CALLED, Status.NOT_REACHED, Status.CANCELED}),
    Status.CALLED: frozenset(),
    Status.NOT_REACHED: frozenset(),
    Status.CANCELED: frozenset(),
    Status.DUPLICATE: frozenset(),
    Status.REJECTED: frozenset(),
    Status.FAILED: frozenset(),
    Status.EXPIRED: frozenset(),
    Status.DRY_RUN: frozenset(),
}
# What an operator's `leads retry` may start again, and where an admission may put it.
RETRYABLE = frozenset({Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.DRY_RUN})
_ADMITTED = frozenset({Status.RECEIVED, Status.PENDING, Status.HELD, Status.DUPLICATE, Status.REJECTED})
# Statuses that give the one-person-one-call slot back: this lead will never be called.
RELEASES_SLOT = frozenset({Status.REJECTED, Status.FAILED, Status.EXPIRED, Status.CANCELED})
# A sent lead's job is first looked at this long after the send (crm2calls/outcomes.py plans the rest).
FIRST_POLL = timedelta(seconds=60)


class TransitionError(Crm2CallsError):
    """A move the lifecycle does not allow: a bug, never retryable."""


def _allowed(current: Status, new: Status, operator: bool) -> bool:
    if operator and current in RETRYABLE:
        return new in _ADMITTED
    return new in TRANSITIONS[current]


def _move(record: LeadRecord, status: Status, now: datetime, note: str, operator: bool) -> Callable[[], None]:
    """Change the record in memory (status, time, history line); return how to undo it."""
    if not _allowed(record.status, status, operator):
        raise TransitionError(f"lead {record.id}: {record.status} -> {status} is not a transition of its life")
    before = record.status, record.updated_at, len(record.history)

    def undo() -> None:
        record.status, record.updated_at = before[0], before[1]
        del record.history[before[2] :]

    record.status, record.updated_at = status, now
    record.history.append({"at": now.isoformat(), "status": str(status), "note": note})
    return undo


def _slot(services: Services, record: LeadRecord) -> str | None:
    """The lead's one-person-one-call slot. A dry run keeps its own, so that a tester sees the duplicate
    rule work and then, with a token, is not told "duplicate" by leads that were never called."""
    if not record.phone_key:
        return None
    campaign = record.campaign
    if services.settings.dry_run:
        campaign = guards.DRY_RUN_SLOTS if campaign == guards.DEFAULT_CAMPAIGN else f"{guards.DRY_RUN_SLOTS}.{campaign}"
    return guards.slot_name(record.phone_key, campaign)


def _with_release(services: Services, record: LeadRecord, claims: Claims) -> Claims:
    if record.status in RELEASES_SLOT and not claims.slot and (slot := _slot(services, record)):
        return replace(claims, release=slot)
    return claims


def save(
    services: Services,
    record: LeadRecord,
    status: Status,
    now: datetime,
    note: str = "",
    *,
    owner: str | None,
    claims: Claims = NO_CLAIMS,
    operator: bool = False,
    **log_fields: object,
) -> bool:
    """Move a stored lead to `status` and write it with its claims; False when `owner` lost the lease.

    The lease is dropped with the write. ClaimRefusedError leaves the record as it was.
    """
    undo = _move(record, status, now, note, operator)
    record.lease_owner = record.lease_until = None
    _sync_due(record)
    try:
        saved = services.store.update(record, owner, _with_release(services, record, claims))
    except Exception:
        undo()
        raise
    if saved:
        log_transition(record, note, **log_fields)
        metrics.lead_entered(record.source, status)
    return saved


def _insert(
    services: Services, record: LeadRecord, status: Status, now: datetime, note: str, claims: Claims
) -> tuple[LeadRecord, bool]:
    """Move a new lead to `status` and insert it with its key and claims: (stored lead, created?)."""
    undo = _move(record, status, now, note, False)
    try:
        stored, created = services.store.insert(record, claims)  # a new lead holds nothing to give back
    except Exception:
        undo()
        raise
    if created:
        log_transition(record, note)
        metrics.lead_entered(record.source, status)
    return stored, created


# Admission: the do-not-call list, the one-person-one-call slot and the spend guards, in one write.

Write = Callable[[Status, str, Claims], T]


def _admit(services: Services, record: LeadRecord, now: datetime, note: str, write: Write[T]) -> T:
    """Write the lead PENDING with its slot and counters, or what the store's refusal makes it.

    A full rate cap holds the lead (keeping its slot, counting nothing); a full per-number cap rejects
    it; a slot held by another lead makes it a duplicate. A dry run takes no claim: nothing is called.
    """
    settings = services.settings
    policy = settings.policy
    counted = _counted(record)
    if record.phone_key and guards.is_blocked(services, record.phone_key):
        record.last_error = "on the do-not-call list"
        return write(Status.REJECTED, record.last_error, NO_CLAIMS)
    window = timedelta(hours=policy.duplicate_window_hours)
    slot = _slot(services, record) if window else None
    # The guards count a lead once: a lead admitted before (and retried by an operator) is not counted again.
    limits = () if settings.dry_run or counted else guards.limits(policy.guards, record.phone_key, now)
    held: guards.Limit | None = None
    while True:
        try:
            if held is None:
                record.last_error, record.next_attempt_at = None, now
                return write(Status.PENDING, note, Claims(slot, window, tuple(lim.counter for lim in limits)))
            record.last_error, record.next_attempt_at = held.reason, held.retry_at
            text = f"{note}; {held.reason}; held until {held.retry_at:%H:%M} UTC"
            result = write(Status.HELD, text, Claims(slot, window))
            guards.report_holding(services, held)
            return result
        except ClaimRefusedError as exc:
            if exc.claim == slot:
                record.last_error = f"same phone as {exc.holder} within {policy.duplicate_window_hours} h"
                record.next_attempt_at = None
                record.outcome = {"duplicate_of": exc.holder}  # whose call this person gets (a stop follows it)
                return write(Status.DUPLICATE, record.last_error, NO_CLAIMS)
            refused = next(lim for lim in limits if lim.counter.name == exc.claim)
            if refused.status is Status.REJECTED:
                record.last_error, record.next_attempt_at = refused.reason, None
                return write(Status.REJECTED, refused.reason, NO_CLAIMS)
            held = refused


def _counted(record: LeadRecord) -> bool:
    """Was this lead counted by the guards already? Admitted (pending) once, outside a dry run."""
    return record.status is not Status.DRY_RUN and any(step.get("status") == Status.PENDING for step in record.history)


def _render(services: Services, record: LeadRecord, lead: Lead) -> str:
    """Render and freeze the entry (UnusableLeadError when the lead cannot be called); the zone note."""
    from crm2calls.mapping import render_entry
    from crm2calls.phones import mask

    policy = services.settings.policy
    source = policy.source(record.source)
    record.campaign = source.campaign_for(lead.route)
    try:
        rendered = render_entry(lead, source, policy, record.created_at)
    finally:
        record.raw = None  # the frozen entry is all delivery needs; drop the CRM's raw data
    record.entry = json.dumps(rendered.entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    record.phone_masked = mask(rendered.phone)
    record.phone_key = guards.phone_key(rendered.phone)
    return f"campaign {record.campaign}; zone {rendered.zone} ({rendered.zone_reason})"


def accept_new(
    services: Services, record: LeadRecord, lead: Lead | None, now: datetime
) -> tuple[LeadRecord, bool, UnusableLeadError | None]:
    """Store a new lead with its key and claims: (stored lead, created?, why it cannot be called)."""
    if lead is None:
        return (*_insert(services, record, Status.RECEIVED, now, "awaiting enrichment", NO_CLAIMS), None)
    try:
        note = _render(services, record, lead)
    except UnusableLeadError as exc:
        record.last_error = f"{exc.field}: {exc.reason}"
        return (*_insert(services, record, Status.REJECTED, now, record.last_error, NO_CLAIMS), exc)

    def write(status: Status, text: str, claims: Claims) -> tuple[LeadRecord, bool]:
        return _insert(services, record, status, now, text, claims)

    return (*_admit(services, record, now, note, write), None)


def enriched(services: Services, record: LeadRecord, lead: Lead, now: datetime, owner: str) -> bool:
    """The CRM gave us the lead: render its entry and admit it; False when the lease was lost."""
    try:
        note = _render(services, record, lead)
    except UnusableLeadError as exc:
        return reject(services, record, now, f"{exc.field}: {exc.reason}", owner=owner)

    def write(status: Status, text: str, claims: Claims) -> bool:
        return save(services, record, status, now, text, owner=owner, claims=claims)

    return _admit(services, record, now, note, write)


def admit_held(services: Services, record: LeadRecord, now: datetime, owner: str) -> bool:
    """A held lead's turn: admit it again (counted now, once), or expire it; False when the lease was lost."""
    if window_closed(record, now):
        return expire(services, record, now, owner=owner)

    def write(status: Status, text: str, claims: Claims) -> bool:
        return save(services, record, status, now, text, owner=owner, claims=claims)

    note = f"campaign {record.campaign} sends again" if _counted(record) else "admitted by the spend guards"
    return _admit(services, record, now, note, write)


def hold(services: Services, record: LeadRecord, now: datetime, reason: str, until: datetime, *, owner: str) -> bool:
    """Its campaign cannot take it now (paused, finished, token refused): held until `until`, or expired.

    Attempts unchanged: the lead did nothing wrong. Held again for the same reason, it writes no history
    line, so a lead waiting out a long pause keeps a readable history.
    """
    if window_closed(record, now):
        return expire(services, record, now, owner=owner)
    if record.status is Status.HELD and record.last_error == reason:
        return postpone(services, record, until, reason, owner=owner)
    record.last_error, record.next_attempt_at = reason, until
    note = f"{reason}; held, looked at again {until:%H:%M:%S} UTC"
    return save(services, record, Status.HELD, now, note, owner=owner)


def requeue(services: Services, record: LeadRecord, now: datetime) -> bool:
    """An operator's retry: admit the lead anew with a fresh calling window (False: not retryable)."""
    if record.status not in RETRYABLE:
        return False
    record.attempts, record.next_attempt_at, record.job_id = 0, now, None
    note = "retry requested by an operator"
    if record.entry is None:  # it never got its phone: fetch it again
        return save(services, record, Status.RECEIVED, now, note, owner=None, operator=True)
    from crm2calls.mapping import rewindow

    policy = services.settings.policy
    entry = rewindow(json.loads(record.entry), policy.source(record.source).window, now)
    record.entry = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    def write(status: Status, text: str, claims: Claims) -> bool:
        return save(services, record, status, now, text, owner=None, claims=claims, operator=True)

    return _admit(services, record, now, f"{note}; window to {entry['finishDateTime']}", write)


# Delivery's outcomes.


def window_closed(record: LeadRecord, now: datetime) -> bool:
    """Has the entry's finishDateTime passed? Aimylogic would never call it."""
    if record.entry is None:
        return False
    return datetime.fromisoformat(json.loads(record.entry)["finishDateTime"]) <= now


def sent(
    services: Services, record: LeadRecord, job_id: str | None, now: datetime, owner: str, job_token: str | None = None
) -> bool:
    """Aimylogic accepted the entry: record its job id (and which token placed it), even if the lease was lost."""
    record.attempts += 1
    record.job_id, record.last_error, record.next_attempt_at = job_id, None, None
    record.job_token = job_token
    status, note = Status.SENT, f"job {job_id}"
    if services.settings.dry_run:
        record.job_id, status, note = None, Status.DRY_RUN, "dry run: the entry was logged, not sent"
    else:
        set_work(record, "poll", now + FIRST_POLL)
    if save(services, record, status, now, note, owner=owner):
        _speed_to_lead(record, now)
        return True
    # Another worker took the lead after our lease ran out. The job exists: keep its id unless the
    # other worker recorded one first (Aimylogic ignores the repeat of an entry within 24 h).
    if services.store.record_job(record):
        log_transition(record, f"{note} (recorded after the lease ran out)")
        metrics.lead_entered(record.source, status)
        _speed_to_lead(record, now)
        return True
    log.warning(
        "lead %s was sent twice after its lease ran out; job %s is a repeat Aimylogic ignores",
        record.id,
        job_id,
        extra={"fields": {"event": "sent_twice", "lead_id": record.id, "job_id": job_id}},
    )
    return False


def _speed_to_lead(record: LeadRecord, now: datetime) -> None:
    """Acceptance to job id, for leads sent for real; a lead a guard held on purpose would only blur it."""
    if record.status is Status.SENT and not any(step.get("status") == Status.HELD for step in record.history):
        metrics.speed_to_lead(record.source, (now - record.created_at).total_seconds())


def retry_later(
    services: Services, record: LeadRecord, now: datetime, delay: float, message: str, *, owner: str
) -> bool:
    """Try again in `delay` seconds (received leads are enriched again, others sent again)."""
    status = Status.RECEIVED if record.status is Status.RECEIVED else Status.PENDING
    record.last_error, record.next_attempt_at = message, now + timedelta(seconds=delay)
    return save(services, record, status, now, f"retry in {delay:.0f} s: {message}", owner=owner)


def postpone(services: Services, record: LeadRecord, until: datetime, message: str, *, owner: str) -> bool:
    """Look at the lead again at `until`, status and attempts unchanged (a person must fix a credential).

    Not a transition: no history line, so a lead waiting days for a fix keeps a readable history.
    """
    record.last_error, record.next_attempt_at = message, until
    record.lease_owner = record.lease_until = None
    return services.store.update(record, owner)


def reject(services: Services, record: LeadRecord, now: datetime, message: str, *, owner: str | None) -> bool:
    """It can never be called (the CRM or Aimylogic said so): final, the slot given back."""
    record.last_error, record.next_attempt_at = message, None
    return save(services, record, Status.REJECTED, now, message, owner=owner)


def fail(services: Services, record: LeadRecord, now: datetime, message: str, *, owner: str | None) -> bool:
    """Give up after the attempt or age limit: the dead letter `leads retry` revives; the slot given back."""
    record.last_error, record.next_attempt_at = message, None
    note = f"gave up after {record.attempts} attempts: {message}"
    return save(services, record, Status.FAILED, now, note, owner=owner)


def expire(services: Services, record: LeadRecord, now: datetime, *, owner: str | None) -> bool:
    """Its calling window passed before it was sent: final, never sent, the slot given back."""
    entry = json.loads(record.entry or "{}")
    record.last_error = f"its calling window ended at {entry.get('finishDateTime')} before it could be sent"
    record.next_attempt_at = None
    return save(services, record, Status.EXPIRED, now, record.last_error, owner=owner)


# Follow-up work (crm2calls/followup.py runs it).


def _sync_due(record: LeadRecord) -> None:
    """In the followed statuses the lead's next step is its earliest due work: the due index finds it there."""
    if record.status in FOLLOWED_STATUSES:
        record.next_attempt_at = record.work_due()


def set_work(
    record: LeadRecord, task: str, due: datetime | None, *, attempts: int | None = None, error: str | None = None
) -> None:
    """Plan `task` at `due` (None parks it: a dead letter an operator replays), in memory; saved with the next write."""
    current = record.work.get(task)
    kept = current.attempts if current else 0
    record.work[task] = WorkItem(due, kept if attempts is None else attempts, error)
    _sync_due(record)


def drop_work(record: LeadRecord, task: str) -> None:
    """The task is done (or no longer wanted), in memory; saved with the next write."""
    record.work.pop(task, None)
    _sync_due(record)


# The follow-up tasks a call's end starts (crm2calls/followup.py TASKS); each handler drops its item at
# once, with no request, where it does not apply (write-back off for the source, no RESULTS_WEBHOOK_URL).
RESULT_TASKS = ("write_back", "notify")


def plan_results(services: Services, record: LeadRecord, now: datetime) -> None:
    """The lead's call has ended (called, not_reached, canceled by Aimylogic): plan its outcome's write-backs."""
    for task in RESULT_TASKS:
        set_work(record, task, now, attempts=0)


def save_work(services: Services, record: LeadRecord, now: datetime, note: str = "", *, owner: str | None) -> bool:
    """Write the lead's work as it now is, status unchanged; a history line only when there is a note.

    The lease is dropped with the write; False when `owner` lost it (another worker has the lead).
    """
    record.lease_owner = record.lease_until = None
    _sync_due(record)
    if note:
        record.updated_at = now
        record.history.append({"at": now.isoformat(), "status": str(record.status), "note": note})
    saved = services.store.update(record, owner)
    if saved and note:
        log_transition(record, note)
    return saved


# Write-back of a call's outcome onto the CRM record (crm2calls/writeback.py runs it).

WRITE_BACK = "write_back"


def writing_back(services: Services, record: LeadRecord, lease_until: datetime, *, owner: str) -> bool:
    """Count the attempt in the store before its request, lease kept: a pass that finds it counted after a
    crash looks in the CRM before writing again. False when `owner` lost the lease (nothing may be written)."""
    item = record.work[WRITE_BACK]
    item.attempts += 1
    record.lease_owner, record.lease_until = owner, lease_until
    if services.store.update(record, owner):
        return True
    item.attempts -= 1
    return False


def written_back(
    services: Services, record: LeadRecord, crm: str, written_id: str, now: datetime, *, found: bool, owner: str
) -> bool:
    """The CRM holds the outcome (written now, or found written before): the item is done, the outcome keeps its id.

    False when `owner` lost the lease; the pass that has the lead then finds the write in the CRM.
    """
    drop_work(record, WRITE_BACK)
    record.outcome = {**(record.outcome or {}), "written": {"crm": crm, "id": written_id, "at": now.isoformat()}}
    what = f"found written before in {crm}" if found else f"written to {crm}"
    return save_work(services, record, now, f"{what}: note {written_id}", owner=owner)


def write_back_later(
    services: Services, record: LeadRecord, now: datetime, due: datetime, error: str, *, owner: str, count: bool
) -> bool:
    """Try the write-back again at `due`; count=False: the try was not spent (the CRM's scope is held)."""
    item = record.work[WRITE_BACK]
    attempts = item.attempts if count else max(item.attempts - 1, 0)
    set_work(record, WRITE_BACK, due, attempts=attempts, error=error)
    return save_work(services, record, now, owner=owner)


def write_back_given_up(services: Services, record: LeadRecord, now: datetime, error: str, *, owner: str) -> bool:
    """Park the write-back (a dead letter `leads replay` starts again): the error and why, in one history line."""
    item = record.work[WRITE_BACK]
    set_work(record, WRITE_BACK, None, error=error)
    note = f"write-back to {record.source} gave up after {item.attempts} attempts: {error}; `leads replay {record.id}`"
    return save_work(services, record, now, note, owner=owner)


def write_back_dropped(services: Services, record: LeadRecord, now: datetime, note: str, *, owner: str) -> bool:
    """No write-back for this lead (off for its source, or it cannot be done); a history line when `note` says why."""
    drop_work(record, WRITE_BACK)
    return save_work(services, record, now, note, owner=owner)


def replay_write_back(services: Services, record: LeadRecord, now: datetime) -> bool:
    """An operator starts a parked write-back again; False when it is not parked.

    Its attempts restart at 1, not 0: an earlier try may have reached the CRM, so the next one looks first.
    """
    item = record.work.get(WRITE_BACK)
    if item is None or item.due is not None:
        return False
    set_work(record, WRITE_BACK, now, attempts=1, error=None)
    return save_work(services, record, now, "write-back replayed by an operator", owner=None)


def replay_parked(services: Services, record: LeadRecord, now: datetime, tasks: tuple[str, ...]) -> list[str]:
    """An operator starts these parked follow-up tasks of the lead again (a poll that gave up, a results
    webhook, a cancel); the tasks started. Attempts restart: the handlers' own limits apply anew."""
    started = [task for task in tasks if task in record.work and record.work[task].due is None]
    for task in started:
        set_work(record, task, now, attempts=0, error=None)
    if started and save_work(services, record, now, f"{', '.join(started)} replayed by an operator", owner=None):
        return started
    return []


# The results webhook's outcomes (crm2calls/results_webhook.py, the "notify" task).

NOTIFY = "notify"


def notify_delivered(services: Services, record: LeadRecord, now: datetime, note: str, *, owner: str | None) -> bool:
    """The receiver took the outcome (2xx): the work is done, with a history line; False when the lease was lost."""
    drop_work(record, NOTIFY)
    return save_work(services, record, now, note, owner=owner)


def notify_later(
    services: Services, record: LeadRecord, now: datetime, due: datetime, error: str, *, owner: str | None
) -> bool:
    """The receiver did not take it: one attempt more, tried again at `due`. No history line (a readable history
    through a day-long outage); the work item keeps the error for `leads show`."""
    item = record.work.get(NOTIFY)
    set_work(record, NOTIFY, due, attempts=(item.attempts if item else 0) + 1, error=error)
    return save_work(services, record, now, owner=owner)


def notify_given_up(services: Services, record: LeadRecord, now: datetime, error: str, *, owner: str | None) -> bool:
    """Its limits are spent: parked as a dead letter (due None, the error kept) for an operator to replay."""
    item = record.work.get(NOTIFY)
    attempts = (item.attempts if item else 0) + 1
    set_work(record, NOTIFY, None, attempts=attempts, error=error)
    note = f"results webhook gave up after {attempts} attempts: {error}"
    return save_work(services, record, now, note, owner=owner)


def notify_dropped(services: Services, record: LeadRecord, now: datetime, *, owner: str | None) -> bool:
    """RESULTS_WEBHOOK_URL is not set: the work is dropped with no request and no history line."""
    drop_work(record, NOTIFY)
    return save_work(services, record, now, owner=owner)


# Stops: the CRM closed or deleted the lead, or an operator stopped it (crm2calls/stops.py decides, this writes).

NOT_SENT = frozenset({Status.RECEIVED, Status.PENDING, Status.HELD})
QUEUED = frozenset({Status.SENT, Status.CALLING})  # its job is in Aimylogic and may still call


def stop_mark(key: str) -> str:
    """The text a stop leaves in the history lines it writes: it is applied to a lead once, whoever sees it."""
    return f"(stop {hashlib.sha256(key.encode()).hexdigest()[:10]})"


def stopped_by(record: LeadRecord, key: str) -> bool:
    """Has the stop with this key been applied to the lead already?"""
    mark = stop_mark(key)
    return any(mark in step.get("note", "") for step in record.history)


def stop(
    services: Services, record: LeadRecord, now: datetime, reason: str, key: str, *, check: bool = False, owner: str
) -> str | None:
    """Apply a stop to a lead `owner` holds; what it did, or None when the lease was lost.

    not sent: canceled, never sent, its slot given back; being sent by a sender that died: canceled, its job (if
    any) cancelled by phone; queued in Aimylogic: "cancel" due now (check: "check_stop" first); ended: only
    recorded, the outcome kept. A check on a lead not sent yet waits for its send (crm2calls/stops.py).
    No write-back is planned: the manager stopped the lead in the CRM, which knows it already.
    """
    mark = stop_mark(key)
    if check and record.status not in QUEUED:
        return _done(save_work(services, record, now, owner=owner), "nothing")  # only a queued job is worth a lookup
    if record.status in NOT_SENT:
        record.last_error, record.next_attempt_at = reason, None
        note = f"stopped before it was sent: {reason} {mark}"
        return _done(save(services, record, Status.CANCELED, now, note, owner=owner), "canceled")
    if record.status is Status.SENDING:  # its sender's lease ran out mid-send: a job may exist, known by phone only
        record.last_error = reason
        set_work(record, "cancel", now, attempts=0)
        note = f"stopped while it was being sent: {reason}; a job, if any, is cancelled by phone {mark}"
        return _done(save(services, record, Status.CANCELED, now, note, owner=owner), "cancel_planned")
    if record.status in QUEUED:
        task = "check_stop" if check else "cancel"
        if task not in record.work or record.work[task].due is None:
            set_work(record, task, now, attempts=0)
        if check:
            note = f"the CRM changed the record ({reason}): looked up before the call {mark}"
            return _done(save_work(services, record, now, note, owner=owner), "check_planned")
        record.last_error = reason
        note = f"stop: {reason}; job {record.job_id or '(unknown)'} is cancelled in Aimylogic {mark}"
        return _done(save_work(services, record, now, note, owner=owner), "cancel_planned")
    note = f"stop recorded: {reason}; it stays {record.status} {mark}"
    return _done(save_work(services, record, now, note, owner=owner), "recorded")


def _done(saved: bool, what: str) -> str | None:
    return what if saved else None


def accept_stopped(services: Services, record: LeadRecord, now: datetime, reason: str) -> tuple[LeadRecord, bool]:
    """A new lead of a CRM record stopped before it arrived (a tombstone): stored canceled, never called."""
    record.last_error, record.next_attempt_at = reason, None
    return _insert(services, record, Status.CANCELED, now, f"stopped before it arrived: {reason}", NO_CLAIMS)


def cancel_confirmed(
    services: Services, record: LeadRecord, now: datetime, cancelled: list[str], *, owner: str | None
) -> bool:
    """Aimylogic cancelled the lead's job: canceled, its outcome says so, nothing left to follow."""
    drop_work(record, "cancel")
    drop_work(record, "poll")
    record.outcome = {
        "job_status": "canceled",
        "canceled_by": "crm2calls",
        "reason": record.last_error,
        "canceled_ids": cancelled,
        "finished_at": now.isoformat(),
    }
    note = f"Aimylogic cancelled job {', '.join(cancelled)}"
    if record.status in QUEUED:
        return save(services, record, Status.CANCELED, now, note, owner=owner)
    return save_work(services, record, now, note, owner=owner)


def cancel_unconfirmed(services: Services, record: LeadRecord, now: datetime, why: str, *, owner: str | None) -> bool:
    """Aimylogic did not cancel the job (ended, unknown, or an answer we cannot read): follow it to its report."""
    drop_work(record, "cancel")
    poll = record.work.get("poll")
    if record.status in QUEUED and (poll is None or poll.due is None or poll.due > now):
        set_work(record, "poll", now)  # it has likely ended: look at its report now
    return save_work(services, record, now, f"cancel not confirmed: {why}", owner=owner)


# Following a sent lead's job (crm2calls/outcomes.py polls callJob/getReport and calls these).

# jobStatus -> the lead's status; statuses Aimylogic may add later keep the lead calling (and polled).
JOB_STATUSES: dict[str, Status] = {
    "planned": Status.CALLING,
    "inProcess": Status.CALLING,
    "onRetry": Status.CALLING,
    "longCallWithResult": Status.CALLED,
    "longCallWithNoResult": Status.CALLED,
    "noAnswer": Status.NOT_REACHED,
    "nonexistentNumber": Status.NOT_REACHED,
    "notDone": Status.NOT_REACHED,
    "canceled": Status.CANCELED,
}
FINAL_JOB_STATUSES = frozenset(job for job, status in JOB_STATUSES.items() if status is not Status.CALLING)


def follow_job(
    services: Services,
    record: LeadRecord,
    outcome: dict,
    now: datetime,
    owner: str,
    next_poll: datetime | None,
    *,
    matched_job: str | None = None,
    stop_reason: str | None = None,
) -> bool:
    """Aimylogic reported the lead's job: keep the outcome, follow its status, plan the next poll or the results.

    A final jobStatus ends the polling and plans the write-backs; otherwise the next poll is at `next_poll`
    (the caller's schedule). One history line per change of jobStatus, none for a poll that saw nothing
    new, so a job polled fifty times while planned keeps a readable history. matched_job: the job id its
    report was found under by phone (the send did not know it exactly); kept from now on. next_poll None
    for a job that is not final: it is no longer polled, for `stop_reason` (parked; the status stays).
    False when the lease was lost.
    """
    job_status = outcome.get("job_status")
    before = (record.outcome or {}).get("job_status")
    found = matched_job is not None and matched_job != record.job_id
    if found:
        record.job_id = matched_job
    record.outcome = outcome
    status = JOB_STATUSES.get(job_status, Status.CALLING)
    if not _allowed(record.status, status, False):  # stopped here first (a CRM stop): the status stays
        status = record.status
    final = job_status in FINAL_JOB_STATUSES
    if final:
        drop_work(record, "poll")
        plan_results(services, record, now)
    else:
        set_work(record, "poll", next_poll, attempts=0, error=stop_reason if next_poll is None else None)
    stopped = next_poll is None and not final
    if job_status == before and status is record.status and not found and not stopped:
        return save_work(services, record, now, owner=owner)
    note = _job_note(record, outcome) + (" (its id found by phone)" if found else "")
    if stopped:
        note += f"; no longer polled: {stop_reason}"

    if status is record.status:  # planned -> inProcess -> onRetry: the lead stays calling
        saved = save_work(services, record, now, note, owner=owner)
    else:
        saved = save(services, record, status, now, note, owner=owner)
    if saved and final and job_status != before:
        metrics.call_outcome(record.campaign, job_status)
    return saved


def _job_note(record: LeadRecord, outcome: dict) -> str:
    job_status = outcome.get("job_status")
    parts = [f"job {record.job_id} {job_status}"]
    if job_status not in JOB_STATUSES:
        parts[0] += " (a jobStatus this release does not know: polled on)"
    if outcome.get("attempts"):
        parts.append(f"attempt {outcome['attempts']}")
    if job_status in FINAL_JOB_STATUSES:
        if outcome.get("call_result"):
            parts.append(f"result {outcome['call_result']}")
        if outcome.get("duration_s"):
            parts.append(f"{outcome['duration_s']} s")
    return ", ".join(parts)


def stop_polling(services: Services, record: LeadRecord, now: datetime, reason: str, owner: str) -> bool:
    """Its job can no longer be followed (never ended, unknown to Aimylogic, token replaced): the poll is
    parked with the reason, a dead letter an operator sees; the lead keeps its status. False: lease lost."""
    set_work(record, "poll", None, error=reason)
    return save_work(services, record, now, f"no longer polled: {reason}", owner=owner)


def poll_later(
    services: Services, record: LeadRecord, now: datetime, due: datetime, error: str | None, *, owner: str,
    attempts: int | None = None,
) -> bool:
    """Poll the job again at `due` (an outage, a held token, a report not there yet), status unchanged, no history."""
    set_work(record, "poll", due, attempts=attempts, error=error)
    return save_work(services, record, now, owner=owner)

