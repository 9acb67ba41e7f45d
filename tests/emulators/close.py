"""A stand-in of Close's lead API (GET /api/v1/lead/{id}/).

As Close does: HTTP Basic with the API key as the user and an empty password (401 otherwise), the
lead with its `contacts[].phones[] = {phone, phone_formatted, type}`, 404 for an unknown lead.
"""

from __future__ import annotations

import base64
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

    def add_lead(self, lead_id: str, display_name: str, contacts: list[dict[str, Any]], **fields: Any) -> None:
        """Create a lead; contacts as [{"id", "name", "phones": [{"phone", "type"}]}]."""
        self.leads[lead_id] = {"id": lead_id, "display_name": display_name, "name": display_name,
                               "contacts": contacts, "addresses": [], "custom": {}, **fields}

    def handle(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return json_response({"error": "Unauthorized"}, 401)
        match = _LEAD.fullmatch(request.path)
        lead = self.leads.get(match[1]) if match and request.method == "GET" else None
        if lead is None:
            return json_response({"error": "Empty query: Lead matching query does not exist."}, 404)
        with self._lock:
            hidden = self.contacts_hidden_for.get(match[1], 0)
            if hidden:
                self.contacts_hidden_for[match[1]] = hidden - 1
        return json_response({**lead, "contacts": []} if hidden else lead)
