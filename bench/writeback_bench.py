"""Write-back: from a job's final status to the note in the CRM, on the local worker.

A lead whose call just ended is stored the way the polling pass leaves it (status called, its
outcome, a "write_back" item due now) and the follow-up worker is woken, as lifecycle.plan_results
and the store's writer do; the time runs until the amoCRM stand-in has recorded the note. Beside it,
the baseline: the same note POSTed straight to the stand-in by the same HTTP client (the CRM request
alone). Then a burst: many calls ending at once.

    .venv/bin/python -m bench.writeback_bench [--leads N] [--burst N] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench.common import machine, percentile, print_table, ratio, stop_on_sigterm
from tests.emulators.amocrm import AmoCrmEmulator


class TimedAmoCrm(AmoCrmEmulator):
    """The amoCRM stand-in, stamping when each note was stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_at: list[float] = []
        self.stored = threading.Condition()

    def _add_notes(self, entity, request):  # type: ignore[no-untyped-def]
        response = super()._add_notes(entity, request)
        with self.stored:
            self.stored_at.append(time.perf_counter())
            self.stored.notify_all()
        return response

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        with self.stored:
            return self.stored.wait_for(lambda: len(self.stored_at) >= count, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200, help="calls ending one after another")
    parser.add_argument("--burst", type=int, default=500, help="calls ending at once")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 leads, a burst of 50")
    args = parser.parse_args()
    if args.quick:
        args.leads, args.burst = 30, 50
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the stand-in logs every request
    print(machine())

    from crm2calls.clock import utcnow
    from crm2calls.config import CrmSettings, Settings, load_policy
    from crm2calls.services import Services
    from crm2calls.sources.client import CrmHttpClient
    from crm2calls.worker import start_workers
    from tests.writeback_leads import ended_lead

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp, TimedAmoCrm() as amo:
        for n in range(args.leads + args.burst + 1):
            amo.add_lead({"id": 31000000 + n, "name": "Site form", "created_at": 1764147600})
        policy = load_policy(root / "leads.toml", "RU")
        settings = Settings(
            policy=policy, leads_store=f"sqlite:///{Path(tmp) / 'leads.db'}", dry_run=True,
            crm=CrmSettings(amocrm_base_url=amo.url, amocrm_token=amo.token),
        )  # fmt: skip
        settings = replace(settings, policy=replace(policy, delivery=replace(policy.delivery, poll_seconds=60.0)))
        services = Services(settings)
        services.store  # opened and migrated before the clock starts  # noqa: B018

        # Baseline: the note POSTed straight to the stand-in, one after another.
        client = CrmHttpClient(amo.url, service="amoCRM", secret_hint="AMOCRM_TOKEN",  # noqa: S106
                               headers={"Authorization": f"Bearer {amo.token}"})  # fmt: skip
        direct = []
        for n in range(args.leads):
            body = [{"entity_id": 31000000 + n, "note_type": "common", "params": {"text": f"baseline {n}"}}]
            started = time.perf_counter()
            client.write_request("POST", "api/v4/leads/notes", json=body, scope_hint="-")
            direct.append(time.perf_counter() - started)
        amo.stored_at.clear()
        amo.notes.clear()

        workers = start_workers(services)
        try:
            time.sleep(0.2)  # the first idle passes are over; the threads wait for a wake
            ours = []
            for n in range(args.leads):
                record = ended_lead("amocrm", f"lead:{31000000 + n}", utcnow())
                started = time.perf_counter()
                services.store.insert(record)  # the polling pass saves the ended call, work due now
                services.notify_follow_up()
                if not amo.wait_for(n + 1):
                    raise SystemExit(f"lead {n}: no note within 30 s")
                ours.append(amo.stored_at[n] - started)

            first = args.leads
            records = [ended_lead("amocrm", f"lead:{31000000 + first + n}", utcnow()) for n in range(args.burst)]
            started = time.perf_counter()
            for record in records:
                services.store.insert(record)
            services.notify_follow_up()
            amo.wait_for(first + args.burst, timeout=120)
            burst_at = [t - started for t in amo.stored_at[first:]]
        finally:
            for worker in workers:
                worker.stop()

    ms = 1000
    print(f"\nOne call ending at a time ({args.leads} calls): final status stored -> note stored at the CRM")
    print_table(
        ["", "p50 ms", "p95 ms", "max ms"],
        [
            ["baseline: the POST alone", f"{percentile(direct, .5) * ms:.1f}", f"{percentile(direct, .95) * ms:.1f}",
             f"{max(direct) * ms:.1f}"],
            ["crm2calls local worker", f"{percentile(ours, .5) * ms:.1f}", f"{percentile(ours, .95) * ms:.1f}",
             f"{max(ours) * ms:.1f}"],
        ],
    )  # fmt: skip
    print(f"ratio p50: {ratio(percentile(ours, .5), percentile(direct, .5))}")
    done = len(burst_at)
    print(f"\nA burst of {args.burst} calls ending at once: {done} notes written; "
          f"p50 {percentile(burst_at, .5):.2f} s, p95 {percentile(burst_at, .95):.2f} s, "
          f"all in {max(burst_at, default=0):.2f} s ({done / max(max(burst_at, default=1), 1e-9):.0f} notes/s; "
          f"the baseline's serial POSTs: {1 / percentile(direct, .5):.0f}/s)")  # fmt: skip


if __name__ == "__main__":
    main()
