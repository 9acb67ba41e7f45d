"""The funnel at a glance (`leads stats`): what became of a period's leads, rejection reasons, speed to lead."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crm2calls.guards import DEFAULT_CAMPAIGN
from crm2calls.logs import redact
from crm2calls.model import LeadRecord, Status

GROUPINGS = ("source", "campaign", "day")
TOP_REASONS = 10
_WAITING = {Status.RECEIVED, Status.PENDING, Status.SENDING, Status.HELD}
# Columns of the table and the JSON, in funnel order: every lead counts once in `received` and once
# in exactly one of the columns after `sent` (its status now); `sent` counts those that reached Aimylogic.
COUNTS = ("received", "duplicate", "rejected", "sent", "waiting", "failed", "expired", "dry_run")
# Where sent leads' calls stand (their job followed): after `sent` in the JSON always, in the table as they land.
CALL_COUNTS = ("calling", "called", "not_reached", "canceled")


def _group_name(record: LeadRecord, by: str) -> str:
    if by == "source":
        return record.source
    if by == "campaign":
        return DEFAULT_CAMPAIGN  # every lead goes to the token's campaign until leads carry their own
    return f"{record.created_at:%Y-%m-%d}"  # day, UTC


def sent_at(record: LeadRecord) -> datetime | None:
    """When Aimylogic first accepted the lead (its history's first `sent` step), or None."""
    for step in record.history:
        if step.get("status") == Status.SENT:
            return datetime.fromisoformat(step["at"])
    return None


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (share in 0..1), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


@dataclass
class Group:
    """The funnel of one source, campaign or day, or of them all."""

    name: str
    counts: Counter = field(default_factory=Counter)
    speeds: list[float] = field(default_factory=list)  # seconds from arrival to Aimylogic's acceptance

    def add(self, record: LeadRecord) -> None:
        """Count one lead where it stands now, and its speed to lead once sent."""
        self.counts["received"] += 1
        sent = sent_at(record)
        if sent is not None:
            self.counts["sent"] += 1
            self.speeds.append(max(0.0, (sent - record.created_at).total_seconds()))
        if record.status in _WAITING:
            self.counts["waiting"] += 1
        elif record.status is not Status.SENT:
            self.counts[record.status.value] += 1

    def document(self) -> dict[str, Any]:
        """The group as the JSON output shows it."""
        return {
            "name": self.name,
            **{name: self.counts[name] for name in _columns(CALL_COUNTS)},
            "speed_to_lead_s": {"p50": percentile(self.speeds, 0.50), "p95": percentile(self.speeds, 0.95)},
        }


@dataclass
class Funnel:
    """A period's leads grouped, their total, and the rejection reasons ranked."""

    since: datetime
    until: datetime
    by: str | None
    groups: list[Group]
    total: Group
    reasons: list[tuple[str, int]]

    def document(self) -> dict[str, Any]:
        """The whole report as plain data (`--json`)."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": self.by,
            "groups": [group.document() for group in self.groups],
            "total": self.total.document(),
            "rejections": [{"reason": reason, "leads": count} for reason, count in self.reasons],
        }

    def table(self) -> str:
        """The report as a readable table."""
        columns = _columns(tuple(name for name in CALL_COUNTS if self.total.counts[name]))
        header = [self.by or "leads", *columns, "speed p50", "speed p95"]
        rows = [*(_row(group, columns) for group in self.groups), _row(self.total, columns)]
        lines = [f"leads from {self.since:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC", ""]
        lines += _aligned([header, *rows])
        if not self.total.counts["received"]:
            lines.append("no leads in this period")
        if self.reasons:
            rejected = self.total.counts["rejected"]
            lines += ["", "rejection reasons:"]
            lines += [f"  {count:>6}  {100 * count / rejected:5.1f}%  {reason}" for reason, count in self.reasons]
        return "\n".join(lines)


def funnel(records: Iterable[LeadRecord], by: str | None, since: datetime, until: datetime) -> Funnel:
    """Group the leads of [since, until] by `by` (None: one group) and rank why leads were rejected."""
    groups: dict[str, Group] = {}
    total = Group("total" if by else "all")
    reasons: Counter = Counter()
    for record in records:
        if not since <= record.created_at <= until:
            continue
        if by:
            name = _group_name(record, by)
            groups.setdefault(name, Group(name)).add(record)
        total.add(record)
        if record.status is Status.REJECTED:
            reasons[_reason(record)] += 1
    ordered = [groups[name] for name in sorted(groups)]
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    return Funnel(since, until, by, ordered, total, ranked)


def _reason(record: LeadRecord) -> str:
    note = record.last_error or next((step.get("note") for step in reversed(record.history) if step.get("note")), "")
    return redact(" ".join((note or "no reason recorded").split()))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _columns(calls: tuple[str, ...]) -> tuple[str, ...]:
    """The funnel's columns with these call columns after `sent`."""
    sent = COUNTS.index("sent") + 1
    return (*COUNTS[:sent], *calls, *COUNTS[sent:])


def _row(group: Group, columns: tuple[str, ...]) -> list[str]:
    speeds = (percentile(group.speeds, 0.50), percentile(group.speeds, 0.95))
    return [group.name, *(str(group.counts[name]) for name in columns), *(_duration(s) for s in speeds)]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines
