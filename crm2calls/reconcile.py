"""Reconciliation: list the leads a CRM created recently and accept any a webhook never brought.

Webhooks get lost (Bitrix24 never resends; amoCRM disables a failing hook). Listed leads carry the
same idempotency keys as their webhooks, so a lead already received is not stored again and a run
repeated adds nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

from crm2calls.errors import ConfigError
from crm2calls.intake import accept
from crm2calls.services import Services

log = logging.getLogger("crm2calls.reconcile")


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciliation run found."""

    listed: int  # leads the CRM created in the window
    enqueued: int  # of them, stored now: no webhook had brought them
    already_known: int  # of them, already in the store


def reconcile(services: Services, source_name: str, since: timedelta) -> ReconcileReport:
    """List the source's leads created in the last `since` and accept each one not yet stored."""
    source = services.source(source_name)
    list_since = getattr(source, "list_since", None)
    if list_since is None:
        raise ConfigError([f"source {source_name!r} cannot list its leads; reconcile works for amocrm and bitrix24"])
    now = services.clock()
    events = list_since(now - since, now)
    results = accept(services, source, events)
    known = sum(1 for result in results if result.reason == "already received")
    report = ReconcileReport(listed=len(events), enqueued=len(results) - known, already_known=known)
    log.info(
        "reconciled %s over %s: %d listed, %d enqueued, %d already known",
        source_name, since, report.listed, report.enqueued, report.already_known,
        extra={"fields": {"event": "reconcile", "source": source_name, **asdict(report)}},
    )
    return report
