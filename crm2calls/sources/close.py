"""Close: `lead.created` webhook events, signed with the subscription's signature key.

Lead events carry no phones (contacts are separate objects), so the worker fetches the lead with
its contacts from the API.

Write-back: a completed outbound call activity on the lead; its note ends with the job id, so listing
the lead's calls finds a write the process may have died after.

Stop events: lead.updated into a status in stop_values (its status_id or status_label; no default, so
by default only deletions stop), lead.deleted, and lead.merged (the source lead, merged away).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls.clock import Clock, utcnow
from crm2calls.config import Settings
from crm2calls.errors import (
    ClosedInCrmError,
    EnrichmentError,
    MalformedRequestError,
    MissingCredentialsError,
    UnauthorizedError,
    WriteBackError,
)
from crm2calls.mapping import scalar_text as _text
from crm2calls.model import Lead, LeadEvent, LeadRecord, PhoneCandidate, StopEvent
from crm2calls.policy import SourcePolicy
from crm2calls.sources.base import JSON, InboundRequest, Source, Written, payload_for, require_shared_key
from crm2calls.sources.client import DEFAULT_TIMEOUT
from crm2calls.sources.generic import parse_json

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

TOLERANCE = timedelta(minutes=5)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS = re.compile(r"[1-9][0-9]{0,9}")  # canonical Unix seconds: ASCII digits, no sign, no leading zero
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_LEAD_ID = re.compile(r"lead_[A-Za-z0-9]+")
NOT_CALLED = frozenset({"fax"})
CALL_SCOPE = (
    "the API key's user a role that may create call activities on leads (the key acts as its user; "
    "see docs/crm/close.md)"
)
JOB_MARK = "Aimylogic job"  # the note's last line names the job: "Aimylogic job 9051123"
MAX_CALL_PAGES = 10  # 100 calls a page: a lead with more is not looked through further


def note_html(note: str, job_id: str) -> str:
    """The note as HTML (escaped, line breaks kept), ending with the paragraph that names the job."""
    body = "<br>".join(html.escape(line) for line in note.splitlines())
    return f"<p>{body}</p><p>{JOB_MARK} {html.escape(job_id)}</p>"


def names_job(text: str, job_id: str) -> bool:
    """Does a call's note name this job (not one whose id merely starts the same)?"""
    mark = re.escape(f"{JOB_MARK} {html.escape(job_id)}")
    return re.search(rf"{mark}(?![\w-])", text) is not None

STATUS_FIELDS = ("status_id", "status_label")


def close_signature(key_hex: str, timestamp: str, body: bytes) -> str | None:
    """hex HMAC-SHA256(bytes.fromhex(key), timestamp + raw body); None when the key is not hex."""
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        return None
    return hmac.new(key, timestamp.encode() + body, hashlib.sha256).hexdigest()


def verify_close(keys: tuple[str, ...], body: bytes, timestamp: str | None, signature: str | None,
                 now: datetime) -> None:
    """Accept a fresh signature by any current or previous key; UnauthorizedError otherwise."""
    if not timestamp or not signature:
        raise UnauthorizedError("missing close-sig-hash or close-sig-timestamp (CLOSE_SIGNATURE_KEY is set)",
                                field="close-sig-hash")
    if not _SECONDS.fullmatch(timestamp):
        raise UnauthorizedError("close-sig-timestamp is not whole seconds", field="close-sig-timestamp")
    if abs(now - (EPOCH + timedelta(seconds=int(timestamp)))) > TOLERANCE:
        raise UnauthorizedError(
            "close-sig-timestamp is more than 5 minutes from our clock", field="close-sig-timestamp"
        )
    given = signature.lower().encode() if _HEX.fullmatch(signature) else b""
    matched = False
    for key in keys:
        expected = close_signature(key, timestamp, body)
        matched |= expected is not None and hmac.compare_digest(given, expected.encode())
    if not matched:
        raise UnauthorizedError("close-sig-hash does not match", field="close-sig-hash")



class CloseSource(Source):
    """POST /webhooks/close."""

    name = "close"
    content_types = frozenset({JSON})

    def __init__(self, settings: Settings, policy: SourcePolicy):
        super().__init__(settings, policy)
        self.now: Clock = utcnow  # tests pass their own clock to check the timestamp window
        self.timeout = DEFAULT_TIMEOUT  # (connect, read) seconds for the leads API

    def authenticate(self, request: InboundRequest) -> None:
        """The signature when CLOSE_SIGNATURE_KEY is set, otherwise the shared key."""
        keys = self.settings.crm.close_signature_keys
        if not keys:
            require_shared_key(request, self.settings)
            return
        verify_close(keys, request.body, request.headers.get("close-sig-timestamp"),
                     request.headers.get("close-sig-hash"), self.now())

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """A lead.created event becomes one event keyed by the Close event id; other events are not leads."""
        body = parse_json(request.body)
        event = body.get("event") if isinstance(body, dict) else None
        if not isinstance(event, dict):
            raise MalformedRequestError("expected a Close webhook object with `event`", field="event")
        if event.get("object_type") != "lead" or event.get("action") != "created":
            return []
        event_id = _text(event.get("id"))
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        lead_id = _text(event.get("lead_id")) or _text(event.get("object_id")) or _text(data.get("id"))
        if event_id is None or lead_id is None or not _LEAD_ID.fullmatch(lead_id):
            raise MalformedRequestError("lead.created without `event.id` or a lead id", field="event.id")
        return [LeadEvent(key=f"event:{event_id}", ref=lead_id, lead=None, raw={"lead_id": lead_id})]

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """lead.updated into a stop status, lead.deleted, lead.merged; the record is the lead id, as the ref is."""
        body = parse_json(request.body)
        event = body.get("event") if isinstance(body, dict) else None
        if not isinstance(event, dict) or event.get("object_type") != "lead":
            return []
        action, event_id = event.get("action"), _text(event.get("id"))
        meta = event.get("meta") if isinstance(event.get("meta"), dict) else {}
        if action == "merged":  # lead_id is the destination, which lives on; the source lead is gone
            lead_id, reason = _text(meta.get("merge_source_lead_id")), "Close lead merged into another"
        elif action in ("deleted", "updated"):
            lead_id, reason = _text(event.get("lead_id")) or _text(event.get("object_id")), f"Close lead {action}"
        else:
            return []
        if event_id is None or lead_id is None or not _LEAD_ID.fullmatch(lead_id):
            raise MalformedRequestError(f"lead.{action} without `event.id` or a lead id", field="event.id")
        key, raw = f"stop:event:{event_id}", {"lead_id": lead_id}
        if action != "updated":
            return [StopEvent(key, lead_id, reason, raw=raw)]
        stops = self.policy.stop_statuses
        changed = event.get("changed_fields")
        if not stops or not isinstance(changed, list) or not set(STATUS_FIELDS) & set(changed):
            return []  # no stop statuses, or an edit that left the status alone
        # data is the lead as the API returns it, but Close leaves it out of events older than an hour
        # for non-admin subscribers (a late retry): then the worker reads the lead.
        data = event.get("data")
        if not isinstance(data, dict) or not any(_text(data.get(name)) for name in STATUS_FIELDS):
            return [StopEvent(key, lead_id, "Close lead status changed", check=True, raw=raw)]
        status_reason = self._status_stop(data)
        return [StopEvent(key, lead_id, status_reason, raw=raw)] if status_reason else []

    def _status_stop(self, lead: dict[str, object]) -> str | None:
        """Why a lead's status means stop (its status_id or status_label in stop_values), or None."""
        for name in STATUS_FIELDS:
            value = _text(lead.get(name))
            if value and value in self.policy.stop_statuses:
                return f"Close lead {name} is {value}"
        return None

    def check_stop(self, event: StopEvent, now: datetime) -> str | None:
        """GET the lead: its status in stop_values."""
        return self._status_stop(self._lead(event.raw, "stop event"))

    def _lead(self, raw: dict[str, Any], what: str) -> dict[str, Any]:
        """GET the lead a stored event names, with its contacts."""
        lead_id = _text(raw.get("lead_id"))
        if lead_id is None or not _LEAD_ID.fullmatch(lead_id):
            raise EnrichmentError(f"Close: the stored {what} has no lead id", retryable=False)
        data = self._api().get(f"api/v1/lead/{lead_id}/")
        if not isinstance(data, dict):
            raise EnrichmentError(f"Close: lead {lead_id} came back empty", retryable=True)
        return data

    def _api(self) -> CrmHttpClient:
        api_key = self.settings.crm.close_api_key
        if not api_key:
            raise MissingCredentialsError(
                "Close", "CLOSE_API_KEY", "Settings → Developer → API keys, to fetch a lead's contacts"
            )
        from crm2calls.sources.client import CrmHttpClient

        return self.api_client(lambda: CrmHttpClient(
            self.settings.crm.close_base_url,
            service="Close",
            secret_hint="CLOSE_API_KEY",  # noqa: S106 - the variable's name, not a secret
            auth=(api_key, ""),
            timeout=self.timeout,
        ))

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """GET the lead with its contacts; a lead whose contacts have no phone yet is worth a retry."""
        data = self._lead(event.raw, "event")
        lead_id = _text(event.raw.get("lead_id"))  # checked by _lead
        if reason := self._status_stop(data):  # closed before we read it (see Bitrix24's enrich)
            raise ClosedInCrmError(reason)
        contacts = [c for c in data.get("contacts") or [] if isinstance(c, dict)]
        phones: list[PhoneCandidate] = []
        contact = None  # the first contact with a number: the person the call is for
        for candidate in contacts:
            found = [
                PhoneCandidate(value, (_text(p.get("type")) or "").lower())
                for p in candidate.get("phones") or []
                if isinstance(p, dict) and (value := _text(p.get("phone")))
                and (_text(p.get("type")) or "").lower() not in NOT_CALLED
            ]
            if found and contact is None:
                contact = candidate
            phones += found
        if not phones:
            raise EnrichmentError(f"Close: lead {lead_id} has no contact phone yet", retryable=True)
        company = _text(data.get("display_name")) or _text(data.get("name"))
        name = _text(contact.get("name")) if contact else None
        default = {
            "name": name,
            "crm": "close",
            "crm_lead_id": lead_id,
            "crm_contact_id": _text(contact.get("id")) if contact else None,
            "company": company,
            "lead_status": _text(data.get("status_label")),
        }
        return Lead(
            external_id=lead_id,
            phones=phones,
            fields=payload_for(default, data, self.policy),
            route=self.route(data),
            name=name,
            region=self.policy.region,
        )

    # Write-back: a completed outbound call activity on the lead.

    def can_write_back(self) -> bool:
        """CLOSE_API_KEY is set."""
        return bool(self.settings.crm.close_api_key)

    @staticmethod
    def _lead_id(record: LeadRecord) -> str:
        if not _LEAD_ID.fullmatch(record.ref):
            raise WriteBackError(f"Close: lead {record.id} has no Close lead id", retryable=False)
        return record.ref

    def _write_call(self, method: str, path: str, *, json: object = None, params: dict | None = None) -> object:
        """A write-back request with the API key; a refused key holds the write-backs until a person fixes it."""
        from crm2calls.sources.writes import TokenRefusedError, send

        try:
            return send(self._api(), method, path, json=json, params=params, scope=CALL_SCOPE)
        except TokenRefusedError as exc:
            raise WriteBackError(f"{exc.message}: check CLOSE_API_KEY", scope=True) from None
        except MissingCredentialsError as exc:
            raise WriteBackError(exc.message, retryable=False) from None

    def write_back(self, record: LeadRecord, note: str, outcome: dict) -> Written:
        """POST a completed outbound call activity with the outcome's duration and the note."""
        lead_id = self._lead_id(record)
        phone = json.loads(record.entry or "{}").get("phone")
        call = {
            "lead_id": lead_id,
            "direction": "outbound",
            "status": "completed",
            "duration": int(outcome.get("duration_s") or 0),
            "note_html": note_html(note, record.job_id or "-"),
        }
        if isinstance(phone, str) and phone:
            call["phone"] = phone if phone.startswith("+") else f"+{phone}"
        answer = self._write_call("POST", "api/v1/activity/call/", json=call)
        call_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise WriteBackError("Close's answer to the new call has no id")
        return Written(call_id)

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """List the lead's call activities (100 a page) for one whose note names the job."""
        lead_id = self._lead_id(record)
        for page in range(MAX_CALL_PAGES):
            params = {"lead_id": lead_id, "_limit": 100, "_skip": page * 100}
            answer = self._write_call("GET", "api/v1/activity/call/", params=params)
            if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
                raise WriteBackError("Close's list of calls has no data")
            for call in answer["data"]:
                if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                    continue
                text = f"{call.get('note_html') or ''} {call.get('note') or ''}"
                if names_job(text, job_id):
                    return Written(call["id"])
            if not answer.get("has_more"):
                return None
        return None
