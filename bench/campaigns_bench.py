"""Requests spent on 1,000 leads across three campaigns, one paused for half the run, beside the same run unpaused.

In process, on a simulated clock: leads arrive evenly over RUN_MINUTES through the generic webhook (the
real intake, a SQLite store in a throwaway directory), routed to three campaigns by a field; a delivery
pass runs every PASS_SECONDS and talks over HTTP to the Aimylogic emulator on 127.0.0.1, which knows the
three tokens. In the paused run the campaign "renewals" is paused in Aimylogic for the middle half of
the run (from a quarter to three quarters), each change just after a pass asked for its status.
Printed: addPhones and status requests per campaign, leads sent, rejected and held, and how long after
the resume the last held renewals lead went out. The baseline is the same run with nothing paused.

    .venv/bin/python -m bench.campaigns_bench [--leads N] [--answer 503|400|200] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.burst_bench import emulator_with_memoised_zone_check
from bench.common import lead_body, machine, print_table, ratio, stop_on_sigterm

TOKENS = {"default": "8231.7056.1b131df1", "renewals": "5120.3002.renewals", "english": "5120.3003.english"}
PIPELINES = {"default": 3001, "renewals": 3002, "english": 3003}
SECRET = "bench-webhook-secret-0123456789abcdef"
RUN_MINUTES = 20
PASS_SECONDS = 10
MAPPING = """\
[calls]
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
hours = { default = ["10:00-20:00"] }

[delivery]
batch_size = 100
concurrency = 4

[guards]
calls_per_minute = 0
calls_per_day = 0
per_number_per_day = 0
per_number_per_week = 0
per_number_per_month = 0

[campaigns.renewals]
token_env = "AIMYLOGIC_TOKEN_RENEWALS"

[campaigns.english]
token_env = "AIMYLOGIC_TOKEN_ENGLISH"

[sources.generic]
region = "RU"

[sources.generic.campaign_by]
field = "pipeline_id"
map = { "3001" = "default", "3002" = "renewals", "3003" = "english" }
"""


class Clock:
    """The simulated clock both our app and the emulator read."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Run:
    """What one run spent and did."""

    add_phones: dict[str, int]
    status: dict[str, int]
    sent: int
    rejected: int
    held_at_most: int
    drained_after_resume: float | None  # seconds from the resume until no renewals lead is held


def run(leads: int, *, paused: bool, answer: int, directory: Path) -> Run:
    """One simulated run of RUN_MINUTES; `paused`: renewals is paused in Aimylogic for its first half."""
    from crm2calls.config import Settings, load_policy
    from crm2calls.delivery import deliver_pending
    from crm2calls.model import Status
    from crm2calls.services import Services

    clock = Clock()
    mapping = directory / f"campaigns-{paused}.toml"
    mapping.write_text(MAPPING, encoding="utf-8")
    emulator_class = emulator_with_memoised_zone_check()
    with emulator_class(TOKENS["default"], clock=clock) as emulator:
        for name in ("renewals", "english"):
            emulator.add_campaign(TOKENS[name], name.title())
        emulator.paused_answer = answer
        settings = Settings(
            policy=load_policy(mapping, "RU"),
            aimylogic_url=emulator.url,
            aimylogic_token=TOKENS["default"],
            campaign_tokens={name: TOKENS[name] for name in ("renewals", "english")},
            webhook_secrets=(SECRET,),
            leads_store=f"sqlite:///{directory / f'leads-{paused}.db'}",
        )
        services = Services(settings, clock=clock)
        # `import app` builds the module-level app from the environment: give it one that starts.
        os.environ.setdefault("WEBHOOK_SECRET", SECRET)
        os.environ.setdefault("DRY_RUN", "1")
        from app import create_app

        client = create_app(services=services).test_client()
        names = list(PIPELINES)
        passes = RUN_MINUTES * 60 // PASS_SECONDS
        per_pass = leads / passes
        posted, held_at_most, resumed_at, drained = 0, 0, None, None
        for number in range(passes + 60):  # the run, then up to ten minutes to drain
            while posted < min(leads, round(per_pass * (number + 1))):
                body = {**lead_body(posted, "campaigns"), "pipeline_id": PIPELINES[names[posted % 3]]}
                client.post("/webhooks/generic", json=body, headers={"X-Webhook-Secret": SECRET})
                posted += 1
            deliver_pending(services)
            # Both right after a pass (the worst case): the next sends trust a status up to a minute old.
            if paused and number == passes // 4:
                emulator.pause(TOKENS["renewals"])
            if paused and resumed_at is None and number == 3 * passes // 4:
                emulator.resume(TOKENS["renewals"])
                resumed_at = clock()
            counts = services.store.count_by_status()
            held_at_most = max(held_at_most, counts[Status.HELD.value])
            if resumed_at and drained is None and not services.store.held_by_campaign().get("renewals"):
                drained = (clock() - resumed_at).total_seconds()
            if posted == leads and counts[Status.SENT.value] + counts[Status.REJECTED.value] == leads:
                break
            clock.now += timedelta(seconds=PASS_SECONDS)
        counts = services.store.count_by_status()
        return Run(
            add_phones={name: emulator.count("addPhones", TOKENS[name]) for name in names},
            status={name: emulator.count("status", TOKENS[name]) for name in names},
            sent=counts[Status.SENT.value],
            rejected=counts[Status.REJECTED.value],
            held_at_most=held_at_most,
            drained_after_resume=drained,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the baseline (nothing paused) and the paused run, print both; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1000, help="leads in the run (default 1000)")
    parser.add_argument("--answer", type=int, default=503, choices=(200, 400, 503),
                        help="the emulator's addPhones answer for a paused campaign (UNKNOWN in reality)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 150 leads")
    args = parser.parse_args(argv)
    leads = 150 if args.quick else max(args.leads, 3)
    print(f"machine: {machine()}", flush=True)
    print(f"{leads} leads over {RUN_MINUTES} simulated minutes, one delivery pass every {PASS_SECONDS} s; "
          f"paused campaign answers addPhones {args.answer}", flush=True)  # fmt: skip
    stop_on_sigterm()
    logging.disable(logging.WARNING)  # a line per lead and request; the figures are the output
    with tempfile.TemporaryDirectory(prefix="crm2calls-campaigns-bench-") as tmp:
        baseline = run(leads, paused=False, answer=args.answer, directory=Path(tmp))
        ours = run(leads, paused=True, answer=args.answer, directory=Path(tmp))
    logging.disable(logging.NOTSET)
    rows = []
    for label, result in (("nothing paused (baseline)", baseline), ("renewals paused half the run", ours)):
        rows.append([
            label,
            sum(result.add_phones.values()), " / ".join(str(result.add_phones[n]) for n in PIPELINES),
            sum(result.status.values()), " / ".join(str(result.status[n]) for n in PIPELINES),
            result.sent, result.rejected, result.held_at_most,
            "-" if result.drained_after_resume is None else f"{result.drained_after_resume:.0f} s",
        ])  # fmt: skip
    print_table(
        ["run", "addPhones", "per campaign (default/renewals/english)", "status", "per campaign", "sent",
         "rejected", "held at most", "held renewals out after resume"],
        rows,
    )  # fmt: skip
    spent = [sum(r.add_phones.values()) + sum(r.status.values()) for r in (ours, baseline)]
    print(f"requests of the paused run vs the baseline: {ratio(*spent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
