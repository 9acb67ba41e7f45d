"""Durable delivery: enrich received leads, send pending ones to addPhones, retry, never lose one.

One function, deliver_pending(), drains due work; the local worker thread, Lambda's async task
and its scheduled sweep all call it. Leads are leased, so passes in several threads, processes or
Lambdas never send the same lead at once: a send renews its leases before every request and drops
any lead another worker has taken. A pass that dies mid-send leaves its leads SENDING until the
lease expires and the next pass sends them again (Aimylogic's 24-hour duplicate guard ignores the
repeat, so the person is still called once). Every status change goes through crm2calls/lifecycle.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from crm2calls import campaigns, guards, health, lifecycle, metrics
from crm2calls.errors import AuthError, ClosedInCrmError, EnrichmentError, RejectedError, StoreError, UnavailableError
from crm2calls.logs import redact
from crm2calls.model import LeadEvent, LeadRecord, Status
from crm2calls.policy import DeliveryPolicy
from crm2calls.services import Services

log = logging.getLogger("crm2calls.delivery")


@dataclass
class PassReport:
    """What one delivery pass did."""

    enriched: int = 0
    admitted: int = 0
    held: int = 0
    sent: int = 0
    dry_run: int = 0
    retried: int = 0
    rejected: int = 0
    failed: int = 0
    expired: int = 0
    requests: int = 0  # addPhones calls
    paused: bool = False  # Aimylogic refused a campaign's token during the pass: its leads are held
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, status: Status | None, requests: int = 0) -> None:
        """Count one lead's new status (None: nothing was written), and addPhones requests made."""
        name = _COUNTED.get(status) if status is not None else None
        with self._lock:
            self.requests += requests
            if name:
                setattr(self, name, getattr(self, name) + 1)

    def figures(self) -> dict[str, int | bool]:
        """The counts by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def __str__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in self.figures().items())


_COUNTED = {
    Status.SENT: "sent",
    Status.DRY_RUN: "dry_run",
    Status.REJECTED: "rejected",
    Status.FAILED: "failed",
    Status.EXPIRED: "expired",
    Status.PENDING: "retried",
    Status.RECEIVED: "retried",
}


def backoff(policy: DeliveryPolicy, attempts: int) -> float:
    """Seconds before attempt n+1: exponential, capped, half of it random so retries spread out."""
    ceiling = min(policy.backoff_cap_seconds, policy.backoff_base_seconds * 2 ** min(max(attempts - 1, 0), 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def split_budget(size: int) -> int:
    """addPhones requests a refused batch may spend on finding its bad entries in one pass.

    Bisection isolates one bad entry with two requests a level; what is left after the budget waits
    for the next pass, which isolates at least one more.
    """
    return 2 * math.ceil(math.log2(size)) + 2 if size > 1 else 1


def deliver_pending(services: Services, *, time_budget: float | None = None) -> PassReport:
    """Enrich and send every due lead, in rounds, until nothing is due or time_budget seconds are spent.

    The budget bounds claiming and each request a send starts: the caller's margin covers one
    request and its save after it.
    """
    owner = uuid.uuid4().hex
    report = PassReport()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while deadline is None or time.monotonic() < deadline:
        claimed = _enrich_stage(services, owner, report)
        claimed += _admission_stage(services, owner, report)
        claimed += _delivery_stage(services, owner, report, deadline)
        if not claimed:
            break
    _report_state(services, report)
    figures = report.figures()
    if any(value for name, value in figures.items() if name != "paused"):
        log.info("delivery pass: %s", report, extra={"fields": {"event": "delivery_pass", **figures}})
    return report


def _report_state(services: Services, report: PassReport) -> None:
    """What monitoring reads after every pass, empty ones included (a silent gauge means nothing runs)."""
    store = services.store
    backlog = store.backlog()
    guard_holds = bool(store.get_meta(guards.GUARD_META))
    states = campaigns.record_held(services)
    report.paused = any(state["delivery"] == campaigns.TOKEN_REFUSED for state in states.values())
    health.record_pass(services, backlog)
    metrics.delivery_pass()
    now = services.clock()
    for campaign in sorted(set(states) | set(backlog.oldest)):
        oldest = backlog.oldest.get(campaign)
        metrics.oldest_waiting(campaign, (now - oldest).total_seconds() if oldest else 0.0)
    for campaign, state in states.items():
        metrics.campaign_held(campaign, guard_holds or state["delivery"] != campaigns.SENDING)


def _saved(
    write: Callable[..., bool], services: Services, record: LeadRecord, *args: Any, **kwargs: Any
) -> Status | None:
    """Run one lifecycle write; the lead's new status, or None when the lease was lost or the store failed.

    A store error on one lead must not lose the results of the others: the lead keeps its lease
    until it expires, and is then taken up again.
    """
    try:
        return record.status if write(services, record, *args, **kwargs) else None
    except StoreError as exc:
        log.error(
            "could not save lead %s: %s; it is taken up again when its lease ends", record.id, exc,
            extra={"fields": {"event": "save_failed", "lead_id": record.id}},
        )
        return None


# Enrichment: RECEIVED leads whose phone must be fetched from the CRM's API.


def _enrich_stage(services: Services, owner: str, report: PassReport) -> int:
    policy = services.settings.policy.delivery
    records = services.store.claim(Status.RECEIVED, services.clock(), policy.lease_seconds, policy.batch_size, owner)
    if not records:
        return 0
    # CRM API calls are slow (seconds each): enrich in parallel, like batches are sent.
    with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
        for enriched, status in pool.map(lambda record: _enrich_one(services, record, owner), records):
            if enriched:
                report.enriched += 1
            if not enriched or status is Status.REJECTED:  # a fresh PENDING lead is no retry
                report.count(status)
    return len(records)


def _enrich_one(services: Services, record: LeadRecord, owner: str) -> tuple[bool, Status | None]:
    """Fetch, render and admit one lead: (did the CRM give us the lead?, new status or None if not saved)."""
    policy = services.settings.policy.delivery
    now = services.clock()
    try:
        source = services.source(record.source)
        event = LeadEvent(
            key=record.key.split(":", 1)[1], ref=record.ref, lead=None, raw=json.loads(record.raw or "{}")
        )
        lead = source.enrich(event, now)
    except ClosedInCrmError as exc:
        # Closed before we read it (an update event came before the lead's webhook, with no lead to look up
        # for then): stopped like a stop event would, never sent. Keyed by the lead, so applied once.
        return False, _saved(_stopped, services, record, now, exc.message, owner)
    except EnrichmentError as exc:
        record.attempts += 1
        if not exc.retryable or record.attempts >= policy.enrich_max_attempts:
            return False, _saved(lifecycle.reject, services, record, now, exc.message, owner=owner)
        return False, _saved(_retry, services, record, now, exc.message, exc.retry_after, owner)
    except UnavailableError as exc:
        record.attempts += 1
        if _too_old(record, now, policy):
            return False, _saved(lifecycle.fail, services, record, now, exc.message, owner=owner)
        return False, _saved(_retry, services, record, now, exc.message, exc.retry_after, owner)
    except AuthError as exc:
        # Every lead of this source fails alike until a person fixes the credentials: keep the
        # lead as it is, attempts unchanged, and look again after the longest backoff; past the
        # age limit it becomes a dead letter, which `leads retry --failed` revives after the fix.
        log.error(
            "could not fetch lead %s from %s: %s (fix the %s_* variables; the lead is kept)",
            record.id, record.source, exc.message, record.source.upper(),
            extra={"fields": {"event": "enrich_auth", "source": record.source, "lead_id": record.id}},
        )
        health.crm_refused(services, record.source, exc.message, now)
        if _too_old(record, now, policy):
            return False, _saved(lifecycle.fail, services, record, now, exc.message, owner=owner)
        until = now + timedelta(seconds=policy.backoff_cap_seconds)
        return False, _saved(lifecycle.postpone, services, record, until, exc.message, owner=owner)
    except Exception as exc:  # a bug in one adapter must not stop the pass; the lead fails after its attempts
        record.attempts += 1
        message = redact(f"unexpected {type(exc).__name__}: {exc}")
        log.error("enriching lead %s failed: %s", record.id, message, exc_info=True)
        if record.attempts >= policy.enrich_max_attempts:
            return False, _saved(lifecycle.fail, services, record, now, message, owner=owner)
        return False, _saved(_retry, services, record, now, message, None, owner)
    health.crm_accepted(services, record.source)
    return True, _saved(lifecycle.enriched, services, record, lead, now, owner)


# Admission: HELD leads pass the spend guards once (crm2calls/guards.py) before they may be sent.


def _admission_stage(services: Services, owner: str, report: PassReport) -> int:
    policy = services.settings.policy.delivery
    now = services.clock()
    records = services.store.claim(Status.HELD, now, policy.lease_seconds, policy.batch_size, owner)
    holding = False
    verdicts: dict[str, campaigns.Verdict] = {}
    for record in records:
        if record.campaign not in verdicts:
            verdicts[record.campaign] = campaigns.verdict(services, record.campaign, now)
        verdict = verdicts[record.campaign]
        if not verdict.send:  # its campaign still cannot take it
            status = _saved(lifecycle.hold, services, record, now, verdict.reason, verdict.until, owner=owner)
            report.count(None if status is Status.HELD else status)
            report.held += status is Status.HELD
            continue
        status = _saved(lifecycle.admit_held, services, record, now, owner)
        if status is Status.PENDING:
            report.admitted += 1
        elif status is Status.HELD:
            report.held += 1
            holding = True
        else:
            report.count(status)
    if records and not holding and services.store.get_meta(guards.GUARD_META):
        services.store.put_meta(guards.GUARD_META, None)
    return len(records)


# Delivery: PENDING leads (and SENDING ones whose worker died) to addPhones, in batches of one campaign each.


def _delivery_stage(services: Services, owner: str, report: PassReport, deadline: float | None) -> int:
    store, policy = services.store, services.settings.policy.delivery
    now = services.clock()
    claimed = store.claim(Status.PENDING, now, policy.lease_seconds, policy.batch_size * policy.concurrency, owner)
    ready: dict[str, list[LeadRecord]] = {}
    for record in claimed:
        if record.phone_key and guards.is_blocked(services, record.phone_key):
            # A number blocked after its lead was accepted is still never called.
            blocked = "on the do-not-call list"
            report.count(_saved(lifecycle.reject, services, record, now, blocked, owner=owner))
        elif lifecycle.window_closed(record, now):
            report.count(_saved(lifecycle.expire, services, record, now, owner=owner))
        else:
            ready.setdefault(record.campaign, []).append(record)
    batches: list[tuple[str, list[LeadRecord]]] = []
    for campaign, records in ready.items():
        # Aimylogic's status first (cached for a minute): a paused or finished campaign's leads are held,
        # not sent into a refusal that would cost requests and could reject them.
        verdict = campaigns.verdict(services, campaign, now)
        if not verdict.send:
            _hold(services, [records], verdict, owner, report)
            continue
        batches += [(campaign, records[i : i + policy.batch_size]) for i in range(0, len(records), policy.batch_size)]
    if not batches:
        return len(claimed)
    with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
        results = list(pool.map(lambda batch: _send_batch(services, *batch, owner, report, deadline), batches))
    for campaign in dict.fromkeys(name for name, _ in batches):
        mine = [result for (name, _), result in zip(batches, results, strict=True) if name == campaign]
        refusal = next((result for result in mine if isinstance(result, AuthError)), None)
        if refusal is not None:  # a refused token outweighs another batch's acceptance
            campaigns.token_refused(services, campaign, refusal, services.clock())
        elif any(result is True for result in mine):
            campaigns.accepted(services, campaign)
    return len(claimed)


def _send_batch(
    services: Services,
    campaign: str,
    records: list[LeadRecord],
    owner: str,
    report: PassReport,
    deadline: float | None,
) -> bool | AuthError | None:
    """Send a batch of one campaign as frozen, recording each answer as it comes; split a refusal about entries.

    A refusal first asks Aimylogic for the campaign's status: a paused, finished or deleted campaign holds
    the whole batch (a handful of requests, no lead rejected for it); only a running campaign's refusal
    is about entries, and is split to find them. A 400 adds nothing, so the halves sent again hold only
    entries Aimylogic has not taken. How Aimylogic answers addPhones for a paused campaign is UNKNOWN
    (docs: aimylogic-calls-api.md a.8): a 200 queues the entries there (they are called when it runs
    again), a 400 or a 503 leads to the status check here, and either way no lead is rejected or spends
    an attempt for the campaign's state.
    Returns True when Aimylogic accepted something, the AuthError that refused the token, or None.
    """
    dialer = services.dialer_for(campaign)
    fingerprint = getattr(dialer, "fingerprint", None)
    budget, requests, accepted = split_budget(len(records)), 0, False
    checked = False  # the campaign's status was asked after a refusal of this send
    queue = [records]
    while queue:
        group = queue.pop(0)
        if requests:
            # Each request may take up to a timeout: keep the leases alive, and past the budget or the
            # time limit let the rest wait for the next pass.
            if requests >= budget or (deadline is not None and time.monotonic() >= deadline):
                _defer(services, [group, *queue], owner, report)
                return accepted
            # Renew every lead still waiting in this send, not only the next group: the others wait too.
            group, *queue = _renewed(services, [group, *queue], owner)
            if not group:
                continue
        try:
            ids = dialer.add_phones([json.loads(record.entry) for record in group])
        except RejectedError as exc:
            requests += 1
            report.count(None, requests=1)
            if not checked and (len(group) > 1 or _passes_schema(group[0])):
                checked = True
                verdict = campaigns.verdict(services, campaign, services.clock(), fresh=True)
                if not verdict.send:
                    _hold(services, [group, *queue], verdict, owner, report)
                    return accepted
            if len(group) > 1:
                middle = len(group) // 2
                queue[:0] = [group[:middle], group[middle:]]
            else:
                [record] = group
                record.attempts += 1
                now = services.clock()
                report.count(_saved(lifecycle.reject, services, record, now, exc.message, owner=owner))
            continue
        except AuthError as exc:
            report.count(None, requests=1)
            until = services.clock() + timedelta(seconds=services.settings.policy.delivery.backoff_cap_seconds)
            refused = campaigns.Verdict(campaign, False, campaigns.TOKEN_REFUSED, exc.message, until)
            _hold(services, [group, *queue], refused, owner, report)
            return exc
        except Exception as exc:  # UnavailableError, or a bug: the leads are retried, the pass goes on
            report.count(None, requests=1)
            if not isinstance(exc, UnavailableError):
                log.error("sending a batch failed: %s", redact(repr(exc)), exc_info=exc)
            elif not checked:  # a paused campaign may answer 503: hold its leads rather than spend attempts
                checked = True
                verdict = campaigns.verdict(services, campaign, services.clock(), fresh=True)
                if not verdict.send:
                    _hold(services, [group, *queue], verdict, owner, report)
                    return accepted
            _unavailable(services, [group, *queue], exc, owner, report)
            return accepted
        requests += 1
        accepted = True
        report.count(None, requests=1)
        now = services.clock()
        recorded = []
        for record, job_id in zip(group, _job_ids(ids, len(group)), strict=True):
            status = _saved(lifecycle.sent, services, record, job_id, now, owner, fingerprint)
            report.count(status)
            recorded += [record] if status is Status.SENT else []
        _stopped_while_sending(services, recorded)
    return accepted


def _stopped_while_sending(services: Services, records: list[LeadRecord]) -> None:
    """Their job ids are recorded: only now read the stops, so one that came during the send cancels the job."""
    if records:
        from crm2calls.stops import after_sent

        after_sent(services, records, services.clock())


def _passes_schema(record: LeadRecord) -> bool:
    """Does the entry pass our own outbound schema? If not, a refusal of it alone is surely about it."""
    from marshmallow import ValidationError

    from schemas.phone_entry import validate_entry

    try:
        validate_entry(json.loads(record.entry))
    except ValidationError:
        return False
    return True


def _hold(
    services: Services, groups: list[list[LeadRecord]], verdict: campaigns.Verdict, owner: str, report: PassReport
) -> None:
    """Leads whose campaign cannot take them now: held, attempts unchanged (or expired past their window)."""
    now = services.clock()
    for record in (record for group in groups for record in group):
        status = _saved(lifecycle.hold, services, record, now, verdict.reason, verdict.until, owner=owner)
        report.count(None if status is Status.HELD else status)
        report.held += status is Status.HELD
        report.paused = report.paused or verdict.delivery == campaigns.TOKEN_REFUSED


def _renewed(services: Services, groups: list[list[LeadRecord]], owner: str) -> list[list[LeadRecord]]:
    """The groups' leads this worker still holds, their leases renewed; a lead another worker took is not sent."""
    policy = services.settings.policy.delivery
    until = services.clock() + timedelta(seconds=policy.lease_seconds)
    held = services.store.renew([record.id for group in groups for record in group], owner, until)
    for record in (record for group in groups for record in group if record.id not in held):
        log.warning(
            "lead %s: its lease ran out during a long send and another worker has it; not sending it here",
            record.id, extra={"fields": {"event": "lease_lost", "lead_id": record.id}},
        )
    return [[record for record in group if record.id in held] for group in groups]


def _defer(services: Services, groups: list[list[LeadRecord]], owner: str, report: PassReport) -> None:
    """Leads a split had no budget (or time) left for: pending for the next pass, no attempt spent."""
    now = services.clock()
    message = "its batch was refused and split; the rest waits for the next pass"
    delay = services.settings.policy.delivery.backoff_base_seconds
    for record in (record for group in groups for record in group):
        report.count(_saved(lifecycle.retry_later, services, record, now, delay, message, owner=owner))


def _unavailable(
    services: Services, groups: list[list[LeadRecord]], exc: Exception, owner: str, report: PassReport
) -> None:
    """Aimylogic did not answer: try again after a backoff (never before Retry-After), or give up."""
    policy = services.settings.policy.delivery
    now = services.clock()
    message = exc.message if isinstance(exc, UnavailableError) else f"unexpected {type(exc).__name__}"
    for record in (record for group in groups for record in group):
        record.attempts += 1
        if record.attempts >= policy.max_send_attempts or _too_old(record, now, policy):
            report.count(_saved(lifecycle.fail, services, record, now, message, owner=owner))
        else:
            retry_after = getattr(exc, "retry_after", None)
            report.count(_saved(_retry, services, record, now, message, retry_after, owner))


def _job_ids(ids: list[str], count: int) -> list[str | None]:
    """One id per lead when Aimylogic answered one per entry; otherwise every id (or none) on every lead."""
    if len(ids) == count:
        return list(ids)
    log.warning(
        "addPhones answered %d job ids for %d entries: each lead of the batch keeps all of them", len(ids), count
    )
    # A lone id is a list too ("id,"): joined bare it read as this lead's own job, and a stop cancelled it by id,
    # which cancelled another lead's call of the batch while this one's went on. A comma says "found by phone".
    shared = ",".join(ids) + ("," if len(ids) == 1 else "")
    return [shared or None] * count


def _stopped(services: Services, record: LeadRecord, now: datetime, reason: str, owner: str) -> bool:
    return lifecycle.stop(services, record, now, reason, f"enrich:{record.id}", owner=owner) is not None


def _retry(
    services: Services, record: LeadRecord, now: datetime, message: str, retry_after: float | None, owner: str
) -> bool:
    delay = max(backoff(services.settings.policy.delivery, record.attempts), retry_after or 0.0)
    return lifecycle.retry_later(services, record, now, delay, message, owner=owner)


def _too_old(record: LeadRecord, now: datetime, policy: DeliveryPolicy) -> bool:
    return now - record.created_at >= timedelta(hours=policy.max_age_hours)
