"""gunicorn settings: `gunicorn -c gunicorn.conf.py app:app`."""

import sys

from crm2calls.config import bind_address

bind = bind_address()
workers = 2
threads = 4
accesslog = None  # gunicorn's access log prints the query string (the webhook key); ours does not
errorlog = "-"


_metrics_dir = None  # set by on_starting when METRICS_TOKEN is set


def on_starting(server):
    """In the master, before any worker imports the app: check the configuration once (one message, no
    tracebacks), and with METRICS_TOKEN prepare the directory where the workers add up their metrics."""
    global _metrics_dir
    from crm2calls.config import load_settings, prepare_metrics_dir
    from crm2calls.errors import ConfigError

    _metrics_dir = prepare_metrics_dir()
    if _metrics_dir:  # made (or emptied) first: the check below wants it to exist
        from crm2calls.metrics import clear_multiprocess_dir

        clear_multiprocess_dir(_metrics_dir)
    try:
        load_settings(serving=True)
    except ConfigError as exc:
        lines = ["The configuration has problems:", *(f"  - {problem}" for problem in exc.problems)]
        print(*lines, sep="\n", file=sys.stderr)
        sys.exit(2)


def post_worker_init(worker):
    """Each worker process runs its own delivery and follow-up threads; the store's claims keep them apart."""
    from crm2calls.worker import start_workers

    start_workers(worker.wsgi.extensions["crm2calls"].services)


def child_exit(server, worker):
    """A dead worker's live gauges leave /metrics; its counters stay in the totals."""
    if _metrics_dir:
        from crm2calls.metrics import worker_exited

        worker_exited(worker.pid, _metrics_dir)
