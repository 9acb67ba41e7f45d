"""The results webhook: outcomes delivered per second by a follow-up pass, and how late after an outage.

In process, SQLite in a throwaway directory, a receiver on 127.0.0.1 (werkzeug, threaded, answers 204).
1. Throughput: N ended leads with their notify work due; one follow_up() pass POSTs each signed outcome
   and records it. Baselines in the same process: the same pass without RESULTS_WEBHOOK_URL (the store's
   work alone: claim and drop), and N bare signed POSTs over one keep-alive session (the HTTP floor).
2. Outages, on a simulated clock with a pass every minute: the receiver answers 503 for D minutes; printed
   is when the outcome got through, and how long after the receiver came back.

    .venv/bin/python -m bench.results_webhook_bench [--leads N] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import machine, print_table, ratio, stop_on_sigterm

SECRETS = ("whsec_" + "QmVuY2hTZWNyZXRCZW5jaFNlY3JldEJlbmNoU2VjcmV0",)
OUTAGES_MIN = (5, 60, 6 * 60)


class Receiver:
    """A threaded local server answering 204, or 503 until `down_until` on the bench's clock."""

    def __init__(self, clock) -> None:
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request, Response

        self.clock, self.down_until, self.count = clock, None, 0

        @Request.application
        def app(request: Request) -> Response:
            request.get_data()
            self.count += 1
            if self.down_until and self.clock() < self.down_until:
                return Response(status=503)
            return Response(status=204)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/calls"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ended(index: int, now: datetime):
    from crm2calls import lifecycle
    from crm2calls.model import LeadRecord, Status

    record = LeadRecord(
        id=f"B-{index:06d}", source="generic", key=f"generic:bench:{index}", ref=str(100000 + index),
        status=Status.CALLED, created_at=now - timedelta(hours=1), updated_at=now, job_id=str(9000000 + index),
        outcome={"job_status": "longCallWithResult", "call_result": "interested", "attempts": 1, "duration_s": 61,
                 "finished_at": now.isoformat(), "report": {"answer": "yes", "index": index}},
    )
    lifecycle.set_work(record, lifecycle.NOTIFY, now, attempts=0)
    return record


def services_for(workdir: Path, name: str, url: str | None, clock):
    from crm2calls.config import DEFAULT_LEADS_CONFIG, Settings, load_policy
    from crm2calls.services import Services

    settings = Settings(policy=load_policy(DEFAULT_LEADS_CONFIG, "RU"), leads_store=f"sqlite:///{workdir / name}.db",
                        dry_run=True, results_webhook_url=url, results_webhook_secrets=SECRETS if url else ())
    return Services(settings, clock=clock)


def fill(services, count: int, now: datetime) -> None:
    for index in range(count):
        services.store.insert(ended(index, now))


def throughput(workdir: Path, count: int) -> None:
    from crm2calls.followup import follow_up
    from crm2calls.results_webhook import post

    now = datetime.now(UTC).replace(microsecond=0)
    receiver = Receiver(lambda: now)
    try:
        rows = []
        for label, url in (("results webhook (ours)", receiver.url), ("no URL: work dropped (store only)", None)):
            services = services_for(workdir, label.split()[0] + str(url is None), url, lambda: now)
            fill(services, count, now)
            started = time.perf_counter()
            report = follow_up(services, limit=count)
            seconds = time.perf_counter() - started
            rows.append([label, report.tasks.get("notify", 0), f"{seconds:.2f}", f"{count / seconds:.0f}",
                         f"{1000 * seconds / count:.2f}"])
        import requests

        records = [ended(index, now) for index in range(count)]
        started = time.perf_counter()
        with requests.Session() as session:
            for record in records:
                post(session, receiver.url, SECRETS, record, now)
        seconds = time.perf_counter() - started
        rows.append(["bare signed POSTs (HTTP floor)", count, f"{seconds:.2f}", f"{count / seconds:.0f}",
                     f"{1000 * seconds / count:.2f}"])
        print(f"\nThroughput: {count} outcomes, one follow-up pass, SQLite, receiver on 127.0.0.1")
        print_table(["run", "leads", "seconds", "leads/s", "ms/lead"], rows)
        ours, floor = float(rows[0][2]), float(rows[2][2])
        print(f"ours / HTTP floor: {ratio(ours, floor)}; store share: {ratio(float(rows[1][2]), ours)} of ours")
        print(f"receiver requests: {receiver.count} (expected {2 * count})")
    finally:
        receiver.stop()


def outage_run(workdir: Path, outage: int) -> list[object]:
    """One lead, the receiver down `outage` minutes, a pass a minute: [outage, requests, delivered, late]."""
    from crm2calls import lifecycle
    from crm2calls.followup import follow_up

    now = [datetime(2026, 11, 26, 9, 0, tzinfo=UTC)]
    receiver = Receiver(lambda: now[0])
    try:
        services = services_for(workdir, f"outage{outage}", receiver.url, lambda: now[0])
        fill(services, 1, now[0])
        start = now[0]
        receiver.down_until = start + timedelta(minutes=outage)
        while lifecycle.NOTIFY in services.store.get("B-000000").work and now[0] < start + timedelta(days=2):
            follow_up(services)
            now[0] += timedelta(minutes=1)
        delivered = now[0] - timedelta(minutes=1) - start
        return [f"{outage} min", receiver.count, str(delivered), str(delivered - timedelta(minutes=outage))]
    finally:
        receiver.stop()


def outages(workdir: Path, minutes: tuple[int, ...]) -> None:
    rows = [outage_run(workdir, outage) for outage in minutes]
    print("\nOutages: receiver answers 503 for the outage, a pass every minute (simulated clock)")
    print_table(["outage", "requests", "delivered after", "late after recovery"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 leads")
    args = parser.parse_args()
    stop_on_sigterm()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one request line per POST otherwise
    print(machine())
    count = 300 if args.quick else args.leads
    with tempfile.TemporaryDirectory(prefix="crm2calls-notify-bench-") as directory:
        throughput(Path(directory), count)
        outages(Path(directory), OUTAGES_MIN)


if __name__ == "__main__":
    main()
