"""A stand-in of Zoho's accounts server and CRM API v8, on one local server (give its URL to both).

As Zoho does:
* POST /oauth/v2/token (form: grant_type=refresh_token, client_id, client_secret, refresh_token)
  issues a one-hour access token; wrong credentials get HTTP 200 with {"error": "invalid_code"};
* the CRM API wants `Authorization: Zoho-oauthtoken <access token>`: unknown, expired or revoked
  tokens get 401 INVALID_TOKEN;
* GET /crm/v8/{Leads|Contacts}/{id} answers {"data": [record]}, or 204 with no body when there is none;
* POST /crm/v8/actions/watch enables a channel whose expiry is at most a week ahead;
* POST /crm/v8/{module}/{id}/Notes {"data": [{"Note_Title", "Note_Content"}]} adds a note (201, per-row
  code SUCCESS and the note's id); GET lists a record's notes, `fields` required, 200 a page at most
  with info.more_records, 204 when there are none; a token without the notes scope gets 401
  OAUTH_SCOPE_MISMATCH, a profile without permission 403 NO_PERMISSION.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timedelta
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, json_response

_RECORD = re.compile(r"/crm/v8/(Leads|Contacts)/(\d+)")
TOKEN_LIFETIME = timedelta(hours=1)
_NOTES = re.compile(r"/crm/v8/(Leads|Contacts)/(\d+)/Notes")


class ZohoStandIn(StandIn):
    """Records by module and id; `phone_hidden_for[id] = n`: the first n fetches see no phone yet."""

    def __init__(self, clock, client_id: str = "1000.7QZ4RB9XKQW3TS2LM0VN8PJ5HC6YDA",
                 client_secret: str = "5e0a1c3b7d9f2a4c6e8b0d1f3a5c7e9b2d4f6a8c0e",
                 refresh_token: str = "1000.4f1b0c2d3e5a7b9c8d6e4f2a1b3c5d7e.9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"):
        super().__init__()
        self.clock = clock
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.phone_hidden_for: dict[str, int] = {}
        self.tokens: dict[str, datetime] = {}  # access token -> expiry
        self.token_requests = 0
        self.refuse_all_tokens = False  # the API refuses even fresh tokens (a revoked client, a missing scope)
        self.watches: list[dict[str, Any]] = []
        self._serial = itertools.count(1)
        self.notes: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (module, record id) -> notes written
        self.notes_scope = True  # the self client's token carries ZohoCRM.modules.notes.CREATE/READ
        self.notes_permission = True  # the user's profile may add notes

    def add_record(self, module: str, record_id: str, **fields: Any) -> None:
        """Create a record in a module."""
        self.records[(module, record_id)] = {"id": record_id, **fields}

    def set_fields(self, module: str, record_id: str, **fields: Any) -> None:
        """A user edits a record, e.g. Lead_Status="Lost Lead"."""
        with self._lock:
            self.records[(module, record_id)].update(fields)

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (Zoho revokes or the admin regenerates)."""
        with self._lock:
            self.tokens.clear()

    def api_hits(self) -> list[str]:
        """Paths of the CRM API calls (token requests left out)."""
        return [hit.path for hit in self.hits if hit.path.startswith("/crm/")]

    def handle(self, request: Request) -> Response:
        if request.path == "/oauth/v2/token" and request.method == "POST":
            return self._token(request)
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Zoho-oauthtoken ")
        with self._lock:
            expiry = self.tokens.get(token) if authorization.startswith("Zoho-oauthtoken ") else None
        if expiry is None or expiry <= self.clock() or self.refuse_all_tokens:
            return json_response({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
                                  "status": "error"}, 401)
        if request.path == "/crm/v8/actions/watch" and request.method == "POST":
            return self._watch(request)
        if _NOTES.fullmatch(request.path):
            return self._notes(request)
        match = _RECORD.fullmatch(request.path)
        record = self.records.get((match[1], match[2])) if match and request.method == "GET" else None
        if record is None:
            return Response(status=204)
        with self._lock:
            hidden = self.phone_hidden_for.get(match[2], 0)
            if hidden:
                self.phone_hidden_for[match[2]] = hidden - 1
        if hidden:
            record = {key: value for key, value in record.items() if key not in ("Phone", "Mobile")}
        return json_response({"data": [record]})

    def _token(self, request: Request) -> Response:
        form = request.form
        with self._lock:
            self.token_requests += 1
        expected = {"grant_type": "refresh_token", "client_id": self.client_id, "client_secret": self.client_secret,
                    "refresh_token": self.refresh_token}
        if any(form.get(key) != value for key, value in expected.items()):
            return json_response({"error": "invalid_code"})  # sic: HTTP 200
        token = f"1000.{next(self._serial):04d}a1b2c3d4e5f6a7b8c9d0e1f2a3b4.c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0"
        with self._lock:
            self.tokens[token] = self.clock() + TOKEN_LIFETIME
        return json_response({"access_token": token, "scope": "ZohoCRM.modules.READ ZohoCRM.notifications.CREATE",
                              "api_domain": "https://www.zohoapis.com", "token_type": "Bearer",
                              "expires_in": int(TOKEN_LIFETIME.total_seconds())})

    def _watch(self, request: Request) -> Response:
        try:
            [watch] = json.loads(request.get_data())["watch"]
            expiry = datetime.fromisoformat(watch["channel_expiry"])
            valid = (isinstance(watch["channel_id"], int) and watch["notify_url"].startswith("https://")
                     and 0 < len(watch["token"]) <= 50 and watch["events"]
                     and self.clock() < expiry <= self.clock() + timedelta(days=7))
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            return json_response({"watch": [{"code": "INVALID_DATA", "details": {}, "message": "invalid data",
                                             "status": "error"}]}, 400)
        self.watches.append(watch)
        events = [{"channel_expiry": watch["channel_expiry"], "resource_uri": f"https://www.zohoapis.com/crm/v8/{e.split('.')[0]}",
                   "resource_id": "554023000000000125", "resource_name": e.split(".")[0],
                   "channel_id": str(watch["channel_id"])} for e in watch["events"]]
        return json_response({"watch": [{"code": "SUCCESS", "details": {"events": events},
                                         "message": "Successfully subscribed for actions-watch of the given module",
                                         "status": "success"}]})

    def written_notes(self) -> list[dict[str, Any]]:
        """Every note written, in order, with its module and record."""
        return [note for notes in self.notes.values() for note in notes]

    def _notes(self, request: Request) -> Response:
        module, record_id = _NOTES.fullmatch(request.path).groups()
        if not self.notes_scope:
            return json_response({"code": "OAUTH_SCOPE_MISMATCH", "details": {},
                                  "message": "invalid oauth scope to access this URL", "status": "error"}, 401)
        if not self.notes_permission:
            return json_response({"code": "NO_PERMISSION", "details": {"permissions": ["Crm_Implied_Create_Notes"]},
                                  "message": "permission denied", "status": "error"}, 403)
        if (module, record_id) not in self.records:
            return json_response({"data": [{"code": "INVALID_DATA", "details": {"id": record_id},
                                            "message": "the related id given seems to be invalid",
                                            "status": "error"}]}, 400)
        if request.method == "GET":
            return self._list_notes(request, module, record_id)
        try:
            [row] = json.loads(request.get_data())["data"]
            valid = isinstance(row["Note_Content"], str) and isinstance(row.get("Note_Title", ""), str)
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            return json_response({"data": [{"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Note_Content"},
                                            "message": "required field not found", "status": "error"}]}, 400)
        note_id = f"5725767000{next(self._serial):09d}"
        with self._lock:
            self.notes.setdefault((module, record_id), []).append({"id": note_id, "module": module,
                                                                   "record": record_id, **row})
        return json_response({"data": [{"code": "SUCCESS", "details": {"id": note_id,
                                                                         "Created_Time": self.clock().isoformat()},
                                         "message": "record added", "status": "success"}]}, 201)

    def _list_notes(self, request: Request, module: str, record_id: str) -> Response:
        if not request.args.get("fields"):
            return json_response({"code": "REQUIRED_PARAM_MISSING", "details": {"param": "fields"},
                                  "message": "One of the expected parameter is missing", "status": "error"}, 400)
        per_page, page = min(int(request.args.get("per_page", 200)), 200), int(request.args.get("page", 1))
        notes = self.notes.get((module, record_id), [])
        rows = notes[(page - 1) * per_page: page * per_page]
        if not rows:
            return Response(status=204)
        fields = request.args["fields"].split(",")
        data = [{"id": note["id"], **{name: note.get(name) for name in fields}} for note in rows]
        return json_response({"data": data, "info": {"per_page": per_page, "count": len(data), "page": page,
                                                     "more_records": len(notes) > page * per_page}})
