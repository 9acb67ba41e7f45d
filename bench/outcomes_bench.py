"""getReport requests spent following 10,000 leads' calls over their life, beside naive polling (one request per
lead per minute until its job is final).

In process, on a simulated clock both our code and the Aimylogic emulator read: leads arrive over a day (most
in business hours, a few at night), spread over four time zones; each is stored pending with the entry our
mapping renders (10:00-20:00 local every day, a 72-hour window), sent by the real delivery pass and followed
by the real poll handler (crm2calls.outcomes.poll_jobs on leads claimed from the store like the follow-up
pass claims them, a SQLite store), one pass a simulated minute, over real HTTP to the emulator. Each phone's
job moves on a plan drawn from MIX: dialled minutes after its window opens, talked to, not reached after
three attempts an hour apart, a wrong number, cancelled, never dialled before the campaign stopped, or never
ending. The baseline asks about every lead once a minute from its send until its job is final (or its window
plus the grace is over), counted on the same jobs in the same run.

Printed: getReport requests and ids asked (ours, and the baseline), per 10,000 leads; lead polls (store
writes); the delay from a job's final status to the lead's, p50/p95/max.

    .venv/bin/python -m bench.outcomes_bench [--leads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import TOKEN, machine, percentile, print_table, ratio, stop_on_sigterm

ZONES = (("Europe/Moscow", 0.6), ("Asia/Yekaterinburg", 0.2), ("Asia/Novosibirsk", 0.1), ("Asia/Vladivostok", 0.1))
WINDOW_HOURS = 72
# (share, final jobStatus, attempts): what became of the calls; None never ends.
MIX = (
    (0.53, "longCallWithResult", 1),
    (0.08, "longCallWithNoResult", 2),
    (0.25, "noAnswer", 3),
    (0.05, "nonexistentNumber", 1),
    (0.05, "canceled", 0),  # cancelled in Aimylogic by a person, minutes to hours after the send
    (0.03, "notDone", 0),  # the campaign stopped before it was dialled: final when the window ends
    (0.01, None, 0),  # never ends: Aimylogic keeps it planned
)
CLAIM_LIMIT = 500  # as followup.follow_up claims


class Clock:
    """The simulated clock our code and the emulator read."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday, 03:00 in Moscow

    def __call__(self) -> datetime:
        return self.now


def arrivals(leads: int, start: datetime, rng: random.Random) -> list[datetime]:
    """Arrival times over one day: 90% between 06:00 and 18:00 UTC (09:00-21:00 in Moscow), the rest any time."""
    times = []
    for _ in range(leads):
        if rng.random() < 0.9:
            moment = start + timedelta(hours=6, seconds=rng.uniform(0, 12 * 3600))
        else:
            moment = start + timedelta(seconds=rng.uniform(0, 24 * 3600))
        times.append(moment.replace(microsecond=0))
    return sorted(times)


def entry_for(n: int, arrived: datetime, rng: random.Random) -> dict:
    zone = rng.choices([z for z, _ in ZONES], [w for _, w in ZONES])[0]
    return {
        "phone": f"7912{n:07d}",
        "startDateTime": arrived.isoformat(),
        "finishDateTime": (arrived + timedelta(hours=WINDOW_HOURS)).isoformat(),
        "allowedDays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "allowedTime": {"default": [{"localTimeFrom": "10:00", "localTimeTo": "20:00"}]},
        "retryIntervalInMinutes": 60,
        "maxAttempts": 3,
        "gmtZone": zone,
    }


def plan_for(entry: dict, arrived: datetime, sent: datetime, rng: random.Random):
    """The job's plan: dialled 1-30 minutes after its window opens (the campaign's queue), then as MIX says.

    Its times count from `sent`, when addPhones creates the job (the pass after the lead's arrival).
    """
    from crm2calls.zones import next_window_opening
    from tests.emulators.aimylogic import JobPlan

    opens = next_window_opening(entry, arrived) or arrived
    queued = opens + timedelta(seconds=rng.uniform(60, 1800))
    dialled = next_window_opening(entry, queued) or queued  # Aimylogic dials inside the window only
    wait = (dialled - sent).total_seconds()
    final, attempts = rng.choices([(f, a) for _, f, a in MIX], [share for share, _, _ in MIX])[0]
    if final == "notDone":
        wait = WINDOW_HOURS * 3600.0
    if final == "canceled":
        wait = rng.uniform(600, 6 * 3600)  # a person cancels it (the campaign's page): any time
    ring = rng.uniform(60, 300) if final and final.startswith("longCall") else rng.uniform(20, 45)
    return JobPlan(final=final, attempts=attempts, wait=wait, ring=ring, retry=3600.0, duration=int(ring))


def final_at(job) -> datetime | None:
    """When the emulator's job reaches its final status (None: never)."""
    plan = job.plan
    if plan.final is None:
        return None
    ends = plan.wait + plan.attempts * plan.ring + max(plan.attempts - 1, 0) * plan.retry
    return job.created + timedelta(seconds=ends)


def run(leads: int, directory: Path, seed: int = 12) -> dict:
    """One simulated life of `leads` leads; what it spent, and the naive baseline on the same jobs."""
    from crm2calls.config import Settings, load_policy
    from crm2calls.delivery import deliver_pending
    from crm2calls.followup import LEASE, FollowUpPass
    from crm2calls.guards import phone_key
    from crm2calls.model import LeadRecord, Status
    from crm2calls.outcomes import GRACE, poll_jobs
    from crm2calls.phones import mask
    from crm2calls.services import Services
    from crm2calls.zones import zone_tzinfo
    from tests.emulators.aimylogic import AimylogicEmulator

    rng = random.Random(seed)
    clock = Clock()
    start = clock.now
    times = arrivals(leads, start, rng)
    with AimylogicEmulator(TOKEN, clock=clock) as emulator:
        mapping = directory / "leads.toml"
        mapping.write_text('[delivery]\nbatch_size = 250\nconcurrency = 1\n\n[guards]\ncalls_per_minute = 0\n'
                           'calls_per_day = 0\nper_number_per_day = 0\nper_number_per_week = 0\n'
                           'per_number_per_month = 0\n', encoding="utf-8")  # fmt: skip
        settings = Settings(
            policy=load_policy(mapping, "RU"),
            aimylogic_url=emulator.url,
            aimylogic_token=TOKEN,
            webhook_secrets=("bench-secret-0123456789abcdef",),
            leads_store=f"sqlite:///{directory / 'leads.db'}",
        )
        services = Services(settings, clock=clock)
        store = services.store
        end = times[-1] + timedelta(hours=WINDOW_HOURS) + GRACE + timedelta(minutes=5)
        posted, lead_polls, passes, busiest, started = 0, 0, 0, 0, time.perf_counter()
        while clock.now <= end:
            while posted < leads and times[posted] <= clock.now:
                arrived = times[posted]
                entry = entry_for(posted, arrived, rng)
                emulator.plan_job(entry["phone"], plan_for(entry, arrived, clock.now, rng))
                store.insert(LeadRecord(
                    id=uuid.uuid4().hex, source="generic", key=f"generic:{posted}", ref=str(posted),
                    status=Status.PENDING, created_at=arrived, updated_at=arrived, next_attempt_at=arrived,
                    entry=json.dumps(entry, separators=(",", ":"), sort_keys=True),
                    phone_masked=mask(entry["phone"]), phone_key=phone_key(entry["phone"]),
                ))  # fmt: skip
                posted += 1
            deliver_pending(services)
            this_minute = 0
            while True:  # the minute's follow-up pass, claiming as followup.follow_up does, the poll task only
                owner = f"bench:{uuid.uuid4().hex[:8]}"
                claimed = []
                for status in (Status.SENT, Status.CALLING):
                    claimed += store.claim(status, clock.now, int(LEASE.total_seconds()), CLAIM_LIMIT, owner)
                if not claimed:
                    break
                passes += 1
                lead_polls += len(claimed)
                this_minute += len(claimed)
                poll_jobs(FollowUpPass(services, clock.now, owner), claimed)
                if len(claimed) < CLAIM_LIMIT:
                    break
            busiest = max(busiest, this_minute)
            clock.now += timedelta(minutes=1)
        seconds = time.perf_counter() - started
        # What we saw: from each job's final status to the lead's.
        delays: dict[bool, list[float]] = {True: [], False: []}  # by whether it was dialled
        slowest: list[tuple[float, str, str, str]] = []
        for record in store.list(limit=10 * leads):
            job = emulator.jobs.get(record.job_id or "")
            moment = final_at(job) if job else None
            if moment is not None and record.outcome and record.outcome.get("job_status") == job.plan.final:
                seen = next(datetime.fromisoformat(s["at"]) for s in record.history if s["status"] != "sent"
                            and job.plan.final in s.get("note", ""))  # fmt: skip
                delays[job.plan.attempts > 0].append((seen - moment).total_seconds())
                if job.plan.attempts:
                    local = moment.astimezone(zone_tzinfo(json.loads(record.entry)["gmtZone"]))
                    slowest.append(((seen - moment).total_seconds(), job.plan.final, f"{local:%a %H:%M} local",
                                    " ".join(step["note"].split()[2] for step in record.history[1:])))
        # The baseline: a request per lead per minute from its send until it sees the job final, on the same jobs.
        naive = 0
        for job in emulator.jobs.values():
            entry_finish = job.created + timedelta(hours=WINDOW_HOURS)  # the send is at arrival, within a minute
            last = entry_finish + GRACE
            moment = final_at(job)
            until = min(moment, last) if moment is not None else last
            naive += max(1, math.ceil((until - job.created).total_seconds() / 60))
        counts = store.count_by_status()
        return {
            "requests": emulator.count("getReport"),
            "ids": emulator.report_ids_asked + emulator.report_phones_asked,
            "naive": naive,
            "lead_polls": lead_polls,
            "passes": passes,
            "busiest": busiest,
            "slowest": sorted(slowest, reverse=True)[:5],
            "delays": delays,
            "statuses": {k: v for k, v in counts.items() if v},
            "seconds": seconds,
            "jobs": len(emulator.jobs),
        }


def main(argv: list[str] | None = None) -> int:
    """Run the simulated life once, print ours beside the naive baseline; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=10_000, help="leads arriving over the simulated day")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 leads")
    args = parser.parse_args(argv)
    leads = 300 if args.quick else max(args.leads, 10)
    print(f"machine: {machine()}", flush=True)
    mix = ", ".join(f"{final or 'never ends'} {share:.0%}" for share, final, _ in MIX)
    print(f"{leads} leads over a simulated day, {WINDOW_HOURS} h windows 10:00-20:00 local, one pass a minute; "
          f"mix: {mix}", flush=True)  # fmt: skip
    stop_on_sigterm()
    logging.disable(logging.WARNING)  # a line per lead and request; the figures are the output
    with tempfile.TemporaryDirectory(prefix="crm2calls-outcomes-bench-") as tmp:
        result = run(leads, Path(tmp))
    logging.disable(logging.NOTSET)
    scale = 10_000 / leads
    delays = result["delays"]
    print_table(
        ["polling", "getReport requests", "per 10,000 leads", "ids asked", "per request", "lead polls (writes)"],
        [
            ["ours (schedule, 100 ids a request)", result["requests"], round(result["requests"] * scale),
             result["ids"], f"{result['ids'] / max(result['requests'], 1):.1f}", result["lead_polls"]],
            ["naive (1 request per lead per minute)", result["naive"], round(result["naive"] * scale),
             result["naive"], "1.0", result["naive"]],
        ],
    )  # fmt: skip
    print(f"requests ours vs naive: {ratio(result['requests'], result['naive'])} "
          f"({result['naive'] / max(result['requests'], 1):.0f} times fewer)")
    for dialled, label in ((True, "dialled (inProcess just before)"), (False, "never dialled (planned before)")):
        seen = delays[dialled]
        if seen:
            print(f"job final -> lead final, {label}: p50 {percentile(seen, 0.5):.0f} s, "
                  f"p95 {percentile(seen, 0.95):.0f} s, max {max(seen):.0f} s over {len(seen)} calls")  # fmt: skip
    for delay, final, when, seen in result["slowest"]:
        print(f"  slowest dialled: {delay:.0f} s, {final} at {when}; jobStatus seen: {seen}")
    print(f"statuses at the end: {result['statuses']}; {result['passes']} poll batches "
          f"(claims of up to {CLAIM_LIMIT}); at most {result['busiest']} leads polled in one minute; "
          f"simulated in {result['seconds']:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
