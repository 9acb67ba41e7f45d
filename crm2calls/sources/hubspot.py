"""HubSpot: Webhooks API event arrays and workflow "Send a webhook" contact objects.

Webhooks API bodies are JSON arrays of events; creation events carry only the contact id, so the
worker fetches the contact (enrich). A workflow webhook posts the contact object itself. With
HUBSPOT_CLIENT_SECRET set, every request must carry a valid v3 signature.

Stop events (Webhooks API only): a contact's `stop_property` (default hs_lead_status) changed into one of
`stop_values` (default UNQUALIFIED), and a contact deleted, on the legacy (`contact.*`) and the new
developer platform (`object.*` with objectTypeId 0-1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from crm2calls.clock import Clock, utcnow
from crm2calls.config import Settings
from crm2calls.errors import (
    EnrichmentError,
    MalformedRequestError,
    MissingCredentialsError,
    UnauthorizedError,
    WriteBackError,
)
from crm2calls.mapping import scalar_text as _text
from crm2calls.model import Lead, LeadEvent, LeadRecord, PhoneCandidate, StopEvent
from crm2calls.policy import SourcePolicy
from crm2calls.sources.base import (
    JSON,
    Ack,
    InboundRequest,
    IntakeResult,
    Source,
    Written,
    job_mark,
    payload_for,
    require_shared_key,
)
from crm2calls.sources.client import DEFAULT_TIMEOUT
from crm2calls.sources.generic import MAX_LEADS_PER_REQUEST, idempotency_key, parse_json
from crm2calls.sources.writes import send

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

TOLERANCE = timedelta(minutes=5)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What the enrichment asks for: without properties= HubSpot returns no phone at all.
PROPERTIES = ("phone", "mobilephone", "firstname", "lastname", "email", "hs_timezone", "city", "company")
PHONE_PROPERTIES = ("mobilephone", "phone")
CONTACT_TYPE_ID = "0-1"
CALL_TO_CONTACT = 194  # HUBSPOT_DEFINED association type: call -> contact
# Aimylogic's final jobStatus -> hs_call_status.
CALL_STATUS = {"noAnswer": "NO_ANSWER", "nonexistentNumber": "FAILED", "notDone": "FAILED", "canceled": "CANCELED"}

# A GDPR deletion ("permanently delete") arrives as contact.privacyDeletion on the legacy platform.
DELETION_EVENTS = ("contact.deletion", "contact.privacyDeletion", "object.deletion")
PROPERTY_EVENTS = ("contact.propertyChange", "object.propertyChange")
# HubSpot decodes exactly these escapes in the URI before signing (v3).
_SIGNED_ESCAPES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)
_MILLISECONDS = re.compile(r"[1-9][0-9]{0,12}")  # canonical: ASCII digits, no sign, no leading zero


def signed_uri(url: str) -> str:
    """The URI as HubSpot signs it: the URL it called with its listed %XX escapes decoded."""
    return _SIGNED_ESCAPES.sub(lambda m: chr(int(m[1], 16)), url)


def signature_v3(secret: str, method: str, url: str, body: bytes, timestamp: str) -> str:
    """base64 HMAC-SHA256(secret, method + URI + raw body + timestamp), as in X-HubSpot-Signature-v3."""
    message = method.encode() + signed_uri(url).encode("utf-8") + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()).decode()


def verify_v3(
    secrets: tuple[str, ...], method: str, url: str, body: bytes, timestamp: str | None, signature: str | None,
    now: datetime,
) -> None:
    """Accept a fresh v3 signature from any current or previous client secret; UnauthorizedError otherwise."""
    if not signature or not timestamp:
        raise UnauthorizedError(
            "missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp (HUBSPOT_CLIENT_SECRET is set)",
            field="X-HubSpot-Signature-v3",
        )
    if not _MILLISECONDS.fullmatch(timestamp):
        raise UnauthorizedError(
            "X-HubSpot-Request-Timestamp is not whole milliseconds", field="X-HubSpot-Request-Timestamp"
        )
    # In milliseconds, not datetimes: no date arithmetic that could overflow past year 9999.
    skew = abs((now - EPOCH) / timedelta(milliseconds=1) - int(timestamp))
    if skew > TOLERANCE / timedelta(milliseconds=1):
        raise UnauthorizedError(
            "X-HubSpot-Request-Timestamp is more than 5 minutes from our clock", field="X-HubSpot-Request-Timestamp"
        )
    given = signature.encode("utf-8", "surrogatepass")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, signature_v3(secret, method, url, body, timestamp).encode())
    if not matched:
        raise UnauthorizedError("X-HubSpot-Signature-v3 does not match", field="X-HubSpot-Signature-v3")



@cache
def _zones_by_casefold() -> dict[str, str]:
    from zoneinfo import available_timezones

    return {zone.casefold(): zone for zone in available_timezones()}


def hubspot_zone(value: Any) -> str | None:
    """hs_timezone ("america_slash_new_york") as an IANA id ("America/New_York"); None when unknown."""
    text = _text(value)
    if not text:
        return None
    return _zones_by_casefold().get(text.replace("_slash_", "/").casefold())


def _is_contact(event: dict[str, Any]) -> bool:
    return event.get("objectTypeId") == CONTACT_TYPE_ID or event.get("objectType") == "contact"


def _is_contact_event(event: dict[str, Any]) -> bool:
    """A legacy contact.* event, or a new-platform object.* event about a contact."""
    kind = event.get("subscriptionType")
    if not isinstance(kind, str):
        return False
    return kind.startswith("contact.") or (kind.startswith("object.") and _is_contact(event))


def _contact_id(value: Any) -> str | None:
    """A HubSpot object id as digits (it goes into an API path), or None."""
    text = _text(value)
    return text if text and text.isascii() and text.isdigit() else None


class HubSpotSource(Source):
    """POST /webhooks/hubspot."""

    name = "hubspot"
    content_types = frozenset({JSON})
    write_back_scopes = (
        "crm.objects.contacts.write (calls are engagements HubSpot governs with the contacts scopes) beside "
        "crm.objects.contacts.read"
    )

    def __init__(self, settings: Settings, policy: SourcePolicy):
        super().__init__(settings, policy)
        self.now: Clock = utcnow  # tests pass their own clock to check the timestamp window
        self.timeout = DEFAULT_TIMEOUT  # (connect, read) seconds for the contacts API

    def authenticate(self, request: InboundRequest) -> None:
        """The v3 signature when HUBSPOT_CLIENT_SECRET is set, otherwise the shared key."""
        secrets = self.settings.crm.hubspot_client_secrets
        if not secrets:
            require_shared_key(request, self.settings)
            return
        verify_v3(
            secrets,
            request.method,
            request.url,
            request.body,
            request.headers.get("X-HubSpot-Request-Timestamp"),
            request.headers.get("X-HubSpot-Signature-v3"),
            self.now(),
        )

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """An array is Webhooks API events; an object is a workflow webhook's contact."""
        data = parse_json(request.body)
        if isinstance(data, list):
            return self._api_events(data)
        if isinstance(data, dict):
            return [self._workflow_event(data)]
        raise MalformedRequestError("expected an array of webhook events or a contact object", field="body")

    def _api_events(self, events: list[Any]) -> list[LeadEvent]:
        if len(events) > MAX_LEADS_PER_REQUEST:
            raise MalformedRequestError(f"at most {MAX_LEADS_PER_REQUEST} events per request", field="body")
        parsed = []
        for index, item in enumerate(events):
            if not isinstance(item, dict):
                raise MalformedRequestError(f"event {index} is not an object", field=f"[{index}]")
            event_id, object_id = _text(item.get("eventId")), _contact_id(item.get("objectId"))
            if event_id is None or object_id is None:
                raise MalformedRequestError(f"event {index} has no eventId or numeric objectId", field=f"[{index}]")
            kind = item.get("subscriptionType")
            if kind in ("object.creation", "object.propertyChange") and not _is_contact(item):
                continue  # a deal, company... on the new developer platform
            key = f"event:{event_id}"
            if kind in ("contact.creation", "object.creation"):
                parsed.append(LeadEvent(key=key, ref=object_id, lead=None, raw={"contact_id": object_id}))
            elif kind in ("contact.propertyChange", "object.propertyChange") and item.get("propertyName") in (
                PHONE_PROPERTIES
            ):
                value = _text(item.get("propertyValue"))
                if value:  # a cleared phone is no lead
                    lead = self._lead(object_id, {item["propertyName"]: value}, item)
                    parsed.append(LeadEvent(key=key, ref=object_id, lead=lead))
        return parsed

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """Webhooks API events that stop a contact; a workflow body (one contact object) holds none.

        The record is the contact id as a bare number, as the lead events' ref is: HubSpot leads are contacts.
        """
        data = parse_json(request.body)
        if not isinstance(data, list):
            return []
        stops = []
        for item in data[:MAX_LEADS_PER_REQUEST]:
            if not isinstance(item, dict) or not _is_contact_event(item):
                continue
            event_id, object_id = _text(item.get("eventId")), _contact_id(item.get("objectId"))
            if event_id is None or object_id is None:
                continue  # parse() refuses the body with the field named
            kind, key = item.get("subscriptionType"), f"stop:event:{event_id}"
            if kind in DELETION_EVENTS:
                stops.append(StopEvent(key, object_id, f"HubSpot {kind}", raw={"contact_id": object_id}))
            elif kind in PROPERTY_EVENTS and item.get("propertyName") == self.policy.stop_property:
                value = _text(item.get("propertyValue"))
                if value in self.policy.stop_statuses:
                    reason = f"HubSpot contact's {self.policy.stop_property} changed to {value}"
                    stops.append(StopEvent(key, object_id, reason, raw={"contact_id": object_id}))
        return stops

    def _workflow_event(self, body: dict[str, Any]) -> LeadEvent:
        """A contact object: v3 ({"id", "properties": {...}}), legacy ({"vid", "properties": {"phone": {"value"}}})."""
        properties = body.get("properties") if isinstance(body.get("properties"), dict) else body
        values = {
            key: value.get("value") if isinstance(value, dict) else value for key, value in properties.items()
        }
        object_id = next(
            (
                _text(candidate)
                for candidate in (body.get("id"), body.get("vid"), body.get("objectId"), values.get("hs_object_id"))
                if _text(candidate)
            ),
            None,
        )
        lead = self._lead(object_id, values, body)
        return LeadEvent(key="workflow:" + idempotency_key(body, object_id), ref=object_id or "-", lead=lead)

    def _lead(self, contact_id: str | None, values: dict[str, Any], crm_object: dict[str, Any]) -> Lead:
        """A Lead from contact properties; mobilephone first, the CRM says nothing about `phone`'s kind."""
        phones = []
        if mobile := _text(values.get("mobilephone")):
            phones.append(PhoneCandidate(mobile, "mobile"))
        if phone := _text(values.get("phone")):
            phones.append(PhoneCandidate(phone))
        first, last = _text(values.get("firstname")), _text(values.get("lastname"))
        name = " ".join(part for part in (first, last) if part) or None
        city = _text(values.get("city"))
        default = {
            "name": name,
            "crm": "hubspot",
            "crm_contact_id": contact_id,
            "city": city,
            "company": _text(values.get("company")),
        }
        return Lead(
            external_id=contact_id,
            phones=phones,
            fields=payload_for(default, crm_object, self.policy),
            route=self.route(crm_object),
            name=name,
            zone=hubspot_zone(values.get("hs_timezone")),
            city=city,
            region=self.policy.region,
        )

    def _api(self) -> CrmHttpClient:
        token = self.settings.crm.hubspot_token
        if not token:
            raise MissingCredentialsError(
                "HubSpot", "HUBSPOT_TOKEN", "a private app token with crm.objects.contacts.read, to fetch the contact"
            )
        from crm2calls.sources.client import CrmHttpClient

        return self.api_client(lambda: CrmHttpClient(
            self.settings.crm.hubspot_base_url,
            service="HubSpot",
            secret_hint="HUBSPOT_TOKEN",  # noqa: S106 - the variable's name, not a secret
            headers={"Authorization": f"Bearer {token}"},
            timeout=self.timeout,
        ))

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """GET the contact with its phone properties; no phone yet is worth a retry (forms set it a moment later)."""
        contact_id = _contact_id(event.raw.get("contact_id"))
        if contact_id is None:
            raise EnrichmentError("HubSpot: the stored event has no contact id", retryable=False)
        data = self._api().get(f"crm/v3/objects/contacts/{contact_id}", properties=",".join(PROPERTIES))
        properties = data.get("properties") if isinstance(data, dict) else None
        if not isinstance(properties, dict):
            raise EnrichmentError(f"HubSpot: contact {contact_id} came back without properties", retryable=True)
        lead = self._lead(contact_id, properties, data)
        if not lead.phones:
            raise EnrichmentError(f"HubSpot: contact {contact_id} has no phone yet", retryable=True)
        return lead

    def acknowledge(self, results: list[IntakeResult]) -> Ack:
        """200: HubSpot needs a fast 2xx and retries anything else."""
        return Ack(200, {"source": self.name, "leads": [r.as_json() for r in results]})

    # Write-back of call outcomes: a call engagement associated with the contact.

    def can_write_back(self) -> bool:
        """HUBSPOT_TOKEN is set."""
        return bool(self.settings.crm.hubspot_token)

    def _contact(self, record: LeadRecord) -> str:
        contact_id = _contact_id(record.ref)
        if contact_id is None:
            raise WriteBackError(f"HubSpot: the lead names no contact id ({record.ref})", retryable=False)
        return contact_id

    def _write(self, method: str, path: str, body: dict[str, Any]) -> Any:
        hint = f"give the private app's token in HUBSPOT_TOKEN the scope {self.write_back_scopes} (docs/crm/hubspot.md)"
        return send(self._api(), method, path, json=body, scope=hint)

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """POST /crm/v3/objects/calls: a completed outbound call, titled with the job, on the contact; its id."""
        from html import escape

        from crm2calls.writeback import job_of

        contact_id = self._contact(record)
        duration = outcome.get("duration_s")
        properties = {
            "hs_timestamp": outcome.get("finished_at") or record.updated_at.isoformat(),
            "hs_call_title": call_title(job_mark(job_of(record))),
            "hs_call_body": "<br>".join(escape(line) for line in note.splitlines()),
            "hs_call_direction": "OUTBOUND",
            "hs_call_status": CALL_STATUS.get(str(outcome.get("job_status")), "COMPLETED"),
        }
        if isinstance(duration, int | float):
            properties["hs_call_duration"] = str(int(duration * 1000))
        association = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": CALL_TO_CONTACT}
        body = {"properties": properties, "associations": [{"to": {"id": contact_id}, "types": [association]}]}
        answer = self._write("POST", "crm/v3/objects/calls", body)
        if not isinstance(answer, dict) or not answer.get("id"):
            raise WriteBackError("HubSpot answered the call without its id")
        return Written(str(answer["id"]))

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """POST /crm/v3/objects/calls/search: a call of the contact titled with the job.

        HubSpot's search index trails its writes by seconds: a write lost that recently may be written twice.
        """
        contact_id = self._contact(record)
        filters = [
            {"propertyName": "hs_call_title", "operator": "EQ", "value": call_title(job_mark(job_id))},
            {"propertyName": "associations.contact", "operator": "EQ", "value": contact_id},
        ]
        body = {"filterGroups": [{"filters": filters}], "properties": ["hs_call_title"], "limit": 1}
        answer = self._write("POST", "crm/v3/objects/calls/search", body)
        results = answer.get("results") if isinstance(answer, dict) else None
        if results and isinstance(results[0], dict) and results[0].get("id"):
            return Written(str(results[0]["id"]))
        return None


def call_title(mark: str) -> str:
    """The call's title: what people read in the timeline, and what find_written searches for."""
    return f"Robot call ({mark})"

