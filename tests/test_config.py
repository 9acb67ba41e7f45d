"""Configuration: read once, validated, every problem named with its fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crm2calls.config import load_policy, load_settings
from crm2calls.errors import ConfigError
from tests.conftest import FIXTURES, ROOT

ALL_VARIABLES = [
    "AIMYLOGIC_URL", "AIMYLOGIC_TOKEN", "WEBHOOK_SECRET", "LEADS_CONFIG", "LEADS_STORE", "DEFAULT_REGION",
    "HOST", "PORT", "PUBLIC_BASE_URL", "MAX_BODY_BYTES", "LOG_LEVEL", "AWS_LAMBDA_FUNCTION_NAME", "DRY_RUN",
]  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_load_with_a_secret(clean_env):
    clean_env.setenv("WEBHOOK_SECRET", "s3cret")
    clean_env.setenv("AIMYLOGIC_TOKEN", "8231.7056.1b131df1")
    settings = load_settings()
    assert settings.aimylogic_url == "https://app.aimylogic.com"
    assert settings.dry_run is False
    assert settings.leads_store == "sqlite:///instance/leads.db"
    assert (settings.default_region, settings.host, settings.port) == ("RU", "127.0.0.1", 5000)
    assert settings.leads_config == ROOT / "leads.toml"
    assert settings.policy.default_zone == "Europe/Moscow"


def test_secret_lists_allow_rotation(clean_env):
    clean_env.setenv("DRY_RUN", "1")
    clean_env.setenv("WEBHOOK_SECRET", " current , previous ,")
    assert load_settings().webhook_secrets == ("current", "previous")


def test_serving_without_a_secret_is_refused_and_names_the_variable(clean_env):
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.problems[0].startswith("WEBHOOK_SECRET: required")


def test_cli_and_dev_mode_do_not_need_the_secret(clean_env):
    assert load_settings(serving=False).webhook_secrets == ()
    assert load_settings(dev_mode=True).dev_mode is True


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "abc", "PORT: Not a valid integer. (give a port number"),
        ("PORT", "70000", "PORT:"),
        ("MAX_BODY_BYTES", "10", "MAX_BODY_BYTES:"),
        ("AIMYLOGIC_URL", "ftp://app.aimylogic.com", "AIMYLOGIC_URL: 'ftp://app.aimylogic.com' is not an http(s) URL"),
        ("AIMYLOGIC_URL", "http://app.aimylogic.com", "AIMYLOGIC_URL: use https"),
        ("AMOCRM_BASE_URL", "example.amocrm.ru", "AMOCRM_BASE_URL:"),
        ("DEFAULT_REGION", "Russia", "DEFAULT_REGION: 'RUSSIA' is not a phone region code"),
        ("LEADS_STORE", "postgres://db", "LEADS_STORE: use sqlite:///"),
        ("LEADS_STORE", "dynamodb://", "LEADS_STORE: dynamodb:// needs a table name"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: use DEBUG"),
        ("LEADS_CONFIG", "/nonexistent/leads.toml", "LEADS_CONFIG: /nonexistent/leads.toml does not exist"),
        ("BITRIX24_WEBHOOK_URL", "portal.bitrix24.ru/rest/1/x/", "BITRIX24_WEBHOOK_URL: not an http(s) URL"),
        ("PIPEDRIVE_WEBHOOK_USER", "crm", "PIPEDRIVE_WEBHOOK_PASSWORD: set it together"),
    ],
)
def test_each_bad_variable_is_named(clean_env, name, value, expected):
    clean_env.setenv("WEBHOOK_SECRET", "s3cret")
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(
    ("url", "synchronous"), [("sqlite:///x.db", "NORMAL"), ("sqlite:///x.db?synchronous=full", "FULL")]
)
def test_sqlite_durability_is_a_choice(clean_env, tmp_path, url, synchronous):
    from crm2calls.store import open_store

    clean_env.setenv("DRY_RUN", "1")
    clean_env.setenv("WEBHOOK_SECRET", "s")
    clean_env.setenv("LEADS_STORE", url)
    assert load_settings().leads_store == url
    store = open_store(url.replace("x.db", str(tmp_path / "x.db")))
    store.migrate()
    assert store.synchronous == synchronous
    level = store._conn().execute("PRAGMA synchronous").fetchone()[0]
    assert level == {"NORMAL": 1, "FULL": 2}[synchronous]


def test_an_unknown_sqlite_option_is_named(clean_env):
    clean_env.setenv("DRY_RUN", "1")
    clean_env.setenv("WEBHOOK_SECRET", "s")
    clean_env.setenv("LEADS_STORE", "sqlite:///x.db?journal=off")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.problems == ["LEADS_STORE: the only SQLite option is ?synchronous=full (or normal, the default)"]


def test_every_problem_is_reported_at_once(clean_env):
    clean_env.setenv("PORT", "x")
    clean_env.setenv("LEADS_STORE", "redis://x")
    clean_env.setenv("LEADS_CONFIG", str(FIXTURES / "config" / "typo.toml"))
    with pytest.raises(ConfigError) as exc:
        load_settings()
    names = {p.split(":")[0] for p in exc.value.problems}
    assert {"PORT", "LEADS_STORE", "WEBHOOK_SECRET", "typo.toml"} <= names


def test_secrets_never_appear_in_repr(clean_env):
    clean_env.setenv("WEBHOOK_SECRET", "very-secret-value")
    clean_env.setenv("AIMYLOGIC_TOKEN", "8231.7056.1b131df1")
    clean_env.setenv("HUBSPOT_CLIENT_SECRET", "hs-secret")
    text = repr(load_settings())
    assert "very-secret-value" not in text and "8231.7056" not in text and "hs-secret" not in text


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("typo.toml", "typo.toml: sources.generic.fields.phonez: Unknown field."),
        ("bad_interval.toml", 'bad_interval.toml: calls.hours.default.0: "10:00-25:00" is not HH:MM-HH:MM'),
        ("reversed_interval.toml", 'reversed_interval.toml: calls.hours.default.0: "19:00-10:00": the start'),
        ("overlap.toml", "overlap.toml: calls.hours.default: intervals 10:00-14:00 and 13:00-18:00 overlap"),
        ("bad_day.toml", "bad_day.toml: calls.days.1: Must be one of"),
        ("repeated_day.toml", "repeated_day.toml: calls.days: list each day once"),
        ("bad_zone.toml", 'bad_zone.toml: calls.default_zone: "Europe/Atlantis" is not an IANA zone id'),
        ("night_calls.toml", "night_calls.toml: calls.hours: default 07:00-22:00 is outside the safe hours"),
        ("negative_attempts.toml", "negative_attempts.toml: calls.max_call_attempts: Must be greater than or equal"),
        ("renamed_call_attempts.toml", "renamed_call_attempts.toml: calls.max_attempts: renamed: use max_call"),
        ("renamed_send_attempts.toml", "renamed_send_attempts.toml: delivery.max_attempts: renamed: use max_send"),
        ("renamed_source_attempts.toml", "renamed_source_attempts.toml: sources.site.calls.max_attempts: renamed"),
        ("removed_linger.toml", "removed_linger.toml: delivery.linger_seconds: removed: a woken worker now sends at"),
        ("zero_waiting.toml", "zero_waiting.toml: health.max_waiting_minutes: Must be greater than or equal to 1"),
        ("zero_backoff.toml", "zero_backoff.toml: delivery.backoff_base_seconds: Must be greater than 0"),
        ("string_batch.toml", "string_batch.toml: delivery.batch_size: Not a valid integer."),
        ("bad_city_zone.toml", 'bad_city_zone.toml: zones.cities.Тверь: "Moscow" is not an IANA zone id'),
        ("source_window_typo.toml", "source_window_typo.toml: sources.generic.calls.hourz: Unknown field."),
        ("not_toml.toml", "not_toml.toml: not valid TOML"),
        (
            "source_night_calls.toml",
            "source_night_calls.toml: sources.hubspot.calls.hours: default 08:00-12:00 is outside",
        ),
    ],
)
def test_mapping_file_errors_carry_their_key_path(fixture, expected):
    with pytest.raises(ConfigError) as exc:
        load_policy(FIXTURES / "config" / fixture, "RU")
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


def test_night_calls_are_allowed_only_when_explicitly_overridden():
    policy = load_policy(FIXTURES / "config" / "night_calls_overridden.toml", "RU")
    assert str(policy.defaults.window.hours["default"][0]) == "07:00-22:00"


def test_source_overrides_inherit_the_rest_of_the_window():
    policy = load_policy(FIXTURES / "config" / "source_override.toml", "RU")
    hubspot, generic = policy.source("hubspot"), policy.source("generic")
    assert hubspot.region == "US" and hubspot.window.max_call_attempts == 5
    assert hubspot.window.days == ("mon", "tue", "wed", "thu", "fri")
    assert hubspot.window.retry_interval_minutes == generic.window.retry_interval_minutes == 60
    assert generic.window.max_call_attempts == 3


def test_days_outside_allowed_days_are_dropped_from_hours():
    policy = load_policy(FIXTURES / "config" / "source_override.toml", "RU")
    assert "sat" not in policy.source("hubspot").window.hours


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_config_check_reports_everything_even_when_broken():
    result = run_cli(
        "config", "check",
        env={"PORT": "x", "LEADS_CONFIG": str(FIXTURES / "config" / "typo.toml"), "AIMYLOGIC_TOKEN": "8231.7056.1b1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "PORT: Not a valid integer" in result.stderr
    assert "WEBHOOK_SECRET: required" in result.stderr
    assert "sources.generic.fields.phonez: Unknown field." in result.stderr
    assert "8231.7056.1b1" not in result.stdout + result.stderr


def test_config_check_prints_the_effective_policy_without_secrets():
    result = run_cli("config", "check", env={"WEBHOOK_SECRET": "topsecret1,topsecret0", "AIMYLOGIC_TOKEN": "8231.7.x"})
    assert result.returncode == 0, result.stderr
    assert "Configuration OK." in result.stdout
    assert "WEBHOOK_SECRET: set (2 values: current and previous)" in result.stdout
    assert "Call window of every source: days mon tue wed thu fri sat" in result.stdout
    assert "    generic: region RU\n" in result.stdout and "    hubspot: region US\n" in result.stdout
    assert "topsecret" not in result.stdout and "8231.7.x" not in result.stdout


def test_config_check_asks_phonenumbers_about_regions():
    result = run_cli("config", "check", env={"WEBHOOK_SECRET": "x", "DRY_RUN": "1", "DEFAULT_REGION": "XX"})
    assert result.returncode == 2
    assert "DEFAULT_REGION: 'XX' is not a phone region code" in result.stderr


def test_importing_the_app_without_a_secret_stops_start_up():
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "WEBHOOK_SECRET: required" in result.stderr


@pytest.mark.parametrize(
    ("env", "starts", "dry_run"),
    [
        ({}, False, None),  # no token, no DRY_RUN: refuse rather than fake every call
        ({"DRY_RUN": "1"}, True, True),
        ({"AIMYLOGIC_TOKEN": "8231.7056.1b131df1"}, True, False),
        ({"AIMYLOGIC_TOKEN": "8231.7056.1b131df1", "DRY_RUN": "1"}, True, True),  # asked: a dry run, token or not
    ],
)
def test_a_serving_process_dry_runs_only_when_asked(env, starts, dry_run):
    code = "import app; print('dry_run', app.app.extensions['crm2calls'].services.settings.dry_run)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "WEBHOOK_SECRET": "x", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode == 0) is starts, result.stderr
    if starts:
        assert f"dry_run {dry_run}" in result.stdout
    else:
        assert "AIMYLOGIC_TOKEN: required" in result.stderr and "DRY_RUN=1" in result.stderr


def test_make_run_without_a_token_is_a_dry_run(clean_env):
    assert load_settings(serving=True, dev_mode=True).dry_run is True
    clean_env.setenv("AIMYLOGIC_TOKEN", "8231.7056.1b131df1")
    assert load_settings(serving=True, dev_mode=True).dry_run is False


def test_dev_mode_serves_without_a_secret_only_on_loopback():
    result = run_cli("serve", "--dev", "--host", "0.0.0.0", env={})  # noqa: S104 - refused, never bound
    assert result.returncode == 2
    assert "--dev serves without WEBHOOK_SECRET only on a loopback HOST." in result.stderr
    assert "WEBHOOK_SECRET: required to serve webhooks" in result.stderr


def test_serving_without_dev_needs_the_secret_even_on_loopback():
    result = run_cli("serve", "--host", "127.0.0.1", env={})
    assert result.returncode == 2 and "WEBHOOK_SECRET: required" in result.stderr


def test_dev_mode_still_reports_every_other_problem():
    result = run_cli("serve", "--dev", env={"PORT": "x"})
    assert result.returncode == 2
    assert "PORT: Not a valid integer" in result.stderr and "WEBHOOK_SECRET" not in result.stderr
