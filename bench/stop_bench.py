"""Stop to cancel: from a CRM's stop webhook to Aimylogic's callJob/cancel of the lead's job, on the local worker.

Our app runs in this process as `serve` runs it: a threaded WSGI server on 127.0.0.1 and start_workers()
(the delivery and follow-up threads, woken by services.notify / notify_follow_up), the store in SQLite in a
throwaway directory, Aimylogic the test emulator, which stamps the moment each job id first arrives in a
cancel request (and each phone in an addPhones request). N leads are sent first; their webhook-to-addPhones
times are the baseline measured in the same run: the delivery worker's wake latency, the path a stop's cancel
reuses (an async wake, a claim, one request). Then one stop per lead is posted, one sender at a time (a
trickle) and from 8 senders at once (a burst). The schedule's sweep, the safety net when no wake arrives,
would take up to 60 s on Lambda ([delivery] poll_seconds locally).

    .venv/bin/python -m bench.stop_bench [--leads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import SECRET, TOKEN, machine, percentile, print_table, stop_on_sigterm, write_mapping
from tests.emulators.aimylogic import AimylogicEmulator
from tests.emulators.base import LocalServer

WAIT = 30.0  # seconds for every entry or cancel to arrive after the last answer


class StampingEmulator(AimylogicEmulator):
    """The emulator, noting when each phone first reaches addPhones and each job id first reaches cancel."""

    def reset(self) -> None:
        super().reset()
        self.phone_at: dict[str, float] = {}
        self.cancel_at: dict[str, float] = {}

    def _add_phones(self, request, campaign):
        arrived = time.perf_counter()
        for entry in json.loads(request.get_data() or b"[]"):
            self.phone_at.setdefault(str(entry.get("phone")), arrived)
        return super()._add_phones(request, campaign)

    def _cancel(self, request, campaign):
        arrived = time.perf_counter()
        for job_id in json.loads(request.get_data() or b"{}").get("ids", []):
            self.cancel_at.setdefault(str(job_id), arrived)
        return super()._cancel(request, campaign)


def phone(index: int) -> str:
    return f"7912{index:07d}"


def post(url: str, body: dict, session: requests.Session) -> float:
    """POST one webhook; the moment its answer was read."""
    response = session.post(url, json=body, timeout=30)
    assert response.status_code == 202, response.text
    return time.perf_counter()


def run_posts(url: str, bodies: list[dict], senders: int) -> list[tuple[float, float]]:
    """(sent at, answered at) for each body, from `senders` threads with a keep-alive session each."""
    local = threading.local()

    def one(body: dict) -> tuple[float, float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        return started, post(url, body, local.session)

    with ThreadPoolExecutor(max_workers=senders) as pool:
        return list(pool.map(one, bodies))


def wait_for(stamps: dict[str, float], keys: list[str]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not all(key in stamps for key in keys):
        time.sleep(0.01)


def figures(latencies: list[float]) -> list[str]:
    ms = [1000 * value for value in latencies]
    return [str(len(ms)), f"{percentile(ms, 0.5):.1f}", f"{percentile(ms, 0.95):.1f}", f"{max(ms, default=0):.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200, help="leads, and so stops, per phase")
    parser.add_argument("--quick", action="store_true", help="40 leads per phase")
    args = parser.parse_args()
    count = 40 if args.quick else args.leads
    stop_on_sigterm()
    print(f"stop_bench: {count} stops per phase; {machine()}")

    with tempfile.TemporaryDirectory(prefix="stop-bench-") as workdir:
        # `import app` builds the module's app from the environment: give it one (dry run, its own store).
        os.environ.update(WEBHOOK_SECRET=SECRET, DRY_RUN="1", LEADS_STORE=f"sqlite:///{workdir}/unused.db")
        os.environ.setdefault("LOG_LEVEL", os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the servers' own request lines
        rows, sweep = measure(count, workdir)
    print_table(["path", "n", "p50 ms", "p95 ms", "max ms", "cancel requests"], rows)
    print(f"without a wake: the next sweep, every {sweep:g} s locally ([delivery] poll_seconds), 60 s on Lambda")


def measure(count: int, workdir: str) -> tuple[list[list[str]], float]:
    """Run both phases; the table's rows and the local sweep's interval."""
    from app import create_app
    from crm2calls.config import Settings, load_policy
    from crm2calls.services import Services
    from crm2calls.worker import start_workers

    with StampingEmulator(TOKEN) as aimylogic:
        policy = load_policy(write_mapping(Path(workdir)), "RU")
        settings = Settings(
            policy=policy, webhook_secrets=(SECRET,), leads_store=f"sqlite:///{workdir}/leads.db",
            aimylogic_url=aimylogic.url, aimylogic_token=TOKEN, log_level=os.environ["LOG_LEVEL"],
        )  # fmt: skip
        services = Services(settings)
        server = LocalServer(create_app(services=services)).start()
        workers = start_workers(services)
        url = f"{server.url}/webhooks/generic?key={SECRET}"
        rows = []
        try:
            for phase, senders, start in (("trickle (1 sender)", 1, 0), ("burst (8 senders)", 8, count)):
                indexes = list(range(start, start + count))
                leads = [{"id": f"b-{i}", "phone": f"+{phone(i)}", "name": "Иван"} for i in indexes]
                answered = [done for _, done in run_posts(url, leads, senders)]
                wait_for(aimylogic.phone_at, [phone(i) for i in indexes])
                wake = [aimylogic.phone_at[phone(i)] - at for i, at in zip(indexes, answered, strict=True)
                        if phone(i) in aimylogic.phone_at]  # fmt: skip
                jobs = {}
                for i in indexes:
                    [record] = services.store.find_by_ref("generic", f"b-{i}")
                    jobs[i] = record.job_id
                stops = [{"event": "lead.closed", "id": f"b-{i}"} for i in indexes]
                timed = run_posts(url, stops, senders)
                wait_for(aimylogic.cancel_at, [jobs[i] for i in indexes])
                from_ack = [aimylogic.cancel_at[jobs[i]] - done for i, (_, done) in zip(indexes, timed, strict=True)
                            if jobs[i] in aimylogic.cancel_at]  # fmt: skip
                from_post = [aimylogic.cancel_at[jobs[i]] - sent for i, (sent, _) in zip(indexes, timed, strict=True)
                             if jobs[i] in aimylogic.cancel_at]  # fmt: skip
                requests_made = len(aimylogic.cancels)
                rows.append([f"{phase}: lead ack -> addPhones (baseline)", *figures(wake), "-"])
                rows.append([f"{phase}: stop ack -> callJob/cancel", *figures(from_ack), str(requests_made)])
                rows.append([f"{phase}: stop sent -> callJob/cancel", *figures(from_post), "-"])
                aimylogic.cancels.clear()
        finally:
            for worker in workers:
                worker.stop()
            server.stop()
    return rows, settings.policy.delivery.poll_seconds


if __name__ == "__main__":
    main()
