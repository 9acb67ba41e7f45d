"""What Lambda runs besides web requests: the schedule, the asynchronous passes and the kicks that start them.

Zappa calls the scheduled functions with (event, context) (zappa_settings.json "events", or
`zappa invoke STAGE crm2calls.lambda_tasks.deliver`); they use the app Zappa has already loaded.
create_app imports this module on Lambda, on the cold-start path: nothing heavy is imported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from crm2calls import metrics
from crm2calls.config import CrmSettings
from crm2calls.services import Services

log = logging.getLogger("crm2calls.lambda")

DEBOUNCE_SECONDS = 2.0  # webhooks this soon after a kick ride on the task it started, which looks for them
LOOK_AGAIN_SECONDS = 0.2  # how often that task looks, until the debounce window has closed
SEND_MARGIN_SECONDS = 40.0  # a pass stops claiming this long before the timeout: an addPhones call may take 33 s
TASK_BUDGET_SECONDS = 60.0  # an async pass gets no context to ask; timeout_seconds (120) minus the margin, rounded
RECONCILE_LOOKBACK = timedelta(hours=3)  # each 15-minute run re-reads 3 hours, so missed runs lose nothing

# A source is reconciled or renewed only once its API credentials are set; the schedule runs for everyone.
_CONFIGURED: dict[str, Callable[[CrmSettings], Any]] = {
    "amocrm": lambda crm: crm.amocrm_base_url and crm.amocrm_token,
    "bitrix24": lambda crm: crm.bitrix24_webhook_url,
    "zoho": lambda crm: crm.zoho_refresh_token,
}


_services: Services | None = None  # the app's, set by attach() when Zappa loads `app.app`


def app_services() -> Services:
    """The Services of the app Zappa loaded; without one, built from the environment."""
    global _services
    if _services is None:
        from crm2calls.config import load_settings

        _services = Services(load_settings())
    return _services


def _time_budget(context: Any) -> float | None:
    """Seconds a pass may keep claiming leads in this invocation, or None without a Lambda context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return max(0.0, remaining() / 1000 - SEND_MARGIN_SECONDS)


def deliver(event: dict[str, Any] | None, context: Any) -> str:
    """Scheduled every minute: one delivery pass (what `flask --app app leads deliver` runs)."""
    from crm2calls.delivery import deliver_pending

    services = app_services()
    with metrics.batch():  # one set of metric lines per invocation
        report = deliver_pending(services, time_budget=_time_budget(context))
        # Leads by status once a minute, from the store's maintained counts: no request pays for it.
        metrics.lead_counts(services.store.count_by_status())
        return str(report)


def deliver_task() -> str:
    """The asynchronous pass a webhook kicks; Zappa's route_lambda_task calls it in a new invocation.

    Webhooks within the kick's debounce window start no task of their own: the task keeps looking for
    their leads until the window has closed, so they go out in a fraction of a second, not at the sweep.
    """
    from crm2calls.delivery import deliver_pending

    services = app_services()
    started = time.monotonic()
    with metrics.batch():
        reports = [deliver_pending(services, time_budget=TASK_BUDGET_SECONDS)]
        while (left := kick_delivery.window - (time.monotonic() - started)) > 0:
            time.sleep(min(LOOK_AGAIN_SECONDS, left))
            if _new_leads_wait(services):
                reports.append(deliver_pending(services, time_budget=TASK_BUDGET_SECONDS))
    return "; ".join(str(report) for report in reports if report.requests or report is reports[0])


def _new_leads_wait(services: Services) -> bool:
    """Whether leads wait to be enriched or sent: one read of the store's counts, where a pass takes a dozen.

    The task looks several times a second: a full pass each time kept the store busy with nothing to do.
    """
    counts = services.store.count_by_status()
    return bool(counts["received"] or counts["pending"])


def follow_up(event: dict[str, Any] | None, context: Any) -> str:
    """Scheduled every minute: one follow-up pass (poll jobs, cancel, write outcomes back)."""
    from crm2calls.followup import follow_up as run_follow_up

    with metrics.batch():
        return str(run_follow_up(app_services(), time_budget=_time_budget(context)))


def follow_up_task() -> str:
    """The asynchronous follow-up pass a stop event kicks, so its cancel does not wait for the schedule."""
    from crm2calls.followup import follow_up as run_follow_up

    with metrics.batch():
        return str(run_follow_up(app_services(), time_budget=TASK_BUDGET_SECONDS))


def reconcile_amocrm(event: dict[str, Any] | None, context: Any) -> str:
    """Scheduled: accept amoCRM leads of the last hours that no webhook brought."""
    return _reconcile("amocrm")


def reconcile_bitrix24(event: dict[str, Any] | None, context: Any) -> str:
    """Scheduled: accept Bitrix24 leads of the last hours that no webhook brought."""
    return _reconcile("bitrix24")


def _reconcile(source_name: str) -> str:
    services = app_services()
    if not _CONFIGURED[source_name](services.settings.crm):
        return f"{source_name} is not configured: nothing to reconcile"
    from crm2calls.reconcile import reconcile

    return str(reconcile(services, source_name, RECONCILE_LOOKBACK))


def renew_zoho(event: dict[str, Any] | None, context: Any) -> str:
    """Scheduled daily: subscribe the Zoho CRM notification channel for another week."""
    services = app_services()
    if not _CONFIGURED["zoho"](services.settings.crm):
        return "zoho is not configured: no channel to renew"
    from crm2calls.sources.zoho import renew_watch

    return str(renew_watch(services, services.clock()))


def _start(task: Callable[[], str]) -> Callable[[], None]:
    def start() -> None:
        """Invoke this function asynchronously with Zappa's task message, which routes to `task`."""
        # zappa.asynchronous builds four boto3 clients when imported (~0.3 s): pay that on the first
        # kick, not on every cold start. run() is the call form of @task: same message, same routing.
        from zappa.asynchronous import run

        if not run(task).sent:
            raise RuntimeError("Lambda did not accept the asynchronous invocation")

    return start


class Kicker:
    """Start one asynchronous pass, at most once per `window` seconds in this process.

    A pass drains every due lead in batches and concurrent passes are kept apart by the store's
    claims, so a burst of webhooks needs one pass, not one per lead.
    """

    def __init__(
        self, start: Callable[[], None], window: float = DEBOUNCE_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.start = start
        self.window = window
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        """Kick unless a kick was made within the window; True if a pass was started. Never raises."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.window:
                return False
            self._last = now
        try:
            self.start()
        except Exception:
            # The lead is stored: the per-minute sweep sends it. The webhook must not fail for this.
            with self._lock:
                self._last = None
            log.warning("could not start an asynchronous pass; the scheduled one will do its work", exc_info=True)
            return False
        return True


kick_delivery = Kicker(_start(deliver_task))
kick_follow_up = Kicker(_start(follow_up_task))


def attach(services: Services) -> None:
    """Wire an app for Lambda: its Services serve the tasks, stored webhooks kick a delivery pass, stops a
    follow-up pass, and only redacted lines reach CloudWatch."""
    global _services
    _services = services
    services.notify = kick_delivery
    services.notify_follow_up = kick_follow_up
    quiet_logging()


def quiet_logging() -> None:
    """Drop the Lambda runtime's root handler: CloudWatch gets our JSON lines alone.

    Zappa's request line (its query holds ?key=) is redacted like every record, by the record
    factory configure_logging installs.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        # awslambdaric's LambdaLoggerHandler[WithFrameType] prints every record as it is, and beside
        # our JSON line: CloudWatch gets ours alone, which redacts.
        if type(handler).__name__.startswith("LambdaLoggerHandler"):
            root.removeHandler(handler)
