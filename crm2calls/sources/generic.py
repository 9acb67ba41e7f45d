"""The generic source: anything that can POST a lead as JSON or a form."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from crm2calls.errors import MalformedRequestError
from crm2calls.model import LeadEvent, StopEvent
from crm2calls.sources.base import FORM, InboundRequest, Source

MAX_LEADS_PER_REQUEST = 1000
# {"event": "lead.closed" | "lead.deleted", "id": <the lead's id>, "reason"?: text, "event_id"?: id}: stop calling
STOP_EVENTS = {"lead.closed": "closed in the CRM", "lead.deleted": "deleted in the CRM"}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data: Any) -> bool:
    """True if a string (key or value) holds a surrogate that no UTF-8 encoder, hash or store accepts."""
    stack = [data]
    while stack:  # iterative: the document may be as deep as json's own limit
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 (a BOM is tolerated), no NaN/Infinity, no lone surrogates; MalformedRequestError otherwise."""
    try:
        text = body.decode("utf-8-sig")
        data = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise MalformedRequestError("the body is not UTF-8 text", field="body") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError(f"the body is not valid JSON: {str(exc)[:120]}", field="body") from None
    # json.loads turns "\ud800" into a lone surrogate; walk the document only when such an escape is there.
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise MalformedRequestError("the body is not valid JSON: a \\u escape is a lone surrogate", field="body")
    return data


def parse_form(body: bytes) -> dict[str, Any]:
    """A urlencoded form as a dict; a repeated key becomes a list of its values."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=1000)
    except UnicodeDecodeError:
        raise MalformedRequestError("the form is not UTF-8 text", field="body") from None
    except ValueError as exc:
        raise MalformedRequestError(f"the body is not a urlencoded form: {exc}", field="body") from None
    form: dict[str, Any] = {}
    for key, value in pairs:
        if key in form:
            form[key] = [*form[key], value] if isinstance(form[key], list) else [form[key], value]
        else:
            form[key] = value
    return form


def records_of(data: Any, records_path: str | None) -> list[dict[str, Any]]:
    """One lead object, an array of them, or an object holding the array at records_path."""
    if isinstance(data, dict) and records_path:
        from crm2calls.mapping import get_path

        found = get_path(data, records_path)
        if found is None:
            raise MalformedRequestError(f"no array of leads at {records_path!r}", field=records_path)
        data = found
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        if len(data) > MAX_LEADS_PER_REQUEST:
            raise MalformedRequestError(f"at most {MAX_LEADS_PER_REQUEST} leads per request", field="body")
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise MalformedRequestError(f"element {index} is not a lead object", field=f"[{index}]")
        return data
    raise MalformedRequestError("expected a lead object or an array of lead objects", field="body")


def idempotency_key(record: dict[str, Any], lead_id: str | None) -> str:
    """The mapped lead id, or a hash of the whole lead (phone and payload) when there is none."""
    if lead_id not in (None, ""):
        return f"id:{lead_id}"
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def is_stop(record: dict[str, Any]) -> bool:
    """A stop event, not a lead: {"event": "lead.closed" | "lead.deleted", "id": ...}."""
    return isinstance(record.get("event"), str) and record["event"] in STOP_EVENTS


def stop_event(record: dict[str, Any], index: int) -> StopEvent:
    """One stop object as a StopEvent; its record is the lead's ref (its id as the lead webhook gave it)."""
    lead_id = record.get("id")
    if lead_id in (None, "") or isinstance(lead_id, bool | dict | list):
        raise MalformedRequestError(f"a {record['event']} event needs the lead's id", field=f"[{index}].id")
    reason = record.get("reason")
    text = STOP_EVENTS[record["event"]] + (f": {reason}" if isinstance(reason, str) and reason else "")
    return StopEvent(key="stop:" + idempotency_key(record, record.get("event_id")), record=str(lead_id), reason=text)


class GenericSource(Source):
    """POST /webhooks/generic: JSON (object, array, or array at records_path) or a form; leads and stop events."""

    name = "generic"

    def _records(self, request: InboundRequest) -> list[dict[str, Any]]:
        data = parse_form(request.body) if request.content_type == FORM else parse_json(request.body)
        return records_of(data, self.policy.records_path if request.content_type != FORM else None)

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """Each {"event": "lead.closed" | "lead.deleted", "id": ...} object becomes a stop event."""
        return [stop_event(record, i) for i, record in enumerate(self._records(request)) if is_stop(record)]

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """Each lead object becomes one event, keyed by its id or its content; stop events are parse_stops'."""
        from crm2calls.mapping import lead_from_fields

        records = [record for record in self._records(request) if not is_stop(record)]
        events = []
        for record in records:
            lead = lead_from_fields(record, self.policy)
            ref = lead.external_id if lead.external_id not in (None, "") else "-"
            events.append(LeadEvent(key=idempotency_key(record, lead.external_id), ref=str(ref), lead=lead))
        return events
