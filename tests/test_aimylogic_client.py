"""The Aimylogic client against the local emulator: job ids, every error kind, and the token kept secret."""

from __future__ import annotations

import copy
import json
import logging
import socket
import socketserver
import threading
from contextlib import contextmanager
from datetime import timedelta
from email.utils import format_datetime

import pytest
from werkzeug.wrappers import Request, Response

from crm2calls.aimylogic import AimylogicClient, DryRunDialer, make_dialer
from crm2calls.config import Settings
from crm2calls.errors import AuthError, ConfigError, RejectedError, UnavailableError
from crm2calls.http import parse_retry_after
from tests.conftest import FIXTURES, TOKEN
from tests.emulators.aimylogic import AimylogicEmulator
from tests.emulators.base import LocalServer

ENTRY = json.loads((FIXTURES / "aimylogic" / "entry.json").read_text())


def entry(**changes) -> dict:
    """The fixture entry with fields replaced (a value of ... removes the field)."""
    value = copy.deepcopy(ENTRY)
    for name, new in changes.items():
        if new is ...:
            value.pop(name)
        else:
            value[name] = new
    return value


@pytest.fixture
def client(aimylogic, clock):
    return AimylogicClient(aimylogic.url, TOKEN, timeout=(1.0, 2.0), clock=clock)


@contextmanager
def trap_server():
    """A server that must never be reached; counts its hits."""
    hits = []

    @Request.application
    def app(request):
        hits.append(request.path)
        return Response("trapped", 200)

    with LocalServer(app) as server:
        yield server, hits


@contextmanager
def dropping_server():
    """Reads the request, then closes the connection without answering; counts connections."""
    hits = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            hits.append(self.request.recv(65536))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def free_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Success


def test_add_phones_returns_job_ids_as_strings_in_request_order(client, aimylogic):
    entries = [entry(phone="79123456701"), entry(phone="79123456702"), entry(phone="79123456703")]

    ids = client.add_phones(entries)

    assert len(ids) == 3 and all(isinstance(i, str) and i.isdigit() for i in ids)
    assert [aimylogic.calls[i]["phone"] for i in ids] == ["79123456701", "79123456702", "79123456703"]
    assert aimylogic.requests[0].json() == entries
    assert aimylogic.requests[0].method == "POST"


def test_numeric_job_ids_become_strings(client, aimylogic):
    aimylogic.fail_next(200, body="[5665334669, 5665334671]")  # scripted success: ids as JSON numbers

    assert client.add_phones([entry(phone="79123456701"), entry(phone="79123456702")]) == ["5665334669", "5665334671"]


def test_duplicate_entries_within_24_hours_get_the_first_job_id(client, aimylogic, clock):
    first = client.add_phones([entry()])
    again = client.add_phones([entry()])
    other_payload = client.add_phones([entry(payload={"name": "Bob"})])
    clock.advance(hours=24)
    next_day = client.add_phones([entry()])

    assert again == first
    assert other_payload != first and next_day != first
    assert aimylogic.duplicates_ignored == 1
    assert len(aimylogic.calls) == 3 and len(aimylogic.entries) == 4


def test_test_call_places_a_call_each_time_and_passes_the_payload(client, aimylogic):
    first = client.test_call("79123456789", {"name": "Alex"})
    second = client.test_call("79123456789", {"name": "Alex"})

    assert first.isdigit() and second.isdigit() and first != second  # no duplicate guard on test/addPhone
    assert aimylogic.test_calls[first] == {"phone": "79123456789", "name": "Alex"}
    assert aimylogic.requests[0].method == "GET"


def test_campaign_status_is_the_bare_string(client, aimylogic):
    assert client.campaign_status() == "inProcess"
    aimylogic.pause()
    assert client.campaign_status() == "paused"


# The documented rules, each broken once: 400 naming the element and the field, nothing added.

BAD_ENTRIES = [
    ("phone", {"phone": ...}),
    ("phone", {"phone": "+79123456789"}),
    ("phone", {"phone": "8 912 345-67-89"}),
    ("payload", {"payload": ["not", "an", "object"]}),
    ("allowedDays", {"allowedDays": ["mon", "funday"]}),
    ("allowedDays", {"allowedDays": ["mon", "mon"]}),
    ("allowedTime.default[0].localTimeTo", {"allowedTime": {"default": [{"localTimeFrom": "10:00"}]}}),
    ("allowedTime.default[0].localTimeFrom", {"allowedTime": {"default": [{"localTimeTo": "18:00"}]}}),
    ("allowedTime.default[0].localTimeFrom", {"allowedTime": {"default": [{"localTimeFrom": "9:00",
                                                                           "localTimeTo": "18:00"}]}}),
    ("allowedTime.mon", {"allowedTime": {"mon": [{"localTimeFrom": "10:00", "localTimeTo": "12:00"},
                                                 {"localTimeFrom": "11:59", "localTimeTo": "14:00"}]}}),
    ("allowedTime.someday", {"allowedTime": {"someday": [{"localTimeFrom": "10:00", "localTimeTo": "12:00"}]}}),
    ("retryIntervalInMinutes", {"retryIntervalInMinutes": -1}),
    ("retryIntervalInMinutes", {"retryIntervalInMinutes": 1.5}),
    ("maxAttempts", {"maxAttempts": "3"}),
    ("gmtZone", {"gmtZone": "+18:01"}),
    ("gmtZone", {"gmtZone": "+3:00"}),
    ("gmtZone", {"gmtZone": "Mars/Olympus"}),
    ("startDateTime", {"startDateTime": "2026-11-26T09:00:00"}),  # no offset
    ("finishDateTime", {"finishDateTime": "2026-11-26T08:00:00Z"}),  # before the start
    ("gmtzone", {"gmtzone": "+03:00"}),  # a misspelt field
]


@pytest.mark.parametrize(("field", "changes"), BAD_ENTRIES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_ENTRIES)])
def test_a_bad_entry_is_rejected_with_its_index_and_field(client, aimylogic, field, changes):
    with pytest.raises(RejectedError) as caught:
        client.add_phones([entry(phone="79123456701"), entry(**changes)])

    assert f"element 1: {field}" in caught.value.message
    assert "HTTP 400" in caught.value.message
    assert aimylogic.entries == [] and aimylogic.calls == {}


@pytest.mark.parametrize(
    "zone", ["Z", "UTC", "GMT", "UT", "+3", "-03", "+0330", "+03:30", "-03:30:15", "+033015", "UTC+3", "GMT-05:00",
             "UT+18", "-18:00", "Europe/Moscow", "America/Argentina/Buenos_Aires"],
)
def test_every_documented_gmt_zone_form_is_accepted(client, aimylogic, zone):
    assert len(client.add_phones([entry(gmtZone=zone)])) == 1


def test_a_body_that_is_not_an_array_is_rejected(client):
    with pytest.raises(RejectedError, match="JSON array"):
        client.add_phones(entry())  # type: ignore[arg-type]  # one object, not an array of them


# Errors: one typed exception per kind


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_an_auth_error_naming_the_fix(client, aimylogic, status):
    aimylogic.fail_next(status)

    with pytest.raises(AuthError) as caught:
        client.add_phones([entry()])

    assert f"HTTP {status}" in caught.value.message
    assert "AIMYLOGIC_TOKEN" in caught.value.message and "Integration" in caught.value.message


def test_wrong_token_is_404_auth_error(aimylogic, clock):
    client = AimylogicClient(aimylogic.url, "1.2.stale", clock=clock)

    with pytest.raises(AuthError, match="HTTP 404"):
        client.add_phones([entry()])
    assert aimylogic.calls == {}


def test_429_retry_after_seconds(client, aimylogic):
    aimylogic.fail_next(429, retry_after=120)

    with pytest.raises(UnavailableError) as caught:
        client.add_phones([entry()])

    assert caught.value.retry_after == 120
    assert "HTTP 429" in caught.value.message


def test_429_retry_after_http_date_is_relative_to_the_clock(client, aimylogic, clock):
    aimylogic.fail_next(429, retry_after=format_datetime(clock() + timedelta(minutes=5), usegmt=True))

    with pytest.raises(UnavailableError) as caught:
        client.add_phones([entry()])

    assert caught.value.retry_after == 300


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_unavailable(client, aimylogic, status):
    aimylogic.fail_next(status)

    with pytest.raises(UnavailableError, match=f"HTTP {status}") as caught:
        client.add_phones([entry()])
    assert caught.value.retry_after is None


def test_paused_campaign_is_unavailable(client, aimylogic):
    aimylogic.pause()

    with pytest.raises(UnavailableError, match="paused"):
        client.add_phones([entry()])
    assert aimylogic.calls == {}


def test_read_timeout_is_unavailable(aimylogic, clock):
    client = AimylogicClient(aimylogic.url, TOKEN, timeout=(1.0, 0.3), clock=clock)
    aimylogic.hang(10)

    with pytest.raises(UnavailableError, match=r"within 0.3 s \(read timeout\)"):
        client.add_phones([entry()])
    aimylogic.recover()


def test_connection_refused_is_unavailable(clock):
    client = AimylogicClient(free_port_url(), TOKEN, timeout=(1.0, 2.0), clock=clock)

    with pytest.raises(UnavailableError, match="cannot connect"):
        client.add_phones([entry()])


def test_a_post_that_reached_the_server_is_not_retried(clock):
    with dropping_server() as (url, hits):
        client = AimylogicClient(url, TOKEN, timeout=(1.0, 2.0), clock=clock)
        with pytest.raises(UnavailableError):
            client.add_phones([entry()])

    assert len(hits) == 1  # a retry here could place the call twice


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(client, aimylogic, status):
    with trap_server() as (trap, hits):
        aimylogic.fail_next(status, headers={"Location": f"{trap.url}/api/calls/campaign/{TOKEN}/addPhones"})

        with pytest.raises(AuthError) as caught:
            client.add_phones([entry()])

    assert hits == []
    assert "AIMYLOGIC_URL" in caught.value.message and f"HTTP {status}" in caught.value.message


def test_retry_after_parsing():
    now = AimylogicEmulator().clock()
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# The token never leaks


def _echo_token_body() -> str:
    return f"error at /api/calls/campaign/{TOKEN}/addPhones token={TOKEN}"


SCENARIOS = {
    "400": lambda emu: emu.fail_next(400, body=_echo_token_body()),
    "401": lambda emu: emu.fail_next(401, body=_echo_token_body()),
    "403": lambda emu: emu.fail_next(403),
    "429": lambda emu: emu.fail_next(429, retry_after=5, body=_echo_token_body()),
    "503": lambda emu: emu.fail_next(503, body=_echo_token_body()),
    "redirect": lambda emu: emu.fail_next(302, headers={"Location": f"{emu.url}/api/calls/campaign/{TOKEN}/x"}),
    "timeout": lambda emu: emu.hang(10),
}


@pytest.mark.parametrize("kind", [*SCENARIOS, "404", "refused", "dropped"])
def test_the_token_is_absent_from_errors_and_logs(aimylogic, clock, caplog, kind):
    caplog.set_level(logging.DEBUG)  # urllib3 logs request lines, with the path, at DEBUG
    with dropping_server() as (dropping_url, _):
        url = {"refused": free_port_url(), "dropped": dropping_url}.get(kind, aimylogic.url)
        token = "9999.8888.0badc0de" if kind == "404" else TOKEN
        if kind in SCENARIOS:
            SCENARIOS[kind](aimylogic)
        client = AimylogicClient(url, token, timeout=(1.0, 0.3), clock=clock)

        with pytest.raises((AuthError, RejectedError, UnavailableError)) as caught:
            client.add_phones([entry()])
    aimylogic.recover()

    exc = caught.value
    for text in (str(exc), repr(exc), exc.message, repr(client)):
        assert token not in text
    assert exc.__context__ is None and exc.__cause__ is None  # no urllib3 error (with the URL) chained
    ours = [record for record in caplog.records if record.name != "werkzeug"]  # werkzeug: the emulator's own log
    assert ours and all(token not in record.getMessage() for record in ours)


# Dry run and the factory


def test_dry_run_logs_the_body_with_phones_masked(caplog):
    caplog.set_level(logging.INFO, logger="crm2calls.aimylogic")
    dialer = DryRunDialer()

    ids = dialer.add_phones([entry(phone="79123456789", payload={"other": "+79990001122"}), entry(phone="79123456780")])
    more = dialer.add_phones([entry(phone="79123456781")])

    assert ids == ["dry-run-1", "dry-run-2"] and more == ["dry-run-3"]
    record = caplog.records[0]
    body = record.fields["body"]
    assert [e["phone"] for e in body] == ["7912*****89", "7912*****80"]
    assert body[0]["payload"] == {"other": "+7999*****22"}
    assert body[0]["allowedTime"] == ENTRY["allowedTime"]  # the rest exactly as it would be sent
    line = json.dumps(record.fields) + record.getMessage()
    assert "79123456789" not in line and "79990001122" not in line


def test_make_dialer_sends_only_with_a_token_and_dry_runs_only_when_asked(shipped_policy):
    assert isinstance(make_dialer(Settings(policy=shipped_policy, dry_run=True)), DryRunDialer)
    asked = Settings(policy=shipped_policy, aimylogic_token=TOKEN, dry_run=True)
    assert isinstance(make_dialer(asked), DryRunDialer)  # DRY_RUN=1 wins over a token
    with pytest.raises(ConfigError, match=r"AIMYLOGIC_TOKEN.*DRY_RUN=1"):
        make_dialer(Settings(policy=shipped_policy))  # no token, no dry run asked: nothing is faked
    dialer = make_dialer(Settings(policy=shipped_policy, aimylogic_token=TOKEN, aimylogic_url="https://example.test"))
    assert isinstance(dialer, AimylogicClient)
    assert dialer.base_url == "https://example.test"
    assert TOKEN not in repr(dialer)
