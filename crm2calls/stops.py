"""Stop calling when the CRM (or an operator) says stop: on the request path, then the follow-up tasks that finish it.

On the request path (apply_stops, beside intake) each StopEvent is handled cheaply, with no call to the CRM
or Aimylogic, and idempotently by its key:
  1. the record's stop mark, `stop:{source}:{record}` (kept KEY_TTL), is read: the same key again is a repeat,
     answered as the first time;
  2. the mark is written (a check event only when we still have leads for the record);
  3. each lead of the record (store.find_by_ref) is leased and stopped through crm2calls/lifecycle.py: not sent
     -> canceled; queued in Aimylogic -> "cancel" due now and the follow-up worker woken; ended -> only recorded;
     a check event -> "check_stop" on queued leads only (the worker asks the CRM, never the request path);
  4. no lead: the mark is a tombstone, and a later "new lead" webhook of the record is stored canceled.

A lead a worker holds (being enriched, sent, polled) is never written from here: the holder's lease-checked
write would lose, and a sender would then record its job over ours, leaving the job uncancelled. Instead the
request path writes the mark (and LATEST_META, when the latest stop came) first and reads the lead after it,
while a holder writes the lead first and reads the mark after it (delivery once lifecycle.sent() has recorded
the job ids of a batch; the follow-up pass after its handlers): one read of LATEST_META per batch, and a read of
each lead's mark only when a stop came after the lead arrived. Each of these is one atomic, strongly consistent
operation on both stores (SQLite serialises writers; DynamoDB's conditional writes and ConsistentRead gets), so
whichever side comes second sees the other's write: the request path sees the lead sent and plans the cancel
itself, or the holder sees the mark and plans it. Both may; the history line a stop writes carries its key
(lifecycle.stop_mark), so a stop is applied to a lead once. The same read covers the `ref` index's lag on
DynamoDB: a lead the index does not show yet is caught when it is sent. A lead held while being enriched or
admitted is caught the same way, at its send: its job is cancelled right after it is placed.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm2calls import lifecycle, metrics
from crm2calls.errors import AuthError, Crm2CallsError, EnrichmentError, OutboundError, RejectedError
from crm2calls.health import CANCELS_META
from crm2calls.model import LeadRecord, Status, StopEvent
from crm2calls.policy import DeliveryPolicy
from crm2calls.services import Services
from crm2calls.store.base import KEY_TTL

log = logging.getLogger("crm2calls.stops")

LEASE_SECONDS = 30  # the request path holds a lead only for its own write
LATEST_META = "stops:latest"  # {"at"}: when the latest stop came; a holder reads marks only when one is this recent
CLOCK_MARGIN = timedelta(seconds=5)  # stops written at once may overwrite LATEST_META out of order, and hosts' clocks

CANCEL_CHUNK = 500  # job ids per callJob/cancel request


def mark_name(source: str, record: str) -> str:
    """The stop mark (and tombstone) of a CRM record: (source, record type and id as the lead's ref holds them)."""
    return f"stop:{source}:{record}"


@dataclass
class StopResult:
    """What one stop event did, for the CRM's answer and the log."""

    key: str
    record: str
    reason: str
    leads: dict[str, str] = field(default_factory=dict)  # lead id -> canceled | cancel_planned | ... | deferred
    tombstone: bool = False
    repeat: bool = False

    def as_json(self) -> dict[str, Any]:
        """The per-stop summary returned to the caller."""
        body: dict[str, Any] = {"record": self.record, "reason": self.reason}
        if self.repeat:
            body["status"] = "already received"
        body["leads"] = [{"lead_id": lead_id, "did": did} for lead_id, did in self.leads.items()]
        if self.tombstone:
            body["tombstone"] = True
        return body


# The request path


def apply_stops(services: Services, source: str, events: list[StopEvent]) -> list[StopResult]:
    """Apply each stop event to the record's leads (StoreError -> 503: the CRM retries); wakes the follow-up worker."""
    now = services.clock()
    results = [_apply_one(services, source, event, now) for event in events]
    planned = ("cancel_planned", "check_planned")
    if any(did in planned for result in results if not result.repeat for did in result.leads.values()):
        services.notify_follow_up()
    return results


def _apply_one(services: Services, source: str, event: StopEvent, now: datetime) -> StopResult:
    result = StopResult(event.key, event.record, event.reason)
    if event.record in ("", "-"):  # the ref of leads that came without an id: it names no record
        return result
    store, name = services.store, mark_name(source, event.record)
    previous = store.get_meta(name)
    if previous is not None and previous.get("key") == event.key and "did" in previous:  # done, not cut short
        result.repeat, result.tombstone = True, bool(previous.get("tombstone"))
        result.leads = dict(previous.get("did", {}))
        return result
    mark = {"key": event.key, "record": event.record, "reason": event.reason, "check": event.check}
    mark["at"] = now.isoformat()
    if event.check:  # an update event: worth a mark and a lookup only while we still have work for the record
        leads = store.find_by_ref(source, event.record)
        if not any(_has_work(record) for record in leads):
            return result
        mark["raw"] = event.raw  # what check_stop needs; kept only with the mark
        store.put_meta(name, mark, expires_at=now + KEY_TTL)
        store.put_meta(LATEST_META, {"at": now.isoformat()})
    else:
        store.put_meta(name, mark, expires_at=now + KEY_TTL)
        store.put_meta(LATEST_META, {"at": now.isoformat()})
        leads = store.find_by_ref(source, event.record)  # read after the mark: see the module docstring
        leads = _with_holders(services, source, leads)
    owner = f"stop:{uuid.uuid4().hex[:12]}"
    for found in leads:
        result.leads[found.id] = _stop_one(services, found.id, mark, now, owner)
    result.tombstone = not leads and not event.check
    store.put_meta(name, {**mark, "tombstone": result.tombstone, "did": result.leads}, expires_at=now + KEY_TTL)
    log.info(
        "stop %s of %s %s: %s", event.reason, source, event.record,
        ", ".join(f"{lead_id} {did}" for lead_id, did in result.leads.items()) or "no lead yet: tombstone",
        extra={"fields": {"event": "stop", "source": source, "record": event.record, "leads": result.leads}},
    )  # fmt: skip
    return result


# Two records of one inquiry arrive together; a duplicate from later is another inquiry of the same person
# (a second deal), whose close must not cancel the first one's call.
SAME_INQUIRY = timedelta(minutes=10)


def _with_holders(services: Services, source: str, leads: list[LeadRecord]) -> list[LeadRecord]:
    """The record's leads, and for each duplicate among them the lead of the same source holding the person's call.

    A CRM may send one person as two records (amoCRM: a form's contact and its lead, as two events): the second
    is a duplicate and the one call is on the first. A stop naming the duplicate's record must stop that call,
    when both came within SAME_INQUIRY. Plain stops only: a check event's lookup reads the lead's own record.
    """
    found = {record.id: record for record in leads}
    for record in leads:
        key = (record.outcome or {}).get("duplicate_of") if record.status is Status.DUPLICATE else None
        holder = services.store.find(key) if key else None
        if not holder or holder.id in found or holder.source != source or holder.phone_key != record.phone_key:
            continue
        if abs(record.created_at - holder.created_at) <= SAME_INQUIRY:
            found[holder.id] = holder
    return list(found.values())


def _has_work(record: LeadRecord) -> bool:
    return record.status in lifecycle.QUEUED or record.status in lifecycle.NOT_SENT or record.status is Status.SENDING


def _stop_one(services: Services, lead_id: str, mark: dict[str, Any], now: datetime, owner: str) -> str:
    """Lease one lead and stop it; "deferred" when a worker holds it (it reads the mark after its own write)."""
    record = services.store.lease(lead_id, owner, now, LEASE_SECONDS)
    if record is None:
        return "deferred"
    if lifecycle.stopped_by(record, mark["key"]):
        services.store.update(_unleased(record), owner)
        return "already stopped"
    did = lifecycle.stop(services, record, now, mark["reason"], mark["key"], check=mark["check"], owner=owner)
    return did or "deferred"


def _unleased(record: LeadRecord) -> LeadRecord:
    record.lease_owner = record.lease_until = None
    return record


def tombstone(services: Services, source: str, ref: str, now: datetime) -> str | None:
    """Why a new lead of this CRM record must not be called (a stop came before it), or None."""
    if ref in ("", "-"):
        return None
    mark = services.store.get_meta(mark_name(source, ref))
    if not mark or not mark.get("tombstone") or now - datetime.fromisoformat(mark["at"]) >= KEY_TTL:
        return None
    return f"the CRM stopped this record before the lead arrived: {mark['reason']}"


# The holders' side: a lead written by a worker reads the mark after its write


def _applies(mark: dict[str, Any] | None, record: LeadRecord) -> bool:
    """Is this mark a stop the lead has not seen: it came after the lead arrived (or before, as a tombstone)?"""
    if not mark or lifecycle.stopped_by(record, mark["key"]):
        return False
    return bool(mark.get("tombstone")) or datetime.fromisoformat(mark["at"]) >= record.created_at


def _maybe_stopped(services: Services, records: list[LeadRecord]) -> list[LeadRecord]:
    """Of these leads, those a stop may have come for: one read, and none when no stop came since they arrived."""
    latest = services.store.get_meta(LATEST_META)
    if not latest:
        return []
    at = datetime.fromisoformat(latest["at"]) + CLOCK_MARGIN
    return [record for record in records if record.created_at <= at]


def after_sent(services: Services, records: list[LeadRecord], now: datetime) -> None:
    """Their job ids are recorded: a stop that came while the leads were being sent cancels their jobs now."""
    try:
        planned = _consult(services, _maybe_stopped(services, records), now)
    except Crm2CallsError as exc:  # the follow-up pass reads the marks again after its next poll of the leads
        log.error("could not read stop marks after a send: %s", exc)
        return
    if planned:
        services.notify_follow_up()


def consult_marks(services: Services, records: list[LeadRecord], now: datetime) -> int:
    """After a follow-up pass: stop the queued leads whose stop came while the pass held them; how many."""
    queued = [record for record in records if record.status in lifecycle.QUEUED and "cancel" not in record.work]
    stopped = _consult(services, _maybe_stopped(services, queued) if queued else [], now)
    if stopped:
        services.notify_follow_up()
    return stopped


def _consult(services: Services, records: list[LeadRecord], now: datetime) -> int:
    """Read each lead's stop mark and apply the ones it has not seen; how many now have work planned."""
    planned = 0
    for record in records:
        mark = services.store.get_meta(mark_name(record.source, record.ref))
        if _applies(mark, record):
            owner = f"stop:{uuid.uuid4().hex[:12]}"
            planned += _stop_one(services, record.id, mark, now, owner) in ("cancel_planned", "check_planned")
    return planned


# An operator's stop (`leads cancel`, `leads block`)


def stop_lead(services: Services, lead_id: str, reason: str) -> str:
    """Stop one lead now, as a CRM stop would; what it did (deferred: a worker holds it, try again)."""
    now = services.clock()
    key = f"operator:{uuid.uuid4().hex[:12]}"
    mark = {"key": key, "reason": reason, "check": False}
    did = _stop_one(services, lead_id, mark, now, f"stop:{uuid.uuid4().hex[:12]}")
    if did == "cancel_planned":
        services.notify_follow_up()
    return did


# Follow-up: "cancel"


def _exact_job(record: LeadRecord) -> str | None:
    """The lead's own job id, when Aimylogic gave one per entry (a batch answered otherwise holds several)."""
    return record.job_id if record.job_id and "," not in record.job_id else None


def _phone(record: LeadRecord) -> str | None:
    return str(json.loads(record.entry)["phone"]) if record.entry else None


def cancel_jobs(run: Any, leads: list[LeadRecord]) -> None:
    """Cancel the leads' queued jobs: per campaign and token, their ids in a few requests, by phone where unknown.

    Aimylogic's answer is read as documented (a.6: the array of the ids it cancelled). A job it leaves out
    (ended already, or unknown to it) is not called canceled: the lead is followed until its report says how
    it ended. Shapes the docs do not show (an object, an empty body) cancel nothing here either, so a lead is
    never marked canceled without Aimylogic naming its job. A 400 (an id it does not know, say: undocumented)
    is halved until the refused lead is alone; that one is followed like a job left out. An outage, a 429 or
    a refused token keeps the "cancel" item and retries it with backoff, counted for /healthz meanwhile.
    """
    services, now = run.services, run.now
    failed: dict[str, str] = {}  # lead id -> why its cancel is retried
    tried: set[str] = set()
    groups: dict[tuple[str, str | None], list[LeadRecord]] = {}
    for record in leads:
        groups.setdefault((record.campaign, record.job_token), []).append(record)
    for (campaign, token), records in groups.items():
        if run.out_of_time():  # the rest keep their lease until it expires, and their work
            break
        tried.update(record.id for record in records)
        try:
            dialer = services.dialer_for(campaign)
        except Crm2CallsError as exc:
            failed.update(_retry(run, record, exc) for record in records)
            continue
        cancel = getattr(dialer, "cancel", None)
        if cancel is None:  # a dry run placed no job
            for record in records:
                lifecycle.cancel_confirmed(services, record, now, [], owner=run.owner)
            continue
        if token and getattr(dialer, "fingerprint", None) != token:
            for record in records:
                _park(run, record, f"campaign {campaign}'s token was replaced since it placed job {record.job_id}: "
                      "cancel the job in Aimylogic by hand, then `leads cancel` again")  # fmt: skip
            continue
        by_id = [record for record in records if _exact_job(record)]
        for start in range(0, len(by_id), CANCEL_CHUNK):
            chunk = by_id[start : start + CANCEL_CHUNK]
            if run.out_of_time():
                break
            held = run.renew(chunk)
            chunk = [record for record in chunk if record.id in held]
            failed.update(_cancel(run, cancel, chunk, ids=[_exact_job(record) for record in chunk]))
        for record in (record for record in records if not _exact_job(record)):
            if run.out_of_time():
                break
            phone = _phone(record)
            if phone is None:  # no job id and no phone (forgotten): nothing left that could name its job
                lifecycle.cancel_unconfirmed(services, record, now, "no job id nor phone left", owner=run.owner)
                continue
            if run.renew([record]):
                failed.update(_cancel(run, cancel, [record], phones=[phone]))
    _report(services, tried, failed, now)


def _cancel(run: Any, cancel: Any, records: list[LeadRecord], **named: list[str]) -> list[tuple[str, str]]:
    """One callJob/cancel request for these leads, its answer applied; (lead id, why) of each to retry."""
    services, now = run.services, run.now
    if not records:
        return []
    try:
        answer = cancel(**named)
    except RejectedError as exc:  # e.g. an id Aimylogic no longer knows: nothing was cancelled for sure
        if len(records) > 1:  # one bad id must not leave the others' jobs calling: halve until it is alone
            middle = len(records) // 2
            return [*_cancel(run, cancel, records[:middle], ids=named["ids"][:middle]),
                    *_cancel(run, cancel, records[middle:], ids=named["ids"][middle:])]  # fmt: skip
        lifecycle.cancel_unconfirmed(services, records[0], now, exc.message, owner=run.owner)
        metrics.cancel(records[0].campaign, "not_canceled")
        return []
    except Crm2CallsError as exc:
        for record in records:
            metrics.cancel(record.campaign, "retry")
        return [_retry(run, record, exc) for record in records]
    for record in records:
        if answer is None:
            why = "Aimylogic's answer was not a list of job ids; its report will tell"
            lifecycle.cancel_unconfirmed(services, record, now, why, owner=run.owner)
            metrics.cancel(record.campaign, "not_canceled")
            continue
        own = set(record.job_id.split(",")) if record.job_id else set()
        cancelled = [job for job in answer if job in own] if "ids" in named or own else answer
        if cancelled:
            lifecycle.cancel_confirmed(services, record, now, cancelled, owner=run.owner)
            metrics.cancel(record.campaign, "canceled")
        else:
            why = "Aimylogic did not cancel it (the job has ended, or it does not know it)"
            lifecycle.cancel_unconfirmed(services, record, now, why, owner=run.owner)
            metrics.cancel(record.campaign, "not_canceled")
    return []


def _retry(run: Any, record: LeadRecord, exc: Exception) -> tuple[str, str]:
    """Try the cancel again after a backoff (never before Retry-After); (lead id, why), for health."""
    policy = run.services.settings.policy.delivery
    item = record.work.get("cancel")
    attempts = (item.attempts if item else 0) + 1
    message = getattr(exc, "message", None) or str(exc)
    delay = policy.backoff_cap_seconds if isinstance(exc, AuthError) else backoff(policy, attempts)
    delay = max(delay, getattr(exc, "retry_after", None) or 0.0)
    lifecycle.set_work(record, "cancel", run.now + timedelta(seconds=delay), attempts=attempts, error=message)
    lifecycle.save_work(run.services, record, run.now, owner=run.owner)
    log.warning(
        "lead %s: cancel of job %s failed (%s); tried again in %.0f s", record.id, record.job_id, message, delay,
        extra={"fields": {"event": "cancel_retry", "lead_id": record.id, "attempts": attempts}},
    )  # fmt: skip
    return record.id, message


def backoff(policy: DeliveryPolicy, attempts: int) -> float:
    """Seconds before attempt n+1, as delivery backs off: exponential, capped, half of it random."""
    ceiling = min(policy.backoff_cap_seconds, policy.backoff_base_seconds * 2 ** min(max(attempts - 1, 0), 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _park(run: Any, record: LeadRecord, message: str) -> None:
    lifecycle.set_work(record, "cancel", None, error=message)
    lifecycle.save_work(run.services, record, run.now, f"cancel parked: {message}", owner=run.owner)


def _report(services: Services, tried: set[str], failed: dict[str, str], now: datetime) -> None:
    """Keep /healthz's list of leads whose cancel is being retried: written only when it changes."""
    current = services.store.get_meta(CANCELS_META) or {}
    retrying = sorted((set(current.get("leads", [])) - tried) | set(failed))
    if retrying == current.get("leads", []) and (not failed or current.get("error") in failed.values()):
        return
    if not retrying:
        services.store.put_meta(CANCELS_META, None)
        return
    error = next(reversed(failed.values())) if failed else current.get("error")
    since = current.get("since") or now.isoformat()
    services.store.put_meta(CANCELS_META, {"leads": retrying, "error": error, "since": since})


# Follow-up: "check_stop"


def check_stops(run: Any, leads: list[LeadRecord]) -> None:
    """An update event named the leads' record: ask the CRM (source.check_stop) and stop, or drop the check."""
    from crm2calls import health

    services, now = run.services, run.now
    policy = services.settings.policy.delivery
    stopped = False
    for record in leads:
        if run.out_of_time():
            return
        mark = services.store.get_meta(mark_name(record.source, record.ref))
        if not mark or not mark.get("check"):  # expired, or a plain stop came since (applied by itself)
            lifecycle.drop_work(record, "check_stop")
            lifecycle.save_work(services, record, now, owner=run.owner)
            continue
        event = StopEvent(mark["key"], mark["record"], mark["reason"], True, mark.get("raw") or {})
        run.renew([record])
        item = record.work["check_stop"]
        try:
            reason = services.source(record.source).check_stop(event, now)
        except AuthError as exc:  # a person must fix the credentials: look again after the longest backoff
            health.crm_refused(services, record.source, exc.message, now)
            until = now + timedelta(seconds=policy.backoff_cap_seconds)
            lifecycle.set_work(record, "check_stop", until, attempts=item.attempts, error=exc.message)
            lifecycle.save_work(services, record, now, owner=run.owner)
            continue
        except OutboundError as exc:
            attempts = item.attempts + 1
            if (isinstance(exc, EnrichmentError) and not exc.retryable) or attempts >= policy.enrich_max_attempts:
                lifecycle.drop_work(record, "check_stop")
                note = f"could not look the record up in the CRM ({exc.message}): calls go on"
                lifecycle.save_work(services, record, now, note, owner=run.owner)
                continue
            delay = max(backoff(policy, attempts), exc.retry_after or 0.0)
            due = now + timedelta(seconds=delay)
            lifecycle.set_work(record, "check_stop", due, attempts=attempts, error=exc.message)
            lifecycle.save_work(services, record, now, owner=run.owner)
            continue
        lifecycle.drop_work(record, "check_stop")
        if reason is None:
            lifecycle.save_work(services, record, now, "the CRM record is still open: calls go on", owner=run.owner)
            continue
        key = f"{mark['key']}:checked"
        stopped |= lifecycle.stop(services, record, now, reason, key, owner=run.owner) == "cancel_planned"
    if stopped:
        services.notify_follow_up()
