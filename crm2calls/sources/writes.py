"""Write-back requests to a CRM API: one mapping from its answers to WriteBackError.

CrmHttpClient.request() reads 401 and 403 alike (enrichment stops on both), but a write-back must
tell them apart: a 401 is an expired token (refresh once, then retry later), a 403 is a missing
permission that no retry fixes (held until a person grants the scope). Messages name the service,
the status and the CRM's own error code, never a URL, a token or a phone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crm2calls.errors import WriteBackError
from crm2calls.http import parse_retry_after

if TYPE_CHECKING:
    from crm2calls.sources.client import CrmHttpClient

# Codes CRMs answer a refused permission with, whatever the HTTP status (Zoho says 401 OAUTH_SCOPE_MISMATCH).
SCOPE_CODES = frozenset(
    {
        "OAUTH_SCOPE_MISMATCH",
        "NO_PERMISSION",
        "INSUFFICIENT_ACCESS",
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
        "API_DISABLED_FOR_ORG",
    }
)
# Codes that mean "not now" on a 403 (Salesforce's daily API limit): retried, not held.
LIMIT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED"})
# Codes that mean the CRM record is gone (deleted, merged away): retrying cannot help.
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "INVALID_ID_FIELD", "NOT_FOUND"})
LIMIT_RETRY_AFTER = 3600.0  # Salesforce's daily limit rolls over 24 h; an hour is a fair second look
_CODE = re.compile(r"[A-Za-z_]{2,60}")


class TokenRefusedError(WriteBackError):
    """HTTP 401: the access token expired or was revoked; an OAuth source refreshes it once and repeats."""


def error_code(body: Any) -> str | None:
    """The CRM's error code in an error body (Salesforce [{errorCode}], Zoho {code} or {data: [{code}]})."""
    candidates: list[Any] = []
    if isinstance(body, list) and body and isinstance(body[0], dict):
        candidates.append(body[0].get("errorCode"))
    if isinstance(body, dict):
        candidates += [body.get("code"), body.get("errorCode"), body.get("error")]
        rows = body.get("data")
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            candidates.append(rows[0].get("code"))
    return next((code for code in candidates if isinstance(code, str) and _CODE.fullmatch(code)), None)


def answer_error(
    service: str, status: int, code: str | None, retry_after: float | None, scope: str, what: str = "the write"
) -> WriteBackError:
    """The WriteBackError an HTTP error answer means; `scope` names what a person must grant on a 403."""
    said = f"HTTP {status}" + (f" {code}" if code else "")
    if code in LIMIT_CODES:
        return WriteBackError(f"{service} API limit reached ({said})", retry_after=retry_after or LIMIT_RETRY_AFTER)
    if status == 403 or code in SCOPE_CODES:
        return WriteBackError(f"{service} refused {what} ({said}): grant {scope}", retryable=True, scope=True)
    if status == 401:
        return TokenRefusedError(f"{service} refused our token ({said})", retry_after=retry_after)
    if status == 404 or code in GONE_CODES:
        return WriteBackError(f"{service}: the record is gone ({said})", retryable=False)
    if status == 429 or status >= 500:
        return WriteBackError(f"{service} API answered {said}", retry_after=retry_after)
    if 300 <= status < 400:
        return WriteBackError(f"{service} API redirected ({said}); redirects are not followed")
    return WriteBackError(f"{service} refused {what} ({said})", retryable=False)


def send(
    client: CrmHttpClient,
    method: str,
    path: str,
    *,
    scope: str,
    json: Any = None,
    data: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    what: str = "the write",
    scope_refused: Callable[[int, Any], bool] | None = None,
) -> Any:
    """One request of a write-back through the client's session; its JSON answer, or WriteBackError.

    data: a form body (OAuth token requests keep secrets out of URLs); scope_refused(status, body): a
    CRM's own way of saying a permission is missing (Bitrix24's error names), held like a 403.
    """
    response = client.raw_request(
        method, path, params=params, json=json, data=data, headers=headers, unreachable=WriteBackError
    )
    status = response.status_code
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if status >= 400 and scope_refused is not None and scope_refused(status, body):
        said = f"HTTP {status}" + (f" {code}" if (code := error_code(body)) else "")
        raise WriteBackError(f"{client.service} refused {what} ({said}): grant {scope}", scope=True)
    if status >= 300:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        raise answer_error(client.service, status, error_code(body), retry_after, scope, what)
    if response.content and body is None:
        raise WriteBackError(f"{client.service} API answered with a body that is not JSON")
    return body
