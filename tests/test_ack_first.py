"""Ack first, deliver after: with Aimylogic hanging, webhooks are still answered at once."""

from __future__ import annotations

import time
from dataclasses import replace

import requests

from crm2calls.services import Services
from crm2calls.worker import DeliveryWorker
from tests.conftest import SECRET
from tests.emulators.aimylogic import AimylogicEmulator
from tests.emulators.base import LocalServer


def test_a_hanging_aimylogic_does_not_slow_the_acknowledgement(settings):
    from app import create_app

    with AimylogicEmulator() as emulator:
        emulator.hang(60, times=100)  # every addPhones call hangs for a minute
        services = Services(replace(settings, aimylogic_url=emulator.url, aimylogic_token=emulator.token))
        worker = DeliveryWorker(services)
        services.notify = worker.wake
        with LocalServer(create_app(services=services)) as server:
            worker.start()
            try:
                url = f"{server.url}/webhooks/generic?key={SECRET}"
                with requests.Session() as http:
                    http.post(url, json={"id": "warm-up", "phone": "+79120000000"}, timeout=5)
                    deadline = time.monotonic() + 10
                    while emulator.hanging == 0 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert emulator.hanging >= 1  # the worker is stuck in a send right now
                    timings = []
                    for i in range(20):
                        started = time.perf_counter()
                        response = http.post(url, json={"id": f"h{i}", "phone": f"+7912{i:07d}"}, timeout=5)
                        timings.append(time.perf_counter() - started)
                        assert response.status_code == 202
                assert max(timings) < 0.5, timings
                counts = services.store.count_by_status()
                assert counts["pending"] + counts["sending"] == 21 and counts["sent"] == 0  # all stored, none lost
            finally:
                emulator.recover()
                worker.stop()
