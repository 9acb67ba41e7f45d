"""gunicorn settings: `gunicorn -c gunicorn.conf.py app:app`."""

from crm2calls.config import bind_address

bind = bind_address()
workers = 2
threads = 4
accesslog = None  # gunicorn's access log prints the query string (the webhook key); ours does not
errorlog = "-"


def post_worker_init(worker):
    """Each worker process runs its own delivery thread; the store's claims keep them apart."""
    from crm2calls.worker import DeliveryWorker

    state = worker.wsgi.extensions["crm2calls"]
    delivery = DeliveryWorker(state.services)
    state.services.notify = delivery.wake
    delivery.start()


_metrics_dir = None  # set by on_starting when METRICS_TOKEN is set


def on_starting(server):
    """With METRICS_TOKEN, the workers add up their metrics in one directory (prometheus_client multiprocess mode)."""
    global _metrics_dir
    from crm2calls.config import prepare_metrics_dir

    _metrics_dir = prepare_metrics_dir()
    if _metrics_dir:
        from crm2calls.metrics import clear_multiprocess_dir

        clear_multiprocess_dir(_metrics_dir)


def child_exit(server, worker):
    """A dead worker's live gauges leave /metrics; its counters stay in the totals."""
    if _metrics_dir:
        from crm2calls.metrics import worker_exited

        worker_exited(worker.pid, _metrics_dir)
