"""`leads stats`: the funnel of leads taken by webhooks and delivered to the emulator, time moved by hand."""

from __future__ import annotations

import json

import pytest

from crm2calls.delivery import deliver_pending
from tests.conftest import SECRET

URL = f"/webhooks/generic?key={SECRET}"


@pytest.fixture
def history(make_app, aimylogic, clock):
    """A week-old lead, then today: three leads sent after 2, 10 and 30 s, three rejected, a duplicate, one waiting."""
    services, client = make_app()

    def post(*leads: dict) -> None:
        assert client.post(URL, json=list(leads)).status_code == 202

    post({"id": "old", "phone": "+79123450000"})
    deliver_pending(services)
    clock.advance(days=8)
    for n, wait in enumerate([2, 10, 30]):
        post({"id": f"s{n}", "phone": f"+7912345000{n + 1}"})
        clock.advance(seconds=wait)
        deliver_pending(services)
    post({"id": "r1"}, {"id": "r2"}, {"id": "r3", "phone": "call me maybe"})  # two without a phone, one invalid
    post({"id": "dup", "phone": "+79123450001"})  # the same person as s0, within the duplicate window
    aimylogic.fail_next(503)
    post({"id": "w1", "phone": "+79123450009"})
    deliver_pending(services)  # Aimylogic is down for this one: it waits
    return services


def stats(services, *args: str):
    from app import create_app

    result = create_app(services=services).test_cli_runner().invoke(args=["leads", "stats", *args])
    assert result.exit_code == 0, result.output
    return result.output


def rows(output: str) -> dict[str, list[str]]:
    """The table's rows by their first cell."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---"))
    table = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("no leads"):
            break
        table.append(line.split())
    return {cells[0]: cells[1:] for cells in table}


def test_the_funnel_of_the_last_week_with_speed_to_lead(history):
    services = history
    output = stats(services)
    header = output.splitlines()[2].split()
    assert header[:9] == ["leads", "received", "duplicate", "rejected", "sent", "waiting", "failed", "expired",
                          "dry_run"]
    # received 8 (the week-old lead is out), duplicate 1, rejected 3, sent 3, waiting 1; p50 10 s, p95 30 s
    assert rows(output)["all"] == ["8", "1", "3", "3", "1", "0", "0", "0", "10.0", "s", "30.0", "s"]


def test_rejection_reasons_are_ranked(history):
    services = history
    lines = stats(services).split("rejection reasons:")[1].strip().splitlines()
    assert len(lines) == 2
    first, second = (line.split(None, 2) for line in lines)
    assert first[:2] == ["2", "66.7%"] and "no phone" in first[2]
    assert second[:2] == ["1", "33.3%"]


def test_since_widens_the_period_and_by_day_splits_it(history):
    services = history
    by_day = rows(stats(services, "--since", "30d", "--by", "day"))
    assert [name for name in by_day] == ["2026-11-26", "2026-12-04", "total"]
    assert by_day["2026-11-26"][:4] == ["1", "0", "0", "1"]
    assert by_day["total"][0] == "9"


def test_by_source_and_by_campaign(history):
    services = history
    assert list(rows(stats(services, "--by", "source"))) == ["generic", "total"]
    assert list(rows(stats(services, "--by", "campaign"))) == ["default", "total"]


def test_json_carries_the_same_figures(history):
    services = history
    report = json.loads(stats(services, "--json", "--by", "source"))
    [generic] = report["groups"]
    assert generic["name"] == "generic" and generic["received"] == 8 and generic["sent"] == 3
    assert generic["speed_to_lead_s"] == {"p50": 10.0, "p95": 30.0}
    assert report["total"]["received"] == 8 and report["by"] == "source"
    assert [reason["leads"] for reason in report["rejections"]] == [2, 1]


def test_an_empty_period_says_so(make_app):
    services, _ = make_app()
    output = stats(services, "--since", "1h")
    assert "no leads in this period" in output and rows(output)["all"][0] == "0"


def test_a_bad_since_names_the_option(make_app):
    services, _ = make_app()
    from app import create_app

    result = create_app(services=services).test_cli_runner().invoke(args=["leads", "stats", "--since", "week"])
    assert result.exit_code == 2 and "--since" in result.output and "30d" in result.output
