"""Campaigns in the mapping file: declared with their token's variable, routed per source, checked at start-up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm2calls.config import check_configuration, load_policy
from crm2calls.mapping import lead_from_fields, render_entry
from crm2calls.model import Lead, PhoneCandidate
from tests.conftest import FIXTURES
from tests.test_config import ALL_VARIABLES, run_cli

CAMPAIGNS = FIXTURES / "campaigns"
RECEIVED = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
TOKEN_VARIABLES = ("AIMYLOGIC_TOKEN_RENEWALS", "AIMYLOGIC_TOKEN_ENGLISH")


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*ALL_VARIABLES, *TOKEN_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("AIMYLOGIC_TOKEN", "1.2.default")
    monkeypatch.setenv("LEADS_CONFIG", str(CAMPAIGNS / "campaigns.toml"))
    return monkeypatch


@pytest.fixture(scope="module")
def policy():
    return load_policy(CAMPAIGNS / "campaigns.toml", "RU")


def test_every_campaign_mistake_is_reported_at_once_with_its_key_path():
    result = run_cli(
        "config", "check", env={"LEADS_CONFIG": str(CAMPAIGNS / "bad_campaigns.toml"), "WEBHOOK_SECRET": "s"}
    )
    assert result.returncode == 2, result.stdout
    expected = (
        "sources.hubspot.campaign: no campaign named 'renewal'",
        "sources.generic.campaign_by.map.3002: no campaign named 'qualify'",
        "sources.generic.campaign_by.default: no campaign named 'nobody'",
        "sources.pipedrive.campaign_by.map: names no campaign",
        "campaigns.default (key): the default campaign is AIMYLOGIC_TOKEN",
        'sources.zoho.default_zone: "Moscow" is not an IANA zone id',
        "AIMYLOGIC_TOKEN: required",  # the environment's problems come in the same report
    )
    for line in expected:
        assert line in result.stderr, line


def test_a_token_variable_that_is_not_set_stops_start_up_naming_it(clean_env):
    clean_env.setenv("AIMYLOGIC_TOKEN_ENGLISH", "3.4.english")
    check = check_configuration(serving=True)
    [problem] = check.problems
    assert problem.startswith("campaigns.toml: campaigns.renewals.token_env: AIMYLOGIC_TOKEN_RENEWALS is not set")


def test_tokens_come_from_the_environment_and_stay_out_of_repr(clean_env):
    clean_env.setenv("AIMYLOGIC_TOKEN_RENEWALS", "5.6.renewals-secret")
    clean_env.setenv("AIMYLOGIC_TOKEN_ENGLISH", "7.8.english-secret")
    settings = check_configuration(serving=True).settings
    assert settings.campaign_token("default") == "1.2.default"
    assert settings.campaign_token("renewals") == "5.6.renewals-secret"
    assert settings.token_env("english") == "AIMYLOGIC_TOKEN_ENGLISH"
    assert "secret" not in repr(settings)


def test_a_dry_run_needs_no_campaign_token(clean_env):
    clean_env.setenv("DRY_RUN", "1")
    assert check_configuration(serving=True).problems == []


@pytest.mark.parametrize(
    ("pipeline", "campaign"),
    [
        (3002, "renewals"),  # amoCRM sends numbers: compared as text
        ("3002", "renewals"),
        (3003.0, "english"),
        (3001, "default"),
        (9999, "default"),  # not in map: campaign_by.default
        (None, "default"),  # missing field
    ],
)
def test_a_source_routes_leads_by_a_field(policy, pipeline, campaign):
    generic = policy.source("generic")
    record = {"id": "1", "phone": "+79123456789", "lead": {"pipeline_id": pipeline}}
    assert generic.campaign_for(lead_from_fields(record, generic).route) == campaign


def test_a_source_without_a_route_sends_to_its_campaign(policy):
    assert policy.source("hubspot").campaign_for("3002") == "english"
    assert policy.source("pipedrive").campaign_for(None) == "default"  # not listed: the defaults


def test_a_number_spanning_zones_falls_back_to_one_of_its_own_zones(policy):
    lead = Lead(external_id="1", phones=[PhoneCandidate("+18005550100")], region="US")  # toll free: every US zone
    us = render_entry(lead, policy.source("hubspot"), policy, RECEIVED)
    assert us.entry["gmtZone"] == "America/New_York"  # the source's default_zone, one of the number's zones
    generic = render_entry(lead, policy.source("generic"), policy, RECEIVED)
    assert generic.entry["gmtZone"].startswith(("America/", "Pacific/", "Atlantic/"))  # never Europe/Moscow


def test_config_check_lists_campaigns_without_their_tokens(clean_env):
    env = {
        "LEADS_CONFIG": str(CAMPAIGNS / "campaigns.toml"), "WEBHOOK_SECRET": "s", "AIMYLOGIC_TOKEN": "1.2.default",
        "AIMYLOGIC_TOKEN_RENEWALS": "5.6.renewals-secret", "AIMYLOGIC_TOKEN_ENGLISH": "7.8.english-secret",
    }  # fmt: skip
    result = run_cli("config", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert "Campaigns: default (AIMYLOGIC_TOKEN), english (AIMYLOGIC_TOKEN_ENGLISH)" in result.stdout
    assert "generic: region RU; campaign by lead.pipeline_id" in result.stdout
    assert "Campaign renewals: AIMYLOGIC_TOKEN_RENEWALS set" in result.stdout
    assert "secret" not in result.stdout
