"""What one metrics call costs, in one process: metrics off (the baseline), Prometheus multiprocess, EMF in a batch.

A webhook records one value per lead; a delivery pass a few per addPhones request. Compare the
microseconds here with the ack's milliseconds (bench/ack_bench.py --metrics).

    .venv/bin/python -m bench.metrics_bench [--calls N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from bench.common import machine, print_table, ratio

CHILD = """
import sys, timeit
from crm2calls import metrics
kind, calls = sys.argv[1], int(sys.argv[2])
if kind == "prometheus":
    metrics.use(metrics.PrometheusSink(sys.argv[3]))
elif kind.startswith("emf"):
    sink = metrics.EmfSink("bench", write=lambda line: None)
    metrics.use(sink)
    if kind == "emf":
        batch = sink.batch()  # a request's batch: its lines are written when it ends
        batch.__enter__()
calls_per = {"webhook": lambda: metrics.webhook("generic", "accepted"),
             "aimylogic_request": lambda: metrics.aimylogic_request("addPhones", "ok", 0.05, 3)}
for name, call in calls_per.items():
    best = min(timeit.repeat(call, number=calls, repeat=3))
    print(name, best / calls * 1e6)
"""


def run(kind: str, calls: int, directory: str) -> dict[str, float]:
    """Microseconds per call of each function, in a fresh process (prometheus_client reads its mode at import)."""
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if kind == "prometheus":
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(calls), directory], env=env, check=True,
                         capture_output=True, text=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


def main(argv: list[str] | None = None) -> int:
    """Print microseconds per call beside metrics off; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per round, best of 3 (default 100000)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="crm2calls-metrics-") as directory:
        kinds = ("off", "prometheus", "emf", "emf-unbatched")
        results = {kind: run(kind, max(args.calls, 1), directory) for kind in kinds}
    rows = []
    for function in results["off"]:
        base = results["off"][function]
        for kind, label in (("off", "metrics off (baseline)"), ("prometheus", "prometheus multiprocess"),
                            ("emf", "EMF, inside a batch"), ("emf-unbatched", "EMF, a line per value")):
            value = results[kind][function]
            rows.append([label, function, f"{value:.2f}", ratio(value, base) if kind != "off" else ""])
    print_table(["sink", "call", "µs per call", "vs off"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
