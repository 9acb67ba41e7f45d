"""One HTTP client for the CRMs' APIs: timeouts, no redirects, bounded retries, typed errors.

Only idempotent GETs are retried here (urllib3's Retry, short backoff); anything longer is the
delivery worker's durable retry. Error messages name the service and the variable to fix, never
a URL (tokens live in some paths and query strings).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crm2calls import metrics
from crm2calls.errors import AuthError, EnrichmentError, UnavailableError
from crm2calls.http import parse_retry_after, status_result

DEFAULT_TIMEOUT = (3.05, 15.0)


class CrmHttpClient:
    """JSON over HTTP to one CRM API; `secret_hint` names the variable holding its credential."""

    def __init__(
        self,
        base_url: str,
        *,
        service: str,
        secret_hint: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retries: int = 2,
    ):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        from crm2calls.logs import install_record_redaction

        install_record_redaction()  # urllib3 logs request lines, and tokens ride in paths and queries
        self.base_url = base_url.rstrip("/")
        self.service = service
        self.crm = service.split()[0].lower()  # the metrics' label: "Zoho accounts" and "Zoho CRM" are zoho
        self.secret_hint = secret_hint
        self.timeout = timeout
        self.params = params or {}
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "crm2calls"})
        self.session.headers.update(headers or {})
        if auth:
            self.session.auth = auth
        retry = Retry(
            total=retries,
            connect=retries,
            read=False,  # a read timeout already cost the full read timeout: raise it, the worker backs off
            status=retries,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            backoff_factor=0.2,
            respect_retry_after_header=False,  # 429/Retry-After goes back to the worker's backoff
            raise_on_status=False,
            redirect=0,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call the API and return its JSON body; raise AuthError, EnrichmentError or UnavailableError.

        data: a form body (OAuth token requests keep secrets out of URLs); headers: per-request
        headers on top of the session's (a refreshed access token).
        """
        response = self.raw_request(method, path, params=params, json=json, data=data, headers=headers)
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"{self.service} API refused our credentials (HTTP {status}): check {self.secret_hint}")
        if status == 404:
            raise EnrichmentError(f"{self.service}: not found (HTTP 404)", retryable=False)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            raise UnavailableError(f"{self.service} API answered HTTP {status}", retry_after)
        if 300 <= status < 400:
            raise UnavailableError(f"{self.service} API redirected (HTTP {status}); redirects are not followed")
        if status >= 400:
            raise EnrichmentError(f"{self.service} API refused the request (HTTP {status})", retryable=False)
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UnavailableError(f"{self.service} API answered with a body that is not JSON") from None

    def raw_request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        unreachable: Callable[[str], Exception] = UnavailableError,
    ) -> Any:
        """One request through the session, counted in the metrics; the response, whatever its status.

        A timeout or a network failure raises unreachable(message) (enrichment's UnavailableError, a
        write-back's WriteBackError), with no URL in it.
        """
        import requests

        try:
            response = self.session.request(
                method,
                f"{self.base_url}/{path.lstrip('/')}",
                params={**self.params, **(params or {})},
                json=json,
                data=data,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            metrics.crm_api_call(self.crm, "unavailable")
            raise unreachable(f"{self.service} API timed out") from None
        except requests.RequestException as exc:
            metrics.crm_api_call(self.crm, "unavailable")
            raise unreachable(f"{self.service} API unreachable ({type(exc).__name__})") from None
        metrics.crm_api_call(self.crm, status_result(response.status_code))
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET path with query params."""
        return self.request("GET", path, params=params)
