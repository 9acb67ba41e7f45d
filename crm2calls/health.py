"""What GET /healthz answers: one document, the same on every platform, from a few single-item reads.

Nothing here counts leads. Every delivery pass records what it saw (record_pass: when it ran, the
backlog, each campaign's oldest waiting lead, the held leads); the check reads that record beside the
documents delivery and the guards keep (campaign paused, guard holding, CRM credentials refused) and
the store's maintained counts, so a monitor may call it every ten seconds, on DynamoDB too. A record
that grows old is itself the news: nothing runs delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls.guards import DEFAULT_CAMPAIGN, GUARD_META
from crm2calls.logs import redact

if TYPE_CHECKING:
    from crm2calls.services import Services
    from crm2calls.store.base import Backlog

log = logging.getLogger("crm2calls.health")

# {"pass_at", "backlog", "held", "oldest_waiting_at", "oldest_by_campaign"}: what the latest delivery pass saw
HEALTH_META = "health"
CRM_AUTH_META = "crm_auth"  # {source: {"reason", "since"}} while a CRM refuses our credentials
# {source: {"dead": n, "held": {"reason", "since", "retry_at"}}}: write-backs of call outcomes (crm2calls/writeback.py)
WRITE_BACK_META = "write_back"
CANCELS_META = "cancels"  # {"leads": [ids], "error", "since"} while cancels of stopped leads' jobs fail (stops.py)
RECORD_EVERY = timedelta(seconds=1)  # a pass that saw what the last record says rewrites it at most this often
LAMBDA_SWEEP = timedelta(minutes=1)  # zappa_settings.json runs crm2calls.lambda_tasks.deliver every minute
LOCAL_SILENCE = timedelta(seconds=30)  # a local worker passes every poll_seconds: this long without one is a stop

DRY_RUN_MESSAGE = (
    "DRY_RUN is on outside development: every addPhones body is logged and nothing is sent, so nobody is "
    "called. Set AIMYLOGIC_TOKEN and unset DRY_RUN, then `flask --app app leads retry --dry-run` sends "
    "the leads the dry run logged."
)

STORE_MESSAGE = (
    "the lead store cannot be reached: webhooks are answered 503 and CRMs retry them, nothing is delivered. "
    "Check LEADS_STORE and the log's store errors: the disk and file permissions (SQLite), or the table, "
    "its region and the role's permissions (DynamoDB)."
)


@dataclass(frozen=True)
class Reason:
    """Why the service is not simply ok, and what to do; a failing reason makes /healthz answer 503."""

    code: str
    message: str
    failing: bool = False

    def document(self) -> dict[str, str]:
        """The reason as /healthz shows it."""
        return {"code": self.code, "message": self.message}


def record_pass(services: Services, backlog: Backlog) -> None:
    """Note what a delivery pass saw, for the health check: at once when it changed, else once a RECORD_EVERY."""
    store, now = services.store, services.clock()
    oldest = min(backlog.oldest.values(), default=None)
    seen = {
        "backlog": backlog.waiting,
        "held": backlog.held,
        "oldest_waiting_at": oldest and oldest.isoformat(),
        "oldest_by_campaign": {campaign: at.isoformat() for campaign, at in sorted(backlog.oldest.items())},
    }
    last = store.get_meta(HEALTH_META)
    if (
        last is not None
        and timedelta(0) <= now - datetime.fromisoformat(last["pass_at"]) < RECORD_EVERY
        and all(last.get(name) == value for name, value in seen.items())
    ):
        return
    store.put_meta(HEALTH_META, {"pass_at": now.isoformat(), **seen})


def crm_refused(services: Services, source: str, message: str, now: datetime) -> None:
    """A CRM refused our credentials while fetching a lead: /healthz says so until it accepts them again."""
    refused = services.store.get_meta(CRM_AUTH_META) or {}
    if source not in refused:
        services.store.put_meta(CRM_AUTH_META, {**refused, source: {"reason": message, "since": now.isoformat()}})


def crm_accepted(services: Services, source: str) -> None:
    """A CRM gave us a lead: its credentials work (again)."""
    refused = services.store.get_meta(CRM_AUTH_META)
    if refused and source in refused:
        rest = {name: note for name, note in refused.items() if name != source}
        services.store.put_meta(CRM_AUTH_META, rest or None)


def campaign_states(services: Services) -> tuple[dict[str, dict], list[Reason]]:
    """Each campaign's state (crm2calls/campaigns.py keeps one document per campaign) and the reasons it gives."""
    from crm2calls import campaigns

    states = campaigns.health(services)
    guard = services.store.get_meta(GUARD_META) or {}
    reasons = []
    for name, entry in states.items():
        if entry["delivery"] == campaigns.TOKEN_REFUSED:
            variable = "AIMYLOGIC_TOKEN" if name == DEFAULT_CAMPAIGN else "the campaign's token_env variable"
            reasons.append(Reason(
                "token_refused",
                f"campaign {name}: {entry.get('reason')}. Its delivery is paused, leads are kept and a probe is "
                f"sent now and then; copy a fresh token into {variable} (or fix AIMYLOGIC_URL) and restart.",
            ))
        elif entry["delivery"] == campaigns.HELD:
            reasons.append(Reason("campaign_held", f"campaign {name}: {entry.get('reason')}"))
    if guard.get("holding"):
        for entry in states.values():
            if entry["delivery"] == campaigns.SENDING:
                entry["delivery"] = campaigns.HELD  # the spend guards hold every campaign alike
        reasons.append(Reason(
            "campaign_held",
            f"{guard.get('reason')}; leads are held until {guard.get('until')}, not dropped. If the traffic is "
            "real, raise the cap in [guards] of leads.toml; if not, a webhook URL may have leaked: rotate "
            "WEBHOOK_SECRET.",
        ))
    return states, reasons


def check(services: Services) -> tuple[dict[str, Any], int]:
    """The health document and its HTTP status: 200 when ok or degraded, 503 when failing."""
    settings = services.settings
    reasons = []
    if settings.dry_run and not settings.dev_mode:
        reasons.append(Reason("dry_run", DRY_RUN_MESSAGE))
    body: dict[str, Any] = {
        "dry_run": settings.dry_run, "campaigns": {}, "oldest_waiting_s": None, "backlog": None, "counts": None
    }
    try:
        store = services.store
        last = store.get_meta(HEALTH_META)
        body["campaigns"], campaign_reasons = campaign_states(services)
        refused = store.get_meta(CRM_AUTH_META) or {}
        write_backs = store.get_meta(WRITE_BACK_META) or {}
        cancels = store.get_meta(CANCELS_META)
        body["counts"] = store.count_by_status()
    except Exception as exc:  # the check must answer whatever the store raises
        log.error("health check: the lead store is unreachable: %s", redact(f"{type(exc).__name__}: {exc}"))
        reasons.insert(0, Reason("store_unreachable", STORE_MESSAGE, failing=True))
        return _answer(body, reasons)
    now = services.clock()
    reasons.extend(_delivery_reasons(services, last, now))
    if last is not None:
        oldest = last.get("oldest_waiting_at")
        waited = (now - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0
        body["oldest_waiting_s"] = max(0, round(waited))
        body["backlog"] = last["backlog"]
        _campaign_waits(body["campaigns"], last.get("oldest_by_campaign"), now)
        reasons.extend(_backlog_reasons(services, body["oldest_waiting_s"], body["backlog"]))
    reasons.extend(campaign_reasons)
    if cancels:
        body["cancels_retrying"] = len(cancels["leads"])
        reasons.append(Reason(
            "cancels_retrying",
            f"{len(cancels['leads'])} stopped lead(s) still have a job queued in Aimylogic: cancelling it fails since "
            f"{cancels['since']} ({cancels['error']}). Each is retried with backoff until Aimylogic cancels it; "
            "`leads show ID` shows its cancel.",
        ))
    for source, note in sorted(refused.items()):
        reasons.append(Reason(
            "crm_credentials_refused",
            f"{source} refused our API credentials since {note.get('since')}: {note.get('reason')}. Its leads that "
            f"need the API wait (nothing is lost); fix the {source.upper()}_* variables and restart.",
        ))
    reasons.extend(write_back_reasons(write_backs))
    return _answer(body, reasons)


def write_back_reasons(write_backs: dict[str, Any]) -> list[Reason]:
    """What the write-back document says: a CRM refusing the write scope, dead-lettered write-backs."""
    reasons = []
    for source, entry in sorted(write_backs.items()):
        held = entry.get("held")
        if held:
            reasons.append(Reason(
                "write_back_refused",
                f"{source} refuses to take call outcomes since {held.get('since')}: {held.get('reason')}. Its "
                f"write-backs are held, not lost, and go out within minutes of the fix (docs/crm/{source}.md).",
            ))
        if entry.get("dead"):
            reasons.append(Reason(
                "write_back_dead_letters",
                f"{entry['dead']} call outcome(s) could not be written to {source} and gave up: see "
                f"`flask --app app leads list` and `leads show ID` for why; `flask --app app leads replay --dead` "
                "writes them again.",
            ))
    return reasons



def _campaign_waits(campaigns: dict[str, dict], oldest: dict[str, str] | None, now: datetime) -> None:
    """Each campaign's oldest waiting lead's age in seconds, as the latest pass saw it (0: none waits)."""
    if oldest is None:  # recorded by a release before per-campaign ages
        return
    for name, entry in campaigns.items():
        at = oldest.get(name)
        entry["oldest_waiting_s"] = max(0, round((now - datetime.fromisoformat(at)).total_seconds())) if at else 0


def _answer(body: dict[str, Any], reasons: list[Reason]) -> tuple[dict[str, Any], int]:
    failing = any(reason.failing for reason in reasons)
    status = "failing" if failing else "degraded" if reasons else "ok"
    return {"status": status, "reasons": [reason.document() for reason in reasons], **body}, 503 if failing else 200


def silence_limit(services: Services) -> timedelta:
    """How long without a delivery pass means nothing runs delivery: three missed sweeps, or the local worker's."""
    if services.settings.on_lambda:
        return 3 * LAMBDA_SWEEP
    return max(LOCAL_SILENCE, timedelta(seconds=10 * services.settings.policy.delivery.poll_seconds))


def _delivery_reasons(services: Services, last: dict[str, Any] | None, now: datetime) -> list[Reason]:
    where = (
        "run `zappa schedule STAGE` and look for errors of crm2calls.lambda_tasks.deliver in CloudWatch"
        if services.settings.on_lambda
        else 'look for "delivery pass failed" in the log and restart the server (gunicorn or `serve`)'
    )
    if last is None:
        return [Reason("delivery_stalled", f"no delivery pass has run yet: leads are stored but not sent; {where}.")]
    age = now - datetime.fromisoformat(last["pass_at"])
    if age <= silence_limit(services):
        return []
    return [Reason(
        "delivery_stalled",
        f"no delivery pass for {round(age.total_seconds())} s (the last at {last['pass_at']}): leads are stored "
        f"but not sent; {where}.",
    )]


def _backlog_reasons(services: Services, oldest_s: int, backlog: int) -> list[Reason]:
    limits = services.settings.policy.health
    reasons = []
    if oldest_s > limits.max_waiting_minutes * 60:
        reasons.append(Reason(
            "lead_waiting_too_long",
            f"the oldest lead waiting to be sent arrived {oldest_s // 60} min ago ([health] max_waiting_minutes = "
            f"{limits.max_waiting_minutes}): Aimylogic is slow or failing, or delivery is paused; see the other "
            "reasons and `flask --app app leads list --status pending`.",
        ))
    if backlog > limits.max_backlog:
        reasons.append(Reason(
            "backlog_high",
            f"{backlog} leads wait to be sent ([health] max_backlog = {limits.max_backlog}): a burst larger than "
            "delivery keeps up with, or delivery is stuck; see the other reasons and the log's delivery_pass lines.",
        ))
    return reasons

