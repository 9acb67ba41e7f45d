"""Under gunicorn, /metrics adds up every worker's counts (prometheus_client's multiprocess mode).

A real gunicorn (gunicorn.conf.py, two workers) serves the app with METRICS_TOKEN set; webhooks go
over real HTTP on new connections, so both workers take some. The per-worker files prove that each
worker counted part of them; /metrics must show their sum, and keep a killed worker's part.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bench.common import WEBHOOK_PATH, Gunicorn, app_env, lead_bodies

pytestmark = pytest.mark.slow

METRICS_TOKEN = "gunicorn-metrics-token-0123456789"
WEBHOOKS = "crm2calls_webhooks_total"


def post(port: int, body: bytes) -> int:
    """One webhook on its own connection: gunicorn's workers race to accept each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", WEBHOOK_PATH, body, {"Content-Type": "application/json", "Connection": "close"})
        return conn.getresponse().status
    finally:
        conn.close()


def get_metrics(port: int, token: str | None = METRICS_TOKEN) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def webhooks_in(text: str) -> float:
    """The sum of crm2calls_webhooks_total over every label set of an exposition."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == WEBHOOKS)


def per_worker(directory: Path) -> dict[int, float]:
    """Each worker's own webhook count, read from its counter file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        merged = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[pid] = sum(s.value for m in merged for s in m.samples if s.name == WEBHOOKS)
    return counts


@pytest.fixture
def server(tmp_path):
    directory = tmp_path / "metrics"  # not there yet: gunicorn's master makes it
    env = {**app_env(tmp_path), "METRICS_TOKEN": METRICS_TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with Gunicorn("app:app", env, tmp_path / "gunicorn.log") as running:
        yield running, directory


def test_metrics_sum_every_workers_counts_and_keep_a_killed_workers(server):
    gunicorn, directory = server
    assert len(gunicorn.worker_pids()) == 2
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for round_number in range(5):  # bounded: until both workers have counted some
            bodies = lead_bodies(40, run="multiprocess", start=round_number * 40)
            assert set(pool.map(lambda body: post(gunicorn.port, body), bodies)) == {202}
            sent += len(bodies)
            counts = per_worker(directory)
            if len([count for count in counts.values() if count > 0]) >= 2:
                break
    counts = per_worker(directory)
    assert len([c for c in counts.values() if c > 0]) >= 2, (counts, gunicorn.log_tail())
    assert sum(counts.values()) == sent
    status, text = get_metrics(gunicorn.port)
    assert status == 200
    assert webhooks_in(text) == sent  # the sum, whichever worker answers the scrape

    victim = max(counts, key=counts.get)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (victim in gunicorn.worker_pids() or len(gunicorn.worker_pids()) < 2):
        time.sleep(0.1)
    assert victim not in gunicorn.worker_pids() and len(gunicorn.worker_pids()) == 2
    assert post(gunicorn.port, lead_bodies(1, run="after-kill", start=10_000)[0]) == 202
    assert webhooks_in(get_metrics(gunicorn.port)[1]) == sent + 1  # the dead worker's counts stay in the total


def test_metrics_over_http_need_the_token(server):
    gunicorn, _ = server
    status, text = get_metrics(gunicorn.port, token=None)
    assert status == 401 and json.loads(text)["error"] == "unauthorized"
    assert get_metrics(gunicorn.port, token="wrong")[0] == 401
