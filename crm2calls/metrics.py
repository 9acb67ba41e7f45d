"""Metrics: one set of names, kept as Prometheus series on a server and written as CloudWatch EMF lines on Lambda.

The domain calls the functions at the end of this module (webhook(), aimylogic_request(), ...);
configure() picks where they go, once per app: CloudWatch Embedded Metric Format on Lambda,
prometheus_client (multiprocess under gunicorn) when METRICS_TOKEN is set, nowhere otherwise.
Label values come from small fixed sets (sources, outcomes, statuses, results): never a phone,
a token or a lead id. Nothing heavy is imported here: prometheus_client only on the server path.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from crm2calls.config import Settings

NAMESPACE = "crm2calls"  # CloudWatch namespace; every Prometheus name starts with it too
Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    """One metric: its name on both platforms, its labels (CloudWatch dimensions) and how it adds up."""

    name: str  # as Prometheus exposes it (counters end in _total) and as CloudWatch receives it
    kind: Kind
    labels: tuple[str, ...]
    help: str
    unit: str = "Count"  # CloudWatch unit
    # Extra CloudWatch dimension sets (subsets of labels): an alarm matches dimensions exactly, so a
    # metric an alarm watches across every source is also written without the source.
    rollups: tuple[tuple[str, ...], ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: Prometheus bucket bounds
    gauge_mode: str = "livemostrecent"  # gauges under gunicorn: the latest value any live worker set


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Speed to lead spans milliseconds (a local worker) to hours (a lead that waited for calling hours).
SPEED_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

WEBHOOKS = Metric(
    "crm2calls_webhooks_total", "counter", ("source", "outcome"),
    "Webhook leads by source and outcome (accepted, duplicate, rejected); refused and error count requests",
    rollups=(("outcome",),),
)
LEAD_TRANSITIONS = Metric(
    "crm2calls_lead_transitions_total", "counter", ("source", "status"),
    "Leads entering each status", rollups=(("status",),),
)
LEADS = Metric("crm2calls_leads", "gauge", ("status",), "Leads in the store by status (maintained counters)")
# Labelled, so that no series exists before a delivery pass sets one: an unlabelled gauge would read 0
# from start-up, and a worker that never reports would look like an empty queue.
OLDEST_WAITING = Metric(
    "crm2calls_oldest_waiting_seconds", "gauge", ("campaign",),
    "Age of the oldest lead waiting to be sent (received, pending, sending; held leads excluded)", unit="Seconds",
    rollups=((),),
)
CAMPAIGN_HELD = Metric(
    "crm2calls_campaign_held", "gauge", ("campaign",),
    "1 while a campaign's delivery is held (paused, token refused, spend guard), else 0", unit="None",
    rollups=((),),
)
SPEED_TO_LEAD = Metric(
    "crm2calls_speed_to_lead_seconds", "histogram", ("source",),
    "From a lead's acceptance to Aimylogic's job id", unit="Seconds", rollups=((),), buckets=SPEED_BUCKETS,
)
AIMYLOGIC_REQUESTS = Metric(
    "crm2calls_aimylogic_request_seconds", "histogram", ("op", "result"),
    "Aimylogic Calls API requests by operation (addPhones, addPhone, status) and result, with their latency",
    unit="Seconds", buckets=LATENCY_BUCKETS,
)
ADDPHONES_ENTRIES = Metric(
    "crm2calls_addphones_entries_total", "counter", ("result",), "Entries (leads) sent in addPhones requests, by result"
)
CRM_API_REQUESTS = Metric(
    "crm2calls_crm_api_requests_total", "counter", ("crm", "result"), "CRM API requests by CRM and result",
    rollups=(("result",),),
)
DELIVERY_PASSES = Metric("crm2calls_delivery_passes_total", "counter", (), "Delivery passes run")
WRITE_BACKS = Metric(
    "crm2calls_write_backs_total", "counter", ("crm", "result"),
    "Call outcomes written back onto CRM records, by CRM and result (written, found, retry, scope_refused, "
    "dead_letter)", rollups=(("result",),),
)
WRITE_BACK_DELAY = Metric(
    "crm2calls_write_back_delay_seconds", "histogram", ("crm",),
    "From a call's end (its job's final status seen) to its outcome written in the CRM", unit="Seconds",
    rollups=((),), buckets=SPEED_BUCKETS,
)
CALL_OUTCOMES = Metric(
    "crm2calls_call_outcomes_total", "counter", ("campaign", "outcome"),
    "Calls that reached a final jobStatus, by campaign and jobStatus (longCallWithResult, noAnswer, ...)",
    rollups=(("outcome",),),
)
REPORT_REQUESTS = Metric(
    "crm2calls_getreport_requests_total", "counter", ("campaign", "result"),
    "callJob/getReport requests by campaign and result (ok, auth, rejected, unavailable)", rollups=(("result",),),
)

METRICS = (
    WEBHOOKS, LEAD_TRANSITIONS, LEADS, OLDEST_WAITING, CAMPAIGN_HELD, SPEED_TO_LEAD,
    AIMYLOGIC_REQUESTS, ADDPHONES_ENTRIES, CRM_API_REQUESTS, DELIVERY_PASSES,
    CALL_OUTCOMES, REPORT_REQUESTS,
)
CANCELS = Metric(
    "crm2calls_cancels_total", "counter", ("campaign", "result"),
    "Queued jobs of stopped leads cancelled in Aimylogic, by campaign and result (canceled, not_canceled: the job "
    "had ended or Aimylogic did not say, retry: the request failed)", rollups=(("result",),),
)
METRICS += (WRITE_BACKS, WRITE_BACK_DELAY, CANCELS)


def exported_names() -> set[str]:
    """Every series name /metrics can show: counters' _total, histograms' _bucket, _count and _sum."""
    names = set()
    for metric in METRICS:
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum"}
        else:
            names.add(metric.name)
    return names


# Sinks


class Sink(Protocol):
    """Where recorded values go."""

    def record(self, metric: Metric, values: tuple[str, ...], amount: float) -> None:
        """Add to a counter, set a gauge or observe a histogram value."""


class NullSink:
    """Metrics off (no METRICS_TOKEN, not on Lambda): recording costs one call."""

    def record(self, metric: Metric, values: tuple[str, ...], amount: float) -> None:
        """Drop the value."""


class PrometheusSink:
    """prometheus_client metrics; under gunicorn its multiprocess mode adds up the workers' files.

    prometheus_client picks its multiprocess value store when imported, from PROMETHEUS_MULTIPROC_DIR
    (gunicorn.conf.py sets it before the workers start); `directory` must be that same directory.
    """

    def __init__(self, directory: str | None = None):
        import prometheus_client as prom
        from prometheus_client import multiprocess

        prom.disable_created_metrics()  # *_created series exist only outside multiprocess mode: one set of names
        self.registry = prom.CollectorRegistry()
        if directory:
            multiprocess.MultiProcessCollector(self.registry, path=directory)
        own = None if directory else self.registry  # multiprocess: values are read back from the files
        self._metrics: dict[str, Any] = {}
        for metric in METRICS:
            if metric.kind == "counter":
                made = prom.Counter(metric.name, metric.help, metric.labels, registry=own)
            elif metric.kind == "gauge":
                made = prom.Gauge(
                    metric.name, metric.help, metric.labels, registry=own, multiprocess_mode=metric.gauge_mode
                )
            else:
                made = prom.Histogram(metric.name, metric.help, metric.labels, registry=own, buckets=metric.buckets)
            self._metrics[metric.name] = made

    def record(self, metric: Metric, values: tuple[str, ...], amount: float) -> None:
        """Apply the value to the prometheus_client metric."""
        made = self._metrics[metric.name]
        child = made.labels(*values) if values else made
        if metric.kind == "counter":
            child.inc(amount)
        elif metric.kind == "gauge":
            child.set(amount)
        else:
            child.observe(amount)

    def exposition(self) -> tuple[bytes, str]:
        """The text format 0.0.4, which every Prometheus version reads (our names need nothing newer)."""
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


EMF_MAX_VALUES = 100  # values of one metric in one EMF line (the spec's limit)


class EmfSink:
    """CloudWatch Embedded Metric Format: JSON lines on stdout, which CloudWatch Logs turns into metrics.

    Inside batch() (a request, a scheduled task) values are gathered and written as few lines at its
    end: counters summed, gauges last, histogram observations as arrays. Outside, each value is
    written at once, so nothing waits for a flush that may never come.
    """

    def __init__(
        self,
        service: str,
        namespace: str = NAMESPACE,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.service = service
        self.namespace = namespace
        self._write = write if write is not None else _stdout_line
        self.clock = clock
        self._lock = threading.Lock()
        self._depth = 0
        self._pending: dict[tuple[Metric, tuple[str, ...]], Any] = {}

    def record(self, metric: Metric, values: tuple[str, ...], amount: float) -> None:
        """Gather the value; write it now when no batch is open."""
        with self._lock:
            key = (metric, values)
            if metric.kind == "counter":
                self._pending[key] = self._pending.get(key, 0) + amount
            elif metric.kind == "gauge":
                self._pending[key] = amount
            else:
                self._pending.setdefault(key, []).append(amount)
            lines = self._drain() if self._depth == 0 else []
        self._emit(lines)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Gather everything recorded inside, in any thread, and write it when the outermost batch ends."""
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                lines = self._drain() if self._depth == 0 else []
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            self._write(line)

    def _drain(self) -> list[str]:
        """Turn what was gathered into EMF lines: one per set of dimension values."""
        groups: dict[tuple[tuple[str, str], ...], list[tuple[Metric, Any]]] = {}
        for (metric, values), value in self._pending.items():
            groups.setdefault(tuple(zip(metric.labels, values, strict=True)), []).append((metric, value))
        self._pending = {}
        timestamp = int(self.clock() * 1000)
        lines = []
        for dimensions, members in groups.items():
            # Arrays longer than the spec allows go out over several lines with the same dimensions.
            while members:
                line: dict[str, Any] = {"_aws": {"Timestamp": timestamp, "CloudWatchMetrics": []}}
                line["service"] = self.service
                line.update(dimensions)
                rest = []
                for metric, value in members:
                    if isinstance(value, list):
                        if len(value) > EMF_MAX_VALUES:
                            rest.append((metric, value[EMF_MAX_VALUES:]))
                        value = value[:EMF_MAX_VALUES]
                    line[metric.name] = value
                    line["_aws"]["CloudWatchMetrics"].append(self._directive(metric))
                lines.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False))
                members = rest
        return lines

    def _directive(self, metric: Metric) -> dict[str, Any]:
        dimension_sets = [["service", *metric.labels]]
        dimension_sets += [["service", *rollup] for rollup in metric.rollups]
        return {
            "Namespace": self.namespace,
            "Dimensions": dimension_sets,
            "Metrics": [{"Name": metric.name, "Unit": metric.unit}],
        }


def _stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


_sink: Sink = NullSink()


def configure(settings: Settings | None) -> Sink:
    """Pick the sink for this process from the settings: EMF on Lambda, Prometheus with METRICS_TOKEN, else none."""
    global _sink
    if settings is None:
        _sink = NullSink()
    elif settings.on_lambda:
        _sink = EmfSink(service=settings.lambda_function or NAMESPACE)
    elif settings.metrics_tokens:
        _sink = PrometheusSink(settings.metrics_dir)
    else:
        _sink = NullSink()
    return _sink


def use(sink: Sink) -> Sink:
    """Record into `sink` from now on (tests, benches); returns the one it replaces."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def serves_prometheus() -> bool:
    """Whether this process keeps Prometheus metrics (GET /metrics answers them)."""
    return isinstance(_sink, PrometheusSink)


def exposition() -> tuple[bytes, str] | None:
    """The Prometheus text and content type, or None when this process keeps no Prometheus metrics."""
    return _sink.exposition() if isinstance(_sink, PrometheusSink) else None


@contextmanager
def batch() -> Iterator[None]:
    """One unit of work (a request, a Lambda task): on Lambda its values are written together at the end."""
    if isinstance(_sink, EmfSink):
        with _sink.batch():
            yield
    else:
        yield


def clear_multiprocess_dir(directory: str) -> None:
    """Create the multiprocess directory, or empty it: a previous run's files would be added to this one's."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def worker_exited(pid: int, directory: str) -> None:
    """gunicorn's child_exit: a dead worker's live gauges leave the totals (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


# What the domain calls. Each takes label values from fixed sets; see docs/metrics.md.


def webhook(source: str, outcome: str, count: int = 1) -> None:
    """Webhook leads by outcome (accepted, duplicate, rejected), or a refused (4xx) or failed (5xx) request."""
    _sink.record(WEBHOOKS, (source, outcome), count)


def lead_entered(source: str, status: str) -> None:
    """A lead moved to `status` (failed, sent, held, ...)."""
    _sink.record(LEAD_TRANSITIONS, (source, str(status)), 1)


def lead_counts(counts: Mapping[str, int]) -> None:
    """The number of leads in each status, from the store's maintained counters."""
    for status, count in counts.items():
        _sink.record(LEADS, (str(status),), count)


def oldest_waiting(campaign: str, seconds: float) -> None:
    """Age of a campaign's oldest lead waiting to be sent; 0 when none waits (a missing value means nothing reports)."""
    _sink.record(OLDEST_WAITING, (campaign,), max(0.0, seconds))


def campaign_held(campaign: str, held: bool) -> None:
    """Whether a campaign's delivery is held now."""
    _sink.record(CAMPAIGN_HELD, (campaign,), 1 if held else 0)


def speed_to_lead(source: str, seconds: float) -> None:
    """From a lead's acceptance to Aimylogic's job id for it."""
    _sink.record(SPEED_TO_LEAD, (source,), max(0.0, seconds))


def aimylogic_request(op: str, result: str, seconds: float, entries: int = 0) -> None:
    """One Aimylogic API request: its operation, result (ok, rejected, auth, unavailable) and latency."""
    _sink.record(AIMYLOGIC_REQUESTS, (op, result), seconds)
    if entries:
        _sink.record(ADDPHONES_ENTRIES, (result,), entries)


def crm_api_call(crm: str, result: str) -> None:
    """One CRM API request and its result (ok, auth, not_found, rejected, unavailable)."""
    _sink.record(CRM_API_REQUESTS, (crm, result), 1)


def delivery_pass() -> None:
    """A delivery pass ran (a stalled worker or schedule stops counting)."""
    _sink.record(DELIVERY_PASSES, (), 1)



def write_back(crm: str, result: str, delay_seconds: float | None = None) -> None:
    """One write-back of a call's outcome (written, found, retry, scope_refused, dead_letter); written: its delay."""
    _sink.record(WRITE_BACKS, (crm, result), 1)
    if delay_seconds is not None:
        _sink.record(WRITE_BACK_DELAY, (crm,), max(0.0, delay_seconds))


def call_outcome(campaign: str, outcome: str) -> None:
    """A call reached its final jobStatus (longCallWithResult, noAnswer, canceled, ...)."""
    _sink.record(CALL_OUTCOMES, (campaign, outcome), 1)


def cancel(campaign: str, result: str) -> None:
    """One stopped lead's job cancel and its result (canceled, not_canceled, retry)."""
    _sink.record(CANCELS, (campaign, result), 1)


def report_request(campaign: str, result: str) -> None:
    """One callJob/getReport request of a campaign and its result (ok, auth, rejected, unavailable)."""
    _sink.record(REPORT_REQUESTS, (campaign, result), 1)
