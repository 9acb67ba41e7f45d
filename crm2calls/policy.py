"""Call policy and field mapping, as loaded from the mapping file (leads.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import time

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Interval:
    """A span of local time within one day, start before end."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class CallWindow:
    """When a customer may be called, in the customer's local time, and how often."""

    days: tuple[str, ...]
    hours: dict[str, tuple[Interval, ...]]  # "default" and optional per-day keys
    retry_interval_minutes: int
    max_call_attempts: int  # Aimylogic's maxAttempts: how often Aimylogic dials
    call_within_hours: int  # finishDateTime = arrival + this

    def intervals_for(self, day: str) -> tuple[Interval, ...]:
        """The intervals for a weekday, falling back to "default"."""
        return self.hours.get(day, self.hours.get("default", ()))


@dataclass(frozen=True)
class FieldMap:
    """Dotted paths into a lead's fields."""

    id: str | None = "id"
    phones: tuple[str, ...] = ("phone",)
    name: str | None = "name"
    zone: str | None = "timezone"
    city: str | None = "city"


DEFAULT_CAMPAIGN = "default"  # the campaign of AIMYLOGIC_TOKEN

# [sources.X] stop_values when the file gives none: each CRM's own ids of the statuses that mean "stop calling".
# Bitrix24 needs none (its semantic S/F says it), Close none (its statuses are the account's own: deletions only),
# Pipedrive's stops are fixed (lead archived, deal won or lost, person or lead deleted).
STOP_DEFAULTS: dict[str, tuple[str, ...]] = {
    "amocrm": ("142", "143"),  # the system statuses "won" and "lost" of every pipeline
    "hubspot": ("UNQUALIFIED",),  # hs_lead_status
    "salesforce": ("Closed - Converted", "Closed - Not Converted"),  # the default Lead Status picklist
    "zoho": ("Lost Lead", "Junk Lead", "Not Qualified"),  # the default Lead_Status picklist
}
STOP_PROPERTY = "hs_lead_status"  # HubSpot's contact property whose values stop_values lists


@dataclass(frozen=True)
class CampaignRoute:
    """[sources.X.campaign_by]: the campaign chosen by a field of the lead, its values compared as text."""

    field: str  # a dotted path, read like the source's payload mapping
    map: dict[str, str]  # field value as text -> campaign name
    default: str | None = None  # for values not in map; None: the source's campaign


# The placeholders a write-back note may use ([sources.X.results] note); crm2calls/writeback.py fills them.
NOTE_PLACEHOLDERS = (
    "outcome", "job_status", "call_result", "duration_s", "attempts", "campaign", "finished_at", "report", "job_id",
)
NOTE_LANGUAGES = ("en", "ru")
# Regions whose teams read Russian: their notes default to Russian; any other region's to English.
RUSSIAN_REGIONS = frozenset({"RU", "BY", "KZ", "KG"})


@dataclass(frozen=True)
class ResultsPolicy:
    """[sources.X.results]: whether and how a call's outcome is written back onto the CRM record."""

    write_back: bool | None = None  # None: on when the CRM's API credentials are set
    note: str | None = None  # None: the default note of `language` (crm2calls/writeback.py)
    language: str | None = None  # "en" or "ru"; None: by the source's region

    def language_for(self, region: str) -> str:
        """The note's language: the one set, else Russian for ru-region teams, else English."""
        return self.language or ("ru" if region.upper() in RUSSIAN_REGIONS else "en")


@dataclass(frozen=True)
class SourcePolicy:
    """Everything one source needs to turn its leads into phone entries."""

    name: str
    region: str
    window: CallWindow
    fields: FieldMap
    payload: dict[str, str] | None  # payload key -> dotted path; None: every unmapped top-level field
    records_path: str | None  # where a JSON body holds its array of leads
    phone_preference: tuple[str, ...]  # phone kinds in order; "primary" and "any" are special
    status_ids: tuple[str, ...] = ()  # amoCRM leads[status]: stage ids that trigger a call
    campaign: str = DEFAULT_CAMPAIGN  # where its leads go, unless campaign_by routes them
    campaign_by: CampaignRoute | None = None
    default_zone: str | None = None  # None: [calls] default_zone
    results: ResultsPolicy = field(default_factory=ResultsPolicy)

    stop_values: tuple[str, ...] | None = None  # CRM status ids that mean "stop calling"; None: STOP_DEFAULTS
    stop_property: str = STOP_PROPERTY  # HubSpot only: the contact property stop_values are values of

    @property
    def stop_statuses(self) -> tuple[str, ...]:
        """stop_values as the file gives them, or this CRM's defaults."""
        return self.stop_values if self.stop_values is not None else STOP_DEFAULTS.get(self.name, ())

    def campaign_for(self, value: str | None) -> str:
        """The campaign of a lead whose campaign_by field reads `value` (as text; None when missing)."""
        if self.campaign_by is None:
            return self.campaign
        if value is not None and value in self.campaign_by.map:
            return self.campaign_by.map[value]
        return self.campaign_by.default or self.campaign


@dataclass(frozen=True)
class DeliveryPolicy:
    """How pending leads reach Aimylogic."""

    batch_size: int = 100
    concurrency: int = 4
    max_send_attempts: int = 50  # addPhones attempts before a lead becomes "failed"
    max_age_hours: int = 72
    backoff_base_seconds: float = 5.0
    backoff_cap_seconds: float = 300.0
    lease_seconds: int = 120
    poll_seconds: float = 2.0  # how often the local worker looks for due retries when no new lead wakes it
    enrich_max_attempts: int = 6


@dataclass(frozen=True)
class GuardPolicy:
    """Spend and compliance limits; 0 means no limit."""

    calls_per_minute: int = 0
    calls_per_day: int = 0
    per_number_per_day: int = 0
    per_number_per_week: int = 0
    per_number_per_month: int = 0


@dataclass(frozen=True)
class HealthPolicy:
    """When /healthz calls the backlog degraded."""

    max_waiting_minutes: int = 10  # the oldest lead waiting to be sent is older than this
    max_backlog: int = 1000  # more leads than this wait to be sent


@dataclass(frozen=True)
class Policy:
    """The whole mapping file."""

    default_zone: str
    safe_hours: Interval
    allow_outside_safe_hours: bool
    duplicate_window_hours: int
    delivery: DeliveryPolicy
    guards: GuardPolicy
    cities: dict[str, str]  # casefolded city or region name -> IANA zone
    defaults: SourcePolicy  # used for sources the file does not list
    sources: dict[str, SourcePolicy] = field(default_factory=dict)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    campaigns: dict[str, str] = field(default_factory=dict)  # [campaigns.NAME] -> token_env; default aside

    def source(self, name: str) -> SourcePolicy:
        """The policy of a source, or the defaults under its name."""
        if name in self.sources:
            return self.sources[name]
        return replace(self.defaults, name=name)

    def campaign_names(self) -> tuple[str, ...]:
        """Every campaign: default first, then the declared ones."""
        return (DEFAULT_CAMPAIGN, *sorted(self.campaigns))
