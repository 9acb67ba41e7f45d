"""HTTP views: verify the raw bytes, parse, call the domain, render. Errors are mapped in one place."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge

from crm2calls import metrics
from crm2calls.errors import (
    Crm2CallsError,
    RequestError,
    ServiceUnavailableError,
    StoreError,
    UnauthorizedError,
    UnusableLeadError,
)
from crm2calls.services import Services
from crm2calls.sources.base import Ack, InboundRequest, Source, secret_matches

bp = Blueprint("webhooks", __name__)
log = logging.getLogger("crm2calls.web")
_openapi_lock = threading.Lock()


def services() -> Services:
    """The app's Services; 503 when the configuration did not load (only possible under the CLI)."""
    state = current_app.extensions["crm2calls"]
    if state.services is None:
        raise ServiceUnavailableError("crm2calls is not configured: run `flask --app app config check`")
    return state.services


def inbound() -> InboundRequest:
    """The request as the CRM sent it: raw body, raw path and query, the public URL it called."""
    settings = services().settings
    environ = request.environ
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw_uri:
        query = environ.get("QUERY_STRING", "")
        raw_uri = quote(request.script_root + request.path) + (f"?{query}" if query else "")
    base = settings.public_base_url.rstrip("/") if settings.public_base_url else request.host_url.rstrip("/")
    return InboundRequest(
        method=request.method,
        url=base + raw_uri,
        query=request.args.to_dict(flat=False),
        headers=request.headers,
        body=whole_body(),
        content_type=(request.mimetype or "").lower(),
    )


def whole_body() -> bytes:
    """The raw body; 413 when it is over MAX_BODY_BYTES, with or without a Content-Length."""
    body = request.get_data(cache=True)  # a Content-Length over the limit raises 413 here, unread
    limit = request.max_content_length
    # Werkzeug cuts a body without Content-Length (chunked) at the limit without an error: never parse a cut body.
    if limit is not None and request.content_length is None and len(body) >= limit:
        raise RequestEntityTooLarge()
    return body


def render(ack: Ack) -> Response:
    """An adapter's Ack as a Flask response."""
    if isinstance(ack.body, bytes | str):
        response = Response(ack.body, status=ack.status, content_type=ack.content_type)
    else:
        response = jsonify(ack.body)
        response.status_code = ack.status
    response.headers.update(ack.headers)
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description, built once per app (it builds every source)."""
    with _openapi_lock:
        spec = current_app.extensions.get("crm2calls.openapi")
        if spec is None:
            from crm2calls.openapi import build_spec
            from crm2calls.sources import SOURCES

            svc = services()
            spec = build_spec({name: svc.source(name) for name in sorted(SOURCES)})
            current_app.extensions["crm2calls.openapi"] = spec
    return jsonify(spec)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """One health document, the same on every platform, from a few single-item reads and the maintained counts."""
    from crm2calls import health

    body, status = health.check(services())
    return jsonify(body), status


def verified(source_name: str) -> tuple[Services, Source, InboundRequest]:
    """The source and its request, authenticated (401/403) and of a content type it takes (415)."""
    svc = services()
    source = svc.source(source_name)
    g.source = source.name  # a known source: the metrics' label (an unknown name is only "unknown")
    req = inbound()
    source.authenticate(req)
    source.check_content_type(req)
    return svc, source, req


@bp.post("/webhooks/<source_name>")
def receive(source_name: str) -> Response:
    """A CRM's webhook: authenticate, parse, store, acknowledge. Nothing is sent from here."""
    from crm2calls.intake import accept

    svc, source, req = verified(source_name)
    events, stop_events = source.parse(req), source.parse_stops(req)
    results = accept(svc, source, events)
    g.leads = len(results)
    g.outcomes = Counter(result.outcome for result in results)
    ack = source.acknowledge(results)
    if stop_events:  # after the leads: a body holding a lead and its stop ends with the lead stopped
        from crm2calls.stops import apply_stops

        stopped = apply_stops(svc, source.name, stop_events)
        g.stops = len(stopped)
        if isinstance(ack.body, dict):  # a CRM that expects its own answer gets it unchanged
            ack.body["stops"] = [result.as_json() for result in stopped]
    return render(ack)


@bp.post("/preview/<source_name>")
def preview(source_name: str) -> Response:
    """The addPhones body a webhook would produce, without storing or sending anything."""
    from crm2calls.mapping import render_entry

    svc, source, req = verified(source_name)
    now = svc.clock()
    policy = svc.settings.policy
    entries, leads = [], []
    for event in source.parse(req):
        try:
            lead = event.lead or source.enrich(event, now)
            rendered = render_entry(lead, policy.source(source.name), policy, now)
        except UnusableLeadError as exc:
            leads.append({"ref": event.ref, "status": "rejected", "field": exc.field, "reason": exc.reason})
            continue
        except Crm2CallsError as exc:
            leads.append({"ref": event.ref, "status": "error", "reason": str(exc)})
            continue
        entries.append(rendered.entry)
        leads.append({"ref": event.ref, "status": "ok", "gmtZone": rendered.zone, "zone_reason": rendered.zone_reason})
    return jsonify({"source": source.name, "addPhones": entries, "leads": leads})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus metrics: only when METRICS_TOKEN is set (404 otherwise), only to its bearer (401)."""
    tokens = services().settings.metrics_tokens
    if not tokens:
        raise NotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret_matches(given.strip(), tokens):
        raise UnauthorizedError("metrics need the header Authorization: Bearer <METRICS_TOKEN>", field="Authorization")
    if not metrics.serves_prometheus():  # on Lambda the metrics go to CloudWatch (EMF), not here
        raise NotFound()
    try:  # the leads-by-status gauge, read from the store's maintained counts as the scrape asks
        metrics.lead_counts(services().store.count_by_status())
    except StoreError as exc:  # the other series still tell; the webhook and health alerts cover the store
        log.warning("metrics: leads by status not refreshed: %s", exc)
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


def register_error_handlers(app: Flask) -> None:
    """The one place our exceptions become HTTP responses: JSON, never a traceback."""

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> tuple[Response, int]:
        body = {"error": exc.code, "message": exc.message}
        if exc.field:
            body["field"] = exc.field
        log.info("refused %s %s: %s %s", request.method, request.path, exc.status, exc.code)
        return jsonify(body), exc.status

    @app.errorhandler(ServiceUnavailableError)
    def unavailable(exc: ServiceUnavailableError) -> tuple[Response, int]:
        log.error("unavailable %s %s: %s", request.method, request.path, exc, exc_info=exc.__cause__ is not None)
        return jsonify({"error": exc.code, "message": str(exc)}), 503

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, list[tuple[str, str]]]:
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = [(name, value) for name, value in exc.get_headers() if name.lower() != "content-type"]  # Allow
        return jsonify({"error": code, "message": exc.description}), exc.code or 500, headers

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        log.exception("internal error on %s %s", request.method, request.path)
        return jsonify({"error": "internal", "message": "internal error; the lead was not acknowledged"}), 500


def register_request_log(app: Flask) -> None:
    """Our own access log: method, path without the query (it may hold the key), status, time."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        fields = {"event": "request", "method": request.method, "path": request.path, "status": response.status_code}
        fields["ms"] = round(elapsed, 1)
        if "leads" in g:
            fields["leads"] = g.leads
        logging.getLogger("crm2calls.access").info(
            "%s %s %s", request.method, request.path, response.status_code, extra={"fields": fields}
        )
        return response


def register_metrics(app: Flask) -> None:
    """Count webhook leads by outcome, or the request as refused (4xx) or error (5xx); batch each request's metrics."""

    @app.after_request
    def _count_webhook(response: Response) -> Response:
        if request.endpoint == "webhooks.receive":
            source = g.get("source", "unknown")
            if "outcomes" in g:
                for outcome, count in g.outcomes.items():
                    metrics.webhook(source, outcome, count)
            elif response.status_code >= 500:
                metrics.webhook(source, "error")
            elif response.status_code >= 400:
                metrics.webhook(source, "refused")
        return response

    inner = app.wsgi_app

    def batched(environ: dict[str, Any], start_response: Any) -> Any:
        with metrics.batch():  # on Lambda: one flush of EMF lines per invocation
            return inner(environ, start_response)

    app.wsgi_app = batched
