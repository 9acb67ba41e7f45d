"""Several campaigns, and a campaign that is paused, finished or deleted while leads flow.

Leads arrive over the generic webhook, delivery talks to the Aimylogic emulator over HTTP (one account,
several campaign tokens), on SQLite and on DynamoDB (moto's server mode); time moves by hand.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta

import pytest

from crm2calls import campaigns
from crm2calls.aimylogic import token_fingerprint
from crm2calls.config import load_policy
from crm2calls.delivery import deliver_pending
from crm2calls.guards import phone_key, slot_name
from crm2calls.model import Status
from crm2calls.store.base import ClaimRefusedError, Claims
from tests.conftest import FIXTURES, SECRET, TOKEN
from tests.servers import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.test_delivery import add_lead, add_leads
from tests.test_lifecycle import store_url  # noqa: F401  (fixture: each backend)

RENEWALS = "5120.3002.renewals"
ENGLISH = "5120.3003.english"
HEADERS = {"X-Webhook-Secret": SECRET}
PIPELINES = {"default": 3001, "renewals": 3002, "english": 3003}


@pytest.fixture(scope="module")
def campaigns_policy():
    return load_policy(FIXTURES / "campaigns" / "campaigns.toml", "RU")


@pytest.fixture
def make(make_services, campaigns_policy, aimylogic, store_url):  # noqa: F811
    """Services for three campaigns on the parametrized store; the emulator knows them all (tokens overridable)."""

    def build(*, tokens=None, **delivery):
        aimylogic.add_campaign(RENEWALS, "Renewals")
        aimylogic.add_campaign(ENGLISH, "English")
        policy = replace(
            campaigns_policy, delivery=replace(campaigns_policy.delivery, backoff_cap_seconds=300, **delivery)
        )
        return make_services(
            policy=policy,
            aimylogic_token=TOKEN,
            aimylogic_url=aimylogic.url,
            leads_store=store_url,
            campaign_tokens=tokens or {"renewals": RENEWALS, "english": ENGLISH},
        )

    return build


def post(services, n: int, campaign: str, phone: str | None = None) -> dict:
    """One lead over the webhook, routed to `campaign` by its pipeline id (a number, as amoCRM sends it)."""
    from app import create_app

    body = {"id": f"{campaign}-{n}", "phone": phone or f"+7912{n:07d}", "lead": {"pipeline_id": PIPELINES[campaign]}}
    response = create_app(services=services).test_client().post("/webhooks/generic", json=body, headers=HEADERS)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["leads"][0]


def leads_of(services, campaign: str) -> list:
    return services.store.list(limit=10_000, campaign=campaign)


def statuses_of(services, campaign: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lead in leads_of(services, campaign):
        counts[lead.status.value] = counts.get(lead.status.value, 0) + 1
    return counts


# Several campaigns


def test_leads_go_to_their_campaign_and_a_batch_never_mixes_campaigns(make, aimylogic):
    services = make()
    for n in range(3):
        for campaign in PIPELINES:
            post(services, n, campaign)

    report = deliver_pending(services)

    assert report.sent == 9 and report.requests == 3
    tokens = {"default": TOKEN, "renewals": RENEWALS, "english": ENGLISH}
    for campaign, token in tokens.items():
        assert len(aimylogic.jobs_of(token)) == 3
        for lead in leads_of(services, campaign):
            assert lead.status is Status.SENT and lead.job_id in aimylogic.jobs_of(token)
            assert lead.job_token == token_fingerprint(token) and token not in json.dumps(lead.history)
    for request in aimylogic.requests:  # one campaign's phones per request
        token = request.path.split("/")[4]
        assert {entry["phone"] for entry in request.json()} == {
            json.loads(lead.entry)["phone"] for lead in leads_of(services, {v: k for k, v in tokens.items()}[token])
        }


def test_the_same_person_may_be_called_by_two_campaigns_but_once_by_each(make, aimylogic):
    services = make()
    first = post(services, 1, "default", phone="+79120000001")
    other = post(services, 2, "renewals", phone="+79120000001")
    again = post(services, 3, "renewals", phone="+79120000001")

    assert (first["status"], other["status"], again["status"]) == ("accepted", "accepted", "duplicate")
    deliver_pending(services)
    assert aimylogic.calls_per_phone() == {"79120000001": 2}


def test_a_refused_token_holds_only_its_campaign(make, aimylogic, caplog):
    services = make(tokens={"renewals": "0000.0000.replaced", "english": ENGLISH})
    for n in range(2):
        post(services, n, "default")
        post(services, n, "renewals")

    report = deliver_pending(services)

    assert report.sent == 2 and report.paused
    assert statuses_of(services, "default") == {"sent": 2} and statuses_of(services, "renewals") == {"held": 2}
    health = campaigns.health(services)
    assert (
        health["renewals"]["delivery"] == "token_refused" and "AIMYLOGIC_TOKEN_RENEWALS" in health["renewals"]["reason"]
    )
    assert health["renewals"]["held"] == 2
    assert health["default"] == {"aimylogic": "inProcess", "delivery": "sending", "held": 0}
    paused = [r for r in caplog.records if r.levelno == logging.ERROR and "campaign renewals" in r.getMessage()]
    assert paused and all("0000.0000.replaced" not in r.getMessage() for r in caplog.records)
    assert all(lead.attempts == 0 for lead in leads_of(services, "renewals"))


# A campaign's state in Aimylogic


def test_a_paused_campaign_holds_its_leads_and_they_go_out_within_a_minute_of_it_running(make, aimylogic, clock):
    services = make()
    aimylogic.pause(RENEWALS)
    for n in range(3):
        post(services, n, "renewals")
        post(services, n, "default")

    deliver_pending(services)

    assert statuses_of(services, "default") == {"sent": 3} and statuses_of(services, "renewals") == {"held": 3}
    assert aimylogic.count("addPhones", RENEWALS) == 0  # nothing is sent into the pause
    held = leads_of(services, "renewals")[0]
    assert held.last_error == "campaign renewals is paused in Aimylogic" and held.attempts == 0
    assert campaigns.health(services)["renewals"] == {
        "aimylogic": "paused", "delivery": "held", "held": 3, "reason": "campaign renewals is paused in Aimylogic",
    }  # fmt: skip

    for _ in range(5):  # a pause of minutes: one status request a minute, no history line per look
        clock.advance(seconds=30)
        deliver_pending(services)
    assert aimylogic.count("status", RENEWALS) <= 4 and statuses_of(services, "renewals") == {"held": 3}
    assert len(services.store.get(held.id).history) == len(held.history)

    aimylogic.resume(RENEWALS)
    clock.advance(seconds=60)
    report = deliver_pending(services)

    assert report.sent == 3 and statuses_of(services, "renewals") == {"sent": 3}
    assert len(aimylogic.jobs_of(RENEWALS)) == 3 and campaigns.health(services)["renewals"]["held"] == 0
    assert "campaign renewals sends again" in json.dumps(services.store.get(held.id).history)


@pytest.mark.parametrize("status", ["finished", "deleted"])
def test_a_finished_or_deleted_campaign_holds_loudly_and_its_leads_expire_at_their_window(
    make, aimylogic, clock, caplog, status
):
    services = make()
    aimylogic.set_status(status, ENGLISH)
    post(services, 1, "english")

    deliver_pending(services)

    [lead] = leads_of(services, "english")
    assert lead.status is Status.HELD and f"campaign english is {status} in Aimylogic" in lead.last_error
    assert "AIMYLOGIC_TOKEN_ENGLISH" in lead.last_error
    assert any(r.levelno == logging.ERROR and "CAMPAIGN HELD" in r.getMessage() for r in caplog.records)
    assert campaigns.health(services)["english"]["aimylogic"] == status

    clock.advance(hours=73)  # past finishDateTime (72 h): never sent, never rejected
    deliver_pending(services)
    assert services.store.get(lead.id).status is Status.EXPIRED and aimylogic.count("addPhones", ENGLISH) == 0


@pytest.mark.parametrize(
    ("state", "answer", "outcome"),
    [
        ("finished", 400, Status.HELD),
        ("paused", 400, Status.HELD),  # how Aimylogic answers a paused campaign is UNKNOWN: each answer is safe
        ("paused", 503, Status.HELD),
        ("paused", 200, Status.SENT),  # queued in the paused campaign: called when it runs again
    ],
)
def test_a_batch_refused_for_its_campaign_costs_a_handful_of_requests(make, aimylogic, clock, state, answer, outcome):
    services = make(batch_size=100, concurrency=1)
    leads = add_leads(services, 100)
    services.store.put_meta(  # the status asked a moment ago said it runs; it changed since
        campaigns.meta_name("default"),
        {"aimylogic": "inProcess", "delivery": "sending", "checked_at": clock().isoformat()},
    )
    aimylogic.set_status(state)
    aimylogic.paused_answer = aimylogic.closed_answer = answer

    report = deliver_pending(services)

    assert aimylogic.count("addPhones") == 1 and aimylogic.count("status") == (0 if answer == 200 else 1)
    assert report.rejected == 0 and report.failed == 0
    assert {services.store.get(lead.id).status for lead in leads} == {outcome}
    assert all(services.store.get(lead.id).attempts == (1 if outcome is Status.SENT else 0) for lead in leads)


def test_a_single_entry_refusal_asks_the_campaign_before_rejecting(make, aimylogic, clock):
    services = make()
    good = add_lead(services, 1)
    bad = add_lead(services, 2, gmtZone="+25:00")  # our own schema refuses it: surely about the entry
    services.store.put_meta(
        campaigns.meta_name("default"),
        {"aimylogic": "inProcess", "delivery": "sending", "checked_at": clock().isoformat()},
    )
    aimylogic.fail_next(400, body="scripted refusal")  # the batch; alone, the bad entry is refused for itself

    deliver_pending(services)

    assert services.store.get(bad.id).status is Status.REJECTED
    assert services.store.get(good.id).status is Status.SENT  # the campaign runs: its refusal was about the bad one
    assert aimylogic.count("status") == 1  # once, after the first refusal; the bad entry needed none

    aimylogic.set_status("finished")
    lone = add_lead(services, 3)
    clock.advance(seconds=1)
    services.store.put_meta(
        campaigns.meta_name("default"),
        {"aimylogic": "inProcess", "delivery": "sending", "checked_at": clock().isoformat()},
    )
    deliver_pending(services)
    assert services.store.get(lone.id).status is Status.HELD  # a lone valid entry is never rejected for its campaign


def test_health_lists_every_campaign(make, aimylogic):
    from app import create_app

    services = make()
    aimylogic.pause(RENEWALS)
    post(services, 1, "renewals")
    deliver_pending(services)

    body = create_app(services=services).test_client().get("/healthz").get_json()

    assert set(body["campaigns"]) == {"default", "renewals", "english"}
    assert body["campaigns"]["renewals"]["delivery"] == "held" and body["campaigns"]["renewals"]["held"] == 1
    assert body["campaigns"]["default"]["delivery"] == "sending"  # one campaign paused, the others send
    [reason] = [r for r in body["reasons"] if r["code"] == "campaign_held"]
    assert reason["message"].startswith("campaign renewals:") and "paused" in reason["message"]


# Commands


def cli(services):
    from app import create_app

    return create_app(services=services).test_cli_runner()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_dialer_status_shows_each_campaign_with_its_counters(make, aimylogic):
    services = make()
    for n in range(2):
        post(services, n, "renewals")
    deliver_pending(services)
    aimylogic.set_status("finished", ENGLISH)

    result = cli(services).invoke(args=["dialer", "status"])

    assert result.exit_code == 1, result.output  # a finished campaign is a problem to fix
    lines = result.output.splitlines()
    assert lines[0].split() == ["campaign", "aimylogic", "delivery", "held", "name", "total", "processed", "in",
                                "process", "retry"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["renewals"][:6] == ["renewals", "inProcess", "sending", "0", "Renewals", "2"]
    assert rows["english"][1] == "finished" and rows["default"][1] == "inProcess"
    assert "english: finished in Aimylogic: give it a new end date" in result.output
    assert "AIMYLOGIC_TOKEN_ENGLISH" in result.output
    assert all(token not in result.output for token in (TOKEN, RENEWALS, ENGLISH))
    assert aimylogic.count("details", RENEWALS) == 1


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_dialer_status_names_a_refused_token(make, aimylogic):
    services = make(tokens={"renewals": "0000.0000.old", "english": ENGLISH})
    result = cli(services).invoke(args=["dialer", "status"])
    assert result.exit_code == 1
    assert "renewals  unreachable" in result.output or "renewals: Aimylogic refused the token" in result.output
    assert "AIMYLOGIC_TOKEN_RENEWALS" in result.output and "0000.0000.old" not in result.output


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_leads_list_and_show_name_the_campaign_and_the_token_of_the_job(make, aimylogic):
    services = make()
    post(services, 1, "renewals")
    lead = post(services, 2, "default")
    deliver_pending(services)

    listed = cli(services).invoke(args=["leads", "list", "--campaign", "renewals"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count(" renewals ") == 1 and "totals (campaign renewals): sent 1" in listed.output
    unknown = cli(services).invoke(args=["leads", "list", "--campaign", "renewal"])
    assert unknown.exit_code == 2 and "the campaigns are default, english, renewals" in unknown.output

    shown = cli(services).invoke(args=["leads", "show", lead["lead_id"]])
    assert "campaign default  status sent" in shown.output
    assert f"(token {token_fingerprint(TOKEN)})" in shown.output and TOKEN not in shown.output

    replaced = type(services)(replace(services.settings, aimylogic_token="9999.0000.new"), clock=services.clock)
    shown = cli(replaced).invoke(args=["leads", "show", lead["lead_id"]])
    assert f"placed by token {token_fingerprint(TOKEN)}, since replaced" in shown.output


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_dialer_test_calls_through_the_named_campaign(make, aimylogic):
    services = make()
    result = cli(services).invoke(args=["dialer", "test", "+79123456789", "--campaign", "renewals"])
    assert result.exit_code == 0, result.output
    assert "queued in campaign renewals" in result.output
    [request] = aimylogic.requests
    assert request.path == f"/api/crmCalls/campaign/{RENEWALS}/test/addPhone" and RENEWALS not in result.output


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_leads_of_a_campaign_no_longer_declared_wait_instead_of_stopping_delivery(make, aimylogic, campaigns_policy):
    services = make()
    post(services, 1, "english")
    post(services, 2, "default")
    gone = replace(campaigns_policy, campaigns={"renewals": "AIMYLOGIC_TOKEN_RENEWALS"})
    later = type(services)(replace(services.settings, policy=gone), clock=services.clock)

    report = deliver_pending(later)

    assert report.sent == 1 and statuses_of(later, "english") == {"held": 1}
    assert "declare [campaigns.english] again" in leads_of(later, "english")[0].last_error


def test_an_amocrm_lead_is_routed_by_its_pipeline_read_from_the_api(make_app, aimylogic, tmp_path):
    from tests.emulators.amocrm import AmoCrmEmulator
    from tests.test_source_amocrm import CONTACT, URL, api, wire

    mapping = tmp_path / "leads.toml"
    mapping.write_text(
        """
[campaigns.renewals]
token_env = "AIMYLOGIC_TOKEN_RENEWALS"

[sources.amocrm.campaign_by]
field = "lead.pipeline_id"
map = { "3001" = "default", "3002" = "renewals" }
""",
        encoding="utf-8",
    )
    aimylogic.add_campaign(RENEWALS, "Renewals")
    with AmoCrmEmulator() as amo:
        amo.add_lead({**api("api_lead.json"), "pipeline_id": 3002}, [(CONTACT, True)])  # a number, as amoCRM sends it
        amo.add_contact(api("api_contact.json"))
        services, client = make_app(
            amocrm_base_url=amo.url, amocrm_token=amo.token, policy=load_policy(mapping, "RU"),
            campaign_tokens={"renewals": RENEWALS},
        )  # fmt: skip
        client.post(URL, data=wire("lead_add.form"), content_type="application/x-www-form-urlencoded")
        deliver_pending(services)

    [lead] = services.store.list()
    assert lead.campaign == "renewals" and lead.status is Status.SENT
    assert aimylogic.jobs_of(RENEWALS) == [lead.job_id] and aimylogic.jobs_of(TOKEN) == []


def test_a_dry_run_keeps_each_campaigns_slots_apart_from_the_real_ones(make_services, campaigns_policy, tmp_path):
    services = make_services(policy=campaigns_policy, dry_run=True, leads_store=f"sqlite:///{tmp_path / 'dry.db'}")
    first = post(services, 1, "default", phone="+79120000001")
    other = post(services, 2, "renewals", phone="+79120000001")
    again = post(services, 3, "renewals", phone="+79120000001")

    assert (first["status"], other["status"], again["status"]) == ("accepted", "accepted", "duplicate")
    assert deliver_pending(services).dry_run == 2
    held = services.store.get(other["lead_id"])

    probe = replace(held, id="probe", key="probe:1", status=Status.DUPLICATE)
    # The campaign's real slot is free: a dry run never told a real lead "duplicate"...
    services.store.insert(probe, Claims(slot_name(phone_key("79120000001"), "renewals"), timedelta(hours=24)))
    with pytest.raises(ClaimRefusedError):  # the dry run's own slot for renewals is taken
        services.store.insert(
            replace(probe, id="probe-2", key="probe:2"),
            Claims(slot_name(phone_key("79120000001"), "dry-run.renewals"), timedelta(hours=24)),
        )
