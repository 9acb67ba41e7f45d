"""Salesforce: Outbound Messages, SOAP 1.1 with up to 100 Lead or Contact notifications each.

The fields ticked in "Fields to Send" arrive in the message, so no API call is needed. The XML
is parsed with defusedxml and no DTD at all (no entity expansion, no external entities). The
answer must be the SOAP Ack, or Salesforce resends for 24 hours.

Stop events: a Lead notification whose IsConverted is true or whose Status is in stop_values (sent by
a record-triggered Flow on Status, docs/crm/salesforce.md). Such a notification is never a new lead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm2calls.errors import ForbiddenError, MalformedRequestError
from crm2calls.model import Lead, LeadEvent, PhoneCandidate, StopEvent
from crm2calls.sources.base import Ack, InboundRequest, IntakeResult, Source, payload_for
from crm2calls.sources.generic import MAX_LEADS_PER_REQUEST

SOAP_XML = "text/xml"  # SOAP 1.1, as the outbound messaging WSDL binds it
OUTBOUND_NS = "{http://soap.sforce.com/2005/09/outbound}"
XSI_NS = "{http://www.w3.org/2001/XMLSchema-instance}"
ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>'
    b"</soapenv:Body></soapenv:Envelope>"
)
# Field -> phone kind; Phone has none: it counts as mobile when the number is one.
PHONE_FIELDS = (("MobilePhone", "mobile"), ("Phone", ""), ("HomePhone", "home"), ("OtherPhone", "other"))


@dataclass(frozen=True)
class Notification:
    """One notification: its id, the sObject type ("Lead") and the sent fields (None for xsi:nil)."""

    id: str
    sobject_type: str
    fields: dict[str, str | None]


def parse_message(body: bytes) -> tuple[str, list[Notification]]:
    """(OrganizationId, notifications) of an outbound message; MalformedRequestError for anything else."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise MalformedRequestError("DTDs and entities are not allowed in an outbound message", field="body") from None
    except (ParseError, LookupError) as exc:  # LookupError: an XML declaration naming an unknown encoding
        raise MalformedRequestError(f"the body is not well-formed XML ({exc})", field="body") from None
    tag = f"{OUTBOUND_NS}notifications"
    notifications = root if root.tag == tag else root.find(f".//{tag}")
    if notifications is None:
        raise MalformedRequestError("not a Salesforce outbound message (no notifications element)", field="body")
    organization = (notifications.findtext(f"{OUTBOUND_NS}OrganizationId") or "").strip()
    items = notifications.findall(f"{OUTBOUND_NS}Notification")
    if len(items) > MAX_LEADS_PER_REQUEST:
        raise MalformedRequestError(f"at most {MAX_LEADS_PER_REQUEST} notifications per message", field="body")
    parsed = []
    for index, item in enumerate(items):
        notification_id = (item.findtext(f"{OUTBOUND_NS}Id") or "").strip()
        sobject = item.find(f"{OUTBOUND_NS}sObject")
        if not notification_id or sobject is None:
            raise MalformedRequestError(f"notification {index} has no Id or sObject", field=f"Notification[{index}]")
        fields: dict[str, str | None] = {}
        for child in sobject:
            if len(child):  # nested elements are not fields we read
                continue
            name = child.tag.rpartition("}")[2]
            nil = child.get(f"{XSI_NS}nil") == "true"
            fields[name] = None if nil else (child.text or "").strip() or None
        sobject_type = (sobject.get(f"{XSI_NS}type") or "").rpartition(":")[2]
        parsed.append(Notification(notification_id, sobject_type, fields))
    return organization, parsed


def organization_matches(sent: str, configured: str) -> bool:
    """Salesforce sends 18-character ids; a configured 15-character id is their case-sensitive prefix."""
    if len(configured) == 15 and len(sent) == 18:
        return sent[:15] == configured
    return sent == configured


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


class SalesforceSource(Source):
    """POST /webhooks/salesforce?key=...: the shared key in the endpoint URL, OrganizationId checked when set."""

    name = "salesforce"
    content_types = frozenset({SOAP_XML})

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """One event per notification, keyed by the notification Id (Salesforce resends the same ids)."""
        return [
            LeadEvent(
                key=f"notification:{n.id}", ref=n.fields.get("Id") or n.id, lead=self._lead(n.fields)
            )
            for n in self._notifications(request)
            if self.stop_reason(n) is None
        ]

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """A converted or closed Lead's notification stops it, named by its Id as its lead event's ref is.

        A converted lead also names its ConvertedContactId when that field is sent: a lead that came as
        that Contact's notification has the contact's Id as its ref.
        """
        stops = []
        for notification in self._notifications(request):
            reason = self.stop_reason(notification)
            if reason is None:
                continue
            fields = notification.fields
            refs = [fields.get("Id") or notification.id]
            if (contact := _text(fields.get("ConvertedContactId"))) and contact not in refs:
                refs.append(contact)
            for ref in refs:
                key = f"stop:notification:{notification.id}" + ("" if ref == refs[0] else f":{ref}")
                stops.append(StopEvent(key, ref, reason, raw={"notification_id": notification.id}))
        return stops

    def stop_reason(self, notification: Notification) -> str | None:
        """Why a notification means "stop calling" (a Lead converted or in a stop Status), or None."""
        if notification.sobject_type != "Lead":
            return None
        fields = notification.fields
        if (_text(fields.get("IsConverted")) or "").lower() == "true":
            return "Salesforce lead converted"
        status = _text(fields.get("Status"))
        if status and status in self.policy.stop_statuses:
            return f"Salesforce lead Status {status}"
        return None

    def _notifications(self, request: InboundRequest) -> list[Notification]:
        """The message's notifications, once its OrganizationId is the configured one (403 otherwise)."""
        organization, notifications = parse_message(request.body)
        expected = self.settings.crm.salesforce_organization_id
        if expected and not organization_matches(organization, expected):
            raise ForbiddenError(
                "OrganizationId is not the one in SALESFORCE_ORGANIZATION_ID", field="OrganizationId"
            )
        return notifications

    def _lead(self, fields: dict[str, str | None]) -> Lead:
        phones = [PhoneCandidate(fields[name], kind) for name, kind in PHONE_FIELDS if _text(fields.get(name))]
        first, last = _text(fields.get("FirstName")), _text(fields.get("LastName"))
        name = " ".join(part for part in (first, last) if part) or _text(fields.get("Name"))
        record_id = _text(fields.get("Id"))
        default = {
            "name": name,
            "crm": "salesforce",
            "crm_record_id": record_id,
            "company": _text(fields.get("Company")),
            "lead_source": _text(fields.get("LeadSource")),
        }
        return Lead(
            external_id=record_id,
            phones=phones,
            fields=payload_for(default, fields, self.policy),
            route=self.route(fields),
            name=name,
            city=_text(fields.get("City")) or _text(fields.get("MailingCity")),
            region=self.policy.region,
        )

    def acknowledge(self, results: list[IntakeResult]) -> Ack:
        """The SOAP Ack: every notification is stored (or was already), so Salesforce may forget them."""
        return Ack(200, ACK, content_type="text/xml; charset=utf-8")
