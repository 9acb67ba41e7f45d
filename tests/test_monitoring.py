"""Prometheus alert rules and the Grafana dashboard: every expression parses as PromQL and reads only what we export.

promql-parser (a Rust PromQL parser with Python bindings) parses each expression; its
AST gives every vector selector, whose metric name must be one /metrics shows (suffixes included)
and whose label matchers must use that metric's labels and values it can take.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from crm2calls import metrics
from crm2calls.model import Status
from tests.conftest import ROOT

ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "crm2calls.json"
# Grafana's own interval variables, replaced as Grafana does before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# Values a matcher may ask for, per metric: what the code records (web.py, aimylogic.py, http.py, the lifecycle).
# Each metric has its own sets, so a metric added later may give a label of the same name other values; one not
# listed here has its metric and label names checked, not its values.
STATUSES = {str(status) for status in Status}
RESULTS = {"ok", "auth", "rejected", "unavailable", "not_found"}
LABEL_VALUES = {
    metrics.WEBHOOKS.name: {"outcome": {"accepted", "duplicate", "rejected", "refused", "error"}},
    metrics.LEAD_TRANSITIONS.name: {"status": STATUSES},
    metrics.LEADS.name: {"status": STATUSES},
    metrics.AIMYLOGIC_REQUESTS.name: {"op": {"addPhones", "addPhone", "status"}, "result": RESULTS},
    metrics.ADDPHONES_ENTRIES.name: {"result": RESULTS},
    metrics.CRM_API_REQUESTS.name: {"result": RESULTS},
}
# The metrics of the issue "Operating it": each is on the dashboard or in an alert. Metrics added since are
# checked for what they are read as (above), not required to be read.
OPERATING = {
    metrics.WEBHOOKS, metrics.LEAD_TRANSITIONS, metrics.LEADS, metrics.OLDEST_WAITING, metrics.CAMPAIGN_HELD,
    metrics.SPEED_TO_LEAD, metrics.AIMYLOGIC_REQUESTS, metrics.ADDPHONES_ENTRIES, metrics.CRM_API_REQUESTS,
    metrics.DELIVERY_PASSES,
}
BY_SERIES = {
    name: metric
    for metric in metrics.METRICS
    for name in ([f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum"]
                 if metric.kind == "histogram" else [metric.name])
}


def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # rows may hold panels of their own
    return panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def as_prometheus_gets_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in re.sub(r"\{\{.*?\}\}", "", expr), f"an unknown Grafana variable in {expr}"
    return expr


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of an expression (inside range selectors, functions, aggregations too)."""
    found = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_expression(expr: str) -> set[str]:
    """Parse expr, check each selector against what we export; return the metric names it reads."""
    names = set()
    for selector in selectors(expr):
        assert selector.name, f"a selector without a metric name in {expr}"
        assert selector.name in BY_SERIES, f"{selector.name} is not exported (exported: {sorted(BY_SERIES)})"
        metric = BY_SERIES[selector.name]
        allowed = set(metric.labels) | ({"le"} if selector.name.endswith("_bucket") else set())
        for matcher in selector.matchers.matchers:
            assert matcher.name in allowed, f"{selector.name} has no label {matcher.name!r}"
            known = LABEL_VALUES.get(metric.name, {})
            if matcher.name in known and matcher.op == promql_parser.MatchOp.Equal:
                assert matcher.value in known[matcher.name], f"{matcher.name}={matcher.value!r} never occurs"
        names.add(metric.name)
    return names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_rule_is_promql_on_exported_metrics(rule):
    assert check_expression(rule["expr"])
    if "for" in rule:
        promql_parser.parse_duration(rule["for"])
    assert rule["labels"]["severity"] in ("page", "warning")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("expr", dashboard_queries())
def test_each_dashboard_query_is_promql_on_exported_metrics(expr):
    assert check_expression(as_prometheus_gets_it(expr))


def test_the_checker_catches_what_it_should():
    check_expression('sum(rate(crm2calls_webhooks_total{outcome="refused"}[5m]))')
    for wrong in (
        "rate(crm2calls_webhooks[5m])",  # a counter without its _total
        "crm2calls_speed_to_lead_seconds",  # a histogram without _bucket/_count/_sum
        'crm2calls_webhooks_total{crm="amocrm"}',  # a label it does not have
        'crm2calls_webhooks_total{outcome="acepted"}',  # a value it never takes
        '{__name__="crm2calls_leads"}',  # no name to check
    ):
        with pytest.raises(AssertionError):
            check_expression(wrong)
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(crm2calls_webhooks_total[5m])")


def test_alerts_and_dashboard_cover_every_metric():
    read = set()
    for expr in [rule["expr"] for rule in alert_rules()] + [as_prometheus_gets_it(q) for q in dashboard_queries()]:
        read |= check_expression(expr)
    assert read >= {metric.name for metric in OPERATING}


def test_the_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard_panels()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and "datasource" in variables
        assert all(target["refId"] for target in panel["targets"])
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        mine = {(x, y) for x in columns for y in rows}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_a_metric_added_later_is_checked_by_its_own_labels(monkeypatch):
    outcomes = metrics.Metric("crm2calls_call_outcomes_total", "counter", ("campaign", "outcome"), "Calls by outcome")
    monkeypatch.setitem(BY_SERIES, outcomes.name, outcomes)
    check_expression('sum(rate(crm2calls_call_outcomes_total{outcome="longCallWithResult"}[5m]))')  # not a webhook's
    with pytest.raises(AssertionError):
        check_expression('crm2calls_call_outcomes_total{source="amocrm"}')
    assert set(LABEL_VALUES) <= {metric.name for metric in metrics.METRICS} and set(metrics.METRICS) >= OPERATING


def test_the_rule_file_has_unique_alert_names():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"Crm2calls[A-Z]\w+", name) for name in names)
    assert Path(ALERTS).read_text(encoding="utf-8").endswith("\n")


def test_docs_name_every_metric_alert_and_alarm():
    from crm2calls.aws import alarms

    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for metric in metrics.METRICS:
        assert f"`{metric.name}`" in text, metric.name
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text, rule["alert"]
    for alarm in alarms("FUNCTION"):
        assert f"`{alarm['AlarmName']}`" in text, alarm["AlarmName"]
