"""The one small interface every CRM adapter implements."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar

from crm2calls.config import Settings
from crm2calls.errors import EnrichmentError, UnauthorizedError, UnknownSourceError, UnsupportedMediaTypeError
from crm2calls.model import Lead, LeadEvent, LeadRecord, Status, StopEvent
from crm2calls.policy import SourcePolicy

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class InboundRequest:
    """A webhook request as adapters see it: the raw bytes, nothing decoded twice."""

    method: str
    url: str  # as the CRM called it: PUBLIC_BASE_URL's scheme and host, the raw path and query
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    content_type: str  # lower-case mimetype without parameters, "" when absent


@dataclass
class IntakeResult:
    """What happened to one lead event of a request."""

    key: str
    ref: str
    status: Status
    lead_id: str | None = None
    reason: str | None = None
    field: str | None = None

    @property
    def outcome(self) -> str:
        """What the CRM needs to know: accepted (we will call), duplicate, rejected or canceled (we never will)."""
        if self.status in (Status.DUPLICATE, Status.REJECTED, Status.CANCELED):
            return str(self.status)
        return "accepted"

    def as_json(self) -> dict[str, Any]:
        """The per-lead summary returned to the caller; internal states stay internal (see `leads show`)."""
        body: dict[str, Any] = {"ref": self.ref, "status": self.outcome}
        if self.lead_id:
            body["lead_id"] = self.lead_id
        if self.reason:
            body["reason"] = self.reason
        if self.field:
            body["field"] = self.field
        return body


@dataclass
class Ack:
    """The answer a CRM expects."""

    status: int
    body: Any  # dict/list rendered as JSON, or bytes sent as they are
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


def secret_matches(given: str | None, secrets: tuple[str, ...]) -> bool:
    """Constant-time comparison against each accepted secret (current and previous)."""
    if not given:
        return False
    given_bytes = given.encode("utf-8", "surrogatepass")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given_bytes, secret.encode("utf-8"))
    return matched


@dataclass(frozen=True)
class Written:
    """What the CRM made of a call's outcome: the id of the note, activity or task it created."""

    id: str


def job_mark(job_id: str) -> str:
    """The line every written note ends with: find_written() looks for it before writing again."""
    return f"crm2calls job {job_id}"


def names_job(text: object, job_id: str) -> bool:
    """Does a note's text carry job_mark(job_id), whole (job 12 is not job 123)?"""
    import re

    mark = re.escape(job_mark(job_id))
    return isinstance(text, str) and re.search(rf"{mark}(?![\w-])", text) is not None


class Source:
    """A CRM adapter: authenticate, parse into lead and stop events, enrich, acknowledge, write outcomes back.

    Subclasses set `name` and `content_types`, implement parse() and, when their webhooks carry
    only ids, enrich(); write_back() and parse_stops() where the CRM has them. Instances are built
    per app and must be thread-safe.
    """

    name: ClassVar[str]
    content_types: ClassVar[frozenset[str]] = frozenset({JSON, FORM})
    # What the CRM's token must be allowed for write_back() and find_written(), in the CRM's words
    # (`config check` and a scope refusal say it); "" where the source cannot write back.
    write_back_scopes: ClassVar[str] = ""

    def __init__(self, settings: Settings, policy: SourcePolicy):
        self.settings = settings
        self.policy = policy
        self._api_lock = threading.Lock()
        self._api_clients: dict[str, CrmHttpClient] = {}

    def route(self, data: Any) -> str | None:
        """The value of this source's campaign_by field in a CRM record, as text (None without a rule)."""
        from crm2calls.mapping import route_value  # the mapping stays off the cold-start path

        return route_value(data, self.policy)

    def api_client(self, build: Callable[[], CrmHttpClient], name: str = "api") -> CrmHttpClient:
        """The API client called `name`, built once on first use (under a lock: requests share its session)."""
        with self._api_lock:
            if name not in self._api_clients:
                self._api_clients[name] = build()
            return self._api_clients[name]

    def check_content_type(self, request: InboundRequest) -> None:
        """415 unless the source takes this content type; JSON sent as a form (`curl -d`) is told what to send."""
        looks_like_json = request.body.lstrip()[:1] in (b"{", b"[")
        if request.content_type in (FORM, "") and JSON in self.content_types and looks_like_json:
            raise UnsupportedMediaTypeError(
                f"the body looks like JSON but was sent as {request.content_type or 'a body without Content-Type'} "
                "(what `curl -d` sends): send the header Content-Type: application/json",
                field="Content-Type",
            )
        if request.content_type not in self.content_types:
            allowed = ", ".join(sorted(self.content_types))
            raise UnsupportedMediaTypeError(
                f"{self.name} takes {allowed}, not {request.content_type or 'a body without Content-Type'}",
                field="Content-Type",
            )

    def authenticate(self, request: InboundRequest) -> None:
        """Default: the shared WEBHOOK_SECRET as ?key= or X-Webhook-Secret (401 when wrong)."""
        require_shared_key(request, self.settings)

    def parse(self, request: InboundRequest) -> list[LeadEvent]:
        """Turn the body into independent lead events; MalformedRequestError when it cannot."""
        raise NotImplementedError

    def enrich(self, event: LeadEvent, now: datetime) -> Lead:
        """Fetch what the webhook lacked from the CRM's API (runs in the worker, never on the request path).

        Raises EnrichmentError: retryable when the data may appear later (contact not linked yet,
        429, 5xx), not retryable when it never will (lead deleted, 401).
        """
        raise EnrichmentError(f"{self.name} cannot fetch leads from its API", retryable=False)

    def parse_stops(self, request: InboundRequest) -> list[StopEvent]:
        """The "stop calling" events in the body (a lead closed, won, lost, deleted); none by default.

        Called on every authenticated request beside parse(): a body may hold lead events, stop events
        or both. Never calls the CRM (the request path); an event that needs a lookup has check=True.
        """
        return []

    def check_stop(self, event: StopEvent, now: datetime) -> str | None:
        """For a check=True event (runs in the worker): look the record up; the reason to stop, or None to go on.

        Raises EnrichmentError like enrich() when the CRM cannot answer now.
        """
        return None

    def can_write_back(self) -> bool:
        """Are this CRM's API credentials set, so that write_back() can work?"""
        return False

    def write_back(self, record: LeadRecord, note: str, outcome: dict[str, Any]) -> Written:
        """Put a call's outcome onto the CRM record the lead came from (runs in the worker).

        Raises WriteBackError: retryable through an outage, 429 or expired token; scope=True on a 403.
        """
        from crm2calls.errors import WriteBackError

        raise WriteBackError(f"{self.name} cannot write call outcomes back", retryable=False)

    def find_written(self, record: LeadRecord, job_id: str) -> Written | None:
        """Look for an outcome we wrote before for this job (the note names the job id), before writing again.

        None: not found. NotImplementedError: the CRM cannot list a record's notes (such a write is at
        least once, and the guide says so).
        """
        raise NotImplementedError

    def acknowledge(self, results: list[IntakeResult]) -> Ack:
        """Default: 202 with a JSON summary per lead."""
        return Ack(202, {"source": self.name, "leads": [r.as_json() for r in results]})


def payload_for(default: dict[str, Any], crm_object: dict[str, Any], policy: SourcePolicy) -> dict[str, Any]:
    """A CRM's default payload, or the mapping file's [sources.X.payload] paths into the CRM's object."""
    if policy.payload is None:
        return {key: value for key, value in default.items() if value not in (None, "", [], {})}
    from crm2calls.mapping import get_path

    mapped = {key: get_path(crm_object, path) for key, path in policy.payload.items()}
    return {key: value for key, value in mapped.items() if value is not None}


def require_shared_key(request: InboundRequest, settings: Settings) -> None:
    """Check WEBHOOK_SECRET from ?key= or the X-Webhook-Secret header, in constant time."""
    if settings.dev_mode and not settings.webhook_secrets:
        return
    keys = request.query.get("key") or []
    given = request.headers.get("X-Webhook-Secret") or (keys[0] if keys else None)
    if not secret_matches(given, settings.webhook_secrets):
        raise UnauthorizedError(
            "missing or wrong webhook key: add ?key=<WEBHOOK_SECRET> to the URL or send X-Webhook-Secret",
            field="key",
        )


def load_source(name: str, settings: Settings) -> Source:
    """Build the adapter for `name`, or raise UnknownSourceError (404)."""
    from crm2calls.sources import SOURCES

    target = SOURCES.get(name)
    if target is None:
        raise UnknownSourceError(f"no source named {name!r}; known: {', '.join(sorted(SOURCES))}", field="source")
    module_name, class_name = target.split(":")
    cls = getattr(import_module(module_name), class_name)
    return cls(settings, settings.policy.source(name))
