"""A stand-in of Pipedrive's persons API v1 (GET /v1/persons/{id}?api_token=...).

As Pipedrive does: the token in the query string (401 otherwise), `{"success", "data"}` bodies,
phones as `data.phone[] = {label, value, primary}`, 404 for an unknown person.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, json_response

_PERSON = re.compile(r"/v1/persons/(\d+)")


class PipedriveStandIn(StandIn):
    """Persons by id; `phone_hidden_for[id] = n`: the first n fetches see no phone yet."""

    def __init__(self, token: str = "3f1b2a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"):
        super().__init__()
        self.token = token
        self.persons: dict[str, dict[str, Any]] = {}
        self.phone_hidden_for: dict[str, int] = {}
        # Notes written: {"id", "content", "person_id", "lead_id"}, in order; leads by uuid.
        self.notes: list[dict[str, Any]] = []
        self.leads: set[str] = set()
        self.notes_forbidden = False  # the token's user may not add notes

    def add_person(self, person_id: str, name: str, phones: list[dict[str, Any]], **fields: Any) -> None:
        """Create a person with phones [{label, value, primary}]."""
        self.persons[person_id] = {"id": int(person_id), "name": name, "phone": phones, **fields}

    def handle(self, request: Request) -> Response:
        if request.args.get("api_token") != self.token:
            return json_response({"success": False, "error": "unauthorized access", "errorCode": 401}, 401)
        if request.path == "/v1/notes":
            return self._notes(request)
        match = _PERSON.fullmatch(request.path)
        person = self.persons.get(match[1]) if match and request.method == "GET" else None
        if person is None:
            return json_response({"success": False, "error": "Person not found", "errorCode": 404}, 404)
        with self._lock:
            hidden = self.phone_hidden_for.get(match[1], 0)
            if hidden:
                self.phone_hidden_for[match[1]] = hidden - 1
        data = {**person, "phone": [{"value": "", "primary": True}]} if hidden else person
        return json_response({"success": True, "data": data})

    # Notes: POST /v1/notes {content, person_id | lead_id}, GET /v1/notes?person_id=|lead_id=

    def _notes(self, request: Request) -> Response:
        if self.notes_forbidden:
            return json_response({"success": False, "error": "You do not have permission", "errorCode": 403}, 403)
        if request.method == "POST":
            body = request.get_json(silent=True) or {}
            person, lead, content = body.get("person_id"), body.get("lead_id"), body.get("content")
            if not content or (person is None) == (lead is None):
                return json_response({"success": False, "error": "content and one of person_id, lead_id are required",
                                      "errorCode": 400}, 400)
            known = str(person) in self.persons if person is not None else lead in self.leads
            if not known:
                return json_response({"success": False, "error": "Entity not found", "errorCode": 404}, 404)
            with self._lock:
                note = {"id": 300 + len(self.notes) + 1, "content": content, "person_id": person, "lead_id": lead}
                self.notes.append(note)
            return json_response({"success": True, "data": note}, 201)
        args = request.args
        start, limit = int(args.get("start", 0)), int(args.get("limit", 100))
        with self._lock:
            found = [n for n in self.notes if (args.get("person_id") and str(n["person_id"]) == args["person_id"])
                     or (args.get("lead_id") and n["lead_id"] == args["lead_id"])]
        if args.get("sort", "").endswith("DESC"):
            found.reverse()
        page = found[start : start + limit]
        more = start + limit < len(found)
        pagination = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return json_response({"success": True, "data": page or None, "additional_data": {"pagination": pagination}})
