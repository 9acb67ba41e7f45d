"""The results webhook (the "notify" task): each call's outcome POSTed to a local receiver over real HTTP,
signed the Standard Webhooks way and verified with the `standardwebhooks` package; durable through
outages on SQLite and DynamoDB (same webhook-id on every retry, Retry-After, dead letter), secrets kept
out of logs, settings validated."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.wrappers import Request, Response

from crm2calls import lifecycle
from crm2calls.config import check_configuration
from crm2calls.followup import follow_up
from crm2calls.model import Status
from crm2calls.results_webhook import BACKOFF, FAILURES_IN_A_ROW, MAX_ATTEMPTS, message_id
from tests.canaries import CANARY_CRM_TOKEN
from tests.conftest import FakeClock
from tests.emulators.crm_api import StandIn
from tests.ended_leads import ended_lead
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)

# The canary secret as the base64 of a whsec_ secret: the canary plugin fails the run if it reaches a log.
SECRET = "whsec_cnryHookSecr3tK5wAAAAAAAAAAAAAAA"
PREVIOUS = "whsec_" + base64.b64encode(b"the previous secret, 32 bytes!!!").decode()
OTHER = "whsec_" + base64.b64encode(b"somebody else's secret, 32 bytes").decode()


@dataclass
class Delivery:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes
    at: datetime


class Receiver(StandIn):
    """The customer's endpoint: records every POST; answers 503 while `down_until` is ahead on the clock."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.down_until: datetime | None = None
        self.deliveries: list[Delivery] = []

    def handle(self, request: Request) -> Response:
        self.deliveries.append(Delivery(dict(request.headers), request.get_data(), self.clock()))
        if self.down_until and self.clock() < self.down_until:
            return Response("down", status=503)
        return Response(status=204)

    def ids(self) -> list[str]:
        return [hit.headers["Webhook-Id"] for hit in self.hits]


@pytest.fixture
def clock():
    """Real time to start with: the package's verify() wants a webhook-timestamp within 5 minutes of it."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def receiver(clock):
    with Receiver(clock) as server:
        yield server


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'leads.db'}"
    request.getfixturevalue("aws_env")
    return f"dynamodb://leads-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hook_url(receiver):
    return f"{receiver.url}/hooks/calls?token={CANARY_CRM_TOKEN}"  # a receiver's token rides in the URL


@pytest.fixture
def make(make_services, hook_url):
    def build(**overrides):
        values = {"results_webhook_url": hook_url, "results_webhook_secrets": (SECRET,), **overrides}
        return make_services(**values)

    return build


def add_ended_lead(services, clock, lead_id="L-0001", job_id="9051123", **fields):
    """A lead whose call ended a minute ago, its notify work due now, stored."""
    record = ended_lead("amocrm", "31390457", clock(), lead_id=lead_id, job_id=job_id, **fields)
    lifecycle.set_work(record, lifecycle.NOTIFY, clock(), attempts=0)
    services.store.insert(record)
    return record


def stored(services, lead_id="L-0001"):
    return services.store.get(lead_id)


def verify(secret: str, delivery: Delivery):
    return Webhook(secret).verify(delivery.body, delivery.headers)


def signed_by(secret: str, delivery: Delivery) -> bool:
    """The package's own signature for this delivery is among those sent (any clock: no timestamp window)."""
    timestamp = datetime.fromtimestamp(int(delivery.headers["Webhook-Timestamp"]), tz=UTC)
    expected = Webhook(secret).sign(delivery.headers["Webhook-Id"], timestamp, delivery.body.decode())
    return expected in delivery.headers["Webhook-Signature"].split(" ")


def test_a_finished_call_is_posted_signed_and_recorded(make, receiver, clock, store_url):
    services = make(leads_store=store_url)
    add_ended_lead(services, clock)
    report = follow_up(services)
    assert report.tasks == {"notify": 1}
    [delivery] = receiver.deliveries
    [hit] = receiver.hits
    assert (hit.method, hit.path, hit.query) == ("POST", "/hooks/calls", {"token": [CANARY_CRM_TOKEN]})
    body = verify(SECRET, delivery)
    assert body == {
        "type": "call.finished",
        "timestamp": "2026-11-26T08:59:00Z",
        "data": {
            "lead_id": "L-0001",
            "source": "amocrm",
            "ref": "31390457",
            "campaign": "default",
            "job_id": "9051123",
            "job_status": "longCallWithResult",
            "call_result": "interested",
            "attempts": 2,
            "duration_s": 74,
            "finished_at": "2026-11-26T08:59:00Z",
            "report": {"answer": "call me tomorrow", "score": 4},
        },
    }
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["Webhook-Timestamp"] == str(int(clock().timestamp()))
    assert delivery.headers["Webhook-Id"] == message_id(stored(services))
    record = stored(services)
    assert lifecycle.NOTIFY not in record.work
    assert record.history[-1]["note"] == "results webhook took the outcome (HTTP 204, attempt 1)"
    assert record.status is Status.CALLED and record.next_attempt_at is None
    follow_up(services)
    assert len(receiver.deliveries) == 1  # written once


def test_without_a_url_the_work_is_dropped_with_no_request(make, receiver, clock):
    services = make(results_webhook_url=None, results_webhook_secrets=())
    add_ended_lead(services, clock)
    before = len(stored(services).history)
    assert follow_up(services).tasks == {"notify": 1}
    record = stored(services)
    assert receiver.hits == []
    assert lifecycle.NOTIFY not in record.work and record.next_attempt_at is None
    assert len(record.history) == before


def test_a_retry_sends_the_same_webhook_id_and_body_signed_anew(make, receiver, clock, store_url):
    services = make(leads_store=store_url)
    add_ended_lead(services, clock)
    receiver.fail_next(503)
    follow_up(services)
    item = stored(services).work[lifecycle.NOTIFY]
    assert (item.attempts, item.due) == (1, clock() + timedelta(seconds=60))
    assert item.error == "the receiver answered HTTP 503"
    assert stored(services).next_attempt_at == item.due
    clock.advance(seconds=30)
    follow_up(services)
    assert len(receiver.hits) == 1  # not due yet
    clock.advance(seconds=30)
    follow_up(services)
    first, second = receiver.hits
    assert first.headers["Webhook-Id"] == second.headers["Webhook-Id"]
    assert first.body == second.body
    assert int(second.headers["Webhook-Timestamp"]) - int(first.headers["Webhook-Timestamp"]) == 60
    assert first.headers["Webhook-Signature"] != second.headers["Webhook-Signature"]
    verify(SECRET, receiver.deliveries[-1])
    assert stored(services).history[-1]["note"] == "results webhook took the outcome (HTTP 204, attempt 2)"


def test_each_outcome_has_its_own_webhook_id(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock, "L-1", "100")
    add_ended_lead(services, clock, "L-2", "100")
    add_ended_lead(services, clock, "L-3", "101")
    follow_up(services)
    assert len(set(receiver.ids())) == 3


def test_retry_after_is_honoured(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock)
    receiver.fail_next(429, retry_after=900)
    follow_up(services)
    assert stored(services).work[lifecycle.NOTIFY].due == clock() + timedelta(seconds=900)


def test_retry_after_as_an_http_date_and_beyond_a_day(make, receiver, clock):
    from email.utils import format_datetime

    services = make()
    add_ended_lead(services, clock, "L-1", "1")
    add_ended_lead(services, clock, "L-2", "2")
    when = format_datetime(clock() + timedelta(minutes=20), usegmt=True)
    receiver.script_next(lambda: Response(status=503, headers={"Retry-After": when}))
    receiver.script_next(lambda: Response(status=429, headers={"Retry-After": str(7 * 24 * 3600)}))
    follow_up(services)
    assert stored(services, "L-1").work[lifecycle.NOTIFY].due == clock() + timedelta(minutes=20)
    assert stored(services, "L-2").work[lifecycle.NOTIFY].due == clock() + timedelta(days=1)  # capped


@pytest.mark.parametrize(("status", "error"), [(500, "answered HTTP 500"), (410, "answered HTTP 410"),
                                               (302, "redirected (HTTP 302)")])
def test_any_answer_but_2xx_is_retried(make, receiver, clock, status, error):
    services = make()
    add_ended_lead(services, clock)
    receiver.fail_next(status)
    follow_up(services)
    item = stored(services).work[lifecycle.NOTIFY]
    assert item.attempts == 1 and error in item.error and item.due is not None


def test_an_unreachable_receiver_is_retried_and_its_url_never_logged(make, clock, caplog):
    services = make(results_webhook_url=f"http://127.0.0.1:9/hooks?token={CANARY_CRM_TOKEN}")
    add_ended_lead(services, clock)
    with caplog.at_level(logging.DEBUG):
        follow_up(services)
    item = stored(services).work[lifecycle.NOTIFY]
    assert item.error == "the receiver is unreachable (ConnectionError)"
    assert "lead L-0001" in caplog.text and "attempt 1" in caplog.text
    assert CANARY_CRM_TOKEN not in caplog.text and "cnryHookSecr3t" not in caplog.text


def test_rotation_two_secrets_sign_each_message(make, receiver, clock):
    services = make(results_webhook_secrets=(SECRET, PREVIOUS))
    add_ended_lead(services, clock)
    follow_up(services)
    [delivery] = receiver.deliveries
    signatures = delivery.headers["Webhook-Signature"].split(" ")
    assert len(signatures) == 2 and all(sig.startswith("v1,") for sig in signatures)
    assert verify(SECRET, delivery)["data"]["lead_id"] == "L-0001"  # a receiver on the new secret
    assert verify(PREVIOUS, delivery)["data"]["lead_id"] == "L-0001"  # one still on the old one
    with pytest.raises(WebhookVerificationError):
        verify(OTHER, delivery)


def test_a_tampered_body_fails_verification(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock)
    follow_up(services)
    [delivery] = receiver.deliveries
    tampered = Delivery(delivery.headers, delivery.body.replace(b'"duration_s":74', b'"duration_s":75'), delivery.at)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, tampered)


def test_a_receiver_down_for_an_hour_gets_the_outcome_after(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock)
    started = clock()
    receiver.down_until = started + timedelta(hours=1)
    while clock() < started + timedelta(hours=4) and lifecycle.NOTIFY in stored(services).work:
        follow_up(services)
        clock.advance(minutes=1)
    record = stored(services)
    assert lifecycle.NOTIFY not in record.work
    answered = [delivery.at - started for delivery in receiver.deliveries]
    # tried at once, then after 1, 5 and 30 minutes (all down), then 2 hours later: delivered
    assert answered == [timedelta(0), timedelta(minutes=1), timedelta(minutes=6), timedelta(minutes=36),
                        timedelta(hours=2, minutes=36)]
    assert len(set(receiver.ids())) == 1
    assert signed_by(SECRET, receiver.deliveries[-1])
    assert record.history[-1]["note"] == "results webhook took the outcome (HTTP 204, attempt 5)"
    notes = [step["note"] for step in record.history]
    assert not any("receiver answered" in note for note in notes)  # failed attempts leave no history lines


def test_after_its_limits_the_outcome_is_a_dead_letter(make, receiver, clock, store_url):
    services = make(leads_store=store_url)
    add_ended_lead(services, clock)
    receiver.down_until = clock() + timedelta(days=30)
    for _ in range(MAX_ATTEMPTS + 2):
        follow_up(services)
        due = stored(services).work[lifecycle.NOTIFY].due
        if due is None:
            break
        clock.now = due
    record = stored(services)
    item = record.work[lifecycle.NOTIFY]
    assert (item.due, item.attempts, item.error) == (None, MAX_ATTEMPTS, "the receiver answered HTTP 503")
    assert record.next_attempt_at is None and record.final
    assert record.history[-1]["note"] == f"results webhook gave up after {MAX_ATTEMPTS} attempts: " \
                                         "the receiver answered HTTP 503"
    assert len(receiver.deliveries) == MAX_ATTEMPTS
    times = [delivery.at for delivery in receiver.deliveries]
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(times)]
    assert gaps == list(BACKOFF)
    clock.advance(days=2)
    follow_up(services)
    assert len(receiver.deliveries) == MAX_ATTEMPTS  # parked: nothing runs it until an operator replays it


def test_a_failing_receiver_stops_the_pass_and_the_others_go_first_next_time(make, receiver, clock):
    services = make()
    for index in range(12):
        add_ended_lead(services, clock, f"L-{index:02d}", str(100 + index))
    receiver.down_until = clock() + timedelta(minutes=3)
    follow_up(services)
    assert len(receiver.hits) == FAILURES_IN_A_ROW  # the other 7 wait: no 5-times-7 timeouts in one pass
    untouched = [record for record in services.store.list(limit=100) if record.work[lifecycle.NOTIFY].attempts == 0]
    assert len(untouched) == 12 - FAILURES_IN_A_ROW
    clock.advance(minutes=6)  # their lease ran out; the receiver is back
    follow_up(services)
    first_pass = {hit.headers["Webhook-Id"] for hit in receiver.hits[:FAILURES_IN_A_ROW]}
    second_pass = [hit.headers["Webhook-Id"] for hit in receiver.hits[FAILURES_IN_A_ROW:]]
    assert len(second_pass) == 12 and set(second_pass[:7]).isdisjoint(first_pass)  # the waiting ones first
    assert all(lifecycle.NOTIFY not in record.work for record in services.store.list(limit=100))


def test_a_pass_out_of_time_starts_no_request_and_keeps_the_work(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock)
    follow_up(services, time_budget=0)
    assert receiver.hits == []
    item = stored(services).work[lifecycle.NOTIFY]
    assert (item.attempts, item.due) == (0, clock())
    clock.advance(minutes=6)  # its lease (5 minutes) ran out: the next pass takes it
    follow_up(services)
    assert len(receiver.hits) == 1


def test_a_canceled_job_without_finished_at_keeps_one_timestamp_across_retries(make, receiver, clock):
    services = make()
    add_ended_lead(services, clock, status=Status.CANCELED, job_status="canceled", finished_at=None,
                   call_result=None, duration_s=None)
    receiver.fail_next(500)
    follow_up(services)
    clock.advance(minutes=1)
    follow_up(services)
    first, second = (json.loads(hit.body) for hit in receiver.hits)
    assert first == second
    ended = (clock() - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    assert first["timestamp"] == ended  # when the job ended, by the lead's history
    assert (first["data"]["finished_at"], first["data"]["job_status"]) == (None, "canceled")


def test_the_documented_receiver_takes_our_message_once_and_refuses_a_forgery(make, receiver, clock):
    import re

    from tests.conftest import ROOT

    text = (ROOT / "docs" / "results-webhook.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL)[1]
    code = code.replace('Webhook("whsec_...")', f"Webhook({SECRET!r})")
    example = {"__name__": "receiver_example"}
    code = code.replace("Flask(__name__)", "Flask(__name__, root_path='.')")
    exec(compile(code, "results-webhook.md", "exec"), example)  # noqa: S102 - our own documentation's example
    services = make()
    add_ended_lead(services, clock)
    follow_up(services)
    [delivery] = receiver.deliveries
    documented = example["app"].test_client()
    assert documented.post("/calls", data=delivery.body, headers=delivery.headers).status_code == 204
    assert documented.post("/calls", data=delivery.body, headers=delivery.headers).status_code == 204  # a repeat
    assert example["seen"] == {delivery.headers["Webhook-Id"]}
    forged = delivery.body.replace(b"interested", b"not interested")
    assert documented.post("/calls", data=forged, headers=delivery.headers).status_code == 401


# Settings


@pytest.fixture
def env(monkeypatch):
    for name in ("RESULTS_WEBHOOK_URL", "RESULTS_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret-for-the-config-tests")
    monkeypatch.setenv("DRY_RUN", "1")
    return monkeypatch


def test_the_settings_load_with_two_secrets(env):
    env.setenv("RESULTS_WEBHOOK_URL", "https://hooks.example.com/calls")
    env.setenv("RESULTS_WEBHOOK_SECRET", f"{SECRET}, {PREVIOUS}")
    check = check_configuration()
    assert check.problems == []
    assert check.settings.results_webhook_secrets == (SECRET, PREVIOUS)
    assert "cnryHookSecr3t" not in repr(check.settings) and "hooks.example.com" not in repr(check.settings)


def test_unset_means_off(env):
    settings = check_configuration().settings
    assert (settings.results_webhook_url, settings.results_webhook_secrets) == (None, ())


@pytest.mark.parametrize(
    ("url", "secret", "expected"),
    [
        ("https://hooks.example.com/calls", "", "RESULTS_WEBHOOK_SECRET: required with RESULTS_WEBHOOK_URL"),
        ("http://hooks.example.com/calls", SECRET, "RESULTS_WEBHOOK_URL: use https"),
        ("hooks.example.com/calls", SECRET, "RESULTS_WEBHOOK_URL: not an http(s) URL"),
        ("https://h.example.com", "cnryHookSecr3tK5wAAAAAAAAAAAAAAA", "RESULTS_WEBHOOK_SECRET: secret 1 is not whsec_"),
        ("https://h.example.com", f"{SECRET},whsec_cnryHookSecr3t!!", "RESULTS_WEBHOOK_SECRET: secret 2 is not whsec_"),
        ("https://h.example.com", "whsec_" + base64.b64encode(b"cnryHookSecr3tK5w").decode(),
         "RESULTS_WEBHOOK_SECRET: secret 1 decodes to 17 bytes; use 24 to 64"),
    ],
)
def test_bad_settings_are_named_without_quoting_the_secret(env, url, secret, expected):
    env.setenv("RESULTS_WEBHOOK_URL", url)
    env.setenv("RESULTS_WEBHOOK_SECRET", secret)
    problems = check_configuration().problems
    assert any(problem.startswith(expected) for problem in problems), problems
    assert not any("cnryHookSecr3t" in problem for problem in problems)


def test_plain_http_is_fine_on_loopback(env):
    env.setenv("RESULTS_WEBHOOK_URL", "http://127.0.0.1:8080/calls")
    env.setenv("RESULTS_WEBHOOK_SECRET", SECRET)
    assert check_configuration().problems == []

