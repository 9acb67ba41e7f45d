"""Bitrix24: outbound webhooks (ONCRMLEADADD, ONCRMCONTACTADD, ONCRMDEALADD) in, phones fetched through
the inbound webhook URL (BITRIX24_WEBHOOK_URL, which holds a secret: it is never logged or echoed).

Idempotency keys are `{entity}:{ID}` within the source. One deployment serves one portal (the one
BITRIX24_WEBHOOK_URL reads from), so the portal's member_id adds nothing to the key, and leaving it
out lets reconciliation, which cannot learn member_id through an inbound webhook, produce the same keys.

Stop events: ONCRMLEADDELETE, ONCRMDEALDELETE, ONCRMCONTACTDELETE stop at once; ONCRMLEADUPDATE and
ONCRMDEALUPDATE carry only the id, so the worker reads the record (check_stop): a lead or deal whose
semantic status is S (won, converted) or F (lost, junk), or whose STATUS_ID / STAGE_ID is in stop_values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm2calls.errors import (
    ClosedInCrmError,
    EnrichmentError,
    MalformedRequestError,
    MissingCredentialsError,
    UnauthorizedError,
    WriteBackError,
)
from crm2calls.formdata import parse_php_form
from crm2calls.mapping import scalar_text as _text
from crm2calls.model import Lead, LeadEvent, LeadRecord, PhoneCandidate, StopEvent
from crm2calls.sources.base import (
    FORM,
    Ack,
    InboundRequest,
    IntakeResult,
    Source,
    Written,
    names_job,
    payload_for,
    require_shared_key,
    secret_matches,
)
from crm2calls.sources.client import DEFAULT_TIMEOUT, CrmHttpClient
from crm2calls.sources.writes import send

EVENTS = {"ONCRMLEADADD": "lead", "ONCRMCONTACTADD": "contact", "ONCRMDEALADD": "deal"}
DELETE_EVENTS = {"ONCRMLEADDELETE": "lead", "ONCRMDEALDELETE": "deal", "ONCRMCONTACTDELETE": "contact"}
UPDATE_EVENTS = {"ONCRMLEADUPDATE": "lead", "ONCRMDEALUPDATE": "deal"}
# Where a record's status lives: (semantic field, status field); semantic S = success, F = failure, P = in progress
STATUS_FIELDS = {"lead": ("STATUS_SEMANTIC_ID", "STATUS_ID"), "deal": ("STAGE_SEMANTIC_ID", "STAGE_ID")}
CLOSED_SEMANTICS = {"S": "won", "F": "lost"}
UTM_FIELDS = ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM")
MAX_PAGES = 200  # crm.lead.list pages of 50: 10,000 leads per reconciliation run
COMMENT_PAGES = 4  # a record's newest timeline comments looked through for one we wrote (4 x 50)
# Bitrix24's error codes of a webhook or user that may not do this (whatever the HTTP status).
SCOPE_ERRORS = frozenset({"insufficient_scope", "ACCESS_DENIED", "ERROR_METHOD_NOT_FOUND"})


def _numeric_id(value: Any, where: str) -> str:
    """A CRM id as digits: it goes into API calls, so nothing else is accepted."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text.isascii() and text.isdigit() and 0 < len(text) <= 20 and int(text) > 0:
        return text
    raise MalformedRequestError(f"{where} is not a numeric Bitrix24 id", field=where)


def _linked_id(value: Any) -> str | None:
    """CONTACT_ID as digits, or None for "", "0" and null (nothing linked)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text.isascii() and text.isdigit() and int(text) > 0:
        return text
    return None



def phones_of(record: dict[str, Any]) -> list[PhoneCandidate]:
    """PHONE, a crm_multifield list of {VALUE, VALUE_TYPE}: MOBILE -> "mobile", WORK -> "work", ..."""
    phones = []
    for item in record.get("PHONE") or []:
        text = _text(item.get("VALUE")) if isinstance(item, dict) else None
        if text:
            phones.append(PhoneCandidate(text, str(item.get("VALUE_TYPE") or "").lower()))
    return phones


def _name(record: dict[str, Any] | None) -> str | None:
    record = record or {}
    return " ".join(part for part in (_text(record.get("NAME")), _text(record.get("LAST_NAME"))) if part) or None


class Bitrix24Source(Source):
    """POST /webhooks/bitrix24: auth[application_token] when BITRIX24_APPLICATION_TOKEN is set, else ?key=."""

    name = "bitrix24"
    content_types = frozenset({FORM})
    write_back_scopes = (
        "the inbound webhook's crm scope (enrichment needs it too), its user allowed to edit the lead, contact "
        "or deal"
    )
    timeout: tuple[float, float] = DEFAULT_TIMEOUT  # (connect, read) seconds of each API call

    # webhook

    def authenticate(self, request: InboundRequest) -> None:
        """The application token from the body, in constant time; the shared key only when no token is set."""
        tokens = self.settings.crm.bitrix24_application_tokens
        if not tokens:
            require_shared_key(request, self.settings)
            return
        given = None
        if request.content_type == FORM:
            try:
                auth = parse_php_form(request.body).get("auth")
            except MalformedRequestError:
                auth = None  # an unreadable body carries no token we could check
            if isinstance(auth, dict) and isinstance(auth.get("application_token"), str):
                given = auth["application_token"]
        if not secret_matches(given, tokens):
            raise UnauthorizedError(
                "missing or wrong auth[application_token]: it must be the token Bitrix24 shows for this outbound "
                "webhook (BITRIX24_APPLICATION_TOKEN)",
                field="auth[application_token]",
            )

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """One event per request: the new lead, contact or deal, to be fetched by id."""
        form = parse_php_form(request.body)
        event = form.get("event")
        if not isinstance(event, str) or not event:
            raise MalformedRequestError("the form has no event name", field="event")
        entity = EVENTS.get(event.upper())
        if entity is None:
            return []
        entity_id = _record_id(form)
        key = f"{entity}:{entity_id}"
        return [LeadEvent(key, key, None, {"entity": entity, "id": entity_id})]

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """A deletion stops at once; an update of a lead or deal is checked in the worker.

        Records are named like the lead events' refs, "{entity}:{ID}": a deal stops the lead that came
        as that deal (ONCRMDEALADD), a contact's deletion the lead that came as that contact. A lead
        that came as a contact is not stopped by its deal or lead closing: the event names only its own record.
        """
        form = parse_php_form(request.body)
        event = form.get("event")
        event = event.upper() if isinstance(event, str) else ""
        entity = DELETE_EVENTS.get(event) or UPDATE_EVENTS.get(event)
        if entity is None:
            return []
        entity_id = _record_id(form)
        record = f"{entity}:{entity_id}"
        raw = {"entity": entity, "id": entity_id}
        if event in DELETE_EVENTS:
            return [StopEvent(f"stop:{record}:delete", record, f"Bitrix24 {entity} deleted", raw=raw)]
        # Bitrix24 never resends, so only two edits in the same second share a key: the check reads the latest state.
        sent_at = _text(form.get("ts")) or "-"
        return [StopEvent(f"stop:{record}:update:{sent_at}", record, f"Bitrix24 {entity} updated", check=True, raw=raw)]

    def check_stop(self, event: StopEvent, now: datetime) -> str | None:
        """crm.lead.get / crm.deal.get: won or lost by its semantic status, or in stop_values."""
        entity = event.raw.get("entity")
        if entity not in STATUS_FIELDS:
            raise EnrichmentError(f"Bitrix24 stop check for an unknown entity {entity!r}", retryable=False)
        entity_id = _numeric_id(event.raw.get("id"), "id")
        return self._closed(entity, entity_id, self._get(self._api(), entity, entity_id))

    def _closed(self, entity: str, entity_id: str, record: dict[str, Any]) -> str | None:
        """Why a lead or deal read from Bitrix24 means stop: won or lost by its semantic status, or in stop_values."""
        semantic_field, status_field = STATUS_FIELDS[entity]
        semantic, status = _text(record.get(semantic_field)), _text(record.get(status_field))
        if semantic in CLOSED_SEMANTICS:
            return f"Bitrix24 {entity} {entity_id} is {CLOSED_SEMANTICS[semantic]} ({status_field} {status})"
        if status and status in self.policy.stop_statuses:
            return f"Bitrix24 {entity} {entity_id} is in {status_field} {status} (stop_values)"
        return None

    def acknowledge(self, results: list[IntakeResult]) -> Ack:
        """200 and a small body: Bitrix24 deprioritises slow handlers and never resends."""
        return Ack(200, {"ok": True, "leads": len(results)})

    # API

    def _api(self) -> CrmHttpClient:
        url = self.settings.crm.bitrix24_webhook_url
        if not url:
            # A configuration gap, like a bad token: keep the lead until a person sets the variable.
            raise MissingCredentialsError(
                "Bitrix24", "BITRIX24_WEBHOOK_URL",
                "inbound webhook URL with the crm scope, https://<portal>/rest/<user>/<code>/: events carry no phone",
            )
        return self.api_client(lambda: CrmHttpClient(
            url, service="Bitrix24", secret_hint="BITRIX24_WEBHOOK_URL", timeout=self.timeout  # noqa: S106
        ))

    def _get(self, client: CrmHttpClient, entity: str, entity_id: str) -> dict[str, Any]:
        """crm.{entity}.get: the record, or EnrichmentError saying what was missing."""
        try:
            body = client.get(f"crm.{entity}.get.json", id=entity_id)
        except EnrichmentError as exc:  # 400 "Not found"/"Access denied", 404 a method outside the webhook's scope
            raise EnrichmentError(
                f"Bitrix24 could not read {entity} {entity_id} ({exc.message}): deleted, not visible to the "
                "inbound webhook's user, or the webhook lacks the crm scope",
                retryable=False,
            ) from None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise EnrichmentError(f"Bitrix24 crm.{entity}.get answered without a result", retryable=True)
        return result

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """The lead (its contact when the lead has no phone), the contact, or the deal's contact."""
        client = self._api()
        entity = event.raw.get("entity")
        entity_id = _numeric_id(event.raw.get("id"), "id")
        records: dict[str, dict[str, Any]] = {}
        if entity == "deal":
            records["deal"] = self._get(client, "deal", entity_id)
            contact_id = _linked_id(records["deal"].get("CONTACT_ID"))
            if contact_id is None:
                raise EnrichmentError(f"Bitrix24 deal {entity_id} has no contact linked yet", retryable=True)
            records["contact"] = self._get(client, "contact", contact_id)
        elif entity in ("lead", "contact"):
            records[entity] = self._get(client, entity, entity_id)
            contact_id = _linked_id(records[entity].get("CONTACT_ID")) if entity == "lead" else None
            if contact_id and not phones_of(records["lead"]):  # a repeat lead: the phone lives on its contact
                records["contact"] = self._get(client, "contact", contact_id)
        else:
            raise EnrichmentError(f"Bitrix24 event for an unknown entity {entity!r}", retryable=False)
        # Closed before we read it: its update event came first, when we had no lead to look it up for.
        if entity in STATUS_FIELDS and (reason := self._closed(entity, entity_id, records[entity])):
            raise ClosedInCrmError(reason)
        person = records.get("contact") or records.get("lead") or {}
        if not phones_of(person) and not phones_of(records.get("lead") or {}):
            raise EnrichmentError(
                f"Bitrix24 {entity} {entity_id} has no phone (HAS_PHONE={person.get('HAS_PHONE') or 'N'})",
                retryable=False,
            )
        return self._lead(entity, entity_id, records)

    def _lead(self, entity: str, entity_id: str, records: dict[str, dict[str, Any]]) -> Lead:
        lead, contact = records.get("lead") or {}, records.get("contact") or {}
        origin = records.get("deal") or lead or contact  # where the UTM marks of the request are
        name = _name(lead) or _name(contact)
        default = {
            "name": name,
            "crm": self.name,
            f"crm_{entity}_id": entity_id,
            "crm_contact_id": _text(contact.get("ID")),
            **{field.lower(): _text(origin.get(field)) for field in UTM_FIELDS},
        }
        person = lead if phones_of(lead) else contact
        return Lead(
            external_id=entity_id,
            phones=phones_of(person),
            fields=payload_for(default, records, self.policy),
            route=self.route(records),
            name=name,
            city=_text(person.get("ADDRESS_CITY")) or _text(person.get("ADDRESS_REGION")),
            region=self.policy.region,
        )

    def list_since(self, since: datetime, now: datetime) -> list[LeadEvent]:
        """Leads created in [since, now) as events with the webhooks' keys (reconciliation; Bitrix never resends)."""
        client = self._api()
        events, start = [], 0
        for _ in range(MAX_PAGES):
            body = client.get(
                "crm.lead.list.json",
                **{
                    "filter[>=DATE_CREATE]": since.isoformat(timespec="seconds"),
                    "filter[<DATE_CREATE]": now.isoformat(timespec="seconds"),
                    "order[ID]": "ASC",
                    "select[]": ["ID", "DATE_CREATE"],
                    "start": start,
                },
            )
            body = body if isinstance(body, dict) else {}
            for lead in body.get("result") or []:
                lead_id = _numeric_id(lead.get("ID") if isinstance(lead, dict) else None, "result[].ID")
                events.append(LeadEvent(f"lead:{lead_id}", f"lead:{lead_id}", None, {"entity": "lead", "id": lead_id}))
            if not isinstance(body.get("next"), int) or body["next"] <= start:
                break
            start = body["next"]
        return events

    # Write-back of call outcomes: a timeline comment on the lead, contact or deal the lead came from.

    def can_write_back(self) -> bool:
        """BITRIX24_WEBHOOK_URL is set."""
        return bool(self.settings.crm.bitrix24_webhook_url)

    def _entity(self, record: LeadRecord) -> tuple[str, str]:
        kind, _, entity_id = record.ref.partition(":")
        if kind in ("lead", "contact", "deal") and entity_id.isascii() and entity_id.isdigit():
            return kind, entity_id
        raise WriteBackError(f"Bitrix24: {record.ref} names no lead, contact or deal", retryable=False)

    def _write(self, method: str, body: dict[str, Any]) -> Any:
        hint = f"give the inbound webhook in BITRIX24_WEBHOOK_URL {self.write_back_scopes} (docs/crm/bitrix24.md)"
        answer = send(self._api(), "POST", f"{method}.json", json=body, scope_refused=_scope_refused, scope=hint)
        if not isinstance(answer, dict) or "result" not in answer:
            raise WriteBackError(f"Bitrix24 {method} answered without a result")
        return answer

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """crm.timeline.comment.add with lower-case `fields` (required since crm 23.100); the comment's id."""
        entity, entity_id = self._entity(record)
        fields = {"ENTITY_ID": int(entity_id), "ENTITY_TYPE": entity, "COMMENT": note}
        answer = self._write("crm.timeline.comment.add", {"fields": fields})
        return Written(str(answer["result"]))

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """crm.timeline.comment.list of the record, newest first: a comment naming the job."""
        entity, entity_id = self._entity(record)
        start = 0
        for _ in range(COMMENT_PAGES):
            answer = self._write("crm.timeline.comment.list", {
                "filter": {"ENTITY_ID": int(entity_id), "ENTITY_TYPE": entity},
                "select": ["ID", "COMMENT"], "order": {"ID": "DESC"}, "start": start,
            })  # fmt: skip
            for comment in answer.get("result") or []:
                if isinstance(comment, dict) and names_job(comment.get("COMMENT"), job_id):
                    return Written(str(comment.get("ID")))
            if not isinstance(answer.get("next"), int) or answer["next"] <= start:
                return None
            start = answer["next"]
        return None


def _record_id(form: dict[str, Any]) -> str:
    """data[FIELDS][ID] of an event: the record it names."""
    data = form.get("data")
    fields = data.get("FIELDS") if isinstance(data, dict) else None
    return _numeric_id(fields.get("ID") if isinstance(fields, dict) else None, "data[FIELDS][ID]")


def _scope_refused(status: int, body: Any) -> bool:
    """A Bitrix24 error that says the webhook or its user may not do this."""
    return isinstance(body, dict) and body.get("error") in SCOPE_ERRORS
