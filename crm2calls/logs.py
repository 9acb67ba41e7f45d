"""Structured logs: one JSON line per event, phones masked, secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from crm2calls.model import LeadRecord

_SECRET_QUERY = re.compile(r"(?i)([?&](?:key|api_token|token|secret|password|access_token)=)[^&\s\"']*")
_TOKEN_PATH = re.compile(r"(/api/(?:crm)?[cC]alls/campaign/)[^/\s\"']+")
_BITRIX_PATH = re.compile(r"(/rest/\d+/)[^/\s\"']+")
_LONG_DIGITS = re.compile(r"(?<!\d)(\+?)(\d{4})(\d{3,9})(\d{2})(?!\d)")


def redact(text: str) -> str:
    """Remove secrets from URLs and mask anything that looks like a phone number."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _TOKEN_PATH.sub(r"\1***", text)
    text = _BITRIX_PATH.sub(r"\1***", text)
    return _LONG_DIGITS.sub(lambda m: f"{m[1]}{m[2]}{'*' * len(m[3])}{m[4]}", text)


class RedactingFilter(logging.Filter):
    """Applied to every handler: no record leaves with a token, a secret or a full phone."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, fields from `extra={"fields": {...}}` merged in."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send our JSON lines to stderr; idempotent (the factory may run more than once in tests)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_crm2calls", False):
            handler.setLevel(level)
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler._crm2calls = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RedactingFilter())
        handler.setLevel(level)
        root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("crm2calls").setLevel(level)


def log_transition(record: LeadRecord, note: str = "", **fields: Any) -> None:
    """The one line per lead transition that tells an operator what happened to each lead."""
    line = {
        "event": "lead",
        "lead_id": record.id,
        "source": record.source,
        "ref": record.ref,
        "status": str(record.status),
        "attempt": record.attempts,
        "phone": record.phone_masked,
    }
    if record.job_id:
        line["job_id"] = record.job_id
    line.update(fields)
    logging.getLogger("crm2calls.leads").info(
        "lead %s %s%s", record.id, record.status, f": {note}" if note else "", extra={"fields": line}
    )
