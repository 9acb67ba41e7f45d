"""HTTP helpers shared by the Aimylogic client and the CRM clients (owned by neither)."""

from __future__ import annotations

from datetime import datetime


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; a naive result means the zone was "-0000"
        when = when.replace(tzinfo=now.tzinfo)
    return max(0.0, (when - now).total_seconds())


def status_result(status: int) -> str:
    """The metrics' result label of an HTTP status: ok, auth, not_found, unavailable or rejected."""
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429 or status >= 500 or 300 <= status < 400:
        return "unavailable"
    if status >= 400:
        return "rejected"
    return "ok"
