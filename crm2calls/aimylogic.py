"""The Aimylogic Calls API client (addPhones, test/addPhone, status, getReport) and the dry-run dialer.

The campaign token is the only credential and sits in the URL path, so no exception message,
log line or repr built here ever contains a URL: messages name the host at most.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from crm2calls import metrics
from crm2calls.clock import Clock, utcnow
from crm2calls.errors import AuthError, OutboundError, RejectedError, UnavailableError
from crm2calls.http import parse_retry_after
from crm2calls.logs import install_record_redaction, redact

if TYPE_CHECKING:
    import requests

    from crm2calls.config import Settings

log = logging.getLogger("crm2calls.aimylogic")

AUTH_MESSAGE = (
    "Aimylogic refused the token of campaign {campaign} (HTTP {status}): copy a fresh token from "
    "Outbound calls → Campaign from CRM system → Integration into {token_env}"
)
MAX_MESSAGE = 500  # characters of an error body kept in exceptions and last_error



class Dialer(Protocol):
    """What delivery needs from Aimylogic (AimylogicClient, or DryRunDialer in a dry run)."""

    def add_phones(self, entries: list[dict]) -> list[str]:
        """Send entries; return the job ids Aimylogic created."""


def token_fingerprint(token: str) -> str:
    """Eight hex digits that tell tokens apart in the store and logs; too short to confirm a guessed token."""
    return hashlib.sha256(b"crm2calls token:" + token.encode()).hexdigest()[:8]


class AimylogicClient:
    """One campaign of the Aimylogic Calls API over one pooled requests.Session."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: tuple[float, float] = (3.05, 30.0),
        session: requests.Session | None = None,
        clock: Clock = utcnow,
        campaign: str = "default",
        token_env: str = "AIMYLOGIC_TOKEN",  # noqa: S107 (a variable's name)
    ):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.base_url = base_url.rstrip("/")
        self._token = token
        self.campaign, self.token_env = campaign, token_env
        self.fingerprint = token_fingerprint(token)
        self.timeout = timeout
        self.clock = clock
        self.host = urlsplit(self.base_url).netloc
        self.session = session or requests.Session()
        # Connect errors only: the request never left, so a retry cannot double a call. A POST that
        # may have reached the server is never retried here; delivery retries it later, under the
        # platform's duplicate guard.
        retry = Retry(total=None, connect=2, read=False, redirect=False, status=0, other=0, backoff_factor=0.2)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)  # delivery sends up to 32 batches at once
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # urllib3 logs request lines ("POST /api/calls/campaign/<token>/addPhones") at DEBUG.
        install_record_redaction()

    def __repr__(self) -> str:
        return f"AimylogicClient(base_url={self.base_url!r}, campaign={self.campaign!r})"

    def add_phones(self, entries: list[dict]) -> list[str]:
        """POST entries to addPhones; return the created job ids as strings, in request order."""
        path = f"/api/calls/campaign/{self._token}/addPhones"
        response = self._call("POST", path, entries=len(entries), json=entries)
        try:
            ids = response.json()
        except ValueError:
            ids = None
        if not isinstance(ids, list):
            # A 2xx means Aimylogic took the entries; resending would only hit its duplicate guard.
            log.warning("Aimylogic accepted %d entries but answered without a list of job ids", len(entries))
            return []
        return [str(job_id) for job_id in ids]

    def test_call(self, phone: str, payload: dict | None = None) -> str:
        """Place one REAL test call (exempt from the duplicate guard); return its job id."""
        params = {**{k: str(v) for k, v in (payload or {}).items()}, "phone": phone}
        response = self._call("GET", f"/api/crmCalls/campaign/{self._token}/test/addPhone", params=params)
        return _bare_string(response)

    def campaign_status(self) -> str:
        """The campaign's status: planned, inProcess, finished, paused or deleted."""
        return _bare_string(self._call("GET", f"/api/calls/campaign/{self._token}/status"))

    def campaign_details(self) -> dict[str, Any]:
        """The campaign's name, status and shortReport counters (GET /api/calls/campaign/{token})."""
        response = self._call("GET", f"/api/calls/campaign/{self._token}")
        try:
            details = response.json()
        except ValueError:
            details = None
        if not isinstance(details, dict):
            raise UnavailableError("Aimylogic campaign: the answer is not a JSON object")
        return details

    def cancel(self, ids: list[str] | None = None, phones: list[str] | None = None) -> list[str] | None:
        """POST callJob/cancel for these job ids and/or phones; the job ids Aimylogic says it cancelled.

        None when a 2xx answer is not a list of ids (undocumented: a.6 documents only "an array of all
        cancelled job IDs"); the caller then keeps following the jobs, whose reports tell what happened.
        """
        body: dict[str, list[str]] = {}
        if ids:
            body["ids"] = [str(job_id) for job_id in ids]
        if phones:
            body["phones"] = [str(phone) for phone in phones]
        response = self._call("POST", f"/api/calls/campaign/{self._token}/callJob/cancel", json=body)
        try:
            answer = response.json()
        except ValueError:
            return None
        if not isinstance(answer, list):
            return None
        return [str(job_id) for job_id in answer]

    def get_report(
        self, ids: list[str | int] | None = None, phones: list[str | int] | None = None
    ) -> list[dict[str, Any]]:
        """POST callJob/getReport: one report object per job Aimylogic knows among `ids` or `phones`.

        Job ids are opaque: sent as given (addPhones answers strings of digits; the docs' examples
        send numbers) and answered with callJobId as a string. An id Aimylogic does not know is simply
        absent from the answer.
        """
        body: dict[str, list[str | int]] = {}
        if ids:
            body["ids"] = list(ids)
        if phones:
            body["phones"] = list(phones)
        if not body:
            raise ValueError("get_report needs ids or phones")
        response = self._call("POST", f"/api/calls/campaign/{self._token}/callJob/getReport", json=body)
        try:
            reports = response.json()
        except ValueError:
            reports = None
        if not isinstance(reports, list) or not all(isinstance(report, dict) for report in reports):
            raise UnavailableError("Aimylogic getReport: the answer is not a JSON array of reports")
        for report in reports:
            if report.get("callJobId") is not None:
                report["callJobId"] = str(report["callJobId"])
        return reports

    def _call(self, method: str, path: str, entries: int = 0, **kwargs: Any) -> requests.Response:
        what = path.rsplit("/", 1)[-1]
        started = time.perf_counter()
        result = "ok"
        try:
            response = self._send(method, path, what, **kwargs)
            if isinstance(response, UnavailableError):
                # Raised outside the except block, so no requests/urllib3 exception (whose message
                # holds the URL and so the token) is chained to it as __context__.
                raise response
            return self._check(response, what)
        except OutboundError as exc:
            result = result_label(exc)
            raise
        finally:
            metrics.aimylogic_request(what, result, time.perf_counter() - started, entries)

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response | UnavailableError:
        import requests

        try:
            return self.session.request(
                method, self.base_url + path, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.Timeout as exc:
            kind = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            limit = self.timeout[0] if kind == "connect" else self.timeout[1]
            return UnavailableError(f"Aimylogic {what}: no answer from {self.host} within {limit:g} s ({kind} timeout)")
        except requests.ConnectionError as exc:
            return UnavailableError(f"Aimylogic {what}: cannot connect to {self.host} ({_root_cause(exc)})")
        except requests.RequestException as exc:
            return UnavailableError(f"Aimylogic {what}: request failed ({type(exc).__name__})")

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        status = response.status_code
        if 200 <= status < 300:
            return response
        if 300 <= status < 400:
            # Not followed: a redirected POST could deliver the token and the phones to another host.
            # A redirect means AIMYLOGIC_URL is wrong (http for https, an old host): a person must fix
            # it, so it is an AuthError, which pauses delivery and keeps every lead.
            target = urlsplit(response.headers.get("Location", ""))
            where = f" to {target.scheme}://{target.netloc}" if target.netloc else ""
            raise AuthError(
                f"Aimylogic {what}: HTTP {status} redirect{where} from {self.host}, not followed; "
                "check AIMYLOGIC_URL (use https://app.aimylogic.com)"
            )
        if status in (401, 403, 404):
            raise AuthError(AUTH_MESSAGE.format(status=status, campaign=self.campaign, token_env=self.token_env))
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock())
        if status in (408, 425, 429) or status >= 500:
            raise UnavailableError(f"Aimylogic {what}: HTTP {status}{self._body(response, ': ')}", retry_after)
        raise RejectedError(f"Aimylogic {what}: HTTP {status}{self._body(response, ': ')}")

    def _body(self, response: requests.Response, prefix: str) -> str:
        text = response.text.strip().replace(self._token, "***")
        if not text:
            return ""
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE] + "…"
        return prefix + redact(text)


def result_label(exc: OutboundError) -> str:
    """The metrics' result label: auth (a person must fix the token or URL), unavailable, rejected."""
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, UnavailableError):
        return "unavailable"
    return "rejected"


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type name, e.g. ConnectionRefusedError (never its message)."""
    seen = exc
    for _ in range(10):  # chains are short; the bound only guards against a cycle
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    return type(seen).__name__


def _bare_string(response: requests.Response) -> str:
    """A body that is a bare string or number, JSON-quoted or not."""
    text = response.text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return str(value) if isinstance(value, (str, int)) else text


class DryRunDialer:
    """Without AIMYLOGIC_TOKEN: log the exact addPhones body instead of sending it."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "DryRunDialer()"

    def add_phones(self, entries: list[dict]) -> list[str]:
        """Log the body that would be sent (phones masked) and return ids dry-run-1, dry-run-2, ..."""
        with self._lock:
            ids = [f"dry-run-{next(self._ids)}" for _ in entries]
        from crm2calls.phones import mask

        body = [{**_redact_values(entry), "phone": mask(str(entry.get("phone", "")))} for entry in entries]
        log.info(
            "dry run: not sending %d entries to addPhones",
            len(entries),
            extra={"fields": {"event": "dry_run", "body": body, "job_ids": ids}},
        )
        return ids


def _redact_values(value: Any) -> Any:
    """Mask phone-like digit runs in every string of a JSON value (payloads may carry numbers too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    return value


def make_dialer(settings: Settings, campaign: str = "default") -> Dialer:
    """The dry-run dialer when a dry run was asked for, else a client for the campaign."""
    from crm2calls.config import NO_CAMPAIGN_TOKEN
    from crm2calls.errors import ConfigError

    if settings.dry_run:
        return DryRunDialer()
    token = settings.campaign_token(campaign)
    if not token:
        if campaign == "default":
            raise ConfigError([NO_CAMPAIGN_TOKEN])
        raise ConfigError([f"{settings.token_env(campaign)}: required to send leads to campaign {campaign}"])
    return AimylogicClient(
        settings.aimylogic_url, token, campaign=campaign, token_env=settings.token_env(campaign)
    )
