"""The local delivery worker: a background thread that runs delivery passes (serve and gunicorn only).

It sends the way a database commits a group: a wake with nothing in flight starts a pass at once,
and leads that arrive while its addPhones request is out go together in the pass's next round
(deliver_pending claims again until nothing is due). A trickle goes out one lead per request within
milliseconds; a burst fills batches by itself, since each round takes as long as its request.

Started explicitly by the serve command and gunicorn's post_worker_init hook, never at import
time; on Lambda the async task and the schedule call deliver_pending() instead.
"""

from __future__ import annotations

import logging
import threading

from crm2calls.delivery import deliver_pending
from crm2calls.logs import redact
from crm2calls.services import Services

log = logging.getLogger("crm2calls.worker")


class DeliveryWorker:
    """Run deliver_pending() at once when wake() is called (services.notify), else every poll_seconds."""

    def __init__(self, services: Services):
        self.services = services
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="crm2calls-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its pass and wait up to `timeout` seconds for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Run a pass now: a lead was just stored."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        policy = self.services.settings.policy.delivery
        while not self._stop.is_set():
            self._wake.clear()  # a wake() during the pass below starts the next one at once
            try:
                deliver_pending(self.services)
            except Exception as exc:  # the store or a bug: log it and try again next round
                log.error("delivery pass failed: %s", redact(f"{type(exc).__name__}: {exc}"), exc_info=True)
            # No linger: waiting for a fuller batch would cost every lead of a trickle that wait.
            self._wake.wait(policy.poll_seconds)
