"""The "notify" task: POST each call's outcome to RESULTS_WEBHOOK_URL, signed the Standard Webhooks way.

Headers `webhook-id` (the same on every retry of one outcome, so a receiver drops repeats),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: one
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret in RESULTS_WEBHOOK_SECRET, space-separated,
so a receiver keeps verifying while the secrets rotate.

The signer is the few lines of hmac below rather than the `standardwebhooks` package: that package
is a verifier for receivers with a one-secret signer, and a runtime dependency in the Lambda package
(and in pip-audit's reach) for six lines of the standard library is not worth it. The tests verify our
signatures with the package, so the two cannot drift apart.

Durable like write-back: a refused or failed POST is tried again with backoff (honouring Retry-After),
then parked as a dead letter (the work item's due None and its error). Delivery is recorded before
anything else. Nothing here logs the URL (it may carry the receiver's token) or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls import lifecycle
from crm2calls.config import webhook_secret_key
from crm2calls.http import parse_retry_after
from crm2calls.model import LeadRecord, Status

if TYPE_CHECKING:
    import requests

    from crm2calls.followup import FollowUpPass

log = logging.getLogger("crm2calls.results_webhook")

EVENT_TYPE = "call.finished"
# Seconds to wait after the 1st, 2nd, ... failed attempt; the attempt after the last one is the final one
# (about 27 h in all, as Standard Webhooks senders do).
BACKOFF = (60, 300, 1800, 7200, 18000, 36000, 36000)
MAX_ATTEMPTS = len(BACKOFF) + 1
MAX_RETRY_AFTER = 24 * 3600  # a receiver's Retry-After is honoured up to a day
TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
RENEW_EVERY = 60.0  # seconds between lease renewals in one pass (the lease is 5 minutes)
# Failed POSTs in a row after which a pass stops posting: a receiver that hangs would otherwise cost every
# lead of the pass its full timeout. The rest keep their work and lease and go first once the lease ends.
FAILURES_IN_A_ROW = 5
ENDED = frozenset({Status.CALLED, Status.NOT_REACHED, Status.CANCELED})


class DeliveryError(Exception):
    """The receiver did not take the message (no 2xx); retry_after in seconds when it said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def utc_text(value: datetime) -> str:
    """ISO 8601 in UTC with a Z: 2026-11-26T08:59:00Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc_text(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return utc_text(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def message_id(record: LeadRecord) -> str:
    """webhook-id: derived from the lead and its job, so every retry (and every pass) sends the same one."""
    digest = hashlib.sha256(f"{record.id}\n{record.job_id or ''}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def ended_at(record: LeadRecord) -> str:
    """When the call ended: the outcome's finished_at, else the history line that ended it (stable on retries)."""
    finished = _utc_text((record.outcome or {}).get("finished_at"))
    if finished:
        return finished
    for step in record.history:
        if step.get("status") in ENDED and (at := _utc_text(step.get("at"))):
            return at
    return utc_text(record.updated_at)


def message(record: LeadRecord) -> dict[str, Any]:
    """The call.finished message of a lead whose call ended."""
    outcome = record.outcome or {}
    return {
        "type": EVENT_TYPE,
        "timestamp": ended_at(record),
        "data": {
            "lead_id": record.id,
            "source": record.source,
            "ref": record.ref,
            "campaign": record.campaign,
            "job_id": record.job_id,
            "job_status": outcome.get("job_status"),
            "call_result": outcome.get("call_result"),
            "attempts": outcome.get("attempts"),
            "duration_s": outcome.get("duration_s"),
            "finished_at": _utc_text(outcome.get("finished_at")),
            "report": outcome.get("report"),
        },
    }


def sign(secrets: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature: one `v1,<base64 HMAC-SHA256>` of "id.timestamp.body" per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        key = webhook_secret_key(secret)
        if key:  # config validated every secret at start-up
            digest = hmac.new(key, signed, hashlib.sha256).digest()
            signatures.append("v1," + base64.b64encode(digest).decode("ascii"))
    return " ".join(signatures)


def post(session: requests.Session, url: str, secrets: tuple[str, ...], record: LeadRecord, now: datetime) -> int:
    """POST the lead's message, signed now; its HTTP status (2xx), or DeliveryError."""
    import requests

    body = json.dumps(message(record), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    msg_id, timestamp = message_id(record), int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "crm2calls",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }
    try:
        response = session.post(url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
    except requests.Timeout:
        raise DeliveryError("the receiver timed out") from None
    except requests.RequestException as exc:  # its text names the URL: keep only the kind
        raise DeliveryError(f"the receiver is unreachable ({type(exc).__name__})") from None
    status = response.status_code
    if 200 <= status < 300:
        return status
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    if 300 <= status < 400:
        raise DeliveryError(f"the receiver redirected (HTTP {status}); give RESULTS_WEBHOOK_URL its final URL")
    raise DeliveryError(f"the receiver answered HTTP {status}", retry_after)


def next_try(attempts: int, now: datetime, retry_after: float | None) -> datetime | None:
    """When to try again after `attempts` failed ones (None: the limits are spent)."""
    if attempts >= MAX_ATTEMPTS:
        return None
    delay = BACKOFF[attempts - 1]
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return now + timedelta(seconds=delay)


def notify(run: FollowUpPass, leads: list[LeadRecord]) -> None:
    """The "notify" handler: POST each lead's outcome, or drop the work when RESULTS_WEBHOOK_URL is not set."""
    services, settings = run.services, run.services.settings
    url, secrets = settings.results_webhook_url, settings.results_webhook_secrets
    if not url:
        for record in leads:
            lifecycle.notify_dropped(services, record, run.now, owner=run.owner)
        return
    import requests

    from crm2calls.logs import install_record_redaction

    install_record_redaction()  # urllib3 logs request lines, and the URL may carry the receiver's token
    held: set[str] = set()
    renewed = float("-inf")
    failures = 0
    with requests.Session() as session:
        for index, record in enumerate(leads):
            if run.out_of_time():
                return  # the rest keep their work and lease; the next pass takes them
            if failures >= FAILURES_IN_A_ROW:
                log.warning("results webhook failed %d times in a row: %d outcomes wait for a later pass",
                            failures, len(leads) - index, extra={"fields": {"event": "notify_paused",
                                                                            "waiting": len(leads) - index}})
                return
            if time.monotonic() - renewed > RENEW_EVERY:
                held, renewed = run.renew(leads[index:]), time.monotonic()
            if record.id not in held:
                continue  # its lease ran out and another pass has it
            now = services.clock()
            try:
                status = post(session, url, secrets, record, now)
            except DeliveryError as exc:
                failures += 1
                _failed(run, record, now, exc)
                continue
            failures = 0
            item = record.work.get(lifecycle.NOTIFY)
            attempt = (item.attempts if item else 0) + 1
            note = f"results webhook took the outcome (HTTP {status}, attempt {attempt})"
            lifecycle.notify_delivered(services, record, now, note, owner=run.owner)


def _failed(run: FollowUpPass, record: LeadRecord, now: datetime, exc: DeliveryError) -> None:
    item = record.work.get(lifecycle.NOTIFY)
    attempts = (item.attempts if item else 0) + 1
    due = next_try(attempts, now, exc.retry_after)
    fields = {"event": "notify_failed", "lead_id": record.id, "attempt": attempts, "error": exc.message}
    if due is None:
        log.error("results webhook gave up on lead %s after %d attempts: %s", record.id, attempts, exc.message,
                  extra={"fields": {**fields, "event": "notify_given_up"}})
        lifecycle.notify_given_up(run.services, record, now, exc.message, owner=run.owner)
        return
    log.warning("results webhook did not take lead %s's outcome (%s); attempt %d, next at %s", record.id,
                exc.message, attempts, f"{due:%Y-%m-%d %H:%M:%S} UTC", extra={"fields": fields})
    lifecycle.notify_later(run.services, record, now, due, exc.message, owner=run.owner)
