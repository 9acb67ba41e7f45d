"""Close: close-sig-hash over timestamp + raw body (hex key, rotation, the 5-minute window),
lead.created events, contacts fetched from a stand-in, end to end to the dialer."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from crm2calls.config import CrmSettings
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, EnrichmentError, UnavailableError
from crm2calls.model import LeadEvent, Status
from tests.conftest import FIXTURES, SECRET
from tests.emulators.close import CloseStandIn

KEY = "5f1c0a9e3b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f0a"
PREVIOUS_KEY = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f"
LEAD_ID = "lead_HrYdGbZ3o1wpN7rFKvTeVb6QDe2u3W9xJyQqfE1tPZa"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIXTURES / "close" / name).read_bytes()


def seconds(moment: datetime) -> str:
    return str((moment - EPOCH) // timedelta(seconds=1))


def sign(body: bytes, timestamp: str, key: str = KEY) -> str:
    """Close's formula, written again here so the test does not trust the code under test."""
    return hmac.new(bytes.fromhex(key), timestamp.encode() + body, hashlib.sha256).hexdigest()


@pytest.fixture
def close_api():
    with CloseStandIn() as api:
        yield api


@pytest.fixture
def make(make_app, close_api, clock):
    def build(keys: tuple[str, ...] = (KEY, PREVIOUS_KEY)):
        services, client = make_app(close_signature_keys=keys, close_api_key=close_api.api_key,
                                    close_base_url=close_api.url)
        services.source("close").now = clock
        return services, client

    return build


@pytest.fixture
def cl(make):
    return make()


def post(client, body: bytes, clock, *, timestamp: str | None = None, signature: str | None = None,
         url: str = "/webhooks/close"):
    timestamp = seconds(clock()) if timestamp is None else timestamp
    headers = {"close-sig-timestamp": timestamp, "close-sig-hash": sign(body, timestamp) if signature is None
               else signature}
    return client.post(url, data=body, content_type=JSON, headers=headers)


def records(services):
    return services.store.list(limit=1000)


def add_bluebird(close_api, **fields):
    close_api.add_lead(LEAD_ID, "Bluebird Dental", [
        {"id": "cont_fax", "name": "Front desk", "phones": [{"phone": "+13035550100", "type": "fax"}]},
        {"id": "cont_9sQw8eRt7y", "name": "Dana Whitfield", "phones": [
            {"phone": "+13035550148", "phone_formatted": "+1 303-555-0148", "type": "office"},
            {"phone": "+17205550199", "phone_formatted": "+1 720-555-0199", "type": "mobile"},
        ]},
    ], status_label="Potential", **fields)


# Authentication


def test_a_signed_lead_created_is_stored_for_enrichment(cl, clock, close_api, aimylogic):
    services, client = cl
    response = post(client, fixture("lead_created.json"), clock)
    assert response.status_code == 202
    [record] = records(services)
    assert record.status is Status.RECEIVED and record.key == "close:event:ev_5e3JqBGFMD9Z4DTgZsoUBG"
    assert record.ref == LEAD_ID and json.loads(record.raw) == {"lead_id": LEAD_ID}
    assert close_api.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize(
    ("case", "make_request"),
    [
        ("one byte changed", lambda body, ts: (body.replace(b"Bluebird", b"Bluebirt"), ts, sign(body, ts))),
        ("wrong key", lambda body, ts: (body, ts, sign(body, ts, key="00" * 32))),
        ("key used as text, not hex-decoded",
         lambda body, ts: (body, ts, hmac.new(KEY.encode(), ts.encode() + body, hashlib.sha256).hexdigest())),
        ("timestamp not the signed one", lambda body, ts: (body, str(int(ts) + 1), sign(body, ts))),
        ("empty signature", lambda body, ts: (body, ts, "")),
        ("truncated signature", lambda body, ts: (body, ts, sign(body, ts)[:-2])),
    ],
)
def test_a_bad_signature_is_401_and_nothing_happens(cl, clock, close_api, aimylogic, case, make_request):
    services, client = cl
    body, timestamp, signature = make_request(fixture("lead_created.json"), seconds(clock()))
    response = post(client, body, clock, timestamp=timestamp, signature=signature)
    assert response.status_code == 401, case
    deliver_pending(services)
    assert records(services) == [] and close_api.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize(
    ("shift", "accepted"),
    [
        (timedelta(minutes=5), True),
        (-timedelta(minutes=5), True),
        (timedelta(minutes=5, seconds=1), False),
        (-timedelta(minutes=5, seconds=1), False),
    ],
)
def test_the_timestamp_window_is_five_minutes_both_ways(cl, clock, close_api, aimylogic, shift, accepted):
    services, client = cl
    body = fixture("lead_created.json")
    timestamp = seconds(clock() - shift)
    response = post(client, body, clock, timestamp=timestamp, signature=sign(body, timestamp))
    assert response.status_code == (202 if accepted else 401)
    assert len(records(services)) == (1 if accepted else 0)
    assert close_api.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize("form", ["{s}.0", "+{s}", " {s}", "0{s}", "1.7e9", "{s}000", "99999999999999999999"])
def test_a_timestamp_not_in_canonical_seconds_is_refused_even_when_signed(cl, clock, form):
    services, client = cl
    body = fixture("lead_created.json")
    timestamp = form.format(s=seconds(clock()))
    response = post(client, body, clock, timestamp=timestamp, signature=sign(body, timestamp))
    assert response.status_code == 401 and records(services) == []


def test_the_previous_key_still_verifies_during_rotation(cl, clock):
    services, client = cl
    body = fixture("lead_created.json")
    timestamp = seconds(clock())
    assert post(client, body, clock, signature=sign(body, timestamp, key=PREVIOUS_KEY)).status_code == 202
    assert len(records(services)) == 1


def test_with_a_signature_key_the_shared_key_alone_does_not_pass(cl, close_api):
    services, client = cl
    response = client.post(f"/webhooks/close?key={SECRET}", data=fixture("lead_created.json"), content_type=JSON)
    assert response.status_code == 401 and records(services) == []


def test_without_a_signature_key_the_shared_key_is_required(make, clock):
    services, client = make(keys=())
    assert post(client, fixture("lead_created.json"), clock).status_code == 401
    assert records(services) == []
    assert post(client, fixture("lead_created.json"), clock, url=f"/webhooks/close?key={SECRET}").status_code == 202


# Events


def test_a_retried_event_is_the_same_record(cl, clock):
    services, client = cl
    assert records(services) == []
    first = post(client, fixture("lead_created.json"), clock).get_json()["leads"][0]
    clock.advance(minutes=20)  # Close retries with growing intervals; each retry is signed afresh
    again = post(client, fixture("lead_created.json"), clock).get_json()["leads"][0]
    assert again["lead_id"] == first["lead_id"] and again["reason"] == "already received"
    assert len(records(services)) == 1


@pytest.mark.parametrize("name", ["lead_updated.json", "contact_created.json"])
def test_other_events_are_not_leads(cl, clock, name):
    services, client = cl
    response = post(client, fixture(name), clock)
    assert response.status_code == 202 and response.get_json()["leads"] == [] and records(services) == []


@pytest.mark.parametrize(
    "body",
    [b"{}", b"[]", b'{"event":{"object_type":"lead","action":"created","lead_id":"lead_x"}}',
     b'{"event":{"id":"ev_1","object_type":"lead","action":"created","lead_id":"../../api/v1/me"}}'],
)
def test_a_malformed_event_is_400(cl, clock, body):
    services, client = cl
    assert post(client, body, clock).status_code == 400 and records(services) == []


# Enrichment


def event() -> LeadEvent:
    return LeadEvent("event:ev_1", LEAD_ID, None, {"lead_id": LEAD_ID})


def test_enrichment_reads_every_contact_phone_except_fax(cl, close_api, clock):
    services, _ = cl
    add_bluebird(close_api)
    lead = services.source("close").enrich(event(), clock())
    [hit] = close_api.hits
    assert hit.path == f"/api/v1/lead/{LEAD_ID}/"
    assert [(c.value, c.kind) for c in lead.phones] == [("+13035550148", "office"), ("+17205550199", "mobile")]
    assert lead.fields == {"name": "Dana Whitfield", "crm": "close", "crm_lead_id": LEAD_ID,
                           "crm_contact_id": "cont_9sQw8eRt7y", "company": "Bluebird Dental",
                           "lead_status": "Potential"}


def test_a_lead_before_its_contacts_is_retryable(cl, close_api, clock):
    services, _ = cl
    add_bluebird(close_api)
    close_api.contacts_hidden_for[LEAD_ID] = 1
    with pytest.raises(EnrichmentError) as caught:
        services.source("close").enrich(event(), clock())
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [(401, AuthError, False), (429, UnavailableError, True), (404, EnrichmentError, False),
     (502, UnavailableError, True)],
)
def test_api_failures_are_typed_without_the_key(cl, close_api, clock, status, error, retryable):
    services, _ = cl
    close_api.fail_next(status, times=3, retry_after=11)
    with pytest.raises(error) as caught:
        services.source("close").enrich(event(), clock())
    assert caught.value.retryable is retryable and close_api.api_key not in str(caught.value)


def test_a_slow_api_is_unavailable(cl, close_api, clock):
    services, _ = cl
    source = services.source("close")
    source.timeout = (1.0, 0.2)
    add_bluebird(close_api)
    close_api.delay = 0.6
    with pytest.raises(UnavailableError):
        source.enrich(event(), clock())


def test_without_an_api_key_enrichment_waits_for_it(make_services, clock):
    with pytest.raises(AuthError, match="CLOSE_API_KEY"):
        make_services(crm=CrmSettings()).source("close").enrich(event(), clock())


# End to end


def test_end_to_end_the_mobile_contact_number_is_called(cl, close_api, aimylogic, clock):
    services, client = cl
    add_bluebird(close_api)
    close_api.contacts_hidden_for[LEAD_ID] = 1
    assert post(client, fixture("lead_created.json"), clock).status_code == 202
    deliver_pending(services)
    assert records(services)[0].status is Status.RECEIVED and aimylogic.entries == []
    clock.advance(minutes=5)
    deliver_pending(services)
    assert records(services)[0].status is Status.SENT
    [entry] = aimylogic.entries
    assert entry["phone"] == "17205550199"  # the mobile type before the office one; the fax never
    assert entry["gmtZone"] == "America/Denver"
    assert entry["payload"]["name"] == "Dana Whitfield" and entry["payload"]["crm_lead_id"] == LEAD_ID
