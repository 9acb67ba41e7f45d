"""A stand-in of HubSpot's CRM v3 contacts API (GET /crm/v3/objects/contacts/{id}).

As HubSpot does: Bearer token required (401 otherwise), only the default properties unless
`properties=` names others (so a fetch without it sees no phone), unset properties are null,
an unknown or archived id is 404.
"""

from __future__ import annotations

import re

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, json_response

DEFAULT_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")
_CONTACT = re.compile(r"/crm/v3/objects/contacts/(\d+)")


class HubSpotStandIn(StandIn):
    """Contacts by id; `phone_hidden_for[id] = n`: the first n fetches see no phone yet (a form sets it later)."""

    def __init__(self, token: str = "pat-na1-11111111-2222-3333-4444-555555555555"):
        super().__init__()
        self.token = token
        self.contacts: dict[str, dict[str, str]] = {}
        self.phone_hidden_for: dict[str, int] = {}

    def add_contact(self, contact_id: str, **properties: str) -> None:
        """Create a contact with these properties."""
        self.contacts[contact_id] = {"hs_object_id": contact_id, "createdate": "2026-11-26T08:59:58.123Z", **properties}

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return json_response({"status": "error", "category": "INVALID_AUTHENTICATION"}, 401)
        match = _CONTACT.fullmatch(request.path)
        contact = self.contacts.get(match[1]) if match and request.method == "GET" else None
        if contact is None:
            return json_response({"status": "error", "category": "OBJECT_NOT_FOUND"}, 404)
        asked = request.args.get("properties")
        names = asked.split(",") if asked else DEFAULT_PROPERTIES
        properties = {name: contact.get(name) for name in names}
        with self._lock:
            hidden = self.phone_hidden_for.get(match[1], 0)
            if hidden:
                self.phone_hidden_for[match[1]] = hidden - 1
        if hidden:
            properties.update({name: None for name in ("phone", "mobilephone") if name in properties})
        return json_response(
            {"id": match[1], "properties": properties, "createdAt": contact["createdate"], "archived": False}
        )
