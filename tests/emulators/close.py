"""A stand-in of Close's lead API (GET /api/v1/lead/{id}/) and call activities (/api/v1/activity/call/).

As Close does: HTTP Basic with the API key as the user and an empty password (401 otherwise), the
lead with its `contacts[].phones[] = {phone, phone_formatted, type}`, 404 for an unknown lead.
POST /api/v1/activity/call/ creates a call on a lead (field-errors 400 for an unknown lead or a bad
value); GET lists them by lead_id with _skip/_limit and has_more.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, json_response

_LEAD = re.compile(r"/api/v1/lead/(lead_[A-Za-z0-9]+)/")


class CloseStandIn(StandIn):
    """Leads by id; `contacts_hidden_for[id] = n`: the first n fetches see the lead before its contacts."""

    def __init__(self, api_key: str = "api_5kT9vQ2xL8mN3pR7sW1yZ4.0aB6cD9eF2gH5iJ8kL1mN4"):
        super().__init__()
        self.api_key = api_key
        self.leads: dict[str, dict[str, Any]] = {}
        self.contacts_hidden_for: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []  # call activities written, in order
        self.may_create_calls = True  # the API key's user has a role that may create activities
        self._call_serial = itertools.count(1)

    def add_lead(self, lead_id: str, display_name: str, contacts: list[dict[str, Any]], **fields: Any) -> None:
        """Create a lead; contacts as [{"id", "name", "phones": [{"phone", "type"}]}]."""
        self.leads[lead_id] = {"id": lead_id, "display_name": display_name, "name": display_name,
                               "contacts": contacts, "addresses": [], "custom": {}, **fields}

    def handle(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return json_response({"error": "Unauthorized"}, 401)
        if request.path == "/api/v1/activity/call/":
            return self._calls(request)
        match = _LEAD.fullmatch(request.path)
        lead = self.leads.get(match[1]) if match and request.method == "GET" else None
        if lead is None:
            return json_response({"error": "Empty query: Lead matching query does not exist."}, 404)
        with self._lock:
            hidden = self.contacts_hidden_for.get(match[1], 0)
            if hidden:
                self.contacts_hidden_for[match[1]] = hidden - 1
        return json_response({**lead, "contacts": []} if hidden else lead)

    def _calls(self, request: Request) -> Response:
        if request.method == "GET":
            skip, limit = int(request.args.get("_skip", 0)), min(int(request.args.get("_limit", 100)), 100)
            mine = [call for call in self.calls if call["lead_id"] == request.args.get("lead_id")]
            return json_response({"has_more": len(mine) > skip + limit, "data": mine[skip: skip + limit]})
        if not self.may_create_calls:
            return json_response({"error": "You don't have permission to perform this action."}, 403)
        try:
            call = json.loads(request.get_data())
        except ValueError:
            return json_response({"error": "Invalid JSON"}, 400)
        errors = {}
        if call.get("lead_id") not in self.leads:
            errors["lead_id"] = "Object does not exist."
        if call.get("direction") not in ("outbound", "inbound"):
            errors["direction"] = "Value must be one of: outbound, inbound."
        if call.get("status") not in ("completed", "in-progress", "no-answer", "busy", "failed"):
            errors["status"] = "Invalid status."
        if not isinstance(call.get("duration", 0), int):
            errors["duration"] = "Value must be an integer."
        if errors:
            return json_response({"errors": [], "field-errors": errors}, 400)
        with self._lock:
            stored = {"id": f"acti_{next(self._call_serial):04d}StandIn", "_type": "Call", **call,
                      "note": re.sub(r"<[^>]+>", " ", call.get("note_html") or "").strip()}
            self.calls.append(stored)
        return json_response(stored)
