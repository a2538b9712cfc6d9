"""deploy/grafana: dashboards are generated, well formed, and query only exported metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.grafana import generate
from deploy.grafana.queries import (
    VLLM_METRICS,
    iter_annotation_queries,
    iter_dashboard_panels,
    iter_panel_queries,
    metric_names,
    substitute_variables,
)
from gateway.observability.metrics import GatewayMetrics
from tests.fixtures.prometheus import exported_names

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
PROM_DIR = GRAFANA.parent / "prometheus"
FILES = ["overview.json", "tenant.json", "engines.json"]


def recorded_names() -> set[str]:
    names: set[str] = set()
    doc = yaml.safe_load((PROM_DIR / "recording_rules.yml").read_text())
    for group in doc["groups"]:
        names.update(rule["record"] for rule in group["rules"])
    return names


def test_committed_json_matches_the_generator() -> None:
    built = generate.build()
    assert sorted(built) == sorted(FILES)
    for name, dash in built.items():
        path = GRAFANA / "dashboards" / name
        assert path.read_text() == generate.render(dash), (
            f"{name} is stale: run .venv/bin/python deploy/grafana/generate.py"
        )


@pytest.mark.parametrize("name", FILES)
def test_every_query_uses_exported_or_recorded_metrics(name: str) -> None:
    allowed = (
        exported_names(GatewayMetrics(CollectorRegistry()).registry)
        | recorded_names()
        | VLLM_METRICS
    )
    queries = iter_panel_queries(GRAFANA / "dashboards" / name)
    queries += iter_annotation_queries(GRAFANA / "dashboards" / name)
    assert len(queries) >= 5
    for expr in queries:
        used = metric_names(expr)
        assert used, expr
        assert used <= allowed, (expr, used - allowed)


@pytest.mark.parametrize("name", FILES)
def test_panels_are_well_formed(name: str) -> None:
    dash = json.loads((GRAFANA / "dashboards" / name).read_text())
    panels = list(iter_dashboard_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] == "row":
            assert p["gridPos"] == {**p["gridPos"], "w": 24, "x": 0}
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["gridPos"]["x"] >= 0
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
    variables = {v["name"] for v in dash["templating"]["list"]}
    for expr in iter_panel_queries(GRAFANA / "dashboards" / name):
        substitute_variables(expr, {v: "x" for v in variables})  # no undefined variable


@pytest.mark.parametrize("name", FILES)
def test_dashboard_lint(name: str) -> None:
    """What an SRE needs to trust a panel: a unit on every one, thresholds and value mappings on
    every stat and gauge (a healthy-engines stat is red at 0), P99 next to P50/P95, the rollout and
    deploy annotations, namespace/job scope and a multi-select tenant."""
    dash = json.loads((GRAFANA / "dashboards" / name).read_text())
    panels = [p for p in iter_dashboard_panels(dash) if p["type"] != "row"]
    for p in panels:
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{p['title']}: no unit"
        if p["type"] in ("stat", "gauge", "bargauge"):
            steps = defaults["thresholds"]["steps"]
            assert len(steps) >= 2, f"{p['title']}: one colour is no threshold"
            assert steps[0]["value"] is None
            assert defaults["mappings"], f"{p['title']}: no value mappings"
    annotations = {a["name"] for a in dash["annotations"]["list"]}
    assert {"Auto-rollbacks", "Canary weight changes", "Deploys"} <= annotations
    exprs = " ".join(iter_annotation_queries(GRAFANA / "dashboards" / name))
    for metric in (
        "loragate_auto_rollbacks_total",
        "loragate_canary_weight",
        "loragate_build_info",
    ):
        assert metric in exprs
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for scope in ("namespace", "job"):
        assert variables[scope]["multi"]
        assert variables[scope]["allValue"] == ".*"
    if name == "tenant.json":
        assert variables["tenant"]["multi"]
        assert variables["tenant"]["includeAll"]
    titles = [p["title"] for p in panels]
    if name != "engines.json":
        assert any("P99" in t for t in titles), titles


def test_stat_panels_are_red_when_nothing_is_healthy() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "overview.json").read_text())
    by_title = {p["title"]: p for p in iter_dashboard_panels(dash)}
    steps = by_title["Healthy engines"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0] == {"color": "red", "value": None}
    assert steps[1]["value"] == 1


def test_overview_rows_link_down_to_the_tenant_dashboard() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "overview.json").read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Errors", "Cost", "Platform"]
    tenant_panels = [
        p for p in iter_dashboard_panels(dash) if p["type"] != "row" and "tenant" in p["title"]
    ]
    assert tenant_panels
    for p in tenant_panels:
        (link,) = p["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith("/d/loragate-tenant/")
        assert "var-tenant=${__field.labels.tenant}" in link["url"]


def test_engines_dashboard_shows_vllm_next_to_the_gateway() -> None:
    exprs = " ".join(iter_panel_queries(GRAFANA / "dashboards" / "engines.json"))
    assert metric_names(exprs) >= VLLM_METRICS
    assert "loragate_engine_in_flight" in exprs


def test_tenant_dashboard_compares_arms_side_by_side() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "tenant.json").read_text())
    assert {v["name"] for v in dash["templating"]["list"]} >= {"tenant", "model"}
    by_title = {p["title"]: p for p in iter_dashboard_panels(dash)}
    for left, right in [
        ("Latency P50 / P95 / P99: stable", "Latency P50 / P95 / P99: canary"),
        ("Server error ratio: stable", "Server error ratio: canary"),
    ]:
        a, b = by_title[left]["gridPos"], by_title[right]["gridPos"]
        assert a["y"] == b["y"]
        assert a["x"] < b["x"]
    exprs = " ".join(iter_panel_queries(GRAFANA / "dashboards" / "tenant.json"))
    for needed in ("refusals", "schema_violations", "canary_weight", "auto_rollbacks"):
        assert needed in exprs


def test_provisioning_points_at_the_dashboards() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "loragate.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "loragate.yml").read_text())
    assert prov["providers"][0]["type"] == "file"
    assert prov["providers"][0]["options"]["path"]


def test_metric_names_scanner() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (tenant, le) (rate(a_bucket{x="y z"}[5m] offset 1w)))'
        " > on (tenant) 2 * b:c:d and e > 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "e"}
    assert substitute_variables('x[$__rate_interval]{t="${tenant}"}', {"tenant": "acme"}) == (
        'x[1m]{t="acme"}'
    )
    with pytest.raises(KeyError):
        substitute_variables("$nope", {})
