"""GET /openapi.json: an OpenAPI 3 description of our HTTP API, built from schemas/api.py on first request.

The webhook and preview operations are derived from SOURCES: the `source` enum, the request content
types (each source's `content_types`) and the success answers (each source's acknowledge()), so a new
CRM is described the day it is registered. apispec is imported only when the description is built.
"""

from __future__ import annotations

from typing import Any

from crm2calls.sources.base import FORM, JSON, Source

TITLE = "crm2calls"
API_VERSION = "1"

REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    JSON: {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    FORM: {"type": "object", "additionalProperties": {"type": "string"}},
}
TEXT_BODY: dict[str, Any] = {"type": "string"}  # XML and any other text type: the raw document
WEBHOOK_DESCRIPTION = (
    "Authentication: where a CRM's own credential is configured (signing secret, application token, "
    "Basic auth) it is required and the shared key alone does not pass; otherwise WEBHOOK_SECRET is "
    "required as ?key= or X-Webhook-Secret. A well-formed lead that cannot be called (no phone, invalid "
    "number) is accepted and reported with status rejected; nothing is dialled from this request. A body may "
    "also hold stop events (a lead closed or deleted in the CRM; the generic source's {\"event\": "
    "\"lead.closed\", \"id\": ...}): never a call, each listed under `stops` with what it did."
)

ERRORS = {
    "400": "Malformed: the body cannot be parsed as its content type or has the wrong shape (nothing is stored).",
    "401": "Missing or wrong credentials: the key, X-Webhook-Secret, or the CRM's own signature or token.",
    "403": "Valid credentials from a CRM account this deployment does not serve.",
    "404": "No source of that name.",
    "405": "Only POST.",
    "413": "The body is larger than MAX_BODY_BYTES (checked before anything is parsed).",
    "415": "A content type this source does not take.",
    "503": "The lead store is unavailable: nothing was acknowledged, retry later.",
}


def build_spec(sources: dict[str, Source]) -> dict[str, Any]:
    """The OpenAPI 3.0 document for these sources, as a dict."""
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    from schemas import api
    from schemas.phone_entry import InstantField, PhoneField

    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE,
        version=API_VERSION,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "CRM lead webhooks in, Aimylogic outbound calls out."},
    )
    plugin.map_to_openapi_type(PhoneField, "string", None)
    plugin.map_to_openapi_type(InstantField, "string", "date-time")
    for name in ("Error", "LeadsAck", "CountAck", "Health", "Preview"):
        spec.components.schema(name, schema=getattr(api, f"{name}Schema"))
    spec.components.security_scheme(
        "key", {"type": "apiKey", "in": "query", "name": "key", "description": "WEBHOOK_SECRET in the URL."}
    )
    spec.components.security_scheme(
        "secretHeader", {"type": "apiKey", "in": "header", "name": "X-Webhook-Secret", "description": "WEBHOOK_SECRET."}
    )
    source_param = {
        "name": "source",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(sources)},
        "description": "\n".join(f"- `{name}`: {_source_line(source)}" for name, source in sorted(sources.items())),
    }
    request_body = {
        "required": True,
        "description": "The CRM's webhook body, byte for byte; each source takes only its own content types.",
        "content": {ct: {"schema": REQUEST_SCHEMAS.get(ct, TEXT_BODY)} for ct in _content_types(sources)},
    }
    security = [{"key": []}, {"secretHeader": []}]
    spec.path(
        path="/webhooks/{source}",
        parameters=[source_param],
        operations={
            "post": {
                "operationId": "receiveWebhook",
                "summary": "A CRM's webhook: authenticate, parse, store, acknowledge",
                "description": WEBHOOK_DESCRIPTION,
                "security": security,
                "requestBody": request_body,
                "responses": {**_acks(sources), **_errors()},
            }
        },
    )
    spec.path(
        path="/preview/{source}",
        parameters=[source_param],
        operations={
            "post": {
                "operationId": "previewWebhook",
                "summary": "The addPhones entries a webhook would produce; nothing is stored or sent",
                "security": security,
                "requestBody": request_body,
                "responses": {"200": _json("What each lead would become.", "Preview"), **_errors()},
            }
        },
    )
    spec.path(
        path="/healthz",
        operations={
            "get": {
                "operationId": "health",
                "summary": "One health document: ok, degraded or failing, with reasons; cheap enough to poll",
                "description": (
                    "The same document on every platform, from single-item reads (the latest delivery pass "
                    "records the backlog; lead counts are maintained), so a monitor may poll it every ten seconds. "
                    "docs/operations.md lists every reason code, what it means and what to do."
                ),
                "responses": {
                    "200": _json("ok or degraded: the reasons say what needs attention.", "Health"),
                    "503": _json("failing: the lead store cannot be reached.", "Health"),
                },
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, only to the bearer of METRICS_TOKEN",
                "description": "Served only when METRICS_TOKEN is set, and only with `Authorization: Bearer "
                "<METRICS_TOKEN>`; on Lambda the metrics go to CloudWatch instead. docs/metrics.md lists them.",
                "responses": {
                    "200": {
                        "description": "The Prometheus text format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _json("No bearer token, or not METRICS_TOKEN.", "Error"),
                    "404": _json("METRICS_TOKEN is not set, or this is Lambda.", "Error"),
                },
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {JSON: {"schema": {"type": "object"}}}}},
            }
        },
    )
    document = spec.to_dict()
    _ecma_patterns(document["components"]["schemas"])
    return document


def _ecma_patterns(node: Any) -> None:
    """marshmallow's Regexp patterns are Python's (re.match anchors the start, \\Z the end): anchor them as ECMA."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            node["pattern"] = "^(?:" + pattern.removesuffix("\\Z").removesuffix("$") + ")$"
        for value in node.values():
            _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def _content_types(sources: dict[str, Source]) -> list[str]:
    return sorted({ct for source in sources.values() for ct in source.content_types})


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors() -> dict[str, Any]:
    return {status: _json(description, "Error") for status, description in ERRORS.items()}


def _ack_schema(body: Any) -> dict[str, Any]:
    """The schema of an acknowledgement body, recognised by its shape."""
    if isinstance(body, bytes | str):
        return {"type": "string", "example": body.decode() if isinstance(body, bytes) else body}
    if isinstance(body, dict) and set(body) == {"source", "leads"}:
        return {"$ref": "#/components/schemas/LeadsAck"}
    if isinstance(body, dict) and set(body) == {"ok", "leads"}:
        return {"$ref": "#/components/schemas/CountAck"}
    return {"type": "object"}


def _acks(sources: dict[str, Source]) -> dict[str, Any]:
    """Success responses per status and media type, from each source's own acknowledgement."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for source in sources.values():
        ack = source.acknowledge([])
        media = ack.content_type.split(";")[0].strip()
        schemas = found.setdefault(str(ack.status), {}).setdefault(media, [])
        schema = _ack_schema(ack.body)
        if schema not in schemas:
            schemas.append(schema)
    responses = {}
    for status, media_types in sorted(found.items()):
        names = ", ".join(name for name, s in sorted(sources.items()) if str(s.acknowledge([]).status) == status)
        content = {media: {"schema": s[0] if len(s) == 1 else {"oneOf": s}} for media, s in media_types.items()}
        responses[status] = {
            "description": f"Stored (or already received). Unusable leads are accepted and reported as rejected. "
            f"Sources: {names}.",
            "content": content,
        }
    return responses


def _source_line(source: Source) -> str:
    ack = source.acknowledge([])
    return f"{', '.join(sorted(source.content_types))} → {ack.status} {ack.content_type.split(';')[0]}"
