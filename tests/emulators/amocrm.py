"""A stand-in for the amoCRM / Kommo API v4 (leads, contacts), over real HTTP on 127.0.0.1.

Written from the amoCRM docs and captured answers: `application/hal+json` bodies, `_embedded.contacts`
holding only {id, is_main}, 204 No Content for an empty list or an entity it does not have, 401 with
a problem+json body for a wrong token. Faults on demand: a contact linked only after some reads,
scripted statuses (401, 429 with Retry-After, 5xx) and a slow answer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, retry_after_header

HAL = "application/hal+json"


@dataclass
class Hit:
    """One request as the stand-in saw it."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int | None = None


def _problem(status: int, title: str, detail: str) -> Response:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail}
    return Response(json.dumps(body), status, content_type="application/problem+json")


class AmoCrmEmulator(StandIn):
    """amoCRM's API v4 for one account; use it as a context manager and give `.url` as AMOCRM_BASE_URL."""

    def __init__(self, token: str = "amo-long-lived-token-0123456789"):
        super().__init__()
        self.token = token
        self.page_size = 250  # the most leads one list page holds (the API's own maximum)
        self._leads: dict[str, dict[str, Any]] = {}
        self._contacts: dict[str, dict[str, Any]] = {}
        self._links: dict[str, list[dict[str, Any]]] = {}
        self._unlinked_reads: dict[str, int] = {}
        # Notes written: {"id", "entity_type" (leads|contacts), "entity_id", "note_type", "params"}, in order.
        self.notes: list[dict[str, Any]] = []
        self.notes_forbidden = False  # the token's user may not add notes: 403, as amoCRM answers missing rights

    # data

    def add_lead(self, lead: dict[str, Any], contacts: list[tuple[Any, bool]] = (), *, linked_after: int = 0) -> None:
        """A lead (as GET /api/v4/leads/{id} shows it) and its contacts as (id, is_main).

        linked_after: that many reads of the lead see no contact yet (the contact is linked a moment later).
        """
        lead = copy.deepcopy(lead)
        lead.get("_embedded", {}).pop("contacts", None)
        key = str(lead["id"])
        with self._lock:
            self._leads[key] = lead
            self._links[key] = [{"id": int(cid), "is_main": main} for cid, main in contacts]
            self._unlinked_reads[key] = linked_after

    def add_contact(self, contact: dict[str, Any]) -> None:
        """A contact as GET /api/v4/contacts/{id} shows it."""
        with self._lock:
            self._contacts[str(contact["id"])] = copy.deepcopy(contact)

    def fail_next(self, status: int, *, times: int = 1, retry_after: int | None = None, body: str = "") -> None:
        """Answer the next `times` requests with `status` (and Retry-After) instead of handling them."""
        headers = retry_after_header(retry_after)
        self.script_next(lambda: Response(body or f"scripted {status}", status, headers=headers), times)

    # HTTP

    def hit(self, request: Request) -> Hit:
        """The method, path, query and Authorization header of a request."""
        return Hit(request.method, request.path, dict(request.args), request.headers.get("Authorization"))

    def handle(self, request: Request) -> Response:
        """The token first, then leads (one or a list) and contacts."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _problem(401, "Unauthorized", "Authorization header is missing or the token is not valid")
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "v4"] and len(parts) in (4, 5) and parts[-1] == "notes":
            return self._notes(request, parts)
        if request.method != "GET" or parts[:2] != ["api", "v4"]:
            return _problem(404, "Not Found", "no such method")
        if parts[2:] == ["leads"]:
            return self._list_leads(request)
        if len(parts) == 4 and parts[2] == "leads":
            return self._lead(parts[3], "contacts" in request.args.get("with", "").split(","))
        if len(parts) == 4 and parts[2] == "contacts":
            with self._lock:
                contact = self._contacts.get(parts[3])
            return Response(status=204) if contact is None else _hal(contact)
        return _problem(404, "Not Found", "no such method")

    def _lead(self, lead_id: str, with_contacts: bool) -> Response:
        with self._lock:
            lead = copy.deepcopy(self._leads.get(lead_id))
            if lead is None:
                return Response(status=204)
            linked = self._links[lead_id]
            if self._unlinked_reads[lead_id] > 0:
                self._unlinked_reads[lead_id] -= 1
                linked = []
        if with_contacts:
            contacts = [{**link, "_links": {"self": {"href": f"{self.url}/api/v4/contacts/{link['id']}"}}}
                        for link in linked]
            lead.setdefault("_embedded", {})["contacts"] = contacts
        return _hal(lead)

    def _list_leads(self, request: Request) -> Response:
        args = request.args
        since = int(args.get("filter[created_at][from]", 0))
        until = int(args.get("filter[created_at][to]", 2**62))
        page = int(args.get("page", 1))
        limit = min(int(args.get("limit", 50)), self.page_size)
        with self._lock:
            leads = sorted(
                (lead for lead in self._leads.values() if since <= lead["created_at"] <= until), key=lambda x: x["id"]
            )
        chunk = leads[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status=204)
        links = {"self": {"href": f"{self.url}/api/v4/leads?page={page}&limit={limit}"}}
        if page * limit < len(leads):
            links["next"] = {"href": f"{self.url}/api/v4/leads?page={page + 1}&limit={limit}"}
        listed = [{k: v for k, v in lead.items() if k != "_embedded"} for lead in chunk]
        return _hal({"_page": page, "_links": links, "_embedded": {"leads": listed}})


    # Notes: POST /api/v4/{leads|contacts}/notes (a list), GET /api/v4/{leads|contacts}/{id}/notes

    def _notes(self, request: Request, parts: list[str]) -> Response:
        entity = parts[2]
        if entity not in ("leads", "contacts"):
            return _problem(404, "Not Found", "no such method")
        if self.notes_forbidden:
            return _problem(403, "Forbidden", "Access denied")
        if request.method == "POST" and len(parts) == 4:
            return self._add_notes(entity, request)
        if request.method == "GET" and len(parts) == 5:
            return self._list_notes(entity, parts[3], request)
        return _problem(405, "Method Not Allowed", "no such method")

    def _add_notes(self, entity: str, request: Request) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, list) or not body:
            return _problem(400, "Bad Request", "a list of notes is expected")
        store = self._leads if entity == "leads" else self._contacts
        added = []
        for index, note in enumerate(body):
            entity_id = note.get("entity_id") if isinstance(note, dict) else None
            text = (note.get("params") or {}).get("text") if isinstance(note, dict) else None
            if not isinstance(entity_id, int) or note.get("note_type") != "common" or not isinstance(text, str):
                return _validation(index, "entity_id, note_type common and params.text are required")
            with self._lock:
                if str(entity_id) not in store:
                    return _validation(index, "entity not found")
                saved = {"id": 9000 + len(self.notes) + 1, "entity_type": entity, "entity_id": entity_id,
                         "note_type": "common", "params": {"text": text}}
                self.notes.append(saved)
            added.append({"id": saved["id"], "entity_id": entity_id, "request_id": str(index)})
        return _hal({"_links": {"self": {"href": f"{self.url}/api/v4/{entity}/notes"}},
                     "_embedded": {"notes": added}})

    def _list_notes(self, entity: str, entity_id: str, request: Request) -> Response:
        args = request.args
        page, limit = int(args.get("page", 1)), min(int(args.get("limit", 50)), 250)
        kind = args.get("filter[note_type]")
        with self._lock:
            notes = [n for n in self.notes if n["entity_type"] == entity and str(n["entity_id"]) == entity_id
                     and (kind is None or n["note_type"] == kind)]
        notes.sort(key=lambda n: n["id"], reverse=args.get("order[id]") == "desc")
        chunk = notes[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status=204)
        links = {"self": {"href": f"{self.url}/api/v4/{entity}/{entity_id}/notes?page={page}"}}
        if page * limit < len(notes):
            links["next"] = {"href": f"{self.url}/api/v4/{entity}/{entity_id}/notes?page={page + 1}"}
        return _hal({"_page": page, "_links": links, "_embedded": {"notes": chunk}})


def _validation(index: int, detail: str) -> Response:
    errors = [{"request_id": str(index), "errors": [{"code": "NotSupportedChoice", "detail": detail}]}]
    body = {"title": "Bad Request", "status": 400, "detail": "Request validation failed", "validation-errors": errors}
    return Response(json.dumps(body), 400, content_type="application/problem+json")


def _hal(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), 200, content_type=HAL)
