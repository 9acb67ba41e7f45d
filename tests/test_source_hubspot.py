"""HubSpot: v3 signatures (HubSpot's published vector, rotation, the timestamp window, the signed URI),
Webhooks API events and workflow bodies, enrichment against a stand-in, end to end to the dialer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from crm2calls.config import CrmSettings
from crm2calls.delivery import deliver_pending
from crm2calls.errors import AuthError, EnrichmentError, UnauthorizedError, UnavailableError
from crm2calls.model import LeadEvent, Status
from crm2calls.sources.hubspot import verify_v3
from tests.conftest import FIXTURES, SECRET
from tests.emulators.hubspot import HubSpotStandIn

CLIENT_SECRET = "c0ffee00-1111-4222-8333-444455556666"
PREVIOUS_SECRET = "deadbeef-9999-4888-8777-666655554444"
PUBLIC = "https://crm2calls.example.com"
URL = PUBLIC + "/webhooks/hubspot"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIXTURES / "hubspot" / name).read_bytes()


def millis(moment: datetime) -> str:
    return str((moment - EPOCH) // timedelta(milliseconds=1))


def sign(body: bytes, timestamp: str, secret: str = CLIENT_SECRET, uri: str = URL, method: str = "POST") -> str:
    """HubSpot's v3 formula, written here again so the test does not trust the code under test."""
    message = method.encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


@pytest.fixture
def hubspot():
    with HubSpotStandIn() as api:
        yield api


@pytest.fixture
def make(make_app, hubspot, clock):
    """Services and a test client for a HubSpot configuration (client secrets unless given)."""

    def build(secrets: tuple[str, ...] = (CLIENT_SECRET, PREVIOUS_SECRET)):
        services, client = make_app(hubspot_client_secrets=secrets, hubspot_token=hubspot.token,
                                    hubspot_base_url=hubspot.url, public_base_url=PUBLIC)
        services.source("hubspot").now = clock
        return services, client

    return build


@pytest.fixture
def hs(make):
    return make()


def post(client, body: bytes, clock, *, timestamp: str | None = None, signature: str | None = None, **kwargs):
    timestamp = millis(clock()) if timestamp is None else timestamp
    headers = {"X-HubSpot-Request-Timestamp": timestamp,
               "X-HubSpot-Signature-v3": sign(body, timestamp) if signature is None else signature}
    return client.post("/webhooks/hubspot", data=body, content_type=JSON, headers=headers, **kwargs)


def records(services):
    return services.store.list(limit=1000)


# Signature v3


def test_the_published_hubspot_vector_verifies_and_one_changed_byte_does_not():
    """A real signed delivery published with its client secret (crm-webhooks.md §5)."""
    secret = "cfc68c0b-4b4e-4ef8-b764-95350e4ea479"
    uri = "https://webhook.site/335453f5-94b3-49d9-b684-a55354d4b8df"
    timestamp, signature = "1752613922216", "gbj1XPRvUt0noT7i7fXfTzOD4sLzQmf0VT28ZYq0EYg="
    body = fixture("published_v3_vector.json")
    now = EPOCH + timedelta(milliseconds=int(timestamp))
    verify_v3((secret,), "POST", uri, body, timestamp, signature, now)
    tampered = body.replace(b"531833541", b"531833542")
    with pytest.raises(UnauthorizedError):
        verify_v3((secret,), "POST", uri, tampered, timestamp, signature, now)


def test_a_signed_batch_is_stored_one_record_per_contact_event(hs, clock, hubspot, aimylogic):
    services, client = hs
    response = post(client, fixture("events_batch.json"), clock)
    assert response.status_code == 200
    leads = response.get_json()["leads"]
    # two contact.creation, one mobilephone change, one object.creation of a contact (0-1);
    # a lifecyclestage change, a deletion and a deal (0-3) are not leads
    assert [lead["ref"] for lead in leads] == ["151000000101", "151000000102", "151000000103", "151000000105"]
    by_ref = {r.ref: r for r in records(services)}
    assert {ref: r.status for ref, r in by_ref.items()} == {
        "151000000101": Status.RECEIVED, "151000000102": Status.RECEIVED,
        "151000000103": Status.PENDING, "151000000105": Status.RECEIVED,
    }
    assert by_ref["151000000101"].key == "hubspot:event:1840012001"
    assert json.loads(by_ref["151000000101"].raw) == {"contact_id": "151000000101"}
    assert json.loads(by_ref["151000000103"].entry)["phone"] == "15125550199"  # national, read in region US
    assert hubspot.hits == [] and aimylogic.requests == []  # nothing leaves the request path


def test_a_retried_event_maps_to_the_same_record(hs, clock):
    services, client = hs
    body = fixture("events_batch.json")
    first = post(client, body, clock).get_json()["leads"]
    clock.advance(minutes=2)
    again = post(client, body, clock).get_json()["leads"]
    assert [lead["lead_id"] for lead in again] == [lead["lead_id"] for lead in first]
    assert all(lead["reason"] == "already received" for lead in again)
    assert len(records(services)) == 4


def _tampered(body: bytes) -> bytes:
    return body.replace(b"151000000101", b"151000000109", 1)


@pytest.mark.parametrize(
    ("case", "make_request"),
    [
        ("one byte changed", lambda body, ts: (_tampered(body), ts, sign(body, ts))),
        ("wrong secret", lambda body, ts: (body, ts, sign(body, ts, secret="not-the-client-secret"))),
        ("signature of another URI", lambda body, ts: (body, ts, sign(body, ts, uri="http://localhost/webhooks/hubspot"))),
        ("signature of another method", lambda body, ts: (body, ts, sign(body, ts, method="GET"))),
        ("timestamp not the signed one", lambda body, ts: (body, str(int(ts) - 1), sign(body, ts))),
        ("empty signature", lambda body, ts: (body, ts, "")),
        ("hex instead of base64", lambda body, ts: (body, ts, base64.b64decode(sign(body, ts)).hex())),
    ],
)
def test_a_bad_signature_is_refused_and_nothing_happens(hs, clock, hubspot, aimylogic, case, make_request):
    services, client = hs
    body, timestamp, signature = make_request(fixture("events_batch.json"), millis(clock()))
    response = post(client, body, clock, timestamp=timestamp, signature=signature)
    assert response.status_code == 401, case
    assert response.get_json()["error"] == "unauthorized"
    deliver_pending(services)
    assert records(services) == [] and hubspot.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize(
    ("shift", "accepted"),
    [
        (timedelta(minutes=5), True),  # exactly at the tolerance, old
        (-timedelta(minutes=5), True),  # exactly at the tolerance, ahead of our clock
        (timedelta(minutes=5, milliseconds=1), False),  # stale
        (-timedelta(minutes=5, milliseconds=1), False),  # from the future
        (timedelta(hours=3), False),  # a replay
    ],
)
def test_the_timestamp_window_is_five_minutes_both_ways(hs, clock, hubspot, aimylogic, shift, accepted):
    services, client = hs
    body = fixture("events_batch.json")
    timestamp = millis(clock() - shift)
    response = post(client, body, clock, timestamp=timestamp, signature=sign(body, timestamp))
    assert response.status_code == (200 if accepted else 401)
    assert len(records(services)) == (4 if accepted else 0)
    assert hubspot.hits == [] and aimylogic.requests == []


@pytest.mark.parametrize(
    "form", ["{ms}.0", "{ms}.000", "+{ms}", " {ms}", "{ms} ", "0{ms}", "1.7e12", "١٧٥٢٦١٣٩٢٢٢١٦", "9" * 17]
)
def test_a_timestamp_not_in_canonical_milliseconds_is_refused_even_when_signed(hs, clock, hubspot, form):
    services, client = hs
    body = fixture("events_batch.json")
    timestamp = form.format(ms=millis(clock()))
    response = post(client, body, clock, timestamp=timestamp, signature=sign(body, timestamp))
    assert response.status_code == 401
    assert records(services) == [] and hubspot.hits == []


@pytest.mark.parametrize("missing", ["X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp"])
def test_a_missing_header_is_refused(hs, clock, missing):
    services, client = hs
    body = fixture("events_batch.json")
    timestamp = millis(clock())
    headers = {"X-HubSpot-Request-Timestamp": timestamp, "X-HubSpot-Signature-v3": sign(body, timestamp)}
    del headers[missing]
    response = client.post("/webhooks/hubspot", data=body, content_type=JSON, headers=headers)
    assert response.status_code == 401 and records(services) == []


def test_the_previous_client_secret_still_verifies_during_rotation(hs, clock):
    services, client = hs
    body = fixture("events_batch.json")
    timestamp = millis(clock())
    response = post(client, body, clock, signature=sign(body, timestamp, secret=PREVIOUS_SECRET))
    assert response.status_code == 200 and len(records(services)) == 4


def test_with_a_client_secret_the_shared_key_alone_does_not_pass(hs, hubspot):
    services, client = hs
    response = client.post(f"/webhooks/hubspot?key={SECRET}", data=fixture("events_batch.json"), content_type=JSON)
    assert response.status_code == 401 and records(services) == [] and hubspot.hits == []


def test_without_a_client_secret_the_shared_key_is_required(make):
    services, client = make(secrets=())
    body = fixture("events_batch.json")
    assert client.post("/webhooks/hubspot", data=body, content_type=JSON).status_code == 401
    assert client.post("/webhooks/hubspot?key=wrong", data=body, content_type=JSON).status_code == 401
    assert records(services) == []
    response = client.post(f"/webhooks/hubspot?key={SECRET}", data=body, content_type=JSON)
    assert response.status_code == 200 and len(records(services)) == 4


def test_the_signed_uri_decodes_hubspots_listed_escapes_and_nothing_else(hs, clock):
    _, client = hs
    body = fixture("events_batch.json")
    timestamp = millis(clock())
    raw = "/webhooks/hubspot?portal=48807704&tag=a%3Ab%2Cc%40d&note=x%20y"
    # HubSpot signs %3A %2C %40 decoded, %20 as it is; the server hands us the raw request line
    signed = sign(body, timestamp, uri=PUBLIC + "/webhooks/hubspot?portal=48807704&tag=a:b,c@d&note=x%20y")
    response = post(client, body, clock, signature=signed, environ_overrides={"RAW_URI": raw, "REQUEST_URI": raw})
    assert response.status_code == 200
    over_decoded = sign(body, timestamp, uri=PUBLIC + "/webhooks/hubspot?portal=48807704&tag=a:b,c@d&note=x y")
    response = post(client, body, clock, signature=over_decoded, environ_overrides={"RAW_URI": raw})
    assert response.status_code == 401


# Workflow "Send a webhook": the contact object itself


def test_a_workflow_contact_in_the_v3_shape_is_a_lead_at_once(hs, clock, hubspot):
    services, client = hs
    response = post(client, fixture("workflow_contact_v3.json"), clock)
    assert response.status_code == 200
    [record] = records(services)
    assert record.status is Status.PENDING and record.key == "hubspot:workflow:id:151000000201"
    entry = json.loads(record.entry)
    assert entry["phone"] == "15128675309"  # 512-867-5309 read in the source's region, US
    assert entry["gmtZone"] == "America/Chicago"  # from hs_timezone, america_slash_chicago
    assert entry["payload"] == {
        "name": "Ольга Петрова", "crm": "hubspot", "crm_contact_id": "151000000201", "city": "Austin",
        "company": "Тест и партнёры",
    }
    assert hubspot.hits == []


def test_a_legacy_workflow_contact_falls_back_from_an_invalid_mobile_to_the_next_number(hs, clock):
    services, client = hs
    assert post(client, fixture("workflow_contact_legacy.json"), clock).status_code == 200
    [record] = records(services)
    entry = json.loads(record.entry)
    assert entry["phone"] == "79123456789"  # mobilephone "not a number" is skipped, not fatal
    assert entry["payload"]["name"] == "Анна Смирнова" and entry["payload"]["crm_contact_id"] == "1201"


def test_a_workflow_body_without_an_id_is_keyed_by_its_content(hs, clock):
    services, client = hs
    body = fixture("workflow_custom_no_id.json")
    first = post(client, body, clock).get_json()["leads"][0]
    again = post(client, body, clock).get_json()["leads"][0]
    [record] = records(services)
    assert record.key.startswith("hubspot:workflow:sha256:") and again["lead_id"] == first["lead_id"]
    assert json.loads(record.entry)["phone"] == "13035550148"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b'"a string"', "body"),
        (b'[{"subscriptionType":"contact.creation","objectId":1}]', "[0]"),  # no eventId
        (b'[{"eventId":1,"subscriptionType":"contact.creation","objectId":"../1"}]', "[0]"),
        (b"[1]", "[0]"),
    ],
)
def test_a_malformed_body_is_400_naming_the_problem(hs, clock, body, field):
    services, client = hs
    response = post(client, body, clock)
    assert response.status_code == 400 and response.get_json()["field"] == field
    assert records(services) == []


# Enrichment


def test_enrichment_asks_for_the_phone_properties_with_the_token(hs, hubspot, clock):
    services, _ = hs
    hubspot.add_contact("151000000101", firstname="Jo", lastname="Doe", mobilephone="(415) 867-5309")
    lead = services.source("hubspot").enrich(LeadEvent("k", "151000000101", None, {"contact_id": "151000000101"}),
                                             clock())
    [hit] = hubspot.hits
    assert hit.path == "/crm/v3/objects/contacts/151000000101"
    assert {"phone", "mobilephone", "hs_timezone"} <= set(hit.query["properties"][0].split(","))
    assert hit.headers["Authorization"] == f"Bearer {hubspot.token}"
    assert [(c.value, c.kind) for c in lead.phones] == [("(415) 867-5309", "mobile")]
    assert lead.region == "US" and lead.fields["name"] == "Jo Doe"


def test_the_stand_in_like_hubspot_returns_no_phone_without_properties(hubspot):
    import requests

    hubspot.add_contact("7", phone="+15125550199", firstname="A")
    answer = requests.get(f"{hubspot.url}/crm/v3/objects/contacts/7",
                          headers={"Authorization": f"Bearer {hubspot.token}"}, timeout=5).json()
    assert "phone" not in answer["properties"] and answer["properties"]["firstname"] == "A"


def event(contact_id: str = "151000000101") -> LeadEvent:
    return LeadEvent(f"event:{contact_id}", contact_id, None, {"contact_id": contact_id})


def test_a_contact_without_a_phone_yet_is_a_retryable_enrichment_error(hs, hubspot, clock):
    services, _ = hs
    hubspot.add_contact("151000000101", firstname="Jo")
    with pytest.raises(EnrichmentError) as caught:
        services.source("hubspot").enrich(event(), clock())
    assert caught.value.retryable and "no phone yet" in caught.value.message


@pytest.mark.parametrize(
    ("status", "error", "retryable", "retry_after"),
    [(401, AuthError, False, None), (429, UnavailableError, True, 7.0), (404, EnrichmentError, False, None),
     (503, UnavailableError, True, 7.0)],
)
def test_api_failures_become_typed_errors_without_the_token(hs, hubspot, clock, status, error, retryable, retry_after):
    services, _ = hs
    hubspot.fail_next(status, times=3, retry_after=7)
    with pytest.raises(error) as caught:
        services.source("hubspot").enrich(event(), clock())
    assert caught.value.retryable is retryable and caught.value.retry_after == retry_after
    assert hubspot.token not in str(caught.value)


def test_an_unknown_contact_is_not_retried(hs, clock):
    services, _ = hs
    with pytest.raises(EnrichmentError) as caught:
        services.source("hubspot").enrich(event("42"), clock())
    assert caught.value.retryable is False


def test_a_slow_api_times_out_as_unavailable(hs, hubspot, clock):
    services, _ = hs
    source = services.source("hubspot")
    source.timeout = (1.0, 0.2)
    hubspot.add_contact("151000000101", phone="+15125550199")
    hubspot.delay = 0.6
    with pytest.raises(UnavailableError) as caught:
        source.enrich(event(), clock())
    assert caught.value.retryable


def test_without_a_token_enrichment_is_an_auth_error_naming_the_variable(make_services, clock):
    services = make_services(crm=CrmSettings())
    with pytest.raises(AuthError, match="HUBSPOT_TOKEN"):
        services.source("hubspot").enrich(event(), clock())


# End to end


def test_end_to_end_a_form_contact_whose_phone_arrives_a_moment_later(hs, hubspot, aimylogic, clock, caplog):
    services, client = hs
    hubspot.add_contact(
        "151000000102", firstname="Sam", lastname="Lee", phone="512-867-5309", hs_timezone="america_slash_chicago",
        city="Austin",
    )
    hubspot.phone_hidden_for["151000000102"] = 1
    body = json.dumps([{"eventId": 77, "subscriptionType": "contact.creation", "objectId": 151000000102,
                        "portalId": 48807704, "occurredAt": 1764147600120, "attemptNumber": 0}]).encode()
    assert post(client, body, clock).status_code == 200

    caplog.set_level(logging.DEBUG)
    deliver_pending(services)  # the form has not set the phone yet
    [record] = records(services)
    assert record.status is Status.RECEIVED and "no phone yet" in record.last_error and aimylogic.entries == []

    clock.advance(minutes=10)
    deliver_pending(services)
    [record] = records(services)
    assert record.status is Status.SENT
    [entry] = aimylogic.entries
    assert entry["phone"] == "15128675309" and entry["gmtZone"] == "America/Chicago"
    assert entry["payload"] == {"name": "Sam Lee", "crm": "hubspot", "crm_contact_id": "151000000102",
                                "city": "Austin"}
    assert len(hubspot.hits) == 2
    assert hubspot.token not in caplog.text
