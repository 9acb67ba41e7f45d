"""`config check` is the one place to ask: every problem with its path, warnings, then the policy for people."""

from __future__ import annotations

import pytest

from crm2calls.config import load_policy, load_settings
from crm2calls.errors import ConfigError
from tests.conftest import FIXTURES
from tests.test_config import ALL_VARIABLES, run_cli

CONFIG = FIXTURES / "config"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_dev_checks_the_way_make_run_serves():
    result = run_cli("config", "check", "--dev", env={})
    assert result.returncode == 0, result.stderr
    assert "Configuration OK." in result.stdout
    assert "WEBHOOK_SECRET: not set (development mode: webhooks from this machine only)" in result.stdout


def test_the_policy_is_printed_after_the_problems():
    result = run_cli("config", "check", env={})  # as a server would start: the secret is missing
    assert result.returncode == 2
    assert "WEBHOOK_SECRET: required" in result.stderr
    assert "Policy:" in result.stdout and "Call window of every source: days mon tue" in result.stdout


def test_the_policy_is_printed_for_people():
    result = run_cli("config", "check", "--dev", env={})
    assert "Guards: 120 a minute, 5000 a day; per number: 1 a day, 3 a week, 6 a month" in result.stdout
    assert "Delivery: batches of 100, 4 at once; gives up after 50 send attempts or 72 h" in result.stdout
    for repr_of in ("Policy(", "GuardPolicy(", "DeliveryPolicy(", "Interval(", "datetime.time("):
        assert repr_of not in result.stdout


def test_an_unknown_source_is_an_error_with_its_key_path():
    with pytest.raises(ConfigError) as caught:
        load_policy(CONFIG / "unknown_source.toml", "RU")
    [problem] = caught.value.problems
    assert problem.startswith("unknown_source.toml: sources.hubspott (key): no source named 'hubspott'")
    assert "hubspot" in problem.split("the sources are", 1)[1]


def test_config_check_refuses_an_unknown_source():
    result = run_cli("config", "check", "--dev", env={"LEADS_CONFIG": str(CONFIG / "unknown_source.toml")})
    assert result.returncode == 2 and "Configuration OK." not in result.stdout
    assert "sources.hubspott (key): no source named 'hubspott'" in result.stderr


def test_an_unknown_region_has_its_path_and_comes_with_the_other_problems(clean_env):
    clean_env.setenv("WEBHOOK_SECRET", "s3cret")
    clean_env.setenv("LEADS_CONFIG", str(CONFIG / "unknown_region.toml"))
    clean_env.setenv("PORT", "x")
    with pytest.raises(ConfigError) as caught:
        load_settings()  # what gunicorn, Lambda and `serve` run at start-up
    problems = caught.value.problems
    region = "unknown_region.toml: sources.generic.region: 'XX' is not a phone region"
    assert any(p.startswith(region) for p in problems)
    assert any(p.startswith("unknown_region.toml: sources.generic.fields.phonez: Unknown field") for p in problems)
    assert any(p.startswith("PORT: Not a valid integer") for p in problems)


def test_an_unknown_default_region_is_refused_at_start_up(clean_env):
    clean_env.setenv("WEBHOOK_SECRET", "s3cret")
    clean_env.setenv("DEFAULT_REGION", "XX")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    expected = "DEFAULT_REGION: 'XX' is not a phone region code; use one phonenumbers knows, such as RU, US, DE"
    assert expected in caught.value.problems


def test_sources_without_their_api_settings_get_a_warning():
    result = run_cli("config", "check", "--dev", env={"LEADS_CONFIG": str(CONFIG / "amocrm_only.toml")})
    assert result.returncode == 0, result.stderr
    assert "Warnings:" in result.stderr and "CRM API settings MISSING" in result.stderr
    assert "amocrm: AMOCRM_BASE_URL, AMOCRM_TOKEN (needed for new leads)" in result.stderr
    assert "bitrix24:" not in result.stderr  # not listed in that mapping file


def test_no_warning_once_the_api_settings_are_set():
    env = {
        "LEADS_CONFIG": str(CONFIG / "amocrm_only.toml"),
        "AMOCRM_BASE_URL": "https://example.amocrm.ru",
        "AMOCRM_TOKEN": "amo-secret-token-value",
    }
    result = run_cli("config", "check", "--dev", env=env)
    assert result.returncode == 0, result.stderr
    assert "MISSING" not in result.stderr and "Warnings:" not in result.stderr
    assert "amo-secret-token-value" not in result.stdout + result.stderr
