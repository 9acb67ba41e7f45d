"""Spend and compliance guards: do-not-call list, per-number caps, and the rate cap on new calls.

A lead passes admit() when its entry is rendered (on the request path, or after enrichment), so the
CRM hears at once about a per-number cap; a lead over the rate cap is HELD until the next window
(never dropped) and admitted then by the worker. Caps are counted once per lead, never per retry.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from crm2calls.model import LeadRecord, Status
from crm2calls.policy import GuardPolicy

if TYPE_CHECKING:
    from crm2calls.services import Services

log = logging.getLogger("crm2calls.guards")

GUARD_META = "guard"  # {"holding", "reason", "until"} while the rate cap holds leads


def phone_key(phone: str) -> str:
    """A stable pseudonym of a normalised phone: the same across sources and campaigns (caps, do-not-call)."""
    return hashlib.sha256(b"crm2calls phone:" + phone.encode()).hexdigest()


def campaign_slot(services: Services, key: str) -> str:
    """The one-person-one-call slot of a phone in the configured campaign."""
    token = services.settings.aimylogic_token or "dry-run"
    return hashlib.sha256(token.encode()).hexdigest()[:16] + ":" + key


def _dnc_name(key: str) -> str:
    return f"dnc:{key}"


def is_blocked(services: Services, key: str) -> bool:
    """Is this phone on the do-not-call list?"""
    return services.store.get_meta(_dnc_name(key)) is not None


def block(services: Services, key: str, now: datetime, note: str = "") -> None:
    """Put a phone on the do-not-call list (only its pseudonym is stored)."""
    services.store.put_meta(_dnc_name(key), {"since": now.isoformat(), "note": note})


def unblock(services: Services, key: str) -> bool:
    """Take a phone off the do-not-call list; False when it was not on it."""
    if not is_blocked(services, key):
        return False
    services.store.put_meta(_dnc_name(key), None)
    return True


def report_holding(services: Services, verdict: Verdict) -> None:
    """Tell /healthz (and the log) that the rate cap holds leads; written once per cap window."""
    current = services.store.get_meta(GUARD_META)
    if current and current.get("until") == verdict.retry_at.isoformat():
        return
    services.store.put_meta(
        GUARD_META, {"holding": True, "reason": verdict.reason, "until": verdict.retry_at.isoformat()}
    )
    log.warning("spend guard: %s; leads are held until %s, not dropped", verdict.reason, verdict.retry_at.isoformat())


def active(guards: GuardPolicy) -> bool:
    """Whether any cap is configured (without one, leads skip the HELD step)."""
    return any(
        (
            guards.calls_per_minute,
            guards.calls_per_day,
            guards.per_number_per_day,
            guards.per_number_per_week,
            guards.per_number_per_month,
        )
    )


@dataclass(frozen=True)
class Verdict:
    """What admit() decided for one lead."""

    status: Status
    reason: str = ""
    retry_at: datetime | None = None


def _next_minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _next_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def admit(services: Services, record: LeadRecord, now: datetime) -> Verdict:
    """Decide whether a rendered lead may be sent now (PENDING), later (HELD) or never (REJECTED)."""
    guards, store = services.settings.policy.guards, services.store
    if record.phone_key and is_blocked(services, record.phone_key):
        return Verdict(Status.REJECTED, "on the do-not-call list")
    if not active(guards):
        return Verdict(Status.PENDING)
    # Rate caps before per-number caps, so a held lead has used no per-number allowance; the minute
    # before the day, so a lead held for the minute does not count twice towards the day.
    minute = f"rate:minute:{now:%Y%m%d%H%M}"
    if guards.calls_per_minute and not store.take(minute, guards.calls_per_minute, _next_minute(now), now):
        until = _next_minute(now)
        return Verdict(Status.HELD, f"rate cap: {guards.calls_per_minute} new calls a minute reached", until)
    if guards.calls_per_day and not store.take(f"rate:day:{now:%Y%m%d}", guards.calls_per_day, _next_day(now), now):
        return Verdict(Status.HELD, f"rate cap: {guards.calls_per_day} new calls a day reached", _next_day(now))
    caps = (
        (guards.per_number_per_day, "day", f"{now:%Y%m%d}", _next_day(now)),
        (guards.per_number_per_week, "week", f"{now:%G%V}", _next_day(now) + timedelta(days=7 - now.isoweekday())),
        (guards.per_number_per_month, "month", f"{now:%Y%m}", _next_month(now)),
    )
    for limit, period, bucket, expires in caps:
        if limit and record.phone_key and not store.take(f"number:{record.phone_key}:{bucket}", limit, expires, now):
            return Verdict(Status.REJECTED, f"per-number cap: {limit} call(s) a {period} already placed")
    return Verdict(Status.PENDING)


def _next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)
