"""The local workers: background threads that run delivery and follow-up passes (serve and gunicorn only).

It sends the way a database commits a group: a wake with nothing in flight starts a pass at once,
and leads that arrive while its addPhones request is out go together in the pass's next round
(deliver_pending claims again until nothing is due). A trickle goes out one lead per request within
milliseconds; a burst fills batches by itself, since each round takes as long as its request.

Started explicitly by the serve command and gunicorn's post_worker_init hook, never at import
time; on Lambda the async tasks and the schedule call deliver_pending() and follow_up() instead.
"""

from __future__ import annotations

import logging
import threading

from crm2calls.delivery import deliver_pending
from crm2calls.logs import redact
from crm2calls.services import Services

log = logging.getLogger("crm2calls.worker")


class PassWorker:
    """Run a pass at once when wake() is called, else every `interval()` seconds, on its own thread."""

    name = "worker"

    def __init__(self, services: Services):
        self.services = services
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_pass(self) -> object:
        """One pass."""
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds between passes when nothing wakes the thread."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"crm2calls-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its pass and wait up to `timeout` seconds for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Run a pass now: there is new work."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # a wake() during the pass below starts the next one at once
            try:
                self.run_pass()
            except Exception as exc:  # the store or a bug: log it and try again next round
                log.error("%s pass failed: %s", self.name, redact(f"{type(exc).__name__}: {exc}"), exc_info=True)
            self._wake.wait(self.interval())


class DeliveryWorker(PassWorker):
    """Delivery passes: at once on services.notify, else every poll_seconds."""

    name = "delivery"

    def run_pass(self) -> object:
        """One delivery pass; no linger: waiting for a fuller batch would cost every lead of a trickle that wait."""
        return deliver_pending(self.services)

    def interval(self) -> float:
        """[delivery] poll_seconds."""
        return self.services.settings.policy.delivery.poll_seconds


class FollowUpWorker(PassWorker):
    """Follow-up passes (poll jobs, cancel, write outcomes back): at once on services.notify_follow_up.

    Its own thread, so a slow CRM or report request never delays a new lead's send.
    """

    name = "follow-up"

    def run_pass(self) -> object:
        """One follow-up pass."""
        from crm2calls.followup import follow_up

        return follow_up(self.services)

    def interval(self) -> float:
        """[delivery] poll_seconds, like delivery: the due index makes an idle pass a few cheap reads."""
        return self.services.settings.policy.delivery.poll_seconds


def start_workers(services: Services) -> list[PassWorker]:
    """Start the delivery and follow-up threads and wire the store's writers to wake them."""
    delivery, follow_up = DeliveryWorker(services), FollowUpWorker(services)
    services.notify, services.notify_follow_up = delivery.wake, follow_up.wake
    for worker in (delivery, follow_up):
        worker.start()
    return [delivery, follow_up]
