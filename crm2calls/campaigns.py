"""Each campaign's state: Aimylogic's own status, asked at most once a minute, and what delivery does about it.

One small document per campaign in the store (`campaign:NAME`) is shared by every process and Lambda:
    aimylogic   the last status Aimylogic gave (planned, inProcess, paused, finished, deleted), or absent
    checked_at  when it was asked: the cache (at most STATUS_TTL old before a pass uses it)
    delivery    sending | held | token_refused: what we do with the campaign's leads
    reason      why not sending; since / retry_at while the token is refused
    held        how many of its leads are held, as the last delivery pass counted them
/healthz and `dialer status` read it; only delivery asks Aimylogic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crm2calls.errors import AuthError, OutboundError
from crm2calls.services import Services

log = logging.getLogger("crm2calls.campaigns")

STATUS_TTL = timedelta(minutes=1)  # a paused campaign's leads go out within this long of it running again
SENDING, HELD, TOKEN_REFUSED = "sending", "held", "token_refused"
RUNNING = frozenset({"planned", "inProcess"})
CLOSED = frozenset({"finished", "deleted"})


def meta_name(campaign: str) -> str:
    """The store document of a campaign's state."""
    return f"campaign:{campaign}"


@dataclass(frozen=True)
class Verdict:
    """May a campaign's leads be sent now; if not, why and when to look again."""

    campaign: str
    send: bool
    delivery: str  # sending | held | token_refused
    reason: str | None = None
    until: datetime | None = None


def state(services: Services, campaign: str) -> dict[str, Any]:
    """The campaign's stored state ({} before anything is known)."""
    return services.store.get_meta(meta_name(campaign)) or {}


def verdict(services: Services, campaign: str, now: datetime, *, fresh: bool = False) -> Verdict:
    """Send or hold the campaign's leads; asks Aimylogic when the cached status is older than STATUS_TTL.

    fresh: ask Aimylogic now whatever the cache holds (a send was just refused).
    """
    settings = services.settings
    declared = campaign in settings.policy.campaign_names()
    if not settings.dry_run and not (declared and settings.campaign_token(campaign)):
        # Declared once and gone from leads.toml, or its variable unset where the start-up check does not run
        # (a CLI pass): nothing to send with; its leads wait for the fix, or expire at their window.
        until = now + timedelta(seconds=settings.policy.delivery.backoff_cap_seconds)
        if not declared:
            reason = f"campaign {campaign} is not in leads.toml: declare [campaigns.{campaign}] again to send its leads"
        else:
            reason = f"{settings.token_env(campaign)} is not set: campaign {campaign} has no token"
        return Verdict(campaign, False, HELD, reason, until)
    doc = state(services, campaign)
    retry_at = doc.get("retry_at")
    if doc.get("delivery") == TOKEN_REFUSED and retry_at and now < datetime.fromisoformat(retry_at):
        return Verdict(campaign, False, TOKEN_REFUSED, doc.get("reason"), datetime.fromisoformat(retry_at))
    checked = datetime.fromisoformat(doc["checked_at"]) if doc.get("checked_at") else None
    stale = fresh or checked is None or now - checked >= STATUS_TTL
    if stale or doc.get("delivery") == TOKEN_REFUSED:
        doc = _check(services, campaign, now, doc)
    return _verdict_of(services, campaign, doc, now)


def _verdict_of(services: Services, campaign: str, doc: dict[str, Any], now: datetime) -> Verdict:
    delivery = doc.get("delivery", SENDING)
    if delivery == SENDING:
        return Verdict(campaign, True, SENDING)
    if delivery == TOKEN_REFUSED:
        return Verdict(campaign, False, TOKEN_REFUSED, doc.get("reason"), datetime.fromisoformat(doc["retry_at"]))
    checked = datetime.fromisoformat(doc["checked_at"]) if doc.get("checked_at") else now
    return Verdict(campaign, False, HELD, doc.get("reason") or _reason(services, campaign, doc.get("aimylogic")),
                   max(checked + STATUS_TTL, now + timedelta(seconds=1)))  # fmt: skip


def _reason(services: Services, campaign: str, status: str | None) -> str:
    if status == "paused":
        return f"campaign {campaign} is paused in Aimylogic"
    return (
        f"campaign {campaign} is {status} in Aimylogic: give it a new end date, or a new campaign's token in "
        f"{services.settings.token_env(campaign)}; its leads are held until then, or until their own window ends"
    )


def _check(services: Services, campaign: str, now: datetime, doc: dict[str, Any]) -> dict[str, Any]:
    """Ask Aimylogic for the campaign's status and store what delivery makes of it."""
    ask = getattr(services.dialer_for(campaign), "campaign_status", None)
    if ask is None:  # a dry run: there is no campaign to ask
        return doc
    try:
        status: str | None = ask()
    except AuthError as exc:
        return token_refused(services, campaign, exc, now)
    except OutboundError as exc:
        # The status is unknown: keep the last one for a minute, and let a send find out for itself.
        log.warning(
            "campaign %s: could not ask Aimylogic for its status: %s", campaign, exc.message,
            extra={"fields": {"event": "campaign_status_failed", "campaign": campaign}},
        )  # fmt: skip
        status = doc.get("aimylogic")
    new = {"aimylogic": status, "checked_at": now.isoformat(), "held": doc.get("held", 0)}
    if status in CLOSED or status == "paused":
        new.update(delivery=HELD, reason=_reason(services, campaign, status))
    else:
        new["delivery"] = SENDING  # running, or a status we do not know: a send will tell
    _log_change(campaign, doc, new)
    services.store.put_meta(meta_name(campaign), new)
    return new


def _log_change(campaign: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    if (old.get("aimylogic"), old.get("delivery", SENDING)) == (new.get("aimylogic"), new["delivery"]):
        return
    if new["delivery"] == SENDING and old.get("delivery", SENDING) == SENDING:  # first seen, or running on
        return
    fields = {"event": "campaign_state", "campaign": campaign, "aimylogic": new.get("aimylogic"),
              "delivery": new["delivery"]}  # fmt: skip
    if new["delivery"] == SENDING:
        log.warning("campaign %s is %s in Aimylogic: its leads are sent again", campaign, new.get("aimylogic"),
                    extra={"fields": fields})  # fmt: skip
    elif new.get("aimylogic") in CLOSED:
        log.error("CAMPAIGN HELD: %s", new["reason"], extra={"fields": fields})
    else:
        log.warning("%s: its leads are held and go out by themselves when it runs again", new["reason"],
                    extra={"fields": fields})  # fmt: skip


def token_refused(services: Services, campaign: str, exc: AuthError, now: datetime) -> dict[str, Any]:
    """Aimylogic refused the campaign's token: hold only this campaign; look again after the longest backoff."""
    doc = state(services, campaign)
    retry_at = now + timedelta(seconds=services.settings.policy.delivery.backoff_cap_seconds)
    since = doc.get("since") if doc.get("delivery") == TOKEN_REFUSED else now.isoformat()
    new = {
        **doc,
        "delivery": TOKEN_REFUSED,
        "paused": True,
        "reason": exc.message,
        "since": since,
        "retry_at": retry_at.isoformat(),
        "checked_at": now.isoformat(),
    }
    services.store.put_meta(meta_name(campaign), new)
    log.error(
        "DELIVERY PAUSED for campaign %s: %s. Its leads are held and tried again from %s; fix %s and restart",
        campaign, exc.message, retry_at.isoformat(timespec="seconds"), services.settings.token_env(campaign),
        extra={"fields": {"event": "delivery_paused", "campaign": campaign, "retry_at": retry_at.isoformat()}},
    )  # fmt: skip
    return new


def accepted(services: Services, campaign: str) -> None:
    """Aimylogic took entries of the campaign: a refused token works again."""
    doc = state(services, campaign)
    if doc.get("delivery") == TOKEN_REFUSED:
        kept = {key: doc[key] for key in ("aimylogic", "checked_at", "held") if key in doc}
        services.store.put_meta(meta_name(campaign), {**kept, "delivery": SENDING})
        log.warning("Aimylogic accepts the token of campaign %s again: delivery resumed", campaign,
                    extra={"fields": {"event": "delivery_resumed", "campaign": campaign}})  # fmt: skip


def record_held(services: Services) -> dict[str, dict[str, Any]]:
    """Count each campaign's held leads into its document (written only when it changed); return health()."""
    counts = services.store.held_by_campaign()
    found = {}
    for campaign in services.settings.policy.campaign_names():
        doc = state(services, campaign)
        if doc.get("held", 0) != counts.get(campaign, 0):
            doc = {**doc, "held": counts.get(campaign, 0)}
            services.store.put_meta(meta_name(campaign), doc)
        found[campaign] = _health_entry(doc)
    return found


def health(services: Services) -> dict[str, dict[str, Any]]:
    """Per campaign: Aimylogic's last known status, our delivery state, how many leads are held (one read each)."""
    return {
        campaign: _health_entry(state(services, campaign)) for campaign in services.settings.policy.campaign_names()
    }


def _health_entry(doc: dict[str, Any]) -> dict[str, Any]:
    entry = {"aimylogic": doc.get("aimylogic"), "delivery": doc.get("delivery", SENDING), "held": doc.get("held", 0)}
    if entry["delivery"] != SENDING:
        entry["reason"] = doc.get("reason")
    return entry


def refused(states: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Of health()'s campaigns, the first whose token Aimylogic refuses, as /healthz's delivery: paused, reason."""
    for entry in states.values():
        if entry["delivery"] == TOKEN_REFUSED:
            return {"paused": True, "reason": entry.get("reason")}
    return None
