"""Ack first, deliver after: with Aimylogic hanging, webhooks are still answered at once."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import requests
from werkzeug.wrappers import Request, Response

from crm2calls.services import Services
from crm2calls.worker import DeliveryWorker
from tests.conftest import SECRET, TOKEN
from tests.emulators.base import LocalServer


class HangingAimylogic:
    """An Aimylogic that takes every request and answers none until released."""

    def __init__(self):
        self.release = threading.Event()
        self.waiting = 0

    @Request.application
    def __call__(self, request: Request) -> Response:
        self.waiting += 1
        self.release.wait(60)
        return Response("[]", status=503)


def test_a_hanging_aimylogic_does_not_slow_the_acknowledgement(settings):
    from app import create_app

    aimylogic = HangingAimylogic()
    with LocalServer(aimylogic) as dialer:
        services = Services(replace(settings, aimylogic_url=dialer.url, aimylogic_token=TOKEN, dry_run=False))
        worker = DeliveryWorker(services)
        services.notify = worker.wake
        with LocalServer(create_app(services=services)) as server:
            worker.start()
            try:
                url = f"{server.url}/webhooks/generic?key={SECRET}"
                with requests.Session() as http:
                    http.post(url, json={"id": "warm-up", "phone": "+79120000000"}, timeout=5)
                    deadline = time.monotonic() + 10
                    while not aimylogic.waiting and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert aimylogic.waiting  # the worker is stuck in a send right now
                    timings = []
                    for i in range(20):
                        started = time.perf_counter()
                        response = http.post(url, json={"id": f"h{i}", "phone": f"+7912{i + 1:07d}"}, timeout=5)
                        timings.append(time.perf_counter() - started)
                        assert response.status_code == 202
                assert max(timings) < 0.5, timings
                counts = services.store.count_by_status()
                assert counts["pending"] + counts["sending"] == 21 and counts["sent"] == 0  # stored, none lost
            finally:
                aimylogic.release.set()
                worker.stop()
