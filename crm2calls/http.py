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

