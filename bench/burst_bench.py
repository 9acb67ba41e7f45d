"""A burst of leads through gunicorn to the Aimylogic emulator, beside a naive synchronous forwarder, same run.

For each emulator speed (fast, and 0.5 s per call): N leads are posted to our app at C requests in
flight, then the bench waits until the emulator has accepted every one of them. The naive forwarder
(a bare Flask endpoint calling addPhones once per lead, under the same gunicorn settings) is
measured beside it; with the slow emulator it is capped in time, by design.

    .venv/bin/python -m bench.burst_bench [--leads N] [--concurrency C] [--fast | --slow] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    TOKEN,
    Gunicorn,
    LoadResult,
    app_env,
    lead_bodies,
    machine,
    post_all,
    print_table,
    ratio,
    stop_on_sigterm,
    verdict,
    warm_up,
)

SLOW_DELAY = 0.5  # seconds the slow emulator takes per call
BATCH_SIZE = 250  # the bench mapping file's [delivery]: 10,000 leads in 40+ requests, 4 in flight per worker
DELIVERY_CONCURRENCY = 4
MAX_REQUESTS_PER_10K = 200


@dataclass
class Burst:
    """One burst against our app."""

    load: LoadResult
    delivered: int  # distinct phones of the burst the emulator accepted
    entries: int  # entries of the burst the emulator accepted, repeats included
    requests: int  # addPhones requests made for the burst
    last_delivery: float | None  # seconds from the first post to the last lead accepted; None: not all in time


def emulator_with_memoised_zone_check() -> type:
    """The emulator class, its gmtZone check memoised: it lists the tz database per entry (~30 ms each).

    The check is a pure function of the zone string, so memoising changes no answer; without it the
    bench process would spend minutes validating 10,000 entries and measure the emulator, not us.
    """
    from tests.emulators import aimylogic

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the emulator's line per request

    if not hasattr(aimylogic.valid_zone, "cache_info"):
        aimylogic.valid_zone = functools.lru_cache(maxsize=None)(aimylogic.valid_zone)
    return aimylogic.AimylogicEmulator


def accepted(emulator: object, entries_before: int) -> tuple[int, int]:
    """(distinct phones, entries) the emulator accepted after the first `entries_before` entries."""
    entries = emulator.entries[entries_before:]
    return len({str(entry["phone"]) for entry in entries}), len(entries)


def add_phones_requests(emulator: object) -> int:
    """addPhones requests the emulator has seen."""
    return sum(1 for request in list(emulator.requests) if request.path.endswith("/addPhones"))


def wait_delivered(emulator: object, entries_before: int, count: int, deadline: float) -> float | None:
    """Poll until `count` distinct new phones are accepted; the monotonic time that happened, or None at deadline."""
    while time.monotonic() < deadline:
        if len(emulator.entries) - entries_before >= count and accepted(emulator, entries_before)[0] >= count:
            return time.monotonic()
        time.sleep(0.02)
    return None


def run_ours(workdir: Path, delay: float, leads: int, concurrency: int, time_cap: float) -> tuple[Burst, str]:
    """Post the burst to app:app delivering to a fresh emulator; wait for every lead to arrive there."""
    emulator_class = emulator_with_memoised_zone_check()
    with emulator_class(token=TOKEN) as emulator:
        emulator.delay = delay
        env = app_env(workdir, aimylogic_url=emulator.url, token=TOKEN,
                      batch_size=BATCH_SIZE, concurrency=DELIVERY_CONCURRENCY)
        with Gunicorn("app:app", env, workdir / "ours.log") as server:
            warmed = warm_up(server.port, count=50)
            wait_delivered(emulator, 0, len(warmed.latencies), time.monotonic() + 60)
            entries_before, requests_before = len(emulator.entries), add_phones_requests(emulator)
            bodies = lead_bodies(leads, run="burst")
            began = time.monotonic()
            load = post_all(server.port, bodies, concurrency, time_cap)
            done = wait_delivered(emulator, entries_before, load.statuses.get(202, 0), began + time_cap)
            delivered, entries = accepted(emulator, entries_before)
            burst = Burst(load, delivered, entries, add_phones_requests(emulator) - requests_before,
                          None if done is None else done - began)
            return burst, server.describe()


def run_naive(workdir: Path, delay: float, leads: int, concurrency: int, time_cap: float) -> tuple[LoadResult, str]:
    """Post leads to the naive forwarder, which calls addPhones before it answers; capped at time_cap."""
    emulator_class = emulator_with_memoised_zone_check()
    with emulator_class(token=TOKEN) as emulator:
        emulator.delay = delay
        env = {"NAIVE_ADDPHONES_URL": f"{emulator.url}/api/calls/campaign/{TOKEN}/addPhones"}
        with Gunicorn("bench.common:make_naive_app()", env, workdir / "naive.log") as server:
            warm_up(server.port, count=20)
            return post_all(server.port, lead_bodies(leads, run="naive"), concurrency, time_cap), server.describe()


def main(argv: list[str] | None = None) -> int:
    """Run the burst for each emulator speed, print ours beside the naive forwarder; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=10_000, help="leads in the burst (default 10000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true", help="only the fast emulator")
    speed.add_argument("--slow", action="store_true", help=f"only the slow emulator ({SLOW_DELAY} s per call)")
    parser.add_argument("--time-cap", type=float, default=300.0,
                        help="seconds per burst, posting and delivery together, at most (default 300)")
    parser.add_argument("--naive-cap", type=float, default=30.0,
                        help="seconds the naive forwarder is given per speed (default 30)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 leads, naive capped at 10 s")
    args = parser.parse_args(argv)
    leads, naive_cap = (500, 10.0) if args.quick else (max(args.leads, 1), args.naive_cap)
    concurrency = max(args.concurrency, 1)
    speeds = [("fast", 0.0)] if args.fast else [("slow", SLOW_DELAY)] if args.slow else [
        ("fast", 0.0), ("slow", SLOW_DELAY)]

    ours: dict[str, Burst] = {}
    naive: dict[str, LoadResult] = {}
    print(f"machine: {machine()}", flush=True)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="crm2calls-burst-") as tmp:
        for name, delay in speeds:
            workdir = Path(tmp) / name
            workdir.mkdir()
            ours[name], described = run_ours(workdir, delay, leads, concurrency, args.time_cap)
            print(f"ours ({name} emulator): {described}", flush=True)
            naive[name], described = run_naive(workdir, delay, leads, concurrency, naive_cap)
            print(f"naive ({name} emulator): {described}", flush=True)
    report(ours, naive, leads, concurrency, naive_cap)
    return 0


def report(ours: dict[str, Burst], naive: dict[str, LoadResult], leads: int, concurrency: int,
           naive_cap: float) -> None:
    """The table and the targets."""
    print(f"\nburst bench: {leads} leads, {concurrency} in flight; ours delivers in batches of up to {BATCH_SIZE}, "
          f"{DELIVERY_CONCURRENCY} in flight per gunicorn worker; naive capped at {naive_cap:.0f} s")
    rows = []
    for name, burst in ours.items():
        load, base = burst.load, naive[name]
        last = f"{burst.last_delivery:.1f}" if burst.last_delivery is not None else "not all"
        rows.append([f"ours, {name}", len(load.latencies), f"{load.rate:,.0f}", f"{load.p(0.5):.1f}",
                     f"{load.p(0.99):.1f}", f"{load.elapsed:.1f}", last, f"{burst.delivered}/{len(load.latencies)}",
                     burst.requests, load.status_text()])
        rows.append([f"naive, {name}", len(base.latencies), f"{base.rate:,.0f}", f"{base.p(0.5):.1f}",
                     f"{base.p(0.99):.1f}", f"{base.elapsed:.1f}", f"{base.elapsed:.1f}",
                     f"{base.statuses.get(202, 0)}/{len(base.latencies)}", base.statuses.get(202, 0),
                     base.status_text() + (" (time cap)" if base.timed_out else "")])
        rows.append([f"ours/naive, {name}", "", ratio(load.rate, base.rate), ratio(load.p(0.5), base.p(0.5)),
                     ratio(load.p(0.99), base.p(0.99)), "", "", "", "", ""])
    print_table(["run", "acked", "ack/s", "p50 ms", "p99 ms", "post s", "last delivered s", "delivered",
                 "addPhones", "statuses"], rows)
    print("\ntargets:")
    for name, burst in ours.items():
        allowed = max(1, MAX_REQUESTS_PER_10K * leads // 10_000)
        print(f"  {verdict(burst.requests <= allowed)}  {name}: at most {allowed} addPhones requests for {leads} leads "
              f"({burst.requests}; entries sent {burst.entries}, distinct phones {burst.delivered})")
    if "fast" in ours and "slow" in ours:
        fast, slow = ours["fast"].load, ours["slow"]
        print(f"  {verdict(slow.load.p(0.5) <= 2 * fast.p(0.5))}  slow: ack p50 <= 2x the fast case "
              f"({slow.load.p(0.5):.1f} vs {fast.p(0.5):.1f} ms)")
    if "slow" in ours:
        slow = ours["slow"]
        within = slow.last_delivery is not None and slow.last_delivery <= 2 * slow.load.elapsed
        last = "not all delivered" if slow.last_delivery is None else f"{slow.last_delivery:.1f} s"
        print(f"  {verdict(within)}  slow: last lead delivered within 2x the posting time "
              f"({last} vs 2 x {slow.load.elapsed:.1f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
