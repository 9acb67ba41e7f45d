"""gunicorn settings: `gunicorn -c gunicorn.conf.py app:app`."""

import sys

from crm2calls.config import bind_address

bind = bind_address()
workers = 2
threads = 4
accesslog = None  # gunicorn's access log prints the query string (the webhook key); ours does not
errorlog = "-"


def on_starting(server):
    """Check the configuration once, in the master, before any worker imports the app: one message, no tracebacks."""
    from crm2calls.config import load_settings
    from crm2calls.errors import ConfigError

    try:
        load_settings(serving=True)
    except ConfigError as exc:
        lines = ["The configuration has problems:", *(f"  - {problem}" for problem in exc.problems)]
        print(*lines, sep="\n", file=sys.stderr)
        sys.exit(2)


def post_worker_init(worker):
    """Each worker process runs its own delivery thread; the store's claims keep them apart."""
    from crm2calls.worker import DeliveryWorker

    state = worker.wsgi.extensions["crm2calls"]
    delivery = DeliveryWorker(state.services)
    state.services.notify = delivery.wake
    delivery.start()
