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
CALL_TO_CONTACT = 194


class HubSpotStandIn(StandIn):
    """Contacts by id; `phone_hidden_for[id] = n`: the first n fetches see no phone yet (a form sets it later)."""

    def __init__(self, token: str = "pat-na1-11111111-2222-3333-4444-555555555555"):
        super().__init__()
        self.token = token
        self.contacts: dict[str, dict[str, str]] = {}
        self.phone_hidden_for: dict[str, int] = {}
        # Calls written: {"id", "properties", "contact_id"}, in order.
        self.calls: list[dict] = []
        self.scopes = {"crm.objects.contacts.read", "crm.objects.contacts.write"}

    def add_contact(self, contact_id: str, **properties: str) -> None:
        """Create a contact with these properties."""
        self.contacts[contact_id] = {"hs_object_id": contact_id, "createdate": "2026-11-26T08:59:58.123Z", **properties}

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return json_response({"status": "error", "category": "INVALID_AUTHENTICATION"}, 401)
        if request.path.startswith("/crm/v3/objects/calls"):
            return self._calls(request)
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

    # Calls: POST /crm/v3/objects/calls (associated with a contact), POST /crm/v3/objects/calls/search

    def _calls(self, request: Request) -> Response:
        needed = "crm.objects.contacts.write" if request.path.endswith("/calls") else "crm.objects.contacts.read"
        if needed not in self.scopes:
            message = f"This app hasn't been granted all required scopes to make this call. Required: [{needed}]"
            return json_response({"status": "error", "category": "MISSING_SCOPES", "message": message}, 403)
        body = request.get_json(silent=True) or {}
        if request.method == "POST" and request.path == "/crm/v3/objects/calls":
            return self._create_call(body)
        if request.method == "POST" and request.path == "/crm/v3/objects/calls/search":
            return self._search_calls(body)
        return json_response({"status": "error", "category": "OBJECT_NOT_FOUND"}, 404)

    def _create_call(self, body: dict) -> Response:
        properties = body.get("properties") or {}
        links = [(a.get("to") or {}).get("id") for a in body.get("associations") or []
                 if any(t.get("associationTypeId") == CALL_TO_CONTACT for t in a.get("types") or [])]
        if "hs_timestamp" not in properties or len(links) != 1:
            return json_response({"status": "error", "category": "VALIDATION_ERROR",
                                  "message": "hs_timestamp and one contact association (type 194) are required"}, 400)
        if str(links[0]) not in self.contacts:
            return json_response({"status": "error", "category": "VALIDATION_ERROR",
                                  "message": f"contact {links[0]} does not exist"}, 400)
        with self._lock:
            call = {"id": str(70000 + len(self.calls) + 1), "properties": dict(properties), "contact_id": str(links[0])}
            self.calls.append(call)
        return json_response({"id": call["id"], "properties": call["properties"], "archived": False}, 201)

    def _search_calls(self, body: dict) -> Response:
        def matches(call: dict, rule: dict) -> bool:
            name, value = rule.get("propertyName"), str(rule.get("value"))
            if rule.get("operator") != "EQ":
                return False
            if name == "associations.contact":
                return call["contact_id"] == value
            return str(call["properties"].get(name)) == value

        with self._lock:
            found = [call for call in self.calls
                     if any(all(matches(call, rule) for rule in group.get("filters") or [])
                            for group in body.get("filterGroups") or [])]
        results = [{"id": call["id"], "properties": {"hs_call_title": call["properties"].get("hs_call_title")}}
                   for call in found[: int(body.get("limit") or 10)]]
        return json_response({"total": len(found), "results": results})
