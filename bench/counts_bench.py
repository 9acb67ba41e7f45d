"""What the maintained lead counts cost a write: SQLite with its count triggers beside the same store without them.

Each round stores N leads (insert), claims them (pending -> sending) and settles each (sending -> sent),
through SQLiteStore on a fresh file, with the schema v5 triggers and with them dropped; best of R
rounds each, alternated, in this process. Then counting: count_by_status() from the counts beside a
COUNT(*) GROUP BY over the same leads.

    .venv/bin/python -m bench.counts_bench [--leads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import machine, print_table
from crm2calls.model import LeadRecord, Status
from crm2calls.store.sqlite import SQLiteStore

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def lead(n: int) -> LeadRecord:
    return LeadRecord(id=f"lead-{n}", source="bench", key=f"bench:{n}", ref=str(n), status=Status.PENDING,
                      created_at=T0, updated_at=T0, next_attempt_at=T0, phone_key=f"p{n}")


def open_store(path: Path, counted: bool) -> SQLiteStore:
    store = SQLiteStore(str(path))
    store.migrate()
    if not counted:
        with sqlite3.connect(path) as conn:
            for trigger in ("lead_counts_insert", "lead_counts_update", "lead_counts_delete"):
                conn.execute(f"DROP TRIGGER {trigger}")
    return store


def one_round(directory: Path, counted: bool, leads: int) -> tuple[float, float]:
    """Seconds to insert `leads`, then to claim and settle them."""
    store = open_store(directory / f"{counted}-{time.monotonic_ns()}.db", counted)
    started = time.perf_counter()
    for n in range(leads):
        store.insert(lead(n))
    inserted = time.perf_counter()
    while claimed := store.claim(Status.PENDING, T0 + timedelta(seconds=1), 60, 250, "bench"):
        for record in claimed:
            store.update(replace(record, status=Status.SENT, next_attempt_at=None, job_id="j"), owner="bench")
    settled = time.perf_counter()
    store.close()
    return inserted - started, settled - inserted


def counting(directory: Path, leads: int) -> tuple[float, float]:
    """Seconds for count_by_status() from the counts, and for a COUNT(*) GROUP BY of the same leads."""
    store = open_store(directory / "counting.db", True)
    for n in range(leads):
        store.insert(lead(n) if n % 3 else replace(lead(n), status=Status.FAILED))
    timings = []
    for read in (store.count_by_status,
                 lambda: store._conn().execute("SELECT status, COUNT(*) FROM leads GROUP BY status").fetchall()):
        best = float("inf")
        for _ in range(20):
            started = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - started)
        timings.append(best)
    return timings[0], timings[1]


def main(argv: list[str] | None = None) -> int:
    """Print the costs side by side; always exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    best = {True: [float("inf")] * 2, False: [float("inf")] * 2}
    with tempfile.TemporaryDirectory(prefix="crm2calls-counts-") as tmp:
        for _ in range(args.rounds):
            for counted in (False, True):  # alternated, so a busy moment hits both
                timings = one_round(Path(tmp), counted, args.leads)
                best[counted] = [min(a, b) for a, b in zip(best[counted], timings, strict=True)]
        from_counts, group_by = counting(Path(tmp), args.leads * 10)
    rows = []
    for counted, label in ((False, "without counts (baseline)"), (True, "with counts (triggers)")):
        insert, settle = best[counted]
        rows.append([label, f"{insert / args.leads * 1e6:.0f}", f"{settle / args.leads * 1e6:.0f}"])
    base, ours = best[False], best[True]
    rows.append(["with / without", f"{ours[0] / base[0]:.2f}x", f"{ours[1] / base[1]:.2f}x"])
    print(f"\n{args.leads} leads, best of {args.rounds} rounds; µs per lead")
    print_table(["store", "insert µs", "claim + settle µs"], rows)
    print(f"\ncounting {args.leads * 10} leads: count_by_status() {from_counts * 1e6:.0f} µs from the counts, "
          f"COUNT(*) GROUP BY {group_by * 1e6:.0f} µs ({group_by / from_counts:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
