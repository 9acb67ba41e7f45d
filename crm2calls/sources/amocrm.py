"""amoCRM / Kommo: account webhooks (PHP bracket forms) in, phones fetched over API v4.

Events turned into leads: `leads[add]` (phone fetched: lead -> its contacts), `contacts[add]` (phone
in the body when it is there, fetched otherwise), `unsorted[add]` items that carry a phone, and,
when `[sources.amocrm] status_ids` is set, leads in those stages only (`leads[add]` created in
one, `leads[status]` moved into one). Companies (`contacts[add]` with `type=company`) are not
called: a company's number is a switchboard; the person is its contact.

Stop events: `leads[status]` into a `stop_values` stage (default 142 won, 143 lost), `leads[delete]`,
`contacts[delete]`. A lead created in a stop stage is never called.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm2calls.errors import (
    EnrichmentError,
    ForbiddenError,
    MalformedRequestError,
    MissingCredentialsError,
    WriteBackError,
)
from crm2calls.formdata import parse_php_form, php_list
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
)
from crm2calls.sources.client import DEFAULT_TIMEOUT, CrmHttpClient
from crm2calls.sources.writes import send

# enum_code of the PHONE field (API v4) -> our phone kinds; webhooks carry only numeric enum ids
PHONE_KINDS = {"MOB": "mobile", "WORK": "work", "WORKDD": "work", "HOME": "home", "FAX": "fax", "OTHER": "other"}
UTM_CODES = ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM")
MAX_CONTACTS = 5  # contacts of one lead fetched at most (main first): amoCRM allows ~7 requests a second
PAGE_SIZE = 250  # the API's maximum
MAX_PAGES = 200
NOTE_PAGES = 4  # a record's newest notes looked through for one we wrote (4 x 250)


def _numeric_id(value: Any, where: str) -> str:
    """An entity id as digits; it goes into API paths, so nothing else is accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and 0 < len(value) <= 20 and int(value) > 0:
        return value
    raise MalformedRequestError(f"{where} is not a numeric amoCRM id", field=where)


def _items(form: dict[str, Any], entity: str, action: str) -> list[dict[str, Any]]:
    """The entities of `entity[action][i]` in index order."""
    section = form.get(entity)
    if section is None:
        return []
    if not isinstance(section, dict) or not isinstance(section.get(action, {}), dict):
        raise MalformedRequestError(f"{entity}[{action}] is not a list of {entity}", field=f"{entity}[{action}]")
    items = php_list(section.get(action))
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedRequestError(f"{entity}[{action}][{index}] is not an object", field=f"{entity}[{action}]")
    return items



def in_stages(status_id: Any, pipeline_id: Any, stages: tuple[str, ...]) -> bool:
    """Is a lead's stage among `stages`, each a status_id (any pipeline) or pipeline_id:status_id?"""
    return bool(stages) and (str(status_id) in stages or f"{pipeline_id}:{status_id}" in stages)


def _person_name(entity: dict[str, Any]) -> str | None:
    joined = " ".join(part for part in (_text(entity.get("first_name")), _text(entity.get("last_name"))) if part)
    return _text(entity.get("name")) or joined or None


def _kind(code: Any) -> str:
    return PHONE_KINDS.get(str(code or "").upper(), "")


def webhook_phones(contact: dict[str, Any]) -> list[PhoneCandidate]:
    """Phones of a webhook contact: custom_fields[i] with code PHONE, each of its values[j][value]."""
    phones = []
    for field in php_list(contact.get("custom_fields")):
        if isinstance(field, dict) and str(field.get("code") or "").upper() == "PHONE":
            for value in php_list(field.get("values")):
                text = _text(value.get("value")) if isinstance(value, dict) else None
                if text:
                    phones.append(PhoneCandidate(text, _kind(value.get("enum"))))
    return phones


def api_phones(contact: dict[str, Any]) -> list[PhoneCandidate]:
    """Phones of an API v4 contact: custom_fields_values[field_code=PHONE].values[] with enum_code."""
    phones = []
    for field in contact.get("custom_fields_values") or []:
        if isinstance(field, dict) and field.get("field_code") == "PHONE":
            for value in field.get("values") or []:
                text = _text(value.get("value")) if isinstance(value, dict) else None
                if text:
                    phones.append(PhoneCandidate(text, _kind(value.get("enum_code"))))
    return phones


def flat_fields(fields: Any, code_key: str, id_key: str) -> dict[str, str]:
    """Custom fields as {code (or id): "value, value"}: short payload paths such as lead.fields.UTM_SOURCE."""
    flat = {}
    for field in php_list(fields):
        if not isinstance(field, dict):
            continue
        name = _text(field.get(code_key)) or _text(field.get(id_key))
        values = [_text(v.get("value")) for v in php_list(field.get("values")) if isinstance(v, dict)]
        values = [v for v in values if v]
        if name and values:
            flat[name] = ", ".join(values)
    return flat


class AmoCrmSource(Source):
    """POST /webhooks/amocrm: amoCRM/Kommo account webhooks; ?key=WEBHOOK_SECRET is always required."""

    name = "amocrm"
    content_types = frozenset({FORM})
    write_back_scopes = (
        'a private integration\'s long-lived token with the "crm" access (account data: leads, contacts, notes), '
        "its user allowed to edit the lead or contact"
    )
    timeout: tuple[float, float] = DEFAULT_TIMEOUT  # (connect, read) seconds of each API call

    # webhook

    def authenticate(self, request: InboundRequest) -> None:
        """The shared key (amoCRM signs nothing), then the account, when AMOCRM_ACCOUNT_ID/SUBDOMAIN are set."""
        require_shared_key(request, self.settings)
        crm = self.settings.crm
        if not (crm.amocrm_account_id or crm.amocrm_subdomain):
            return
        self.check_content_type(request)
        account = parse_php_form(request.body).get("account")
        account = account if isinstance(account, dict) else {}
        if crm.amocrm_account_id and account.get("id") != crm.amocrm_account_id.strip():
            raise ForbiddenError("account[id] is not the account in AMOCRM_ACCOUNT_ID", field="account[id]")
        wanted = crm.amocrm_subdomain.strip().split(".")[0].casefold() if crm.amocrm_subdomain else None
        if wanted and str(account.get("subdomain") or "").casefold() != wanted:
            raise ForbiddenError(
                "account[subdomain] is not the account in AMOCRM_SUBDOMAIN", field="account[subdomain]"
            )

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """leads[add], leads[status], contacts[add] and unsorted[add] items as lead events."""
        form = parse_php_form(request.body)
        events = []
        for index, item in enumerate(_items(form, "leads", "add")):
            lead_id = _numeric_id(item.get("id"), f"leads[add][{index}][id]")
            key = self.lead_key(lead_id, item.get("status_id"), item.get("pipeline_id"))
            if key:
                events.append(self._lead_event(key, lead_id))
        moved = _items(form, "leads", "status") if self.policy.status_ids else []
        for index, item in enumerate(moved):
            lead_id = _numeric_id(item.get("id"), f"leads[status][{index}][id]")
            key = self.lead_key(lead_id, item.get("status_id"), item.get("pipeline_id"))
            if key:
                events.append(self._lead_event(key, lead_id))
        if self.policy.status_ids:  # stage mode: only leads in the chosen stages are called
            return events
        for index, item in enumerate(_items(form, "contacts", "add")):
            contact_id = _numeric_id(item.get("id"), f"contacts[add][{index}][id]")
            if str(item.get("type") or "contact") == "company":
                continue
            key = f"contact:{contact_id}"
            if webhook_phones(item):
                events.append(LeadEvent(key, key, self._lead_from_webhook_contact(item, contact_id, None)))
            else:  # created first, fields filled a moment later: fetch it
                events.append(LeadEvent(key, key, None, {"contact_id": contact_id}))
        for index, item in enumerate(_items(form, "unsorted", "add")):
            event = self._unsorted_event(item, index)
            if event:
                events.append(event)
        return events

    def lead_key(self, lead_id: str, status_id: Any, pipeline_id: Any) -> str | None:
        """lead:{id}; in stage mode status:{id}:{stage} for a lead in a chosen stage, None for any other."""
        if in_stages(status_id, pipeline_id, self.policy.stop_statuses):
            return None  # created won or lost: nobody to call
        if not self.policy.status_ids:
            return f"lead:{lead_id}"
        if in_stages(status_id, pipeline_id, self.policy.status_ids):
            return f"status:{lead_id}:{status_id}"
        return None

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """leads[status] into a stop stage, leads[delete] and contacts[delete] as stop events.

        Records are named like the lead events' refs: "lead:{id}" (leads[add], leads[status], unsorted
        with a lead_id) and "contact:{id}" (contacts[add]). A lead that came as a contact is stopped only
        by its contact's deletion: the webhook does not say which leads a contact belongs to.
        """
        form = parse_php_form(request.body)
        stops = []
        for index, item in enumerate(_items(form, "leads", "status")):
            lead_id = _numeric_id(item.get("id"), f"leads[status][{index}][id]")
            status_id, pipeline_id = _text(item.get("status_id")), _text(item.get("pipeline_id"))
            if in_stages(status_id, pipeline_id, self.policy.stop_statuses):
                # last_modified tells a lead closed, reopened and closed again from amoCRM resending one move
                moved = _text(item.get("last_modified")) or _text(item.get("updated_at")) or "-"
                stops.append(StopEvent(
                    f"stop:lead:{lead_id}:status:{status_id}:{moved}",
                    f"lead:{lead_id}",
                    f"amoCRM lead moved to status {status_id} (pipeline {pipeline_id or '?'})",
                    raw={"lead_id": lead_id, "status_id": status_id, "pipeline_id": pipeline_id},
                ))
        for entity, kind in (("leads", "lead"), ("contacts", "contact")):
            for index, item in enumerate(_items(form, entity, "delete")):
                entity_id = _numeric_id(item.get("id"), f"{entity}[delete][{index}][id]")
                if kind == "contact" and str(item.get("type") or "contact") == "company":
                    continue  # companies are never called
                stops.append(StopEvent(
                    f"stop:{kind}:{entity_id}:delete", f"{kind}:{entity_id}", f"amoCRM {kind} deleted",
                    raw={f"{kind}_id": entity_id},
                ))
        return stops

    def _lead_event(self, key: str, lead_id: str) -> LeadEvent:
        return LeadEvent(key, f"lead:{lead_id}", None, {"lead_id": lead_id})

    def _unsorted_event(self, item: dict[str, Any], index: int) -> LeadEvent | None:
        """An incoming (unsorted) lead with a phone in its contacts; the same key as its lead when it names one."""
        data = item.get("data") if isinstance(item.get("data"), dict) else {}
        contacts = [c for c in php_list(data.get("contacts")) if isinstance(c, dict) and webhook_phones(c)]
        if not contacts:
            return None  # chats and mails without a number: nothing to call
        lead_id = item.get("lead_id")
        if lead_id not in (None, "", "0"):
            lead_id = _numeric_id(lead_id, f"unsorted[add][{index}][lead_id]")
            key, ref = f"lead:{lead_id}", f"lead:{lead_id}"
        else:
            uid = _text(item.get("uid"))
            if not uid or len(uid) > 128:
                raise MalformedRequestError(f"unsorted[add][{index}] has neither lead_id nor uid", field="unsorted")
            key = ref = f"unsorted:{uid}"
            lead_id = None
        contact = contacts[0]
        contact_id = _text(contact.get("id"))
        return LeadEvent(key, ref, self._lead_from_webhook_contact(contact, contact_id, lead_id))

    def _lead_from_webhook_contact(self, contact: dict[str, Any], contact_id: str | None, lead_id: str | None) -> Lead:
        name = _person_name(contact)
        default = {"name": name, "crm": self.name, "crm_lead_id": lead_id, "crm_contact_id": contact_id}
        crm_object = {"contact": {**contact, "fields": flat_fields(contact.get("custom_fields"), "code", "id")}}
        return Lead(
            external_id=lead_id or contact_id,
            phones=webhook_phones(contact),
            fields=payload_for(default, crm_object, self.policy),
            route=self.route(crm_object),
            name=name,
            region=self.policy.region,
        )

    def acknowledge(self, results: list[IntakeResult]) -> Ack:
        """200 and a small body: amoCRM counts 100-299 within 2 s as delivered."""
        return Ack(200, {"ok": True, "leads": len(results)})

    # API

    def _api(self) -> CrmHttpClient:
        crm = self.settings.crm
        needed = (("AMOCRM_BASE_URL", crm.amocrm_base_url), ("AMOCRM_TOKEN", crm.amocrm_token))
        missing = [name for name, value in needed if not value]
        if missing:
            # A configuration gap, like a bad token: keep the lead until a person sets the variables.
            raise MissingCredentialsError(
                "amoCRM", " and ".join(missing),
                "https://<subdomain>.amocrm.ru and a long-lived token of a private integration: leads carry no phone",
            )
        return self.api_client(lambda: CrmHttpClient(
            crm.amocrm_base_url,
            service="amoCRM",
            secret_hint="AMOCRM_TOKEN",  # noqa: S106 - the variable's name, not its value
            headers={"Authorization": f"Bearer {crm.amocrm_token}", "Accept": "application/hal+json"},
            timeout=self.timeout,
        ))

    def _get(self, client: CrmHttpClient, what: str, path: str, **params: Any) -> dict[str, Any]:
        body = client.get(path, **params)
        if not isinstance(body, dict):  # amoCRM answers 204 No Content for an entity it does not have
            raise EnrichmentError(f"amoCRM has no {what} (deleted?)", retryable=False)
        return body

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """The lead's main contact (then its other contacts), or the event's contact, fetched for its phones."""
        client = self._api()
        if event.raw.get("contact_id"):
            contact_id = _numeric_id(event.raw["contact_id"], "contact_id")
            contact = self._get(client, f"contact {contact_id}", f"api/v4/contacts/{contact_id}")
            if not api_phones(contact):
                raise EnrichmentError(f"amoCRM contact {contact_id} has no phone yet", retryable=True)
            return self._lead_from_api(None, contact)
        lead_id = _numeric_id(event.raw.get("lead_id"), "lead_id")
        lead = self._get(client, f"lead {lead_id}", f"api/v4/leads/{lead_id}", **{"with": "contacts"})
        linked = [c for c in (lead.get("_embedded") or {}).get("contacts") or [] if isinstance(c, dict)]
        if not linked:
            raise EnrichmentError(f"amoCRM lead {lead_id} has no contact linked yet", retryable=True)
        linked.sort(key=lambda c: not c.get("is_main"))  # the main contact first, the rest in their order
        for link in linked[:MAX_CONTACTS]:
            contact_id = _numeric_id(link.get("id"), "_embedded.contacts[].id")
            contact = self._get(client, f"contact {contact_id}", f"api/v4/contacts/{contact_id}")
            if api_phones(contact):
                return self._lead_from_api(lead, contact)
        raise EnrichmentError(f"amoCRM lead {lead_id}: its contacts have no phone yet", retryable=True)

    def _lead_from_api(self, lead: dict[str, Any] | None, contact: dict[str, Any]) -> Lead:
        lead_fields = flat_fields((lead or {}).get("custom_fields_values"), "field_code", "field_id")
        name = _person_name(contact)
        default = {
            "name": name,
            "crm": self.name,
            "crm_lead_id": _text((lead or {}).get("id")),
            "crm_contact_id": _text(contact.get("id")),
            **{code.lower(): lead_fields.get(code) for code in UTM_CODES},
        }
        contact_fields = flat_fields(contact.get("custom_fields_values"), "field_code", "field_id")
        crm_object = {"lead": {**(lead or {}), "fields": lead_fields}, "contact": {**contact, "fields": contact_fields}}
        return Lead(
            external_id=_text((lead or contact).get("id")),
            phones=api_phones(contact),
            fields=payload_for(default, crm_object, self.policy),
            route=self.route(crm_object),
            name=name,
            region=self.policy.region,
        )

    def list_since(self, since: datetime, now: datetime) -> list[LeadEvent]:
        """Leads created in [since, now] as events with the webhooks' keys (reconciliation)."""
        client = self._api()
        events = []
        for page in range(1, MAX_PAGES + 1):
            body = client.get(
                "api/v4/leads",
                **{
                    "filter[created_at][from]": int(since.timestamp()),
                    "filter[created_at][to]": int(now.timestamp()),
                    "order[id]": "asc",
                    "page": page,
                    "limit": PAGE_SIZE,
                },
            )
            if not isinstance(body, dict):  # 204: no (more) leads
                break
            for lead in (body.get("_embedded") or {}).get("leads") or []:
                lead_id = _numeric_id(lead.get("id"), "_embedded.leads[].id")
                key = self.lead_key(lead_id, lead.get("status_id"), lead.get("pipeline_id"))
                if key:
                    events.append(self._lead_event(key, lead_id))
            if not (body.get("_links") or {}).get("next"):  # only its presence: the href's host is not ours to trust
                break
        return events

    # Write-back of call outcomes: a common note on the lead (or contact) the lead came from.

    def can_write_back(self) -> bool:
        """AMOCRM_BASE_URL and AMOCRM_TOKEN are set."""
        crm = self.settings.crm
        return bool(crm.amocrm_base_url and crm.amocrm_token)

    def _entity(self, record: LeadRecord) -> tuple[str, str]:
        """("leads" | "contacts", id) of the record's ref; WriteBackError for an unsorted lead (no amoCRM id)."""
        kind, _, entity_id = record.ref.partition(":")
        if kind in ("lead", "contact") and entity_id.isascii() and entity_id.isdigit():
            return f"{kind}s", entity_id
        raise WriteBackError(
            f"amoCRM: {record.ref} names no lead or contact (an incoming lead not yet accepted): nowhere to write",
            retryable=False,
        )

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """POST /api/v4/{leads|contacts}/notes: one "common" note; its id."""
        entity, entity_id = self._entity(record)
        body = [{"entity_id": int(entity_id), "note_type": "common", "params": {"text": note}}]
        answer = send(self._api(), "POST", f"api/v4/{entity}/notes", json=body, scope=self._scope_hint())
        notes = (answer or {}).get("_embedded", {}).get("notes") if isinstance(answer, dict) else None
        if not notes or not isinstance(notes[0], dict) or notes[0].get("id") is None:
            raise WriteBackError("amoCRM answered the note without its id")
        return Written(str(notes[0]["id"]))

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """GET /api/v4/{leads|contacts}/{id}/notes, newest first: a common note naming the job."""
        entity, entity_id = self._entity(record)
        client = self._api()
        for page in range(1, NOTE_PAGES + 1):
            answer = send(
                client, "GET", f"api/v4/{entity}/{entity_id}/notes", scope=self._scope_hint(),
                params={"filter[note_type]": "common", "order[id]": "desc", "limit": PAGE_SIZE, "page": page},
            )  # fmt: skip
            notes = (answer or {}).get("_embedded", {}).get("notes") if isinstance(answer, dict) else None
            for note in notes or []:
                if isinstance(note, dict) and names_job((note.get("params") or {}).get("text"), job_id):
                    return Written(str(note.get("id")))
            if not (answer or {}).get("_links", {}).get("next"):
                return None
        return None

    def _scope_hint(self) -> str:
        return f"give AMOCRM_TOKEN {self.write_back_scopes} (docs/crm/amocrm.md)"
