"""A pytest plugin: every log record of the whole session is scanned for canary secrets and phones.

Tests seed the canaries below into keys, tokens, URLs, bodies and leads. A handler on the root
logger (installed at session start, level DEBUG) formats each record as a log line would carry it:
the message, the traceback text and the structured `fields`. If a canary token or secret, the
canary phone in any common format, or the raw-body marker appears in any record, the run fails at
session end with the test and logger that leaked it.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from dataclasses import dataclass
from urllib.parse import quote

import pytest

CANARY_PHONE = "+7 912 000-42-42"
CANARY_PHONE_DIGITS = "79120004242"
CANARY_PHONE_MASKED = "7912*****42"  # how logs may show it
CANARY_TOKEN = "cnryAimyTok3nQ7x"  # the Aimylogic campaign token: it lives in URL paths
CANARY_SECRET = "cnryHookSecr3tK5w"  # WEBHOOK_SECRET and CRM signing secrets
CANARY_CRM_TOKEN = "cnryCrmT0kenP2v"  # CRM API tokens, Bitrix24's inbound webhook code
CANARY_BODY = "cnryRawB0dyM8z"  # put where only a raw body would carry it: never logged
SECRETS = (CANARY_TOKEN, CANARY_SECRET, CANARY_CRM_TOKEN, CANARY_BODY)

# The national number with any separators between its digits: +7..., 8..., digits only, (912) 000-42-42.
_NATIONAL = CANARY_PHONE_DIGITS[1:]
PHONE_LEAK = re.compile(r"[\s().\-]*".join(_NATIONAL))


@dataclass(frozen=True)
class Leak:
    """One canary found in one log record."""

    test: str
    logger: str
    canary: str
    excerpt: str


def find_canaries(text: str) -> list[str]:
    """The canaries present in a text: secrets as they are or percent-encoded, the phone in any format."""
    found = [secret for secret in SECRETS if secret in text or quote(secret, safe="") in text]
    if PHONE_LEAK.search(text):
        found.append(CANARY_PHONE)
    return found


def record_text(record: logging.LogRecord) -> str:
    """What a log line built from this record could carry: message, traceback, stack and fields."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a broken format string: scan what is there
        parts = [str(record.msg), repr(record.args)]
    if record.exc_text:
        parts.append(record.exc_text)
    elif record.exc_info and record.exc_info[0] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.stack_info:
        parts.append(record.stack_info)
    fields = getattr(record, "fields", None)
    if fields is not None:
        parts.append(json.dumps(fields, ensure_ascii=False, default=str))
    return "\n".join(parts)


class CanaryHandler(logging.Handler):
    """Collects a Leak for every record that carries a canary."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[Leak] = []
        self.test = "(outside a test)"
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        text = record_text(record)
        for canary in find_canaries(text):
            self.leaks.append(Leak(self.test, record.name, canary, _excerpt(text, canary)))

    def leaks_of(self, test: str) -> list[Leak]:
        """The leaks recorded while `test` ran."""
        return [leak for leak in self.leaks if leak.test == test]


def _excerpt(text: str, canary: str) -> str:
    match = PHONE_LEAK.search(text) if canary == CANARY_PHONE else re.search(re.escape(canary), text)
    start = max(0, match.start() - 60) if match else 0
    return text[start : start + 160].replace("\n", " | ")


HANDLER = CanaryHandler()


def pytest_sessionstart(session: pytest.Session) -> None:
    logging.getLogger().addHandler(HANDLER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    HANDLER.test = item.nodeid
    try:
        return (yield)
    finally:
        HANDLER.test = "(outside a test)"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(HANDLER)
    if HANDLER.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not HANDLER.leaks:
        return
    terminalreporter.section("log canaries: secrets or phones reached a log record", sep="=", red=True)
    for leak in HANDLER.leaks[:50]:
        terminalreporter.write_line(f"{leak.test} [{leak.logger}] {leak.canary!r}: ...{leak.excerpt}...")
    if len(HANDLER.leaks) > 50:
        terminalreporter.write_line(f"... and {len(HANDLER.leaks) - 50} more")


@pytest.fixture
def canary_leaks(request: pytest.FixtureRequest):
    """A function returning the leaks recorded so far by the running test."""
    return lambda: HANDLER.leaks_of(request.node.nodeid)
