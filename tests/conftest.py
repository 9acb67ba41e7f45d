"""Shared fixtures: settings from the shipped leads.toml, a SQLite store, the app, the Aimylogic emulator."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm2calls.config import CrmSettings, Settings, load_policy

pytest_plugins = ["tests.canaries"]  # scans every log record of the session for canary secrets

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRET = "test-shared-secret-0123456789"
TOKEN = "8231.7056.1b131df1"
CRM_FIELDS = frozenset(field.name for field in fields(CrmSettings))


def pytest_configure(config):
    """`import app` builds the module-level app from the environment: give it a valid one."""
    os.environ.setdefault("WEBHOOK_SECRET", SECRET)
    os.environ.setdefault("DRY_RUN", "1")
    os.environ.setdefault("LEADS_STORE", "sqlite:///build/test-default.db")


@pytest.fixture(autouse=True)
def metrics_off():
    """Metrics off after each test: an app built with a token or on Lambda leaves its sink behind (one per process)."""
    yield
    from crm2calls import metrics

    metrics.configure(None)


class FakeClock:
    """A clock the test moves by hand: outages of hours run in milliseconds."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move forward by timedelta(**delta)."""
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def shipped_policy():
    return load_policy(ROOT / "leads.toml", "RU")


@pytest.fixture
def settings(shipped_policy, tmp_path) -> Settings:
    """Settings as a deployment would have them, dry run (no Aimylogic token), store in tmp_path."""
    return Settings(
        policy=shipped_policy,
        webhook_secrets=(SECRET,),
        leads_store=f"sqlite:///{tmp_path / 'leads.db'}",
        dry_run=True,
    )


@pytest.fixture
def make_services(settings, clock):
    """Build Services around settings (overridable), with the test clock."""
    from crm2calls.services import Services

    def make(**overrides) -> Services:
        if overrides.get("aimylogic_token"):  # a test that gives a token sends, unless it asks for a dry run
            overrides.setdefault("dry_run", False)
        return Services(replace(settings, **overrides), clock=clock)

    return make


@pytest.fixture
def services(make_services):
    return make_services()


@pytest.fixture
def app(services):
    from app import create_app

    return create_app(services=services)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def aimylogic_server():
    """One Aimylogic emulator per test module, campaign token TOKEN; tests take `aimylogic`."""
    from tests.emulators.aimylogic import AimylogicEmulator

    with AimylogicEmulator(TOKEN) as emulator:
        yield emulator


@pytest.fixture
def aimylogic(aimylogic_server, clock):
    """The module's Aimylogic emulator with nothing recorded, its duplicate guard on the test's clock."""
    aimylogic_server.reset()
    aimylogic_server.clock = clock
    yield aimylogic_server
    aimylogic_server.recover()  # release requests a test left hanging: nothing waits into the next test


@pytest.fixture
def make_app(make_services, aimylogic):
    """(services, test client) delivering to `aimylogic`: CrmSettings fields set crm, the rest override Settings."""
    from app import create_app

    def make(**values):
        crm = CrmSettings(**{name: value for name, value in values.items() if name in CRM_FIELDS})
        others = {name: value for name, value in values.items() if name not in CRM_FIELDS}
        services = make_services(crm=crm, aimylogic_url=aimylogic.url, aimylogic_token=TOKEN, **others)
        return services, create_app(services=services).test_client()

    return make
