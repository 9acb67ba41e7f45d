"""Webhook ack throughput and latency under gunicorn: our app beside a bare Flask endpoint, same settings, same run.

Ours runs dry (DRY_RUN=1): every lead is parsed, mapped, stored in SQLite and "delivered"
by the worker thread to the log, so nothing leaves the machine. Each request carries a new lead id.
With --metrics ours runs twice, without and with METRICS_TOKEN (Prometheus multiprocess metrics),
so that their cost on the request path shows beside the same run's figures.

    .venv/bin/python -m bench.ack_bench [--requests N] [--concurrency 1 16] [--time-cap S] [--quick] [--metrics]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from pathlib import Path

from bench.common import (
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

RSS_LIMIT_MB = 120
METRICS_TOKEN = "bench-metrics-token-0123456789"


def measure(server: Gunicorn, label: str, requests: int, levels: list[int], time_cap: float) -> dict[int, LoadResult]:
    """Post `requests` fresh leads at each concurrency level; the server is already warm."""
    results = {}
    for number, concurrency in enumerate(levels):
        # Distinct lead numbers per level: a phone seen twice would take the cheaper duplicate path.
        bodies = lead_bodies(requests, run=f"{label}-c{concurrency}", start=number * requests)
        results[concurrency] = post_all(server.port, bodies, concurrency, time_cap)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the baseline, then ours, print both side by side; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per concurrency level (default 3000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="levels (default 1 16)")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per level at most (default 60)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests per level, 20 s cap")
    parser.add_argument("--metrics", action="store_true", help="also run ours with METRICS_TOKEN set (metrics on)")
    args = parser.parse_args(argv)
    requests, time_cap = (300, 20.0) if args.quick else (max(args.requests, 1), args.time_cap)
    levels = [max(level, 1) for level in args.concurrency]

    print(f"machine: {machine()}", flush=True)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="crm2calls-ack-") as tmp:
        workdir = Path(tmp)
        runs: dict[str, dict[int, LoadResult]] = {}
        rss: dict[str, list[float]] = {}
        servers = [("baseline", "bench.common:make_bare_app()", {}), ("ours", "app:app", {})]
        if args.metrics:
            servers.append(("ours+metrics", "app:app", {"METRICS_TOKEN": METRICS_TOKEN}))
        scrape = None
        for label, app, extra in servers:
            run_dir = workdir / label  # its own store: the runs post the same lead numbers
            run_dir.mkdir()
            env = {**app_env(run_dir), **extra}  # DRY_RUN=1: no token
            with Gunicorn(app, env, workdir / f"{label}.log") as server:
                print(f"{label}: {server.describe()}", flush=True)
                warm_up(server.port)
                runs[label] = measure(server, label, requests, levels, time_cap)
                rss[label] = server.worker_rss_mb()
                if extra:
                    scrape = time_scrape(server.port)
        report(runs, rss, requests, time_cap)
        if scrape:
            print(f"\nGET /metrics after the run: {scrape[0]:.1f} ms for {scrape[1]:,} bytes (median of 5 scrapes); "
                  f"it counts {scrape[2]:,.0f} webhook leads, warm-up included")
    return 0


def time_scrape(port: int) -> tuple[float, int, float]:
    """Median ms of 5 scrapes of /metrics (it reads every worker's files), the body size, the leads counted."""
    from prometheus_client.parser import text_string_to_metric_families

    times, body = [], b""
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        response = conn.getresponse()
        body = response.read()
        times.append((time.perf_counter() - started) * 1000)
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics answered {response.status}")
    counted = sum(sample.value for family in text_string_to_metric_families(body.decode())
                  for sample in family.samples if sample.name == "crm2calls_webhooks_total")
    return sorted(times)[2], len(body), counted


def report(runs: dict[str, dict[int, LoadResult]], rss: dict[str, list[float]], requests: int, time_cap: float) -> None:
    """The table, the memory and the targets."""
    print(f"\nack bench: {requests} POST /webhooks/generic per level (one lead each, new id each), "
          f"keep-alive client threads, {time_cap:.0f} s cap per level")
    rows = []
    for concurrency in runs["ours"]:
        base, ours = runs["baseline"][concurrency], runs["ours"][concurrency]
        for label in runs:
            result = runs[label][concurrency]
            rows.append([label, concurrency, len(result.latencies), f"{result.rate:,.0f}", f"{result.p(0.50):.1f}",
                         f"{result.p(0.99):.1f}", result.status_text() + (" (time cap)" if result.timed_out else "")])
        rows.append(["ours/baseline", concurrency, "", ratio(ours.rate, base.rate),
                     ratio(ours.p(0.50), base.p(0.50)), ratio(ours.p(0.99), base.p(0.99)), ""])
        if "ours+metrics" in runs:
            metered = runs["ours+metrics"][concurrency]
            rows.append(["metrics/ours", concurrency, "", ratio(metered.rate, ours.rate),
                         ratio(metered.p(0.50), ours.p(0.50)), ratio(metered.p(0.99), ours.p(0.99)), ""])
    print_table(["server", "conc", "answered", "req/s", "p50 ms", "p99 ms", "statuses"], rows)
    print("\nresident memory per gunicorn worker after the run (VmRSS):")
    for label, sizes in rss.items():
        print(f"  {label}: " + ", ".join(f"{size:.1f} MiB" for size in sizes))
    print("\ntargets:")
    for concurrency in runs["ours"]:
        base, ours = runs["baseline"][concurrency], runs["ours"][concurrency]
        print(f"  {verdict(ours.rate >= base.rate / 2)}  c={concurrency}: ack throughput >= half the baseline's "
              f"({ours.rate:,.0f} vs {base.rate:,.0f} req/s)")
        print(f"  {verdict(ours.p(0.99) <= 2 * base.p(0.99))}  c={concurrency}: ack p99 <= 2x the baseline's "
              f"({ours.p(0.99):.1f} vs {base.p(0.99):.1f} ms)")
    sizes = rss["ours"]
    print(f"  {verdict(bool(sizes) and max(sizes) < RSS_LIMIT_MB)}  RSS < {RSS_LIMIT_MB} MB per worker "
          f"(largest {max(sizes, default=0):.1f} MiB)")


if __name__ == "__main__":
    raise SystemExit(main())
