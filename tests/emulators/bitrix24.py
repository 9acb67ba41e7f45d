"""A stand-in for the Bitrix24 REST API behind an inbound webhook URL, over real HTTP on 127.0.0.1.

Written from bitrix24/b24restdocs: `/rest/{user}/{code}/{method}[.json]`, parameters in the query,
a JSON body or a form; answers `{"result": ..., "time": {...}}`, lists 50 a page with `next` and
`total`; errors as `{"error", "error_description"}`: a wrong user or code 401 INVALID_CREDENTIALS,
an unknown record 400 "Not found", an unknown method 404 ERROR_METHOD_NOT_FOUND. Faults on demand:
scripted errors (expired_token 401, QUERY_LIMIT_EXCEEDED 503, OPERATION_TIME_LIMIT 429 with
Retry-After) and a slow answer.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, retry_after_header

ENTITIES = {"crm.lead": "lead", "crm.contact": "contact", "crm.deal": "deal"}


@dataclass
class Hit:
    """One request as the stand-in saw it (the path holds the webhook code: tests only)."""

    method: str
    path: str
    method_name: str
    params: dict[str, Any]
    status: int | None = None


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "error_description": description})
    return Response(body, status, headers=headers or {}, content_type="application/json")


def _ok(body: dict[str, Any]) -> Response:
    now = time.time()
    body["time"] = {"start": now, "finish": now, "duration": 0.0, "processing": 0.0}
    return Response(json.dumps(body, ensure_ascii=False), 200, content_type="application/json")


def _method_and_params(request: Request) -> tuple[str, dict[str, Any]]:
    """The method the path names (without .json) and its parameters: query, form and JSON body together."""
    parts = request.path.strip("/").split("/")
    method = parts[3].removesuffix(".json") if len(parts) == 4 else ""
    params: dict[str, Any] = {**request.args.to_dict(flat=True), **request.form.to_dict(flat=True)}
    if request.is_json:
        params.update(request.get_json(silent=True) or {})
    return method, params


class Bitrix24Emulator(StandIn):
    """One portal's REST API; give `.webhook_url` as BITRIX24_WEBHOOK_URL."""

    def __init__(self, user_id: int = 1, code: str = "k2x9m4webhookcode77"):
        super().__init__()
        self.user_id = user_id
        self.code = code
        self.page_size = 50
        self.records: dict[str, dict[str, dict[str, Any]]] = {"lead": {}, "contact": {}, "deal": {}}
        # Timeline comments written: {"ID", "ENTITY_ID", "ENTITY_TYPE", "COMMENT"}, in order.
        self.comments: list[dict[str, Any]] = []
        self.scopes = {"crm"}  # the inbound webhook's scopes: without crm, crm.* methods are insufficient_scope

    @property
    def webhook_url(self) -> str:
        """The inbound webhook URL, secret code included."""
        return f"{self.url}/rest/{self.user_id}/{self.code}/"

    def add(self, entity: str, record: dict[str, Any]) -> None:
        """A lead, contact or deal as crm.{entity}.get returns it in `result`."""
        with self._lock:
            self.records[entity][str(record["ID"])] = copy.deepcopy(record)

    def set_fields(self, entity: str, record_id: str, **fields: Any) -> None:
        """A manager edits a record: e.g. STATUS_ID="JUNK", STATUS_SEMANTIC_ID="F" (lost), STAGE_ID for deals."""
        with self._lock:
            self.records[entity][str(record_id)].update(fields)

    def fail_next(
        self, status: int, error: str, description: str = "", *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` calls with a Bitrix24 error instead of handling them."""
        headers = retry_after_header(retry_after)
        self.script_next(lambda: _error(status, error, description, headers), times)

    # HTTP

    def hit(self, request: Request) -> Hit:
        """The REST method called and its parameters."""
        return Hit(request.method, request.path, *_method_and_params(request))

    def handle(self, request: Request) -> Response:
        """The user and code of the webhook URL first, then the method."""
        parts = request.path.strip("/").split("/")
        if len(parts) != 4 or parts[:3] != ["rest", str(self.user_id), self.code]:
            return _error(401, "INVALID_CREDENTIALS", "Invalid request credentials")
        return self._call(*_method_and_params(request))

    def _call(self, method: str, params: dict[str, Any]) -> Response:
        if method.startswith("crm.") and "crm" not in self.scopes:
            return _error(401, "insufficient_scope", "The request requires higher privileges than provided")
        if method == "crm.timeline.comment.add":
            return self._add_comment(params)
        if method == "crm.timeline.comment.list":
            return self._list_comments(params)
        prefix, _, action = method.rpartition(".")
        entity = ENTITIES.get(prefix)
        if entity and action == "get":
            record_id = str(params.get("id") or params.get("ID") or "")
            if not (record_id.isdigit() and int(record_id) > 0):
                return _error(400, "", "ID is not defined or invalid.")
            with self._lock:
                record = self.records[entity].get(record_id)
            return _error(400, "", "Not found") if record is None else _ok({"result": record})
        if method == "crm.lead.list":
            return self._list(params)
        return _error(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def _list(self, params: dict[str, Any]) -> Response:
        since = params.get("filter[>=DATE_CREATE]")
        until = params.get("filter[<DATE_CREATE]")
        start = int(params.get("start") or 0)

        def wanted(lead: dict[str, Any]) -> bool:
            created = datetime.fromisoformat(lead["DATE_CREATE"])
            return (since is None or created >= datetime.fromisoformat(since)) and (
                until is None or created < datetime.fromisoformat(until)
            )

        with self._lock:
            leads = sorted((lead for lead in self.records["lead"].values() if wanted(lead)), key=lambda x: int(x["ID"]))
        page = leads[start : start + self.page_size]
        chunk = [{"ID": lead["ID"], "DATE_CREATE": lead["DATE_CREATE"]} for lead in page]
        body: dict[str, Any] = {"result": chunk, "total": len(leads)}
        if start + self.page_size < len(leads):
            body["next"] = start + self.page_size
        return _ok(body)

    def _add_comment(self, params: dict[str, Any]) -> Response:
        fields = params.get("fields")
        if not isinstance(fields, dict):  # upper-case FIELDS is refused since crm 23.100
            return _error(400, "ERROR_ARGUMENT", "Argument 'fields' is null")
        entity, comment = fields.get("ENTITY_TYPE"), fields.get("COMMENT")
        entity_id = str(fields.get("ENTITY_ID") or "")
        if entity not in self.records or not isinstance(comment, str) or not comment:
            return _error(400, "ERROR_ARGUMENT", "ENTITY_TYPE, ENTITY_ID and COMMENT are required")
        with self._lock:
            if entity_id not in self.records[entity]:
                return _error(400, "NOT_FOUND", "Not found")
            comment_id = 500 + len(self.comments) + 1
            saved = {"ID": str(comment_id), "ENTITY_ID": entity_id, "ENTITY_TYPE": entity, "COMMENT": comment}
            self.comments.append(saved)
        return _ok({"result": comment_id})

    def _list_comments(self, params: dict[str, Any]) -> Response:
        wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
        start = int(params.get("start") or 0)
        with self._lock:
            found = [c for c in self.comments if str(wanted.get("ENTITY_ID")) == c["ENTITY_ID"]
                     and wanted.get("ENTITY_TYPE") == c["ENTITY_TYPE"]]
        found.sort(key=lambda c: int(c["ID"]), reverse=(params.get("order") or {}).get("ID") == "DESC")
        body: dict[str, Any] = {"result": found[start : start + self.page_size], "total": len(found)}
        if start + self.page_size < len(found):
            body["next"] = start + self.page_size
        return _ok(body)
