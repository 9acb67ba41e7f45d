"""Salesforce: Outbound Messages, SOAP 1.1 with up to 100 Lead or Contact notifications each.

The fields ticked in "Fields to Send" arrive in the message, so no API call is needed. The XML
is parsed with defusedxml and no DTD at all (no entity expansion, no external entities). The
answer must be the SOAP Ack, or Salesforce resends for 24 hours.

Write-back: a completed call Task on the Lead or Contact, through a connected app's client-credentials
flow (SALESFORCE_INSTANCE_URL, SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET). The Task's Subject
names the job, so a SOQL query finds a write the process may have died after.

Stop events: a Lead notification whose IsConverted is true or whose Status is in stop_values (sent by
a record-triggered Flow on Status, docs/crm/salesforce.md). Such a notification is never a new lead.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm2calls.clock import Clock, utcnow
from crm2calls.config import Settings
from crm2calls.errors import ForbiddenError, MalformedRequestError, WriteBackError
from crm2calls.model import Lead, LeadEvent, LeadRecord, PhoneCandidate, StopEvent
from crm2calls.policy import SourcePolicy
from crm2calls.sources.base import Ack, InboundRequest, IntakeResult, Source, Written, payload_for
from crm2calls.sources.client import DEFAULT_TIMEOUT
from crm2calls.sources.generic import MAX_LEADS_PER_REQUEST

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

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


# Write-back
_WHO_ID = re.compile(r"(00Q|003)[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")  # a Lead (00Q) or Contact (003) id
_CREDENTIALS = "SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"
# A client-credentials token lives as long as the org's session timeout (2 h by default) and the token
# answer does not say: keep it an hour, and refresh it at once when Salesforce refuses it sooner.
TOKEN_LIFETIME = timedelta(hours=1)
TASK_SCOPE = (
    "the connected app's Run As user API Enabled and Create on Tasks (Activities), with access to the "
    "lead or contact (see docs/crm/salesforce.md)"
)
SUBJECT = "Robot call"
MAX_SUBJECT, MAX_DISPOSITION, MAX_DESCRIPTION = 255, 255, 32000  # the Task fields' lengths


def task_subject(job_id: str) -> str:
    """The Task's Subject: it names the job, which is how find_written() recognises our Task."""
    return f"{SUBJECT} (job {job_id})"[:MAX_SUBJECT]


def soql_like(text: str) -> str:
    """`text` quoted for a SOQL LIKE pattern: backslash and quote escaped, and the wildcards % and _."""
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("%", "\\%").replace("_", "\\_")


class SalesforceSource(Source):
    """POST /webhooks/salesforce?key=...: the shared key in the endpoint URL, OrganizationId checked when set."""

    name = "salesforce"
    content_types = frozenset({SOAP_XML})

    def __init__(self, settings: Settings, policy: SourcePolicy):
        super().__init__(settings, policy)
        self.now: Clock = utcnow  # tests pass their own clock to expire tokens
        self.timeout = DEFAULT_TIMEOUT  # (connect, read) seconds for Salesforce's APIs
        self._token_lock = threading.Lock()  # one token request at a time; the others reuse its token
        self._token: tuple[str, datetime] | None = None  # (access token, used until)

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

    # Write-back: a completed call Task on the Lead or Contact.

    def can_write_back(self) -> bool:
        """The connected app's three settings are set."""
        crm = self.settings.crm
        return bool(crm.salesforce_instance_url and crm.salesforce_client_id and crm.salesforce_client_secret)

    def _api(self) -> CrmHttpClient:
        from crm2calls.sources.client import CrmHttpClient

        return self.api_client(lambda: CrmHttpClient(
            self.settings.crm.salesforce_instance_url or "",
            service="Salesforce",
            secret_hint=_CREDENTIALS,
            timeout=self.timeout,
        ))

    def _access_token(self, refused: str | None = None) -> str:
        """The cached token unless expired or `refused`; else a new one by the client-credentials flow."""
        from crm2calls.sources.writes import TokenRefusedError, send

        crm = self.settings.crm
        if not self.can_write_back():
            raise WriteBackError(
                "Salesforce write-back is not set up: set SALESFORCE_INSTANCE_URL, " + _CREDENTIALS, retryable=False
            )
        now = self.now()
        with self._token_lock:
            if self._token and self._token[0] != refused and self._token[1] > now:
                return self._token[0]
            form = {
                "grant_type": "client_credentials",
                "client_id": crm.salesforce_client_id or "",
                "client_secret": crm.salesforce_client_secret or "",
            }
            try:
                answer = send(self._api(), "POST", "services/oauth2/token", data=form, scope=_CREDENTIALS,
                              what="the token request")
            except WriteBackError as exc:
                if exc.retryable and not exc.scope and not isinstance(exc, TokenRefusedError):
                    raise  # Salesforce is down or slow: the credentials may be fine
                # invalid_client, invalid_grant (no Run As user): every write waits for a person
                raise WriteBackError(
                    f"{exc.message}: check {_CREDENTIALS} and the app's Client Credentials Flow Run As user",
                    scope=True,
                ) from None
            token = answer.get("access_token") if isinstance(answer, dict) else None
            if not isinstance(token, str) or not token:
                raise WriteBackError("Salesforce's token answer has no access_token")
            self._token = (token, now + TOKEN_LIFETIME)
            return token

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> Any:
        """A REST API request with the app's token; a refused token (401) is replaced once and the call repeated."""
        from crm2calls.sources.writes import TokenRefusedError, send

        version = self.settings.crm.salesforce_api_version
        path = f"services/data/{version}/{path}"
        token = self._access_token()
        try:
            return send(self._api(), method, path, json=json, params=params, scope=TASK_SCOPE,
                        headers={"Authorization": f"Bearer {token}"})
        except TokenRefusedError:
            token = self._access_token(refused=token)
            return send(self._api(), method, path, json=json, params=params, scope=TASK_SCOPE,
                        headers={"Authorization": f"Bearer {token}"})

    @staticmethod
    def _who_id(record: LeadRecord) -> str:
        if not _WHO_ID.fullmatch(record.ref):
            raise WriteBackError(
                f"Salesforce: lead {record.id} has no Lead or Contact Id (tick Id in the outbound message's "
                "Fields to Send)",
                retryable=False,
            )
        return record.ref

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """POST a completed outbound call Task whose WhoId is the lead or contact."""
        who_id = self._who_id(record)
        job_id = record.job_id or "-"
        disposition = outcome.get("call_result") or outcome.get("job_status") or ""
        task: dict[str, Any] = {
            "WhoId": who_id,
            "Subject": task_subject(job_id),
            "TaskSubtype": "Call",
            "Status": "Completed",
            "CallType": "Outbound",
            "CallDurationInSeconds": int(outcome.get("duration_s") or 0),
            "CallDisposition": str(disposition)[:MAX_DISPOSITION],
            "Description": note[:MAX_DESCRIPTION],
        }
        finished = outcome.get("finished_at")
        if isinstance(finished, str) and len(finished) >= 10:
            task["ActivityDate"] = finished[:10]  # the due date the timeline files the call under
        answer = self._call("POST", "sobjects/Task", json=task)
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise WriteBackError("Salesforce's answer to the new Task has no id")
        return Written(task_id)

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """SOQL: a Task on this lead or contact whose Subject names the job."""
        who_id = self._who_id(record)
        # SOQL, not SQL: the WhoId is checked by its pattern, the job id is escaped
        where = f"WhoId = '{who_id}' AND Subject LIKE '%(job {soql_like(job_id)})%'"
        query = f"SELECT Id FROM Task WHERE {where} ORDER BY CreatedDate LIMIT 1"  # noqa: S608
        answer = self._call("GET", "query", params={"q": query})
        rows = answer.get("records") if isinstance(answer, dict) else None
        if not isinstance(rows, list):
            raise WriteBackError("Salesforce's query answer has no records")
        found = next((row.get("Id") for row in rows if isinstance(row, dict) and isinstance(row.get("Id"), str)), None)
        return Written(found) if found else None
