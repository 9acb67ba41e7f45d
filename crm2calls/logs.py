"""Structured logs: one JSON line per event, phones masked, secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from typing import Any

from crm2calls.model import LeadRecord

_SECRET_QUERY = re.compile(r"(?i)([?&](?:key|api_token|token|secret|password|access_token)=)[^&\s\"']*")
_TOKEN_PATH = re.compile(r"(/api/(?:crm)?[cC]alls/campaign/)[^/\s\"']+")
_BITRIX_PATH = re.compile(r"(/rest/\d+/)[^/\s\"']+")
# 9 to 15 digits, contiguous or as people type them: +7 912 000-42-42, 8 (912) 000-42-42. Not followed by
# ":<digit>", so "2026-11-26 22:12" (a date and an hour) is not taken for a phone.
_PHONE_LIKE = re.compile(r"(?<!\d)\+?\(?\d(?:[ ()-]{0,2}\d){8,14}(?!\d|:\d)")
_NOT_DIGIT = re.compile(r"\D")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _mask_phone(match: re.Match[str]) -> str:
    digits = _NOT_DIGIT.sub("", match[0])
    return f"{'+' if match[0].startswith('+') else ''}{digits[:4]}{'*' * (len(digits) - 6)}{digits[-2:]}"


def redact(text: str) -> str:
    """Remove secrets from URLs and mask anything that looks like a phone number."""
    # Substring checks first: this runs on every log record, and most carry no URL.
    if "=" in text:
        text = _SECRET_QUERY.sub(r"\1***", text)
    if "/api/" in text:
        text = _TOKEN_PATH.sub(r"\1***", text)
    if "/rest/" in text:
        text = _BITRIX_PATH.sub(r"\1***", text)
    return _PHONE_LIKE.sub(_mask_phone, text)


def redact_record(record: logging.LogRecord) -> None:
    """Freeze a record's message, traceback and stack text redacted."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it when a handler formats the record
        return
    cleaned = redact(message)
    if cleaned != message or record.args:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_record_redaction() -> None:
    """Redact every record as it is created, whichever logger makes it and whichever handler prints it.

    A record factory rather than handler filters: libraries and platforms add handlers of their own
    (Zappa's basicConfig, the Lambda runtime's, a test's caplog) after we configure ours, and a
    factory sees every record before any handler does. It runs only for records a logger's level lets
    through, so disabled DEBUG logging costs nothing.
    """
    current = logging.getLogRecordFactory()
    if getattr(current, "_crm2calls_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        redact_record(record)
        return record

    factory._crm2calls_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, fields from `extra={"fields": {...}}` merged in."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if "\x1b" in message:  # Werkzeug colours its lines for a terminal; a JSON log wants the text
            message = _ANSI_ESCAPE.sub("", message)
        body: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["error"] = redact(record.exc_text or self.formatException(record.exc_info))
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send our JSON lines to stderr, redact every record; idempotent (the factory may run more than once in tests)."""
    install_record_redaction()
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_crm2calls", False):
            handler.setLevel(level)
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler._crm2calls = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter())
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
        "campaign": record.campaign,
        "ref": record.ref,
        "status": str(record.status),
        "attempt": record.attempts,
        "phone": record.phone_masked,
        "age_s": round((record.updated_at - record.created_at).total_seconds(), 1),  # since it arrived
    }
    if record.job_id:
        line["job_id"] = record.job_id
    line.update(fields)
    logging.getLogger("crm2calls.leads").info(
        "lead %s %s%s", record.id, record.status, f": {note}" if note else "", extra={"fields": line}
    )
