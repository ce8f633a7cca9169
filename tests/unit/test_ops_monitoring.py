"""The monitoring bundle: Prometheus scrape config, alerting rules, Grafana dashboard.

Every metric a rule or a panel queries must be one the workers or projections export, and the
rule files must load in Prometheus: ``promtool`` checks them and runs the rule unit tests
(``alerts_test.yml``). promtool is built by ``ops/tools/promtool.sh``; without it these checks
skip on a developer machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from novaquota.projections.metrics import ProjectionMetrics
from novaquota.streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "novaquota-dashboard.json"

PROMQL_WORDS = {
    # functions and aggregations used in our rules and panels
    "abs", "avg", "by", "count", "deriv", "histogram_quantile", "increase", "label_values",
    "max", "min", "on", "rate", "sum", "topk", "without", "ignoring", "group_left", "and",
    "or", "unless", "bool", "offset", "irate", "delta", "clamp_min", "le",
}  # fmt: skip


def _exported() -> set[str]:
    """Sample names the system exports (counters as ``_total``, histograms as buckets)."""
    names = {"up"}
    registries = [
        Metrics(CollectorRegistry()).registry,
        ProjectionMetrics(CollectorRegistry()).registry,
    ]
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
            else:
                names.add(family.name)
    return names


def _metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name series (not functions, labels, keywords)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)  # ranges
    stripped = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped
    )
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_scrape_config_covers_workers_and_projections() -> None:
    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert set(jobs) == {"novaquota-worker", "novaquota-projections"}
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert targets["novaquota-worker"] == ["localhost:6066"]
    assert targets["novaquota-projections"] == ["localhost:6067"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    for rule_file in doc["rule_files"]:
        assert (PROM / rule_file).is_file()


def test_alert_rules_are_well_formed_and_query_exported_metrics() -> None:
    exported = _exported()
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        expr = rule["expr"]
        assert _balanced(expr), f"{rule['alert']}: unbalanced brackets in {expr!r}"
        unknown = _metric_names(expr) - exported
        assert not unknown, f"{rule['alert']} queries metrics nobody exports: {unknown}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_alert_rules_cover_the_operational_risks() -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in _rules():
        for name in _metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule["alert"])
    for metric in (
        "quota_utilization",  # quota near full
        "quota_violations_total",  # violation rate
        "quota_consumer_lag_messages",  # consumer lag
        "quota_dead_letter_total",  # dead-letter rate
        "projection_lag_seconds",  # projection staleness
        "projection_events_total",
        "quota_broker_up",
    ):
        assert metric in by_metric, f"no alert watches {metric}"


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (projection) (rate(projection_events_total{a="b c"}[10m])) == 0 and on () '
        "histogram_quantile(0.99, sum by (le) (rate(quota_event_lag_seconds_bucket[5m]))) > 1"
    )
    assert _metric_names(expr) == {"projection_events_total", "quota_event_lag_seconds_bucket"}
    assert not _balanced("sum(rate(x[5m])")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_importable_and_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # Grafana assigns ids on import
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = _exported()
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert _balanced(expr), f"{panel['title']}: {expr!r}"
            unknown = _metric_names(expr) - exported
            assert not unknown, f"panel {panel['title']!r} queries unknown metrics {unknown}"


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_what_operators_ask_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = " ".join(t["expr"] for p in _panels(dashboard) for t in p["targets"])
    for needle in (
        "quota_events_processed_total",  # throughput
        "quota_consumer_lag_messages",  # lag
        "sum by (kind) (increase(quota_violations_total",  # violations by kind
        "sum by (reason) (rate(quota_dead_letter_total",  # dead letters by reason
        "histogram_quantile(0.5, sum by (le) (rate(quota_check_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(quota_check_duration_seconds_bucket",
        "topk(20, max by (level, entity_id, resource_type) (quota_utilization",
        "quota_table_keys",
        "projection_lag_seconds",
    ):
        assert needle in queries, needle


# -- promtool -----------------------------------------------------------------------------------


def _promtool() -> str:
    candidates = [
        os.environ.get("PROMTOOL", ""),
        shutil.which("promtool") or "",
        str(
            Path(os.environ.get("NOVAQUOTA_TOOLS_DIR", Path.home() / ".cache/novaquota/bin"))
            / "promtool"
        ),
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    message = "promtool not found: provide it with `bash ops/tools/promtool.sh` (`make tools`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str) -> str:
    proc = subprocess.run(
        [_promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def test_promtool_accepts_the_config_and_rules() -> None:
    assert "SUCCESS" in _run("check", "config", "prometheus.yml")
    out = _run("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in _run("test", "rules", "alerts_test.yml")
