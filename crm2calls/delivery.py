"""Durable delivery: enrich received leads, send pending ones to addPhones, retry, never lose one.

One function, deliver_pending(), drains due work; the local worker thread, Lambda's async task
and its scheduled sweep all call it. Leads are leased, so passes in several threads, processes or
Lambdas never send the same lead at once; a pass that dies mid-send leaves its leads SENDING until
the lease expires and the next pass sends them again (Aimylogic's 24-hour duplicate guard ignores
the repeat, so the person is still called once).
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from crm2calls import guards
from crm2calls.errors import AuthError, EnrichmentError, RejectedError, UnavailableError
from crm2calls.intake import settle, transition
from crm2calls.logs import redact
from crm2calls.model import LeadEvent, LeadRecord, Status
from crm2calls.policy import DeliveryPolicy
from crm2calls.services import Dialer, Services

log = logging.getLogger("crm2calls.delivery")

CAMPAIGN_META = "campaign"  # {"paused", "reason", "since", "retry_at"} while Aimylogic refuses us

# One send's outcome for a group of leads: their job ids, or the error that stopped them.
Outcome = tuple[list[LeadRecord], list[str] | Exception]


@dataclass
class PassReport:
    """What one delivery pass did."""

    enriched: int = 0
    admitted: int = 0
    held: int = 0
    sent: int = 0
    retried: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0  # addPhones calls
    paused: bool = False  # delivery is paused (Aimylogic refused the token) at the end of the pass

    def __str__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in asdict(self).items())


def backoff(policy: DeliveryPolicy, attempts: int) -> float:
    """Seconds before attempt n+1: exponential, capped, half of it random so retries spread out."""
    ceiling = min(policy.backoff_cap_seconds, policy.backoff_base_seconds * 2 ** min(max(attempts - 1, 0), 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def deliver_pending(services: Services, *, time_budget: float | None = None) -> PassReport:
    """Enrich and send every due lead, in rounds, until nothing is due or time_budget seconds are spent."""
    owner = uuid.uuid4().hex
    report = PassReport()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while deadline is None or time.monotonic() < deadline:
        claimed = _enrich_stage(services, owner, report)
        claimed += _admission_stage(services, owner, report)
        claimed += _delivery_stage(services, owner, report)
        if not claimed:
            break
    if any(value for name, value in asdict(report).items() if name != "paused"):
        log.info("delivery pass: %s", report, extra={"fields": {"event": "delivery_pass", **asdict(report)}})
    return report


# Enrichment: RECEIVED leads whose phone must be fetched from the CRM's API.


def _enrich_stage(services: Services, owner: str, report: PassReport) -> int:
    policy = services.settings.policy.delivery
    records = services.store.claim(Status.RECEIVED, services.clock(), policy.lease_seconds, policy.batch_size, owner)
    if not records:
        return 0
    # CRM API calls are slow (seconds each): enrich in parallel, like batches are sent.
    with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
        for enriched, status in pool.map(lambda record: _enrich_one(services, record, owner), records):
            report.enriched += enriched
            if not enriched or status is Status.REJECTED:  # a fresh PENDING lead is no retry
                _count(report, status)
    return len(records)


def _enrich_one(services: Services, record: LeadRecord, owner: str) -> tuple[bool, Status | None]:
    """Fetch, render and settle one lead: (did the CRM give us the lead?, new status or None if the lease was lost)."""
    policy = services.settings.policy.delivery
    now = services.clock()
    enriched = False
    try:
        source = services.source(record.source)
        event = LeadEvent(
            key=record.key.split(":", 1)[1], ref=record.ref, lead=None, raw=json.loads(record.raw or "{}")
        )
        lead = source.enrich(event, now)
    except EnrichmentError as exc:
        record.attempts += 1
        if not exc.retryable or record.attempts >= policy.enrich_max_attempts:
            _reject(services, record, now, exc.message)
        else:
            _retry(record, now, policy, exc.message, exc.retry_after, Status.RECEIVED)
    except UnavailableError as exc:
        record.attempts += 1
        if _too_old(record, now, policy):
            _fail(services, record, now, exc.message)
        else:
            _retry(record, now, policy, exc.message, exc.retry_after, Status.RECEIVED)
    except AuthError as exc:
        # Every lead of this source fails alike until a person fixes the credentials: keep the
        # lead as it is, attempts unchanged, and look again after the longest backoff; past the
        # age limit it becomes a dead letter, which `leads retry --failed` revives after the fix.
        record.last_error = exc.message
        record.next_attempt_at = now + timedelta(seconds=policy.backoff_cap_seconds)
        if _too_old(record, now, policy):
            _fail(services, record, now, exc.message)
        log.error(
            "could not fetch lead %s from %s: %s (fix the %s_* variables; the lead is kept)",
            record.id, record.source, exc.message, record.source.upper(),
            extra={"fields": {"event": "enrich_auth", "source": record.source, "lead_id": record.id}},
        )
    except Exception as exc:  # a bug in one adapter must not stop the pass; the lead fails after its attempts
        record.attempts += 1
        message = redact(f"unexpected {type(exc).__name__}: {exc}")
        log.error("enriching lead %s failed: %s", record.id, message, exc_info=True)
        if record.attempts >= policy.enrich_max_attempts:
            _fail(services, record, now, message)
        else:
            _retry(record, now, policy, message, None, Status.RECEIVED)
    else:
        enriched = True
        settle(services, record, lead, now)
    saved = _save(services, record, owner)
    return enriched and saved, record.status if saved else None


# Admission: HELD leads pass the spend guards once (crm2calls/guards.py) before they may be sent.


def _admission_stage(services: Services, owner: str, report: PassReport) -> int:
    policy = services.settings.policy.delivery
    now = services.clock()
    records = services.store.claim(Status.HELD, now, policy.lease_seconds, policy.batch_size, owner)
    holding = None
    for record in records:
        verdict = guards.admit(services, record, now)
        if verdict.status is Status.PENDING:
            record.next_attempt_at, record.last_error = now, None
            transition(record, Status.PENDING, now, "admitted by the spend guards")
            report.admitted += 1
        elif verdict.status is Status.HELD:
            record.next_attempt_at, record.last_error = verdict.retry_at, verdict.reason
            transition(record, Status.HELD, now, f"{verdict.reason}; held until {verdict.retry_at:%Y-%m-%d %H:%M} UTC")
            holding = verdict
            report.held += 1
        else:
            _reject(services, record, now, verdict.reason)
            _count(report, Status.REJECTED)
        _save(services, record, owner)
    if holding is not None:
        guards.report_holding(services, holding)
    elif records and services.store.get_meta(guards.GUARD_META):
        services.store.put_meta(guards.GUARD_META, None)
    return len(records)


# Delivery: PENDING leads (and SENDING ones whose worker died) to addPhones, in batches.


def _delivery_stage(services: Services, owner: str, report: PassReport) -> int:
    store, policy = services.store, services.settings.policy.delivery
    now = services.clock()
    pause = store.get_meta(CAMPAIGN_META)
    if pause and now < datetime.fromisoformat(pause["retry_at"]):
        report.paused = True
        return 0
    # While paused, a single batch probes whether the token works again.
    limit = policy.batch_size if pause else policy.batch_size * policy.concurrency
    claimed = store.claim(Status.PENDING, now, policy.lease_seconds, limit, owner)
    if not claimed:
        return 0
    records = []
    for record in claimed:  # a number blocked after its lead was accepted is still never called
        if record.phone_key and guards.is_blocked(services, record.phone_key):
            _reject(services, record, now, "on the do-not-call list")
            if _save(services, record, owner):
                _count(report, Status.REJECTED)
        else:
            records.append(record)
    if not records:
        return len(claimed)
    batches = [records[i : i + policy.batch_size] for i in range(0, len(records), policy.batch_size)]
    dialer = services.dialer
    with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
        futures = [pool.submit(_send, dialer, batch) for batch in batches]
        # Each batch is recorded as soon as it is answered: a crash loses at most the batches in flight.
        for future in as_completed(futures):
            outcomes, requests = future.result()
            report.requests += requests
            for group, result in outcomes:
                if isinstance(result, list) and pause:
                    store.put_meta(CAMPAIGN_META, None)
                    log.warning("Aimylogic accepts the campaign token again: delivery resumed")
                    pause, report.paused = None, False
                _settle_batch(services, group, result, owner, report, pause)
    return len(claimed)


def _send(dialer: Dialer, records: list[LeadRecord]) -> tuple[list[Outcome], int]:
    """Send a batch as frozen; on a 400 split it in halves until each bad entry stands alone.

    Returns the outcomes and how many requests it took. A 400 adds nothing, so the halves
    that are resent hold only entries Aimylogic has not taken.
    """
    try:
        return [(records, dialer.add_phones([json.loads(record.entry) for record in records]))], 1
    except RejectedError as exc:
        if len(records) == 1:
            return [(records, exc)], 1
        middle = len(records) // 2
        left, left_requests = _send(dialer, records[:middle])
        right, right_requests = _send(dialer, records[middle:])
        return left + right, 1 + left_requests + right_requests
    except Exception as exc:  # UnavailableError, AuthError, or a bug: settled per lead, never kills the pass
        return [(records, exc)], 1


def _settle_batch(
    services: Services,
    records: list[LeadRecord],
    result: list[str] | Exception,
    owner: str,
    report: PassReport,
    pause: dict | None,
) -> None:
    policy = services.settings.policy.delivery
    now = services.clock()
    if isinstance(result, AuthError):
        _pause(services, result, now, pause)
        report.paused = True
    elif isinstance(result, Exception) and not isinstance(result, (UnavailableError, RejectedError)):
        log.error("sending a batch failed: %s", redact(repr(result)), exc_info=result)
    ids = _job_ids(result, len(records)) if isinstance(result, list) else None
    for index, record in enumerate(records):
        if ids is not None:
            record.attempts += 1
            record.job_id, record.last_error = ids[index], None
            transition(record, Status.SENT, now, f"job {ids[index]}", job_id=ids[index])
        elif isinstance(result, AuthError):
            record.last_error = result.message  # attempts unchanged: the lead did nothing wrong
            record.next_attempt_at = now
            transition(record, Status.PENDING, now, "delivery paused: Aimylogic refused the campaign token")
        elif isinstance(result, RejectedError):
            record.attempts += 1
            _reject(services, record, now, result.message)
        else:
            record.attempts += 1
            message = result.message if isinstance(result, UnavailableError) else f"unexpected {type(result).__name__}"
            if record.attempts >= policy.max_attempts or _too_old(record, now, policy):
                _fail(services, record, now, message)
            else:
                _retry(record, now, policy, message, getattr(result, "retry_after", None), Status.PENDING)
        if _save(services, record, owner):
            _count(report, record.status)


def _job_ids(ids: list[str], count: int) -> list[str | None]:
    """One id per lead when Aimylogic answered one per entry; otherwise every id (or none) on every lead."""
    if len(ids) == count:
        return list(ids)
    log.warning(
        "addPhones answered %d job ids for %d entries: each lead of the batch keeps all of them", len(ids), count
    )
    return [",".join(ids) or None] * count


def _pause(services: Services, exc: AuthError, now: datetime, pause: dict | None) -> None:
    policy = services.settings.policy.delivery
    retry_at = now + timedelta(seconds=policy.backoff_cap_seconds)
    services.store.put_meta(
        CAMPAIGN_META,
        {
            "paused": True,
            "reason": exc.message,
            "since": pause["since"] if pause else now.isoformat(),
            "retry_at": retry_at.isoformat(),
        },
    )
    log.error(
        "DELIVERY PAUSED: %s. Leads are kept and retried from %s; fix AIMYLOGIC_TOKEN (or AIMYLOGIC_URL) and restart",
        exc.message, retry_at.isoformat(timespec="seconds"),
        extra={"fields": {"event": "delivery_paused", "retry_at": retry_at.isoformat()}},
    )


# Outcomes shared by both stages.


def _retry(
    record: LeadRecord, now: datetime, policy: DeliveryPolicy, message: str, retry_after: float | None, status: Status
) -> None:
    delay = max(backoff(policy, record.attempts), retry_after or 0.0)
    record.last_error = message
    record.next_attempt_at = now + timedelta(seconds=delay)
    transition(record, status, now, f"retry in {delay:.0f} s: {message}")


def _reject(services: Services, record: LeadRecord, now: datetime, message: str) -> None:
    record.last_error = message
    transition(record, Status.REJECTED, now, message)
    if record.phone_key:
        services.store.release_phone(guards.campaign_slot(services, record.phone_key), record.key)


def _fail(services: Services, record: LeadRecord, now: datetime, message: str) -> None:
    record.last_error = message
    transition(record, Status.FAILED, now, f"gave up after {record.attempts} attempts: {message}")
    if record.phone_key:
        services.store.release_phone(guards.campaign_slot(services, record.phone_key), record.key)


def _too_old(record: LeadRecord, now: datetime, policy: DeliveryPolicy) -> bool:
    return now - record.created_at >= timedelta(hours=policy.max_age_hours)


def _save(services: Services, record: LeadRecord, owner: str) -> bool:
    """Write the record and drop the lease; False when the lease was lost (another worker owns the lead)."""
    record.lease_owner = record.lease_until = None
    return services.store.update(record, owner)


def _count(report: PassReport, status: Status | None) -> None:
    if status is Status.SENT:
        report.sent += 1
    elif status is Status.REJECTED:
        report.rejected += 1
    elif status is Status.FAILED:
        report.failed += 1
    elif status in (Status.PENDING, Status.RECEIVED):
        report.retried += 1
