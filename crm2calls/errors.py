"""Every exception crm2calls raises on purpose, and whether a retry can help."""

from __future__ import annotations


class Crm2CallsError(Exception):
    """Base of our own errors."""

    retryable = False


class ConfigError(Crm2CallsError):
    """The environment or the mapping file is wrong; each problem names the variable or key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# Inbound requests: one handler in crm2calls.web renders these as JSON 4xx.


class RequestError(Crm2CallsError):
    """A request we refuse; the CRM should not retry it unchanged."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(message)


class MalformedRequestError(RequestError):
    """The body cannot be parsed as its content type, or has the wrong shape."""

    code = "malformed"


class UnauthorizedError(RequestError):
    """Credentials missing or wrong."""

    status = 401
    code = "unauthorized"


class ForbiddenError(RequestError):
    """Valid credentials, but from an account we do not serve."""

    status = 403
    code = "forbidden"


class UnknownSourceError(RequestError):
    """No source of that name."""

    status = 404
    code = "unknown_source"


class UnsupportedMediaTypeError(RequestError):
    """The source does not take this content type."""

    status = 415
    code = "unsupported_media_type"


class ServiceUnavailableError(Crm2CallsError):
    """We cannot take the request now (store down, configuration broken): the CRM should retry."""

    retryable = True
    status = 503
    code = "unavailable"


class StoreError(ServiceUnavailableError):
    """The lead store failed; nothing was acknowledged."""


# Leads


class UnusableLeadError(Crm2CallsError):
    """A well-formed lead we cannot call (no phone, invalid number, required field missing)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


# Outbound calls (Aimylogic, CRM APIs)


class OutboundError(Crm2CallsError):
    """A call to another service failed. Messages never carry tokens or full URLs."""

    def __init__(self, message: str, retry_after: float | None = None):
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


class UnavailableError(OutboundError):
    """Connection error, timeout, 429 or 5xx: retry later, honouring retry_after (seconds)."""

    retryable = True


class RejectedError(OutboundError):
    """The service refused the request as invalid (400): retrying the same bytes cannot help."""


class AuthError(OutboundError):
    """Bad or revoked token (401/403/404): nothing works until a person fixes the token."""


class MissingCredentialsError(AuthError):
    """The API's settings are not set at all: nothing was refused, a person must set them."""

    def __init__(self, service: str, variables: str, how: str):
        super().__init__(f"{service} API settings are MISSING: set {variables} ({how})")


class EnrichmentError(OutboundError):
    """The CRM's API could not give us the lead's phone yet; retryable says whether to try again."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message, retry_after)
        self.retryable = retryable


class ClosedInCrmError(EnrichmentError):
    """The record read for the lead is closed already (won, lost, a stop value): the lead is stopped, not called."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class WriteBackError(OutboundError):
    """The CRM did not take a call's outcome: retryable (outage, 429, expired token) or not (the record is gone).

    scope: True when the CRM refused the token's permissions (403): no write-back to it can work until a
    person grants the scope, so its write-backs are held, not spent.
    """

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None, scope: bool = False):
        super().__init__(message, retry_after)
        self.retryable = retryable
        self.scope = scope
