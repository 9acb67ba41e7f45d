"""Our own HTTP API's response bodies, as marshmallow schemas: crm2calls/openapi.py describes them."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from crm2calls.model import Status
from schemas.phone_entry import PhoneEntrySchema

STATUSES = [status.value for status in Status]
OUTCOMES = ["accepted", "duplicate", "rejected"]  # IntakeResult.outcome: internal states stay internal


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
                  "rejected: well-formed but unusable (no or invalid phone): stored, never called."},
    )
    lead_id = fields.String(metadata={"description": "Our id of the stored lead."})
    reason = fields.String(metadata={"description": "Why it was rejected, is a duplicate, or was already received."})
    field = fields.String()


class LeadsAckSchema(Schema):
    """The default acknowledgement: one summary per lead event of the request."""

    source = fields.String(required=True)
    leads = fields.List(fields.Nested(LeadSummarySchema), required=True)


class CountAckSchema(Schema):
    """The short acknowledgement of CRMs that only need a fast 200 (amoCRM, Bitrix24)."""

    ok = fields.Boolean(required=True)
    leads = fields.Integer(required=True, validate=validate.Range(min=0), metadata={"description": "Events taken."})


class DeliveryStateSchema(Schema):
    """Whether delivery to Aimylogic is paused, and why."""

    paused = fields.Boolean(required=True)
    reason = fields.String(allow_none=True)


class ReasonSchema(Schema):
    """Why the service is not simply ok, and what to do."""

    code = fields.String(required=True, validate=validate.OneOf(["dry_run"]))
    message = fields.String(required=True)


class CampaignHealthSchema(Schema):
    """One campaign in /healthz."""

    aimylogic = fields.String(
        allow_none=True, required=True, metadata={"description": "Aimylogic's last known status; null before asked."}
    )
    delivery = fields.String(required=True, validate=validate.OneOf(["sending", "held", "token_refused"]))
    held = fields.Integer(required=True, metadata={"description": "Its leads held, as the last delivery pass counted."})
    reason = fields.String(metadata={"description": "Why it is not sending, and what fixes it."})


class HealthSchema(Schema):
    """GET /healthz when ready: ok, or degraded with its reasons."""

    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded"]))
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)
    dry_run = fields.Boolean(required=True, metadata={"description": "Entries are logged, nothing is sent."})
    leads = fields.Dict(
        keys=fields.String(validate=validate.OneOf(STATUSES)),
        values=fields.Integer(),
        metadata={"description": "Leads per status, only with ?counts=1 (a full table scan on DynamoDB)."},
    )
    delivery = fields.Nested(DeliveryStateSchema, required=True)
    guard = fields.Dict(metadata={"description": "Present while a guard holds leads back."})
    campaigns = fields.Dict(keys=fields.String(), values=fields.Nested(CampaignHealthSchema), required=True)


class UnavailableSchema(Schema):
    """GET /healthz when the lead store cannot be reached."""

    status = fields.String(required=True, validate=validate.OneOf(["unavailable"]))
    reason = fields.String(required=True)


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
