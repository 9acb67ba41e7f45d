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

    def add_person(self, person_id: str, name: str, phones: list[dict[str, Any]], **fields: Any) -> None:
        """Create a person with phones [{label, value, primary}]."""
        self.persons[person_id] = {"id": int(person_id), "name": name, "phone": phones, **fields}

    def handle(self, request: Request) -> Response:
        if request.args.get("api_token") != self.token:
            return json_response({"success": False, "error": "unauthorized access", "errorCode": 401}, 401)
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
