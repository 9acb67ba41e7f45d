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
