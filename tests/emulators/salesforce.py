"""A stand-in of a Salesforce org's token endpoint and REST API (Tasks and SOQL), on one local server.

As Salesforce does (REST API Developer Guide; OAuth 2.0 Client Credentials Flow):
* POST /services/oauth2/token (form: grant_type=client_credentials, client_id, client_secret) answers
  {access_token, instance_url, id, token_type, issued_at, signature, scope} with no expiry; the token
  lives as long as the org's session timeout. Wrong credentials get 400 invalid_client, an app whose
  flow has no Run As user 400 invalid_grant;
* /services/data/vNN.0/... wants `Authorization: Bearer <token>`: unknown or expired tokens get
  401 [{"errorCode": "INVALID_SESSION_ID"}]; a version the org does not have is 404 NOT_FOUND;
* POST sobjects/Task creates a Task (201 {"id", "success", "errors"}); unknown fields are 400
  INVALID_FIELD, a bad picklist value 400 INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST, a WhoId that is no
  record 400 INVALID_CROSS_REFERENCE_KEY, a deleted one 400 ENTITY_IS_DELETED;
* GET query?q=SELECT Id FROM Task WHERE WhoId = '…' AND Subject LIKE '…' answers {totalSize, done, records}.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime, timedelta
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.crm_api import StandIn, json_response

SESSION_TIMEOUT = timedelta(hours=2)  # the org's default session timeout
LATEST_VERSION = 67
TASK_FIELDS = frozenset(
    {
        "WhoId", "WhatId", "Subject", "TaskSubtype", "Status", "CallType", "CallDurationInSeconds",
        "CallDisposition", "CallObject", "Description", "ActivityDate", "Priority", "OwnerId",
    }
)
PICKLISTS = {
    "TaskSubtype": {"Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"},
    "Status": {"Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"},
    "CallType": {"Internal", "Inbound", "Outbound"},
}
LENGTHS = {"Subject": 255, "CallDisposition": 255, "Description": 32000}
_API = re.compile(r"/services/data/v(\d+)\.0/(.+)")
_QUERY = re.compile(
    r"SELECT Id FROM Task WHERE WhoId = '([A-Za-z0-9]+)' AND Subject LIKE '((?:[^'\\]|\\.)*)'"
    r" ORDER BY CreatedDate LIMIT (\d+)"
)


def like_pattern(pattern: str) -> re.Pattern[str]:
    """A SOQL LIKE pattern as a regex: % and _ are wildcards unless escaped with a backslash."""
    parts, escaped = [], False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def errors(code: str, message: str, status: int) -> Response:
    """Salesforce's error body: a list of {message, errorCode}."""
    return json_response([{"message": message, "errorCode": code}], status)


class SalesforceStandIn(StandIn):
    """Leads and Contacts by id (`records`); `tasks` holds every Task written, in order."""

    def __init__(self, clock, client_id: str = "3MVG9SFstandInConsumerKey0000000000000000",
                 client_secret: str = "F2B6C0E4A8D1357924680ACE13579BDF2468ACE0"):
        super().__init__()
        self.clock = clock
        self.client_id, self.client_secret = client_id, client_secret
        self.records: dict[str, str] = {}  # id -> "Lead" | "Contact"
        self.deleted: set[str] = set()
        self.tasks: list[dict[str, Any]] = []
        self.tokens: dict[str, datetime] = {}  # access token -> expiry
        self.token_requests = 0
        self.session_timeout = SESSION_TIMEOUT
        self.run_as_user = True  # the connected app's client-credentials flow has a Run As user
        self.refused_code: str | None = None  # every API call answers 403 with this errorCode
        self.slow_writes = 0.0  # seconds a Task's answer waits AFTER the Task is stored (an answer lost)
        self._serial = itertools.count(1)

    def add_record(self, record_id: str, kind: str = "Lead") -> None:
        """A Lead or Contact the Tasks may name."""
        self.records[record_id] = kind

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (the admin revoked the app's sessions)."""
        with self._lock:
            self.tokens.clear()

    def writes(self) -> list[dict[str, Any]]:
        """The Tasks written, as stored."""
        return list(self.tasks)

    def handle(self, request: Request) -> Response:
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self._token(request)
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        with self._lock:
            expiry = self.tokens.get(token) if token else None
        if expiry is None or expiry <= self.clock():
            return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)
        match = _API.fullmatch(request.path)
        if match is None or int(match[1]) > LATEST_VERSION:
            return errors("NOT_FOUND", "The requested resource does not exist", 404)
        if self.refused_code:
            return errors(self.refused_code, "refused by the stand-in", 403)
        if match[2] == "sobjects/Task" and request.method == "POST":
            return self._create_task(request)
        if match[2] == "query" and request.method == "GET":
            return self._query(request.args.get("q", ""))
        return errors("NOT_FOUND", "The requested resource does not exist", 404)

    def _token(self, request: Request) -> Response:
        form = request.form
        with self._lock:
            self.token_requests += 1
        if (form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret):
            return json_response({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
        if not self.run_as_user:
            return json_response({"error": "invalid_grant", "error_description": "no client credentials user enabled"},
                                 400)
        token = f"00DSTANDIN!AQ{next(self._serial):04d}.x7Yq2mPz9LkR4vT8wB3nC6dF1gH5jK0sE"
        with self._lock:
            self.tokens[token] = self.clock() + self.session_timeout
        issued = int(self.clock().timestamp() * 1000)
        return json_response({"access_token": token, "signature": "c3RhbmQtaW4=", "scope": "api",
                              "instance_url": request.host_url.rstrip("/"), "token_type": "Bearer",
                              "id": "https://login.salesforce.com/id/00DSTANDIN/005STANDIN", "issued_at": str(issued)})

    def _create_task(self, request: Request) -> Response:
        try:
            task = json.loads(request.get_data())
        except ValueError:
            return errors("JSON_PARSER_ERROR", "not JSON", 400)
        if not isinstance(task, dict):
            return errors("JSON_PARSER_ERROR", "not an object", 400)
        unknown = sorted(set(task) - TASK_FIELDS)
        if unknown:
            return errors("INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type Task", 400)
        for name, allowed in PICKLISTS.items():
            if name in task and task[name] not in allowed:
                return errors("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"bad value for picklist {name}", 400)
        for name, limit in LENGTHS.items():
            if len(str(task.get(name) or "")) > limit:
                return errors("STRING_TOO_LONG", f"{name}: data value too large", 400)
        if not isinstance(task.get("CallDurationInSeconds", 0), int):
            return errors("INVALID_TYPE_ON_FIELD_IN_RECORD", "CallDurationInSeconds: value not of required type", 400)
        who = task.get("WhoId")
        if who in self.deleted:
            return errors("ENTITY_IS_DELETED", "entity is deleted", 400)
        if who not in self.records:
            return errors("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", 400)
        with self._lock:
            task_id = f"00T5g{next(self._serial):013d}"
            self.tasks.append({"Id": task_id, **task, "CreatedDate": self.clock().isoformat()})
        if self.slow_writes:
            time.sleep(self.slow_writes)
        return json_response({"id": task_id, "success": True, "errors": []}, 201)

    def _query(self, soql: str) -> Response:
        match = _QUERY.fullmatch(soql)
        if match is None:
            return errors("MALFORMED_QUERY", "the stand-in reads only the write-back's query", 400)
        subject = like_pattern(match[2])
        with self._lock:
            found = [task for task in self.tasks
                     if task.get("WhoId") == match[1] and subject.fullmatch(task.get("Subject") or "")]
        rows = [{"attributes": {"type": "Task", "url": f"/services/data/v{LATEST_VERSION}.0/sobjects/Task/{t['Id']}"},
                 "Id": t["Id"]} for t in found[: int(match[3])]]
        return json_response({"totalSize": len(rows), "done": True, "records": rows})
