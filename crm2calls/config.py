"""Settings: the environment and the mapping file, read once and validated together.

This is the only module that reads os.environ.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from environs import Env, EnvValidationError
from marshmallow import ValidationError
from marshmallow.validate import Range

from crm2calls.errors import ConfigError
from crm2calls.phones import NOT_A_REGION, is_region
from crm2calls.policy import DEFAULT_CAMPAIGN, Policy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEADS_CONFIG = ROOT / "leads.toml"
DEFAULT_STORE = "sqlite:///instance/leads.db"
MIB = 1024 * 1024
DEFAULT_SALESFORCE_API_VERSION = "v67.0"  # Summer '26, the newest the REST API guide lists


@dataclass(frozen=True)
class CrmSettings:
    """Credentials and API bases of the CRMs; secrets are tuples (current, previous) for rotation."""

    amocrm_base_url: str | None = None
    amocrm_token: str | None = field(default=None, repr=False)
    amocrm_account_id: str | None = None
    amocrm_subdomain: str | None = None
    bitrix24_application_tokens: tuple[str, ...] = field(default=(), repr=False)
    bitrix24_webhook_url: str | None = field(default=None, repr=False)
    hubspot_client_secrets: tuple[str, ...] = field(default=(), repr=False)
    hubspot_token: str | None = field(default=None, repr=False)
    hubspot_base_url: str = "https://api.hubapi.com"
    pipedrive_api_token: str | None = field(default=None, repr=False)
    pipedrive_webhook_user: str | None = None
    pipedrive_webhook_passwords: tuple[str, ...] = field(default=(), repr=False)
    pipedrive_base_url: str = "https://api.pipedrive.com"
    salesforce_organization_id: str | None = None
    # Write-back: a connected app with the client-credentials flow (its "Run As" user writes the Tasks).
    salesforce_instance_url: str | None = None
    salesforce_client_id: str | None = None
    salesforce_client_secret: str | None = field(default=None, repr=False)
    salesforce_api_version: str = DEFAULT_SALESFORCE_API_VERSION
    zoho_notify_tokens: tuple[str, ...] = field(default=(), repr=False)
    zoho_api_domain: str = "https://www.zohoapis.com"
    zoho_accounts_url: str = "https://accounts.zoho.com"
    zoho_client_id: str | None = None
    zoho_client_secret: str | None = field(default=None, repr=False)
    zoho_refresh_token: str | None = field(default=None, repr=False)
    zoho_channel_id: str | None = None
    close_signature_keys: tuple[str, ...] = field(default=(), repr=False)
    close_api_key: str | None = field(default=None, repr=False)
    close_base_url: str = "https://api.close.com"


@dataclass(frozen=True)
class Settings:
    """Everything crm2calls is configured with; built by load_settings() or by tests directly."""

    policy: Policy
    aimylogic_url: str = "https://app.aimylogic.com"
    aimylogic_token: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    leads_config: Path = DEFAULT_LEADS_CONFIG
    leads_store: str = DEFAULT_STORE
    default_region: str = "RU"
    host: str = "127.0.0.1"
    port: int = 5000
    public_base_url: str | None = None
    max_body_bytes: int = MIB
    log_level: str = "INFO"
    dev_mode: bool = False  # serve webhooks without WEBHOOK_SECRET: only `make run` on loopback
    on_lambda: bool = False  # AWS_LAMBDA_FUNCTION_NAME is set: delivery is kicked as an async task
    lambda_function: str | None = None  # AWS_LAMBDA_FUNCTION_NAME: the `service` dimension of the metrics
    metrics_tokens: tuple[str, ...] = field(default=(), repr=False)  # METRICS_TOKEN: /metrics is served
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: gunicorn's workers add up their metrics there
    crm: CrmSettings = field(default_factory=CrmSettings)
    # Entries are logged, not sent: only when asked (DRY_RUN=1), or by `make run` without a token.
    dry_run: bool = False
    # The tokens of the campaigns leads.toml declares, read from their token_env variables; default aside.
    campaign_tokens: dict[str, str] = field(default_factory=dict, repr=False)
    # Each call's outcome POSTed, signed the Standard Webhooks way (crm2calls/results_webhook.py). The URL
    # may carry a token of the receiver's, so it is kept out of reprs and logs like a secret.
    results_webhook_url: str | None = field(default=None, repr=False)
    results_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)

    def campaign_token(self, campaign: str) -> str | None:
        """The token of a campaign: AIMYLOGIC_TOKEN for default, else its token_env's value."""
        if campaign == DEFAULT_CAMPAIGN:
            return self.aimylogic_token
        return self.campaign_tokens.get(campaign)

    def token_env(self, campaign: str) -> str:
        """The environment variable that holds a campaign's token (for messages)."""
        return self.policy.campaigns.get(campaign, "AIMYLOGIC_TOKEN") if self.policy else "AIMYLOGIC_TOKEN"


MISSING_SHARED_KEY = (
    "WEBHOOK_SECRET: required to serve webhooks; set it to a long random value "
    '(python -c "import secrets; print(secrets.token_urlsafe(32))"); '
    "only `make run` on a loopback HOST serves without it, for local development"
)
NO_CAMPAIGN_TOKEN = (
    "AIMYLOGIC_TOKEN: required to send leads to Aimylogic; set the campaign's token, "  # noqa: S105 (a message)
    "or DRY_RUN=1 to log each addPhones body instead of sending it"
)
_HINTS = {
    "PORT": "(give a port number such as 5000)",
    "DRY_RUN": "(1 to log entries instead of sending them, 0 or unset to send)",
    "MAX_BODY_BYTES": "(give a size in bytes, at least 1024; the default is 1048576)",
}


def _secrets(value: str | None) -> tuple[str, ...]:
    """ "current,previous" -> ("current", "previous"): rotation without losing leads."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _check_url(name: str, value: str | None, problems: list[str], *, https_only: bool = False) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"{name}: {value!r} is not an http(s) URL; give e.g. https://example.com")
    elif https_only and parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        problems.append(f"{name}: use https (plain http is only for loopback test servers)")


def _check_secret_url(name: str, value: str | None, problems: list[str]) -> None:
    if value and urlsplit(value).scheme not in ("http", "https"):
        problems.append(f"{name}: not an http(s) URL; paste the whole inbound webhook URL from the CRM")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_policy(path: Path, default_region: str) -> Policy:
    """Read and validate the mapping file; ConfigError lists every problem with its key path."""
    from schemas.policy import PolicySchema, build_policy, flatten_errors

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"LEADS_CONFIG: {path} does not exist; point LEADS_CONFIG at your mapping file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path.name}: not valid TOML ({exc})"]) from None
    try:
        data = PolicySchema().load(raw)
    except ValidationError as exc:
        raise ConfigError([f"{path.name}: {line}" for line in flatten_errors(exc.messages)]) from None
    return build_policy(data, default_region)


def load_settings(*, serving: bool = True, dev_mode: bool = False) -> Settings:
    """Read the environment and the mapping file; raise ConfigError naming every bad variable.

    serving: the process will serve webhooks, so WEBHOOK_SECRET is required unless dev_mode.
    """
    check = check_configuration(serving=serving, dev_mode=dev_mode)
    if check.problems:
        raise ConfigError(check.problems)
    return check.settings


@dataclass
class ConfigCheck:
    """What `config check` reports: every problem, the warnings, and what did load."""

    problems: list[str]
    warnings: list[str]
    settings: Settings | None  # None when there is a problem
    policy: Policy | None  # the mapping file, when it loaded (even if the environment has problems)


# The CRM API settings a source needs to fetch the phone of what its webhooks carry only the id of.
API_SETTINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "amocrm": (("AMOCRM_BASE_URL", "AMOCRM_TOKEN"), "new leads"),
    "bitrix24": (("BITRIX24_WEBHOOK_URL",), "every event"),
    "hubspot": (("HUBSPOT_TOKEN",), "Webhooks API events"),
    "pipedrive": (("PIPEDRIVE_API_TOKEN",), "create.lead events"),
    "zoho": (("ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET", "ZOHO_REFRESH_TOKEN"), "notifications"),
    "close": (("CLOSE_API_KEY",), "every event"),
}


def _missing_api_settings(crm: dict, policy: Policy | None) -> list[str]:
    """One warning naming the sources leads.toml lists whose API settings are missing: their leads would fail."""
    gaps = []
    for source, (names, what) in API_SETTINGS.items():
        missing = [name for name in names if not crm.get(name.lower())]
        if policy is not None and source in policy.sources and missing:
            gaps.append(f"\n      {source}: {', '.join(missing)} (needed for {what})")
    if not gaps:
        return []
    return [
        "CRM API settings MISSING: leads of these sources that arrive without a phone would wait, then end "
        "failed (ignore the CRMs you do not use, or delete their [sources.NAME] tables):" + "".join(gaps)
    ]


def check_configuration(*, serving: bool = True, dev_mode: bool = False) -> ConfigCheck:
    """Read the environment and the mapping file once; collect every problem instead of stopping at the first."""
    env = Env(eager=False)  # collect every problem, then report them all at once
    values = {
        "aimylogic_url": env.str("AIMYLOGIC_URL", "https://app.aimylogic.com").rstrip("/"),
        "aimylogic_token": env.str("AIMYLOGIC_TOKEN", "") or None,
        "webhook_secret": env.str("WEBHOOK_SECRET", ""),
        "leads_config": env.path("LEADS_CONFIG", str(DEFAULT_LEADS_CONFIG)),
        "leads_store": env.str("LEADS_STORE", DEFAULT_STORE),
        "default_region": env.str("DEFAULT_REGION", "RU").upper(),
        "host": env.str("HOST", "127.0.0.1"),
        "port": env.int("PORT", 5000, validate=Range(min=1, max=65535)),
        "public_base_url": env.str("PUBLIC_BASE_URL", "") or None,
        "max_body_bytes": env.int("MAX_BODY_BYTES", MIB, validate=Range(min=1024)),
        "log_level": env.str("LOG_LEVEL", "INFO").upper(),
        "on_lambda": bool(env.str("AWS_LAMBDA_FUNCTION_NAME", "")),
        "dry_run": env.bool("DRY_RUN", False),
        "lambda_function": env.str("AWS_LAMBDA_FUNCTION_NAME", "") or None,
        "metrics_tokens": _secrets(env.str("METRICS_TOKEN", "")),
        "metrics_dir": env.str("PROMETHEUS_MULTIPROC_DIR", "") or None,
        "results_webhook_url": env.str("RESULTS_WEBHOOK_URL", "") or None,
        "results_webhook_secrets": _secrets(env.str("RESULTS_WEBHOOK_SECRET", "")),
    }
    crm = {
        "amocrm_base_url": env.str("AMOCRM_BASE_URL", "") or None,
        "amocrm_token": env.str("AMOCRM_TOKEN", "") or None,
        "amocrm_account_id": env.str("AMOCRM_ACCOUNT_ID", "") or None,
        "amocrm_subdomain": env.str("AMOCRM_SUBDOMAIN", "") or None,
        "bitrix24_application_tokens": _secrets(env.str("BITRIX24_APPLICATION_TOKEN", "")),
        "bitrix24_webhook_url": env.str("BITRIX24_WEBHOOK_URL", "") or None,
        "hubspot_client_secrets": _secrets(env.str("HUBSPOT_CLIENT_SECRET", "")),
        "hubspot_token": env.str("HUBSPOT_TOKEN", "") or None,
        "hubspot_base_url": env.str("HUBSPOT_BASE_URL", "https://api.hubapi.com").rstrip("/"),
        "pipedrive_api_token": env.str("PIPEDRIVE_API_TOKEN", "") or None,
        "pipedrive_webhook_user": env.str("PIPEDRIVE_WEBHOOK_USER", "") or None,
        "pipedrive_webhook_passwords": _secrets(env.str("PIPEDRIVE_WEBHOOK_PASSWORD", "")),
        "pipedrive_base_url": env.str("PIPEDRIVE_BASE_URL", "https://api.pipedrive.com").rstrip("/"),
        "salesforce_organization_id": env.str("SALESFORCE_ORGANIZATION_ID", "") or None,
        "salesforce_instance_url": env.str("SALESFORCE_INSTANCE_URL", "").rstrip("/") or None,
        "salesforce_client_id": env.str("SALESFORCE_CLIENT_ID", "") or None,
        "salesforce_client_secret": env.str("SALESFORCE_CLIENT_SECRET", "") or None,
        "salesforce_api_version": env.str("SALESFORCE_API_VERSION", DEFAULT_SALESFORCE_API_VERSION),
        "zoho_notify_tokens": _secrets(env.str("ZOHO_NOTIFY_TOKEN", "")),
        "zoho_api_domain": env.str("ZOHO_API_DOMAIN", "https://www.zohoapis.com").rstrip("/"),
        "zoho_accounts_url": env.str("ZOHO_ACCOUNTS_URL", "https://accounts.zoho.com").rstrip("/"),
        "zoho_client_id": env.str("ZOHO_CLIENT_ID", "") or None,
        "zoho_client_secret": env.str("ZOHO_CLIENT_SECRET", "") or None,
        "zoho_refresh_token": env.str("ZOHO_REFRESH_TOKEN", "") or None,
        "zoho_channel_id": env.str("ZOHO_CHANNEL_ID", "") or None,
        "close_signature_keys": _secrets(env.str("CLOSE_SIGNATURE_KEY", "")),
        "close_api_key": env.str("CLOSE_API_KEY", "") or None,
        "close_base_url": env.str("CLOSE_BASE_URL", "https://api.close.com").rstrip("/"),
    }
    problems: list[str] = []
    try:
        env.seal()
    except EnvValidationError as exc:
        for name, messages in exc.error_messages.items():
            problems.append(f"{name}: {'; '.join(map(str, messages))} {_HINTS.get(name, '')}".rstrip())

    problems.extend(_check_values(values, crm, serving=serving, dev_mode=dev_mode))
    problems.extend(_check_salesforce_api(crm))
    problems.extend(_check_results_webhook(values))
    policy = None
    if values.get("leads_config") is not None:
        try:
            policy = load_policy(Path(values["leads_config"]), values.get("default_region") or "RU")
        except ConfigError as exc:
            problems.extend(exc.problems)
    tokens: dict[str, str] = {}
    if policy is not None:
        tokens = _campaign_tokens(policy, Path(values["leads_config"]).name, problems, serving, values)
    warnings = _missing_api_settings(crm, policy)
    if problems:
        return ConfigCheck(problems, warnings, None, policy)
    secret = values.pop("webhook_secret")
    values["leads_config"] = Path(values["leads_config"])
    settings = Settings(
        policy=policy,
        webhook_secrets=_secrets(secret),
        dev_mode=dev_mode,
        crm=CrmSettings(**crm),
        campaign_tokens=tokens,
        **values,
    )
    return ConfigCheck(problems, warnings, settings, policy)


def _campaign_tokens(policy: Policy, file: str, problems: list[str], serving: bool, values: dict) -> dict[str, str]:
    """The token of each declared campaign, from its token_env; an unset one is a problem where leads are sent."""
    tokens = {}
    for name, variable in sorted(policy.campaigns.items()):
        token = os.environ.get(variable, "").strip()
        if token:
            tokens[name] = token
        elif serving and not values.get("dry_run"):
            problems.append(
                f"{file}: campaigns.{name}.token_env: {variable} is not set; set it to the token of campaign "
                f"{name} (Outbound calls → Campaign from CRM system → Integration), or DRY_RUN=1"
            )
    return tokens


def _check_values(values: dict, crm: dict, *, serving: bool, dev_mode: bool) -> list[str]:
    problems: list[str] = []
    _check_url("AIMYLOGIC_URL", values.get("aimylogic_url"), problems, https_only=True)
    for name in (
        "AMOCRM_BASE_URL",
        "HUBSPOT_BASE_URL",
        "PIPEDRIVE_BASE_URL",
        "ZOHO_API_DOMAIN",
        "ZOHO_ACCOUNTS_URL",
        "CLOSE_BASE_URL",
    ):
        _check_url(name, crm.get(name.lower()), problems, https_only=True)
    _check_url("PUBLIC_BASE_URL", values.get("public_base_url"), problems)
    _check_secret_url("BITRIX24_WEBHOOK_URL", crm.get("bitrix24_webhook_url"), problems)
    region = values.get("default_region")
    if region is not None and not is_region(region):
        problems.append(f"DEFAULT_REGION: {region!r} {NOT_A_REGION}")
    store = values.get("leads_store") or ""
    if not (store.startswith("sqlite:///") or store.startswith("dynamodb://")):
        problems.append("LEADS_STORE: use sqlite:///relative/path.db, sqlite:////absolute/path.db or dynamodb://TABLE")
    elif store.startswith("sqlite:///") and "?" in store and store.partition("?")[2].lower() not in (
        "synchronous=normal",
        "synchronous=full",
    ):
        problems.append("LEADS_STORE: the only SQLite option is ?synchronous=full (or normal, the default)")
    elif store.startswith("dynamodb://") and not store[len("dynamodb://") :].strip("/"):
        problems.append("LEADS_STORE: dynamodb:// needs a table name, e.g. dynamodb://crm2calls-leads")
    if values.get("log_level") not in (None, "DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("LOG_LEVEL: use DEBUG, INFO, WARNING or ERROR")
    if serving and not dev_mode and not _secrets(values.get("webhook_secret")):
        problems.append(MISSING_SHARED_KEY)
    if not values.get("aimylogic_token") and dev_mode:
        values["dry_run"] = True  # `make run` on a fresh clone: try it before there is a campaign
    elif serving and not values.get("aimylogic_token") and not values.get("dry_run"):
        problems.append(NO_CAMPAIGN_TOKEN)
    metrics_dir = values.get("metrics_dir")
    if values.get("metrics_tokens") and metrics_dir and not Path(metrics_dir).is_dir():
        problems.append(
            f"PROMETHEUS_MULTIPROC_DIR: {metrics_dir} is not a directory; create it, or leave it unset "
            "(gunicorn.conf.py then makes one)"
        )
    if crm.get("pipedrive_webhook_user") and not crm.get("pipedrive_webhook_passwords"):
        problems.append("PIPEDRIVE_WEBHOOK_PASSWORD: set it together with PIPEDRIVE_WEBHOOK_USER")
    return problems


def prepare_metrics_dir() -> str | None:
    """For gunicorn's master, before the workers start: the directory they add up their metrics in.

    None without METRICS_TOKEN. Else PROMETHEUS_MULTIPROC_DIR, or a new temporary directory exported
    under that name, since prometheus_client in each worker reads it when imported.
    """
    env = Env()
    if not _secrets(env.str("METRICS_TOKEN", "")):
        return None
    directory = env.str("PROMETHEUS_MULTIPROC_DIR", "")
    if not directory:
        import tempfile

        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="crm2calls-metrics-")
    return directory


def bind_address() -> str:
    """HOST:PORT for gunicorn's config file; a bad PORT is left to the master's check, which names it."""
    env = Env()
    try:
        port = env.int("PORT", 5000)
    except EnvValidationError:
        port = 5000  # never bound: on_starting stops gunicorn first, naming PORT
    return f"{env.str('HOST', '127.0.0.1')}:{port}"


_SALESFORCE_VERSION = re.compile(r"v?([1-9][0-9]{1,2})\.0")
_SALESFORCE_API = ("SALESFORCE_INSTANCE_URL", "SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET")


def _check_salesforce_api(crm: dict) -> list[str]:
    """Salesforce's write-back settings come as a set of three; the API version as vNN.0 (normalised in place)."""
    problems: list[str] = []
    _check_url("SALESFORCE_INSTANCE_URL", crm.get("salesforce_instance_url"), problems, https_only=True)
    given = [name for name in _SALESFORCE_API if crm.get(name.lower())]
    if given and len(given) < len(_SALESFORCE_API):
        missing = ", ".join(name for name in _SALESFORCE_API if name not in given)
        problems.append(
            f"{missing}: set together with {', '.join(given)} (the connected app of Salesforce write-back; "
            "see docs/crm/salesforce.md), or unset them all"
        )
    version = crm.get("salesforce_api_version")
    match = _SALESFORCE_VERSION.fullmatch(version or "")
    if version is not None and not match:
        problems.append(
            f"SALESFORCE_API_VERSION: {version!r} is not an API version; give e.g. {DEFAULT_SALESFORCE_API_VERSION}"
        )
    elif match:
        crm["salesforce_api_version"] = f"v{match[1]}.0"
    return problems


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
WEBHOOK_SECRET_BYTES = (24, 64)  # what the Standard Webhooks spec asks a signing secret to be


def webhook_secret_key(secret: str) -> bytes | None:
    """The HMAC key of a `whsec_<base64>` secret; None when it is not one."""
    import base64
    import binascii

    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return None
    try:
        return base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_results_webhook(values: dict) -> list[str]:
    """RESULTS_WEBHOOK_URL wants https and at least one `whsec_` secret; messages never quote either."""
    url, secrets = values.get("results_webhook_url"), values.get("results_webhook_secrets") or ()
    problems: list[str] = []
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append("RESULTS_WEBHOOK_URL: not an http(s) URL; give the receiver's whole URL")
        elif parts.scheme != "https" and not is_loopback(parts.hostname or ""):
            problems.append("RESULTS_WEBHOOK_URL: use https (plain http is only for loopback test servers)")
        if not secrets:
            problems.append(
                "RESULTS_WEBHOOK_SECRET: required with RESULTS_WEBHOOK_URL, so the receiver can verify each call; "
                "make one with python -c \"import base64, secrets; print('whsec_' + "
                "base64.b64encode(secrets.token_bytes(32)).decode())\""
            )
    low, high = WEBHOOK_SECRET_BYTES
    for position, secret in enumerate(secrets, 1):
        key = webhook_secret_key(secret)
        if key is None:
            problems.append(f"RESULTS_WEBHOOK_SECRET: secret {position} is not whsec_ followed by base64")
        elif not low <= len(key) <= high:
            problems.append(
                f"RESULTS_WEBHOOK_SECRET: secret {position} decodes to {len(key)} bytes; use {low} to {high}"
            )
    return problems
