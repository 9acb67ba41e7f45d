"""Pipedrive: person and lead webhooks, v1 (`added.person`) and v2 (`create.person`, `create.lead`).

One event per request. Person events carry the phones; a v2 lead carries only its person's id,
so the worker fetches the person. Pipedrive's only sender check is HTTP Basic auth set on the
webhook; without it the shared key is required.

Stop events (fixed, no stop_values): v2 `change.lead` archiving a lead, `change.deal` winning or losing a
deal, `delete.lead` and `delete.person`; v1 `updated.deal` (won or lost) and `deleted.person`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    InboundRequest,
    Source,
    Written,
    names_job,
    payload_for,
    require_shared_key,
    secret_matches,
)
from crm2calls.sources.client import DEFAULT_TIMEOUT
from crm2calls.sources.generic import parse_json
from crm2calls.sources.writes import send

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

_LEAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOTE_PAGES = 4  # a record's newest notes looked through for one we wrote (4 x 100)



def _numeric_id(value: Any) -> str | None:
    """A Pipedrive person id as digits (it goes into an API path), or None."""
    text = _text(value)
    return text if text and text.isascii() and text.isdigit() else None


def _person_of(value: Any) -> str | None:
    """A deal's person_id: a number, or in v1 the person object {"value": id, "name": ...}."""
    return _numeric_id(value.get("value") if isinstance(value, dict) else value)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None when absent or unreadable."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def phone_candidates(items: Any) -> list[PhoneCandidate]:
    """Pipedrive's phone list ([{label, value, primary}] or plain strings) as candidates; label is the kind."""
    found = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            if value := _text(item.get("value")):
                kind = (_text(item.get("label")) or "").lower()
                found.append(PhoneCandidate(value, kind, item.get("primary") is True))
        elif value := _text(item):
            found.append(PhoneCandidate(value))
    return found


class PipedriveSource(Source):
    """POST /webhooks/pipedrive."""

    name = "pipedrive"
    content_types = frozenset({JSON})
    write_back_scopes = (
        "none beyond the API token's own user (Pipedrive tokens carry its permissions), who must be allowed to "
        "see the person or lead and add notes"
    )

    def __init__(self, settings: Settings, policy: SourcePolicy):
        super().__init__(settings, policy)
        self.timeout = DEFAULT_TIMEOUT  # (connect, read) seconds for the persons API

    def authenticate(self, request: InboundRequest) -> None:
        """HTTP Basic auth when PIPEDRIVE_WEBHOOK_PASSWORD is set (user and password both checked), else the key."""
        crm = self.settings.crm
        if not crm.pipedrive_webhook_passwords:
            require_shared_key(request, self.settings)
            return
        user, password = basic_credentials(request.headers.get("Authorization")) or ("", "")
        expected_user = (crm.pipedrive_webhook_user or "").encode()
        user_ok = hmac.compare_digest(user.encode("utf-8", "surrogatepass"), expected_user)
        password_ok = secret_matches(password, crm.pipedrive_webhook_passwords)
        if not (user_ok and password_ok):
            raise UnauthorizedError(
                "missing or wrong HTTP Basic credentials: set the webhook's user and password to "
                "PIPEDRIVE_WEBHOOK_USER and PIPEDRIVE_WEBHOOK_PASSWORD",
                field="Authorization",
            )

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """added.person (v1), create.person and create.lead (v2); other events are not leads."""
        body = parse_json(request.body)
        if not isinstance(body, dict) or not isinstance(body.get("meta"), dict):
            raise MalformedRequestError("expected a Pipedrive webhook object with `meta`", field="meta")
        meta = body["meta"]
        if str(meta.get("version", "")).startswith("2"):
            return self._v2(meta, body.get("data"))
        event = body.get("event") or f"{meta.get('action')}.{meta.get('object')}"
        if event != "added.person":
            return []
        person = body.get("current")
        person_id = _numeric_id(person.get("id")) if isinstance(person, dict) else None
        if person_id is None:
            raise MalformedRequestError("added.person without `current.id`", field="current.id")
        # v1 may deliver an event twice; a person is added once, so its id is the event's identity.
        return [LeadEvent(key=f"v1:person:{person_id}", ref=person_id, lead=self._person_lead(person_id, person, {}))]

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """A lead archived or deleted, a deal won or lost, a person deleted (v2 webhooks).

        Records are named like the lead events' refs: a lead's id (a UUID, create.lead) and a person's id
        (digits, added.person / create.person). The same person may have come both ways, so a lead's stop
        names its lead and its person, and a deal's stop its person (no lead event names a deal).
        """
        body = parse_json(request.body)
        meta = body.get("meta") if isinstance(body, dict) else None
        if not isinstance(meta, dict):
            return []
        if not str(meta.get("version", "")).startswith("2"):
            return self._v1_stops(body, meta)
        action, entity = meta.get("action"), meta.get("entity") or meta.get("object")
        # data: the object now (null after a delete); previous: only the fields that changed (the whole object
        # after a delete), so a change event that did not touch the field is no stop.
        data, previous = body.get("data"), body.get("previous")
        data = data if isinstance(data, dict) else {}
        previous = previous if isinstance(previous, dict) else None
        if action == "change" and entity == "lead":
            changed = previous is None or "is_archived" in previous
            if data.get("is_archived") is not True or not changed:
                return []
            reason, current = "Pipedrive lead archived", data
        elif action == "change" and entity == "deal":
            status = data.get("status")
            if status not in ("won", "lost") or not (previous is None or "status" in previous):
                return []
            reason, current = f"Pipedrive deal {status}", data
        elif action == "delete" and entity in ("lead", "person"):
            reason, current = f"Pipedrive {entity} deleted", previous or {}
            if merged_into := _text(meta.get("merged_to_id")):
                reason += f" (merged into {merged_into})"
        else:
            return []
        event_id = _text(meta.get("id"))
        if event_id is None:
            raise MalformedRequestError(f"{action}.{entity} without `meta.id`", field="meta.id")
        entity_id = _text(current.get("id")) or _text(meta.get("entity_id"))
        refs = []
        if entity == "lead" and entity_id:
            refs.append(entity_id)
        person_id = _numeric_id(entity_id) if entity == "person" else _numeric_id(current.get("person_id"))
        if person_id:
            refs.append(person_id)
        raw = {"entity": entity, "id": entity_id}
        return [StopEvent(f"stop:v2:{event_id}:{ref}", ref, reason, raw=raw) for ref in refs]

    def _v1_stops(self, body: dict[str, Any], meta: dict[str, Any]) -> list[StopEvent]:
        """v1 (no lead events): `deleted.person`, and `updated.deal` into won or lost, naming the person.

        v1 sends whole objects in `current` and `previous` and has no event id: a deletion happens once,
        and a deal's update_time tells one win from another while a resend repeats it.
        """
        event = body.get("event") or f"{meta.get('action')}.{meta.get('object')}"
        current = body.get("current") if isinstance(body.get("current"), dict) else {}
        previous = body.get("previous") if isinstance(body.get("previous"), dict) else {}
        if event == "deleted.person":
            person_id = _numeric_id(previous.get("id")) or _numeric_id(meta.get("id"))
            if person_id is None:
                raise MalformedRequestError("deleted.person without a person id", field="meta.id")
            return [StopEvent(f"stop:v1:person:{person_id}:deleted", person_id, "Pipedrive person deleted",
                              raw={"entity": "person", "id": person_id})]
        status = current.get("status")
        if event != "updated.deal" or status not in ("won", "lost") or previous.get("status") == status:
            return []
        deal_id, person_id = _numeric_id(current.get("id")), _person_of(current.get("person_id"))
        if deal_id is None or person_id is None:
            return []  # a deal of an organization only: no person to stop
        changed_at = _text(current.get("update_time")) or "-"
        return [StopEvent(f"stop:v1:deal:{deal_id}:{status}:{changed_at}", person_id, f"Pipedrive deal {status}",
                          raw={"entity": "deal", "id": deal_id})]

    def _v2(self, meta: dict[str, Any], data: Any) -> list[LeadEvent]:
        action, entity = meta.get("action"), meta.get("entity") or meta.get("object")
        if action != "create" or entity not in ("person", "lead"):
            return []
        event_id = _text(meta.get("id"))
        if event_id is None or not isinstance(data, dict):
            raise MalformedRequestError(f"create.{entity} without `meta.id` or `data`", field="meta.id")
        key = f"v2:{event_id}"
        if entity == "person":
            person_id = _numeric_id(data.get("id")) or _numeric_id(meta.get("entity_id"))
            if person_id is None:
                raise MalformedRequestError("create.person without a numeric `data.id`", field="data.id")
            return [LeadEvent(key=key, ref=person_id, lead=self._person_lead(person_id, data, {}))]
        lead_id = _text(data.get("id")) or _text(meta.get("entity_id")) or "-"
        lead_info = {"lead_id": lead_id, "lead_title": _text(data.get("title"))}
        person_id = _numeric_id(data.get("person_id"))
        if person_id is None:  # a lead of an organization only: no one to call, recorded as such
            return [LeadEvent(key=key, ref=lead_id, lead=self._person_lead(None, {}, lead_info))]
        return [LeadEvent(key=key, ref=lead_id, lead=None, raw={"person_id": person_id, **lead_info})]

    def _person_lead(self, person_id: str | None, person: dict[str, Any], lead_info: dict[str, Any]) -> Lead:
        """A Lead from a person (v1 `current`, v2 `data` or the API's `data`)."""
        phones = phone_candidates(person.get("phones") if "phones" in person else person.get("phone"))
        name = _text(person.get("name")) or " ".join(
            part for part in (_text(person.get("first_name")), _text(person.get("last_name"))) if part
        ) or None
        org = person.get("org_id")
        company = _text(person.get("org_name")) or (_text(org.get("name")) if isinstance(org, dict) else None)
        city = _text(person.get("postal_address_locality"))
        default = {
            "name": name,
            "crm": "pipedrive",
            "crm_person_id": person_id,
            "crm_lead_id": lead_info.get("lead_id"),
            "lead_title": lead_info.get("lead_title"),
            "company": company,
        }
        return Lead(
            external_id=person_id,
            phones=phones,
            fields=payload_for(default, person, self.policy),
            route=self.route(person),
            name=name,
            city=city,
            region=self.policy.region,
        )

    def _api(self) -> CrmHttpClient:
        token = self.settings.crm.pipedrive_api_token
        if not token:
            raise MissingCredentialsError(
                "Pipedrive", "PIPEDRIVE_API_TOKEN", "Personal preferences → API, to fetch a lead's person"
            )

        def build() -> CrmHttpClient:
            from crm2calls.sources.client import CrmHttpClient

            return CrmHttpClient(
                self.settings.crm.pipedrive_base_url,
                service="Pipedrive",
                secret_hint="PIPEDRIVE_API_TOKEN",  # noqa: S106 - the variable's name, not a secret
                params={"api_token": token},
                timeout=self.timeout,
            )

        return self.api_client(build)

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """GET the lead's person (v1 persons API); a person without a phone yet is worth a retry."""
        person_id = _numeric_id(event.raw.get("person_id"))
        if person_id is None:
            raise EnrichmentError("Pipedrive: the stored event has no person id", retryable=False)
        answer = self._api().get(f"v1/persons/{person_id}")
        person = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(person, dict):
            raise EnrichmentError(f"Pipedrive: person {person_id} not found", retryable=False)
        lead = self._person_lead(person_id, person, event.raw)
        if not lead.phones:
            raise EnrichmentError(f"Pipedrive: person {person_id} has no phone yet", retryable=True)
        return lead

    # Write-back of call outcomes: a note on the person, or on the lead when the lead came as one.

    def can_write_back(self) -> bool:
        """PIPEDRIVE_API_TOKEN is set."""
        return bool(self.settings.crm.pipedrive_api_token)

    def _owner(self, record: LeadRecord) -> dict[str, Any]:
        """{"person_id": n} for a person's lead, {"lead_id": uuid} for a Pipedrive lead's."""
        if person_id := _numeric_id(record.ref):
            return {"person_id": int(person_id)}
        if _LEAD_ID.fullmatch(record.ref):
            return {"lead_id": record.ref}
        raise WriteBackError(f"Pipedrive: the lead names no person or lead id ({record.ref})", retryable=False)

    def _write(self, method: str, path: str, **kwargs: Any) -> Any:
        hint = f"the API token's user needs {self.write_back_scopes} (docs/crm/pipedrive.md)"
        answer = send(self._api(), method, path, scope=hint, **kwargs)
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise WriteBackError("Pipedrive answered without success")
        return answer

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """POST /api/v1/notes; the note's id. Pipedrive notes are HTML: lines become <br>."""
        from html import escape

        content = "<br>".join(escape(line) for line in note.splitlines())
        answer = self._write("POST", "v1/notes", json={"content": content, **self._owner(record)})
        data = answer.get("data")
        if not isinstance(data, dict) or data.get("id") is None:
            raise WriteBackError("Pipedrive answered the note without its id")
        return Written(str(data["id"]))

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """GET /api/v1/notes of the person or lead, newest first: a note naming the job."""
        start = 0
        for _ in range(NOTE_PAGES):
            params = {**self._owner(record), "sort": "add_time DESC", "start": start, "limit": 100}
            answer = self._write("GET", "v1/notes", params=params)
            for note in answer.get("data") or []:
                if isinstance(note, dict) and names_job(note.get("content"), job_id):
                    return Written(str(note.get("id")))
            more = ((answer.get("additional_data") or {}).get("pagination") or {})
            if not more.get("more_items_in_collection"):
                return None
            start = int(more.get("next_start") or start + 100)
        return None
