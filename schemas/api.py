"""Our own HTTP API's response bodies, as marshmallow schemas: crm2calls/openapi.py describes them."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from crm2calls.model import Status
from schemas.phone_entry import PhoneEntrySchema

STATUSES = [status.value for status in Status]
OUTCOMES = ["accepted", "duplicate", "rejected", "canceled"]  # IntakeResult.outcome: internal states stay internal


class ErrorSchema(Schema):
    """Every refusal: what is wrong and where, never the credentials that were sent."""

    error = fields.String(
        required=True,
        metadata={"description": "A stable code: malformed, unauthorized, forbidden, unknown_source, "
                  "method_not_allowed, request_entity_too_large, unsupported_media_type, unavailable, ..."},
    )
    message = fields.String(required=True, metadata={"description": "What to fix, for a person."})
    field = fields.String(metadata={"description": "The body field, header or query parameter at fault."})


class LeadSummarySchema(Schema):
    """What became of one lead of a webhook (IntakeResult.as_json)."""

    ref = fields.String(required=True, metadata={"description": "The CRM's id of the lead or contact, or -."})
    status = fields.String(
        required=True,
        validate=validate.OneOf(OUTCOMES),
        metadata={"description": "accepted: it will be called; duplicate: the person was called recently; "
                  "rejected: well-formed but unusable (no or invalid phone): stored, never called; "
                  "canceled: the CRM stopped the record before this lead arrived: stored, never called."},
    )
    lead_id = fields.String(metadata={"description": "Our id of the stored lead."})
    reason = fields.String(metadata={"description": "Why it was rejected, is a duplicate, or was already received."})
    field = fields.String()


class StopLeadSchema(Schema):
    """What a stop did to one of our leads of the record."""

    lead_id = fields.String(required=True)
    did = fields.String(
        required=True,
        validate=validate.OneOf(
            ["canceled", "cancel_planned", "check_planned", "recorded", "nothing", "deferred", "already stopped"]
        ),
        metadata={"description": "canceled: never sent; cancel_planned: its queued job is cancelled in Aimylogic; "
                  "check_planned: the CRM record is looked up first; recorded: its call had ended, kept; "
                  "deferred: a worker held it and applies the stop after its own write."},
    )


class StopSummarySchema(Schema):
    """What one stop event ("stop calling this record") did (crm2calls/stops.py StopResult.as_json)."""

    record = fields.String(required=True, metadata={"description": "The CRM record it names, as leads' ref holds it."})
    reason = fields.String(required=True)
    status = fields.String(metadata={"description": "already received: a repeat, answered as the first time."})
    leads = fields.List(fields.Nested(StopLeadSchema), required=True)
    tombstone = fields.Boolean(metadata={"description": "No lead of the record yet: a later one is not called."})


class LeadsAckSchema(Schema):
    """The default acknowledgement: one summary per lead event of the request, and per stop event."""

    source = fields.String(required=True)
    leads = fields.List(fields.Nested(LeadSummarySchema), required=True)
    stops = fields.List(fields.Nested(StopSummarySchema), metadata={"description": "Only when the body held stops."})


class CountAckSchema(Schema):
    """The short acknowledgement of CRMs that only need a fast 200 (amoCRM, Bitrix24)."""

    ok = fields.Boolean(required=True)
    leads = fields.Integer(required=True, validate=validate.Range(min=0), metadata={"description": "Events taken."})


REASON_CODES = [
    "store_unreachable",
    "delivery_stalled",
    "lead_waiting_too_long",
    "backlog_high",
    "token_refused",
    "campaign_held",
    "crm_credentials_refused",
    "dry_run",
    "cancels_retrying",
]


class ReasonSchema(Schema):
    """Why the service is not simply ok, and what to do (docs/operations.md lists every code)."""

    code = fields.String(required=True, validate=validate.OneOf(REASON_CODES))
    message = fields.String(required=True)


class CampaignHealthSchema(Schema):
    """One campaign in /healthz."""

    aimylogic = fields.String(
        required=True, allow_none=True,
        metadata={"description": "The campaign's last known status at Aimylogic (inProcess, paused, ...), or null."},
    )
    delivery = fields.String(
        required=True, allow_none=True, validate=validate.OneOf(["sending", "held", "token_refused"]),
        metadata={"description": "sending; held by a spend guard; or paused: Aimylogic refused the token."},
    )
    held = fields.Integer(required=True, validate=validate.Range(min=0), metadata={"description": "Leads held back."})
    reason = fields.String(metadata={"description": "Why it is not sending, and what fixes it."})
    oldest_waiting_s = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "Age of the campaign's oldest lead waiting to be sent (0: none); after a pass."},
    )


class HealthSchema(Schema):
    """GET /healthz: ok, degraded (200) or failing (503), with its reasons; the same on every platform."""

    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded", "failing"]))
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)
    dry_run = fields.Boolean(required=True, metadata={"description": "Entries are logged, nothing is sent."})
    campaigns = fields.Dict(
        keys=fields.String(), values=fields.Nested(CampaignHealthSchema), required=True,
        metadata={"description": "By campaign name; empty when the lead store cannot be reached."},
    )
    oldest_waiting_s = fields.Integer(
        required=True, allow_none=True, validate=validate.Range(min=0),
        metadata={"description": "Age of the oldest lead waiting to be sent (held ones aside); null before a pass."},
    )
    backlog = fields.Integer(
        required=True, allow_none=True, validate=validate.Range(min=0),
        metadata={"description": "Leads waiting to be sent, as the latest delivery pass saw them; null before one."},
    )
    cancels_retrying = fields.Integer(
        validate=validate.Range(min=1),
        metadata={"description": "Stopped leads whose job cancel Aimylogic has not taken yet; absent when none."},
    )
    counts = fields.Dict(
        keys=fields.String(validate=validate.OneOf(STATUSES)),
        values=fields.Integer(validate=validate.Range(min=0)),
        required=True, allow_none=True,
        metadata={"description": "Leads per status, every status listed, from maintained counts (no scan); "
                  "null when the lead store cannot be reached."},
    )


class PreviewLeadSchema(Schema):
    """What a webhook would do with one lead event."""

    ref = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["ok", "rejected", "error"]))
    gmtZone = fields.String(metadata={"description": "The zone the call window uses (ok only)."})
    zone_reason = fields.String(metadata={"description": "Why that zone (ok only)."})
    field = fields.String(allow_none=True, metadata={"description": "The lead field at fault (rejected only)."})
    reason = fields.String(metadata={"description": "Why it cannot be called (rejected, error)."})


class PreviewSchema(Schema):
    """POST /preview/{source}: the addPhones body a webhook would produce; nothing is stored or sent."""

    source = fields.String(required=True)
    addPhones = fields.List(fields.Nested(PhoneEntrySchema), required=True)
    leads = fields.List(fields.Nested(PreviewLeadSchema), required=True)
