"""The promises of a lead's life, each under the answer that breaks it: slow, partial, repeated, failed.

Delivery runs against the Aimylogic emulator over HTTP; the store is SQLite here and DynamoDB (moto's
server mode) where a promise depends on the store's transactions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from crm2calls import lifecycle
from crm2calls.delivery import deliver_pending, split_budget
from crm2calls.errors import StoreError
from crm2calls.model import Status
from crm2calls.store import open_store
from crm2calls.store.base import NO_CLAIMS
from tests.conftest import SECRET, TOKEN
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_delivery import add_lead, add_leads, slot_is_free, statuses

WEBHOOK = "/webhooks/generic"
HEADERS = {"X-Webhook-Secret": SECRET}


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request, tmp_path) -> str:
    """A fresh store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'leads.db'}"
    request.getfixturevalue("aws_env")
    import uuid

    return f"dynamodb://leads-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(make_services, shipped_policy, aimylogic, store_url):
    """Services delivering to the emulator on the parametrized store; delivery, guards and calls overridable."""

    def build(*, guards=None, calls=None, dry_run=False, **delivery):
        policy = replace(shipped_policy, delivery=replace(shipped_policy.delivery, backoff_cap_seconds=300, **delivery))
        policy = replace(policy, guards=replace(policy.guards, **(guards or {})))
        if calls:
            window = replace(policy.defaults.window, **calls)
            policy = replace(
                policy,
                defaults=replace(policy.defaults, window=window),
                sources={name: replace(s, window=window) for name, s in policy.sources.items()},
            )
        return make_services(
            policy=policy, aimylogic_token=TOKEN, aimylogic_url=aimylogic.url, dry_run=dry_run, leads_store=store_url
        )

    return build


def post_lead(client, phone: str, ref: str):
    return client.post(WEBHOOK, json={"id": ref, "phone": phone, "name": "Анна"}, headers=HEADERS)


def app_client(services):
    from app import create_app

    return create_app(services=services).test_client()


# 1. A result Aimylogic gave is never thrown away.


class SlowDialer:
    """The real client, but every request takes `seconds` of the test clock; after request `rival_after`
    a second worker runs a whole delivery pass, as another process would while this send is slow."""

    def __init__(self, services, clock, seconds: float, rival_after: int):
        self.real, self.services, self.clock = services.dialer, services, clock
        self.seconds, self.rival_after, self.requests = seconds, rival_after, 0
        self.rival_report = None

    def add_phones(self, entries):
        self.clock.advance(seconds=self.seconds)
        self.requests += 1
        try:
            return self.real.add_phones(entries)
        finally:
            if self.requests == self.rival_after:
                self.rival_report = deliver_pending(self.services)  # nested: the rival uses this dialer too


def test_a_split_send_that_outlives_its_lease_records_every_half_and_sends_each_phone_once(make, aimylogic, clock):
    services = make(batch_size=8, concurrency=1, lease_seconds=120)
    bad = add_lead(services, 99, gmtZone="+25:00")  # refused by Aimylogic: the batch is split
    leads = add_leads(services, 7)
    slow = SlowDialer(services, clock, seconds=70, rival_after=3)  # 8 requests x 70 s: far past the lease
    services._dialers["default"] = slow

    report = deliver_pending(services)

    assert slow.requests > 3 and slow.rival_report.requests == 0  # the rival found every lease alive
    assert aimylogic.duplicates_ignored == 0 and set(aimylogic.calls_per_phone().values()) == {1}
    for lead in leads:
        stored = services.store.get(lead.id)
        assert stored.status is Status.SENT
        assert aimylogic.calls[stored.job_id]["phone"] == json.loads(lead.entry)["phone"]
    assert services.store.get(bad.id).status is Status.REJECTED
    assert report.sent == 7 and report.rejected == 1


def test_a_refused_batch_spends_a_bounded_number_of_requests_and_the_rest_waits(make, aimylogic, clock):
    services = make(batch_size=16, concurrency=1)
    add_leads(services, 16)
    aimylogic.fail_next(400, body="campaign finished", times=10**6)  # every request refused alike

    report = deliver_pending(services)

    assert report.requests <= split_budget(16) == 10
    waiting = [lead for lead in services.store.list(limit=100) if lead.status is Status.PENDING]
    assert waiting and all(lead.attempts == 0 for lead in waiting)  # deferred, no attempt spent
    assert all("next pass" in lead.last_error for lead in waiting)
    clock.advance(seconds=5)
    assert deliver_pending(services).requests <= 10


def test_one_bad_entry_in_a_hundred_is_isolated_within_the_budget(make, aimylogic):
    services = make(batch_size=100, concurrency=1)
    add_leads(services, 99)
    bad = add_lead(services, 999, gmtZone="+25:00")

    report = deliver_pending(services)

    assert report.requests <= split_budget(100) == 16
    assert (report.sent, report.rejected) == (99, 1)
    assert services.store.get(bad.id).status is Status.REJECTED


class FailingSaves:
    """The real store, except that saving chosen leads fails (as a locked or throttled store does)."""

    def __init__(self, real, failing: set[str]):
        self.real, self.failing = real, failing

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update(self, record, owner, claims=NO_CLAIMS):
        if record.id in self.failing and record.status is Status.SENT:
            self.failing.discard(record.id)
            raise StoreError("sqlite store: database is locked")
        return self.real.update(record, owner, claims)


def test_a_store_error_saving_one_lead_keeps_the_other_results_and_the_lead_is_called_once(make, aimylogic, clock):
    services = make(batch_size=2, concurrency=2, lease_seconds=60)
    leads = add_leads(services, 4)
    real = open_store(services.settings.leads_store)
    services._store = FailingSaves(real, {leads[0].id})

    report = deliver_pending(services)

    assert report.sent == 3
    assert [services.store.get(lead.id).status for lead in leads[1:]] == [Status.SENT] * 3
    assert services.store.get(leads[0].id).status is Status.SENDING  # its lease holds it until it ends
    clock.advance(seconds=61)
    deliver_pending(services)  # sent again: Aimylogic's duplicate guard answers with the same job
    assert statuses(services) == {"sent": 4}
    assert set(aimylogic.calls_per_phone().values()) == {1}
    assert services.store.get(leads[0].id).job_id in aimylogic.calls


# 2. A lead is stored together with its claims.


def fail_the_next_write(services, store_url: str, table: str) -> callable:
    """Make the store's next lead write fail as a real store fails (SQLite: an aborted statement inside the
    transaction; DynamoDB: the connection lost on the transaction); return how to heal it."""
    if store_url.startswith("sqlite"):
        import sqlite3

        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute(
                f"CREATE TRIGGER fail_write BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )

        def heal() -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("DROP TRIGGER fail_write")

        return heal
    from botocore.exceptions import EndpointConnectionError

    events = services.store._client.meta.events
    left = {"times": 1}

    def fail(**kwargs) -> None:
        if left["times"]:
            left["times"] -= 1
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1")

    events.register("before-call.dynamodb.TransactWriteItems", fail)
    return lambda: None


@pytest.mark.parametrize("table", ["leads", "counters"])  # failing before the lead is written, or after
def test_a_failed_insert_leaves_no_claim_and_the_crm_retry_is_accepted(make, aimylogic, store_url, table):
    services = make(guards={"per_number_per_day": 1, "calls_per_minute": 0, "calls_per_day": 0})
    client = app_client(services)
    services.store.migrate()
    heal = fail_the_next_write(services, store_url, table)

    first = post_lead(client, "+79123456789", "1")
    assert first.status_code == 503
    assert services.store.list() == []  # no half-written lead
    heal()
    retry = post_lead(client, "+79123456789", "1")

    assert retry.status_code == 202 and retry.get_json()["leads"][0]["status"] == "accepted"
    assert statuses(services) == {"pending": 1}
    # The slot is the retry's own: a second lead for the person is a duplicate of it, once.
    assert post_lead(client, "+79123456789", "2").get_json()["leads"][0]["status"] == "duplicate"


# 3. Erasure erases.


def test_forget_leaves_no_trace_of_the_phone_and_the_next_lead_is_new(make, aimylogic, store_url, tmp_path):
    from app import create_app

    services = make(guards={"per_number_per_day": 1})
    app = create_app(services=services)
    client = app.test_client()
    assert post_lead(client, "+7 912 345-67-89", "1").get_json()["leads"][0]["status"] == "accepted"
    deliver_pending(services)
    assert post_lead(client, "+79123456789", "2").get_json()["leads"][0]["status"] == "duplicate"

    result = app.test_cli_runner().invoke(args=["leads", "forget", "+79123456789", "--yes"])
    assert result.exit_code == 0, result.output
    assert "erased 2 lead(s)" in result.output

    digits = b"9123456789"
    if store_url.startswith("sqlite"):
        services.store.close()
        for path in tmp_path.glob("leads.db*"):
            assert digits not in path.read_bytes(), path.name
    else:
        import boto3

        items = boto3.client("dynamodb").scan(TableName=store_url.removeprefix("dynamodb://"))["Items"]
        assert all(digits.decode() not in json.dumps(item) for item in items)
    # Nothing holds the person any more: not the slot, not the per-number cap.
    assert post_lead(client, "+79123456789", "3").get_json()["leads"][0]["status"] == "accepted"


# 4. Nothing is sent past its window.


def test_a_held_lead_whose_window_passes_expires_and_gives_its_slot_back(make, aimylogic, clock):
    guards = {"calls_per_minute": 1, "calls_per_day": 0, "per_number_per_day": 0}
    services = make(guards=guards, calls={"call_within_hours": 1})
    client = app_client(services)
    post_lead(client, "+79123456780", "1")
    held = post_lead(client, "+79123456781", "2").get_json()["leads"][0]
    assert services.store.get(held["lead_id"]).status is Status.HELD
    deliver_pending(services)

    clock.advance(hours=1, seconds=1)
    report = deliver_pending(services)

    stored = services.store.get(held["lead_id"])
    assert stored.status is Status.EXPIRED and report.expired == 1
    assert "window ended" in stored.last_error
    assert "79123456781" not in aimylogic.calls_per_phone()
    assert slot_is_free(services, stored)


def test_a_lead_waiting_out_a_paused_delivery_past_its_window_is_not_sent(make, aimylogic, clock):
    services = make(calls={"call_within_hours": 1})
    lead = add_lead(services, 1, finishDateTime=(clock() + timedelta(hours=1)).isoformat())
    aimylogic.fail_next(401, times=10)
    deliver_pending(services)  # the token is refused: delivery pauses

    clock.advance(hours=2)
    aimylogic.recover()
    report = deliver_pending(services)

    assert services.store.get(lead.id).status is Status.EXPIRED
    assert report.requests == 0 and not aimylogic.calls


def test_an_operator_retry_renders_a_fresh_window(make, aimylogic, clock):
    from app import create_app

    services = make(max_age_hours=1, calls={"call_within_hours": 2})
    app = create_app(services=services)
    lead = post_lead(app.test_client(), "+79123456789", "1").get_json()["leads"][0]
    aimylogic.fail_next(503, times=10**6)
    deliver_pending(services)
    clock.advance(hours=1)
    deliver_pending(services)
    assert services.store.get(lead["lead_id"]).status is Status.FAILED
    clock.advance(hours=5)
    aimylogic.recover()

    result = app.test_cli_runner().invoke(args=["leads", "retry", "--failed"])
    deliver_pending(services)

    assert "1 lead(s) queued again (pending 1)" in result.output
    stored = services.store.get(lead["lead_id"])
    assert stored.status is Status.SENT
    entry = aimylogic.calls[stored.job_id]
    start = clock().replace(microsecond=0)
    assert datetime.fromisoformat(entry["startDateTime"]) == start
    assert datetime.fromisoformat(entry["finishDateTime"]) == start + timedelta(hours=2)


# 5. A dry run only when asked.


def test_dry_run_leads_hold_no_slot_and_are_sent_for_real_on_retry(make, aimylogic, clock):
    from app import create_app

    dry = make(dry_run=True)
    dry_client = app_client(dry)
    first = post_lead(dry_client, "+79123456789", "1").get_json()["leads"][0]
    deliver_pending(dry)
    assert dry.store.get(first["lead_id"]).status is Status.DRY_RUN and not aimylogic.requests

    real = make()  # the token is set, the same store
    app = create_app(services=real)
    second = post_lead(app.test_client(), "+79123456789", "2").get_json()["leads"][0]
    assert second["status"] == "accepted"  # the dry run held no slot
    result = app.test_cli_runner().invoke(args=["leads", "retry", "--dry-run"])
    assert "1 lead(s) queued again (duplicate 1)" in result.output  # now the real slot counts
    retried = real.store.get(first["lead_id"])
    assert retried.status is Status.DUPLICATE
    deliver_pending(real)
    assert set(aimylogic.calls_per_phone().values()) == {1}


# 6. Transitions only the lifecycle allows.


def test_a_transition_outside_the_lifecycle_is_refused(make):
    services = make()
    lead = add_lead(services, 1)
    sent = replace(lead, status=Status.SENT)
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.save(services, sent, Status.PENDING, services.clock(), "back", owner=None)
    assert services.store.get(lead.id).status is Status.PENDING


def test_a_split_stops_starting_requests_at_the_time_budget_and_the_rest_waits(make, aimylogic):
    services = make(batch_size=4, concurrency=1)
    bad = add_lead(services, 99, gmtZone="+25:00")
    add_leads(services, 3)
    aimylogic.delay = 0.25  # each request outlasts the budget below: no second request starts

    report = deliver_pending(services, time_budget=0.2)

    assert report.requests == 1
    assert statuses(services) == {"pending": 4}  # refused once, split, then left for the next pass
    assert services.store.get(bad.id).attempts == 0


def test_dry_run_leads_are_not_retried_without_a_token_to_send_them(make, aimylogic):
    from app import create_app

    dry = make(dry_run=True)
    lead = post_lead(app_client(dry), "+79123456789", "1").get_json()["leads"][0]
    deliver_pending(dry)

    result = create_app(services=dry).test_cli_runner().invoke(args=["leads", "retry", "--dry-run"])

    assert result.exit_code == 1 and "set AIMYLOGIC_TOKEN (and unset DRY_RUN) first" in result.output
    assert dry.store.get(lead["lead_id"]).status is Status.DRY_RUN


def test_a_held_lead_is_counted_by_the_guards_once(make, aimylogic, clock):
    guards = {"calls_per_minute": 1, "calls_per_day": 0, "per_number_per_day": 2, "per_number_per_week": 0,
              "per_number_per_month": 0}  # fmt: skip
    services = make(guards=guards)
    policy = replace(services.settings.policy, duplicate_window_hours=0)  # count the caps, not the slot
    services.settings = replace(services.settings, policy=policy)
    client = app_client(services)
    clock.now = clock.now.replace(second=0)
    assert post_lead(client, "+79123456780", "a").get_json()["leads"][0]["status"] == "accepted"
    held = post_lead(client, "+79123456781", "b").get_json()["leads"][0]
    assert services.store.get(held["lead_id"]).status is Status.HELD  # the minute's one call is taken
    deliver_pending(services)
    for _ in range(3):  # held passes while the minute lasts count nothing
        clock.advance(seconds=10)
        deliver_pending(services)

    clock.advance(minutes=1)
    deliver_pending(services)  # admitted now: counted once for the number
    clock.advance(minutes=1)
    second = post_lead(client, "+79123456781", "c").get_json()["leads"][0]
    clock.advance(minutes=1)
    third = post_lead(client, "+79123456781", "d").get_json()["leads"][0]

    assert services.store.get(held["lead_id"]).status is Status.SENT
    assert second["status"] == "accepted"  # the number's second call of the day
    assert third["status"] == "rejected" and "per-number cap" in third["reason"]
