"""Zoho CRM: Notification API callbacks and workflow webhooks.

A notification carries only record ids (several per call): the worker fetches each record with an
OAuth access token, refreshed from ZOHO_REFRESH_TOKEN when it expires or is refused. A workflow
webhook posts a body the admin designs; it is mapped like the generic source. Notification
channels expire: renew_watch() subscribes the channel again for a week.

Write-back: a note on the lead (or contact) whose title names the job, so listing the record's notes
finds a write the process may have died after.

Stop events (notifications): Leads.edit carries ids only, so the worker reads the lead (check_stop) and
stops when its Lead_Status is in stop_values; an edit whose affected_fields leave out Lead_Status is no
stop, and one whose affected_values give Lead_Status is decided at once. Leads.delete and Contacts.delete
stop at once.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls.clock import Clock, utcnow
from crm2calls.config import Settings
from crm2calls.errors import (
    AuthError,
    ClosedInCrmError,
    ConfigError,
    EnrichmentError,
    MalformedRequestError,
    MissingCredentialsError,
    RejectedError,
    UnauthorizedError,
    UnavailableError,
    WriteBackError,
)
from crm2calls.mapping import scalar_text as _text
from crm2calls.model import Lead, LeadEvent, LeadRecord, PhoneCandidate, StopEvent
from crm2calls.policy import SourcePolicy
from crm2calls.sources.base import (
    FORM,
    JSON,
    InboundRequest,
    Source,
    Written,
    payload_for,
    require_shared_key,
    secret_matches,
)
from crm2calls.sources.client import DEFAULT_TIMEOUT
from crm2calls.sources.generic import idempotency_key, parse_form, parse_json, records_of

if TYPE_CHECKING:
    from crm2calls.services import Services
    from crm2calls.sources.client import CrmHttpClient

MODULES = ("Leads", "Contacts")
# Leads.edit, Leads.delete and Contacts.delete bring the stop events.
WATCH_EVENTS = ("Leads.create", "Contacts.create", "Leads.edit", "Leads.delete", "Contacts.delete")
STATUS_FIELD = "Lead_Status"
STOP_OPERATIONS = frozenset({("Leads", "update"), ("Leads", "delete"), ("Contacts", "delete")})
CHANNEL_LIFETIME = timedelta(days=7) - timedelta(hours=1)  # Zoho's maximum is a week: stay under it
TOKEN_MARGIN = timedelta(minutes=1)  # refresh a little before Zoho says the token expires
MAX_NOTIFY_TOKEN = 50  # Zoho refuses longer tokens
# Field -> phone kind; Phone has none: it counts as mobile when the number is one.
PHONE_FIELDS = (("Mobile", "mobile"), ("Phone", ""), ("Home_Phone", "home"), ("Other_Phone", "other"))
_OAUTH_ERROR = re.compile(r"[a-z_]{1,40}")
_CREDENTIALS = "ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and ZOHO_REFRESH_TOKEN"
NOTES_SCOPE = (
    "ZohoCRM.modules.notes.CREATE and ZohoCRM.modules.notes.READ to the self client, then set the new "
    "ZOHO_REFRESH_TOKEN (see docs/crm/zoho.md)"
)
NOTE_TITLE = "Robot call"
MAX_NOTE_PAGES = 10  # 200 notes a page: a record with more is not looked through further



def _record_id(value: Any) -> str | None:
    """A Zoho record id as digits (it goes into an API path), or None."""
    text = _text(value)
    return text if text and text.isascii() and text.isdigit() else None


def _affected(data: dict[str, Any]) -> tuple[dict[str, set[str]], dict[str, dict[str, Any]]]:
    """({record id: changed field names}, {record id: new values}) from affected_fields / affected_values."""
    changed: dict[str, set[str]] = {}
    for item in data.get("affected_fields") or []:
        if isinstance(item, dict):
            for record_id, names in item.items():
                if isinstance(names, list):
                    changed.setdefault(str(record_id), set()).update(n for n in names if isinstance(n, str))
    values: dict[str, dict[str, Any]] = {}
    for item in data.get("affected_values") or []:
        if isinstance(item, dict) and isinstance(item.get("values"), dict) and _text(item.get("record_id")):
            values[str(item["record_id"])] = item["values"]
    return changed, values


def is_notification(data: Any) -> bool:
    """A Notification API callback, told from a workflow body by its shape."""
    return isinstance(data, dict) and ("ids" in data or "channel_id" in data)


class ZohoSource(Source):
    """POST /webhooks/zoho."""

    name = "zoho"
    content_types = frozenset({JSON, FORM})

    def __init__(self, settings: Settings, policy: SourcePolicy):
        super().__init__(settings, policy)
        self.timeout = DEFAULT_TIMEOUT  # (connect, read) seconds for Zoho's APIs
        self._token_lock = threading.Lock()  # one refresh at a time; the others reuse its token
        self._token: tuple[str, datetime] | None = None  # (access token, valid until)
        self.now: Clock = utcnow  # write-back's clock for the token (tests pass theirs)

    # Requests

    def authenticate(self, request: InboundRequest) -> None:
        """A notification's `token` when ZOHO_NOTIFY_TOKEN is set; the shared key otherwise (and for workflows)."""
        tokens = self.settings.crm.zoho_notify_tokens
        notification = self._notification(request)
        if notification is not None and tokens:
            token = notification.get("token")
            if not secret_matches(token if isinstance(token, str) else None, tokens):
                raise UnauthorizedError("missing or wrong notification token (ZOHO_NOTIFY_TOKEN)", field="token")
            return
        require_shared_key(request, self.settings)

    @staticmethod
    def _notification(request: InboundRequest) -> dict[str, Any] | None:
        if request.content_type != JSON:
            return None
        try:
            data = parse_json(request.body)
        except MalformedRequestError:
            return None  # refused by parse() once authenticated
        return data if is_notification(data) else None

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """A notification fans out into one event per inserted id; a workflow body is mapped like generic."""
        form = request.content_type == FORM
        data = parse_form(request.body) if form else parse_json(request.body)
        if is_notification(data):
            return self._notification_events(data)
        events = []
        from crm2calls.mapping import lead_from_fields

        for record in records_of(data, None if form else self.policy.records_path):
            lead = lead_from_fields(record, self.policy)
            key = "workflow:" + idempotency_key(record, lead.external_id)
            events.append(LeadEvent(key=key, ref=str(lead.external_id or "-"), lead=lead))
        return events

    def _notification_events(self, data: dict[str, Any]) -> list[LeadEvent]:
        channel_id, ids = _text(data.get("channel_id")), data.get("ids")
        if channel_id is None or not isinstance(ids, list):
            raise MalformedRequestError("a notification needs `channel_id` and an `ids` array", field="ids")
        operation, module = data.get("operation"), data.get("module")
        if operation != "insert" or module not in MODULES:
            return []
        events = []
        for index, value in enumerate(ids):
            record_id = _record_id(value)
            if record_id is None:
                raise MalformedRequestError(f"ids[{index}] is not a record id", field=f"ids[{index}]")
            events.append(LeadEvent(
                key=f"notification:{channel_id}:{record_id}:{operation}",
                ref=record_id,
                lead=None,
                raw={"module": module, "id": record_id},
            ))
        return events

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """Leads.edit (checked, or decided by affected_values), Leads.delete and Contacts.delete notifications.

        The record is the bare Zoho record id, as the notification lead events' ref is.
        """
        data = self._notification(request)
        if data is None:
            return []  # a workflow webhook: a new lead, never a stop
        channel_id, ids = _text(data.get("channel_id")), data.get("ids")
        if channel_id is None or not isinstance(ids, list):
            raise MalformedRequestError("a notification needs `channel_id` and an `ids` array", field="ids")
        operation, module = data.get("operation"), data.get("module")
        if (module, operation) not in STOP_OPERATIONS:
            return []
        changed, values = _affected(data)
        # Zoho sends each edit once with its own server_time; a resent callback repeats it, and so its key.
        sent_at = _text(data.get("server_time")) or "-"
        stops = []
        for index, value in enumerate(ids):
            record_id = _record_id(value)
            if record_id is None:
                raise MalformedRequestError(f"ids[{index}] is not a record id", field=f"ids[{index}]")
            raw = {"module": module, "id": record_id}
            if operation == "delete":
                key = f"stop:notification:{channel_id}:{record_id}:delete"
                stops.append(StopEvent(key, record_id, f"Zoho CRM {module} record deleted", raw=raw))
                continue
            if record_id in changed and STATUS_FIELD not in changed[record_id]:
                continue  # an edit of other fields
            key = f"stop:notification:{channel_id}:{record_id}:update:{sent_at}"
            status = _text(values.get(record_id, {}).get(STATUS_FIELD))
            if status is None:
                stops.append(StopEvent(key, record_id, "Zoho CRM lead edited", check=True, raw=raw))
            elif status in self.policy.stop_statuses:
                stops.append(StopEvent(key, record_id, f"Zoho CRM lead's {STATUS_FIELD} is {status}", raw=raw))
        return stops

    def check_stop(self, event: StopEvent, now: datetime) -> str | None:
        """GET the lead: its Lead_Status in stop_values, or no such lead any more (deleted or converted)."""
        record_id = _record_id(event.raw.get("id"))
        if event.raw.get("module") != "Leads" or record_id is None:
            raise EnrichmentError("Zoho: the stored stop event has no lead id", retryable=False)
        answer = self._call("GET", f"crm/v8/Leads/{record_id}", now)
        rows = answer.get("data") if isinstance(answer, dict) else None
        if answer is None:  # 204: Zoho has no such lead now; a converted lead leaves the Leads module too
            return f"Zoho CRM lead {record_id} is gone (deleted or converted)"
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            raise EnrichmentError(f"Zoho: lead {record_id} came back without data", retryable=True)
        status = _text(rows[0].get(STATUS_FIELD))
        if status and status in self.policy.stop_statuses:
            return f"Zoho CRM lead's {STATUS_FIELD} is {status}"
        return None

    # Zoho's APIs

    def _client(self, base_url: str, service: str) -> CrmHttpClient:
        from crm2calls.sources.client import CrmHttpClient

        return self.api_client(
            lambda: CrmHttpClient(base_url, service=service, secret_hint=_CREDENTIALS, timeout=self.timeout), service
        )

    def _access_token(self, now: datetime, refused: str | None = None) -> str:
        """A valid access token: the cached one, unless expired or `refused`; else a fresh one."""
        crm = self.settings.crm
        if not (crm.zoho_client_id and crm.zoho_client_secret and crm.zoho_refresh_token):
            raise MissingCredentialsError("Zoho", _CREDENTIALS, "a self client in api-console.zoho.com")
        with self._token_lock:
            if self._token and self._token[0] != refused and self._token[1] > now:
                return self._token[0]
            form = {
                "grant_type": "refresh_token",
                "client_id": crm.zoho_client_id,
                "client_secret": crm.zoho_client_secret,
                "refresh_token": crm.zoho_refresh_token,
            }
            accounts = self._client(crm.zoho_accounts_url, "Zoho accounts")
            try:
                answer = accounts.request("POST", "oauth/v2/token", data=form)
            except EnrichmentError as exc:  # 400 and the like: the credentials, not the lead
                raise AuthError(f"Zoho accounts refused the refresh ({exc.message}): check {_CREDENTIALS}") from None
            answer = answer if isinstance(answer, dict) else {}
            token = answer.get("access_token")
            if not isinstance(token, str) or not token:
                error = answer.get("error")  # Zoho answers 200 {"error": "invalid_code"} for a bad refresh token
                error = error if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error) else "no access_token"
                raise AuthError(f"Zoho accounts refused the refresh token ({error}): check {_CREDENTIALS}")
            lifetime = answer.get("expires_in")
            seconds = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else 3600
            self._token = (token, now + timedelta(seconds=seconds) - TOKEN_MARGIN)
            return token

    def _call(self, method: str, path: str, now: datetime, body: Any = None) -> Any:
        """Call the CRM API with the access token; a refused token is refreshed once and the call repeated."""
        api = self._client(self.settings.crm.zoho_api_domain, "Zoho CRM")
        token = self._access_token(now)
        try:
            return api.request(method, path, json=body, headers={"Authorization": f"Zoho-oauthtoken {token}"})
        except AuthError:
            token = self._access_token(now, refused=token)
            return api.request(method, path, json=body, headers={"Authorization": f"Zoho-oauthtoken {token}"})

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """GET the record by module and id; a record without a phone yet is worth a retry."""
        module, record_id = event.raw.get("module"), _record_id(event.raw.get("id"))
        if module not in MODULES or record_id is None:
            raise EnrichmentError("Zoho: the stored event has no module or record id", retryable=False)
        answer = self._call("GET", f"crm/v8/{module}/{record_id}", now)
        rows = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            raise EnrichmentError(f"Zoho: {module} record {record_id} not found", retryable=False)
        status = _text(rows[0].get(STATUS_FIELD)) if module == "Leads" else None
        if status and status in self.policy.stop_statuses:  # closed before we read it (see Bitrix24's enrich)
            raise ClosedInCrmError(f"Zoho CRM lead's {STATUS_FIELD} is {status}")
        lead = self._record_lead(module, record_id, rows[0])
        if not lead.phones:
            raise EnrichmentError(f"Zoho: {module} record {record_id} has no phone yet", retryable=True)
        return lead

    def _record_lead(self, module: str, record_id: str, record: dict[str, Any]) -> Lead:
        phones = [PhoneCandidate(value, kind) for field, kind in PHONE_FIELDS if (value := _text(record.get(field)))]
        first, last = _text(record.get("First_Name")), _text(record.get("Last_Name"))
        name = _text(record.get("Full_Name")) or " ".join(part for part in (first, last) if part) or None
        account = record.get("Account_Name")
        company = _text(record.get("Company")) or (_text(account.get("name")) if isinstance(account, dict) else None)
        default = {
            "name": name,
            "crm": "zoho",
            "crm_module": module,
            "crm_record_id": record_id,
            "company": company,
            "lead_source": _text(record.get("Lead_Source")),
        }
        return Lead(
            external_id=record_id,
            phones=phones,
            fields=payload_for(default, record, self.policy),
            route=self.route(record),
            name=name,
            city=_text(record.get("City")) or _text(record.get("Mailing_City")),
            region=self.policy.region,
        )

    def watch(self, now: datetime) -> dict[str, Any]:
        """Enable ZOHO_CHANNEL_ID for Leads.create and Contacts.create until a week from now (less a margin)."""
        crm, public = self.settings.crm, self.settings.public_base_url
        problems = [
            f"{name}: required to subscribe Zoho notifications"
            for name, value in (
                ("ZOHO_CHANNEL_ID", crm.zoho_channel_id),
                ("ZOHO_NOTIFY_TOKEN", crm.zoho_notify_tokens),
                ("PUBLIC_BASE_URL", public),
            )
            if not value
        ]
        if crm.zoho_channel_id and not _record_id(crm.zoho_channel_id):
            problems.append("ZOHO_CHANNEL_ID: Zoho takes digits only, e.g. 1000000068001")
        if crm.zoho_notify_tokens and len(crm.zoho_notify_tokens[0]) > MAX_NOTIFY_TOKEN:
            problems.append(f"ZOHO_NOTIFY_TOKEN: at most {MAX_NOTIFY_TOKEN} characters (Zoho's limit)")
        if problems:
            raise ConfigError(problems)
        notify_url = f"{public.rstrip('/')}/webhooks/zoho"
        expiry = (now + CHANNEL_LIFETIME).astimezone(UTC).replace(microsecond=0).isoformat()
        body = {"watch": [{
            "channel_id": int(crm.zoho_channel_id),
            "events": list(WATCH_EVENTS),
            "notify_url": notify_url,
            "token": crm.zoho_notify_tokens[0],  # the current token; callbacks with the previous one still pass
            "channel_expiry": expiry,
            "notify_on_related_action": False,
        }]}
        try:
            answer = self._call("POST", "crm/v8/actions/watch", now, body)
        except EnrichmentError as exc:  # a 4xx on the subscription: what we sent, not a lead
            raise RejectedError(f"Zoho did not enable the notification channel: {exc.message}") from None
        results = answer.get("watch") if isinstance(answer, dict) else None
        result = results[0] if isinstance(results, list) and results and isinstance(results[0], dict) else {}
        if result.get("code") != "SUCCESS":
            code, message = _text(result.get("code")) or "no answer", _text(result.get("message")) or ""
            raise RejectedError(f"Zoho did not enable the notification channel: {code} {message}".strip())
        return {
            "channel_id": crm.zoho_channel_id,
            "events": list(WATCH_EVENTS),
            "notify_url": notify_url,
            "channel_expiry": expiry,
        }


    # Write-back: a note on the lead or contact.

    def can_write_back(self) -> bool:
        """The OAuth client's three settings are set."""
        crm = self.settings.crm
        return bool(crm.zoho_client_id and crm.zoho_client_secret and crm.zoho_refresh_token)

    @staticmethod
    def _record_path(record: LeadRecord) -> str:
        """crm/v8/{module}/{id}: the module enrichment recorded in the payload (crm_module), else Leads."""
        record_id = _record_id(record.ref)
        if record_id is None:
            raise WriteBackError(f"Zoho: lead {record.id} has no Zoho record id", retryable=False)
        payload = json.loads(record.entry or "{}").get("payload") or {}
        module = payload.get("crm_module") if payload.get("crm_module") in MODULES else "Leads"
        return f"crm/v8/{module}/{record_id}"

    def _write_call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """A write-back request with the access token; a refused token (401) is refreshed once and the call repeated."""
        from crm2calls.sources.writes import TokenRefusedError, send

        api = self._client(self.settings.crm.zoho_api_domain, "Zoho CRM")
        token = self._write_token()
        try:
            return send(api, method, path, json=json, params=params, scope=NOTES_SCOPE,
                        headers={"Authorization": f"Zoho-oauthtoken {token}"})
        except TokenRefusedError:
            token = self._write_token(refused=token)
            return send(api, method, path, json=json, params=params, scope=NOTES_SCOPE,
                        headers={"Authorization": f"Zoho-oauthtoken {token}"})

    def _write_token(self, refused: str | None = None) -> str:
        """_access_token() for write-back: its errors as WriteBackError (a refused refresh token holds them)."""
        try:
            return self._access_token(self.now(), refused)
        except UnavailableError as exc:
            raise WriteBackError(exc.message, retry_after=exc.retry_after) from None
        except MissingCredentialsError as exc:
            raise WriteBackError(exc.message, retryable=False) from None
        except (AuthError, EnrichmentError) as exc:
            raise WriteBackError(exc.message, scope=True) from None

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """POST a note titled with the job onto the lead (or contact) record."""
        path = f"{self._record_path(record)}/Notes"
        body = {"data": [{"Note_Title": f"{NOTE_TITLE} (job {record.job_id or '-'})", "Note_Content": note}]}
        answer = self._write_call("POST", path, json=body)
        rows = answer.get("data") if isinstance(answer, dict) else None
        row = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
        details = row.get("details") if isinstance(row.get("details"), dict) else {}
        if row.get("code") != "SUCCESS" or not _text(details.get("id")):
            from crm2calls.sources.writes import error_code

            raise WriteBackError(f"Zoho did not add the note ({error_code(answer) or 'no id'})", retryable=False)
        return Written(str(details["id"]))

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """List the record's notes (200 a page) for one titled with this job."""
        path = f"{self._record_path(record)}/Notes"
        title = f"{NOTE_TITLE} (job {job_id})"
        for page in range(1, MAX_NOTE_PAGES + 1):
            params = {"fields": "Note_Title,Note_Content", "per_page": 200, "page": page}
            answer = self._write_call("GET", path, params=params)
            if not isinstance(answer, dict):  # 204: the record has no notes
                return None
            rows = answer.get("data") if isinstance(answer.get("data"), list) else []
            for row in rows:
                if isinstance(row, dict) and row.get("Note_Title") == title and _text(row.get("id")):
                    return Written(str(row["id"]))
            info = answer.get("info") if isinstance(answer.get("info"), dict) else {}
            if not info.get("more_records"):
                return None
        return None


def renew_watch(services: Services, now: datetime) -> dict[str, Any]:
    """Subscribe the Zoho notification channel again for a week; run it daily (CLI, Lambda schedule)."""
    source: ZohoSource = services.source("zoho")  # type: ignore[assignment]
    return source.watch(now)
