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
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import LocalServer

ENTITIES = {"crm.lead": "lead", "crm.contact": "contact", "crm.deal": "deal"}


@dataclass
class Hit:
    """One request as the stand-in saw it (the path holds the webhook code: tests only)."""

    method: str
    path: str
    method_name: str
    params: dict[str, Any]
    status: int | None = None


@dataclass
class _Scripted:
    status: int
    error: str
    description: str
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "error_description": description})
    return Response(body, status, headers=headers or {}, content_type="application/json")


def _ok(body: dict[str, Any]) -> Response:
    now = time.time()
    body["time"] = {"start": now, "finish": now, "duration": 0.0, "processing": 0.0}
    return Response(json.dumps(body, ensure_ascii=False), 200, content_type="application/json")


class Bitrix24Emulator:
    """One portal's REST API; give `.webhook_url` as BITRIX24_WEBHOOK_URL."""

    def __init__(self, user_id: int = 1, code: str = "k2x9m4webhookcode77"):
        self.user_id = user_id
        self.code = code
        self.delay = 0.0
        self.page_size = 50
        self.hits: list[Hit] = []
        self.records: dict[str, dict[str, dict[str, Any]]] = {"lead": {}, "contact": {}, "deal": {}}
        self._script: deque[_Scripted] = deque()
        self._lock = threading.Lock()
        self._server = LocalServer(self._app)

    def __enter__(self) -> Bitrix24Emulator:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        """The portal's address."""
        return self._server.url

    @property
    def webhook_url(self) -> str:
        """The inbound webhook URL, secret code included."""
        return f"{self.url}/rest/{self.user_id}/{self.code}/"

    def add(self, entity: str, record: dict[str, Any]) -> None:
        """A lead, contact or deal as crm.{entity}.get returns it in `result`."""
        with self._lock:
            self.records[entity][str(record["ID"])] = copy.deepcopy(record)

    def fail_next(
        self, status: int, error: str, description: str = "", *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` calls with a Bitrix24 error instead of handling them."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._script.extend(_Scripted(status, error, description, headers) for _ in range(times))

    # HTTP

    @Request.application
    def _app(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        method = parts[3].removesuffix(".json") if len(parts) == 4 else ""
        params: dict[str, Any] = {**request.args.to_dict(flat=True), **request.form.to_dict(flat=True)}
        if request.is_json:
            params.update(request.get_json(silent=True) or {})
        hit = Hit(request.method, request.path, method, params)
        with self._lock:
            self.hits.append(hit)
            scripted = self._script.popleft() if self._script else None
        if self.delay:
            time.sleep(self.delay)
        if scripted is not None:
            response = _error(scripted.status, scripted.error, scripted.description, scripted.headers)
        elif len(parts) != 4 or parts[:3] != ["rest", str(self.user_id), self.code]:
            response = _error(401, "INVALID_CREDENTIALS", "Invalid request credentials")
        else:
            response = self._call(method, params)
        hit.status = response.status_code
        return response

    def _call(self, method: str, params: dict[str, Any]) -> Response:
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
