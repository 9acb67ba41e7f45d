"""Spend and compliance guards: do-not-call list, per-number caps, and the rate cap on new calls.

The guards only plan: limits() names the counters a lead must be counted in, and what the lead
becomes when one of them is full. crm2calls/lifecycle.py counts them in the same store transaction
that writes the lead, so a lead is counted once, and never by a write that failed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from crm2calls.model import Status
from crm2calls.policy import DEFAULT_CAMPAIGN, GuardPolicy
from crm2calls.store.base import Counter

if TYPE_CHECKING:
    from crm2calls.services import Services

log = logging.getLogger("crm2calls.guards")

GUARD_META = "guard"  # {"holding", "reason", "until"} while the rate cap holds leads


DRY_RUN_SLOTS = "dry-run"  # a dry run's slots: never the campaigns' own


def phone_key(phone: str) -> str:
    """The phone's pseudonym: an unkeyed SHA-256 of the normalised number, the same across sources and campaigns.

    It keeps the number out of the store's keys and indexes; it is no secret (a guessed number can be
    hashed and compared), so `leads forget` erases it with the lead.
    """
    return hashlib.sha256(b"crm2calls phone:" + phone.encode()).hexdigest()


def slot_name(phone_key: str, campaign: str = DEFAULT_CAMPAIGN) -> str:
    """The one-person-one-call slot of a phone in a campaign: named by the campaign, never by its token."""
    return f"{campaign}:{phone_key}"


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


def report_holding(services: Services, verdict: Limit) -> None:
    """Tell /healthz (and the log) that the rate cap holds leads; written once per cap window."""
    current = services.store.get_meta(GUARD_META)
    if current and current.get("until") == verdict.retry_at.isoformat():
        return
    services.store.put_meta(
        GUARD_META, {"holding": True, "reason": verdict.reason, "until": verdict.retry_at.isoformat()}
    )
    log.warning("spend guard: %s; leads are held until %s, not dropped", verdict.reason, verdict.retry_at.isoformat())


@dataclass(frozen=True)
class Limit:
    """A counter a new call is counted in, and what its lead becomes when the counter is full."""

    counter: Counter
    status: Status  # HELD (rate caps: the next window) or REJECTED (per-number caps)
    reason: str
    retry_at: datetime | None = None  # for HELD


def _next_minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _next_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def _next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def limits(guards: GuardPolicy, key: str | None, now: datetime) -> tuple[Limit, ...]:
    """The counters a call to this phone placed now counts in, rate caps first (a full one holds the lead)."""
    found = []
    if guards.calls_per_minute:
        until = _next_minute(now)
        reason = f"rate cap: {guards.calls_per_minute} new calls a minute reached"
        counter = Counter(f"rate:minute:{now:%Y%m%d%H%M}", guards.calls_per_minute, until)
        found.append(Limit(counter, Status.HELD, reason, until))
    if guards.calls_per_day:
        until = _next_day(now)
        reason = f"rate cap: {guards.calls_per_day} new calls a day reached"
        found.append(Limit(Counter(f"rate:day:{now:%Y%m%d}", guards.calls_per_day, until), Status.HELD, reason, until))
    caps = (
        (guards.per_number_per_day, "day", f"{now:%Y%m%d}", _next_day(now)),
        (guards.per_number_per_week, "week", f"{now:%G%V}", _next_day(now) + timedelta(days=7 - now.isoweekday())),
        (guards.per_number_per_month, "month", f"{now:%Y%m}", _next_month(now)),
    )
    for limit, period, bucket, expires in caps:
        if limit and key:
            reason = f"per-number cap: {limit} call(s) a {period} already placed"
            found.append(Limit(Counter(f"number:{key}:{bucket}", limit, expires), Status.REJECTED, reason))
    return tuple(found)
