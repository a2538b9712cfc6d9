"""Generate loragate's Grafana dashboards: `python deploy/grafana/generate.py` rewrites
deploy/grafana/dashboards/{overview,tenant,engines}.json.

Why generated: three dashboards share the datasource variable, panel layout and units; a few
helpers keep them consistent, and a test checks that the committed JSON matches this script.
P50/P95 panels read the recording rules of deploy/prometheus/recording_rules.yml; rates use
Grafana's `$__rate_interval`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
SCOPE = 'tenant="$tenant", model="$model"'

Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(
    title: str,
    exprs: list[tuple[str, str]],
    unit: str,
    *,
    kind: str = "timeseries",
    width: int = 12,
    height: int = 8,
    description: str = "",
) -> Panel:
    """One panel; ids and grid positions are assigned by `layout`."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)],
    }


def layout(panels: list[Panel]) -> list[Panel]:
    """Flow panels left to right on a 24-column grid."""
    x = y = row_height = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        row_height = max(row_height, h)
    return panels


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
    }


def dashboard(uid: str, title: str, panels: list[Panel], variables: list[Any]) -> dict[str, Any]:
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
    }
    return {
        "uid": uid,
        "title": title,
        "tags": ["loragate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [datasource, *variables]},
        "links": [{"type": "dashboards", "tags": ["loragate"], "title": "loragate"}],
        "panels": layout(panels),
    }


def overview() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        panel("Requests / s by tenant",
              [(f"sum by (tenant) (rate(loragate_requests_total{rate}))", "{{tenant}}")], "reqps"),
        panel("Latency P50 / P95 by tenant", [
            ("tenant:loragate_request_duration_seconds:p50_5m", "{{tenant}} P50"),
            ("tenant:loragate_request_duration_seconds:p95_5m", "{{tenant}} P95"),
        ], "s"),
        panel("Server error ratio by tenant",
              [("tenant:loragate_errors:ratio_rate5m", "{{tenant}}")], "percentunit"),
        panel("Errors / s by code",
              [(f"sum by (tenant, code) (rate(loragate_errors_total{rate}))",
                "{{tenant}} {{code}}")], "reqps"),
        panel("Tokens / s by tenant",
              [(f"sum by (tenant, kind) (rate(loragate_tokens_total{rate}))",
                "{{tenant}} {{kind}}")], "short"),
        panel("Cost per hour by tenant",
              [(f"sum by (tenant) (rate(loragate_cost_total{rate})) * 3600", "{{tenant}}")],
              "currencyUSD", description="Currency: see loragate_cost_currency_info."),
        panel("Engine time by tenant (replicas busy, by token share)",
              [(f"sum by (tenant) (rate(loragate_engine_seconds_total{rate}))", "{{tenant}}")],
              "short", description="Replica busy time split by token share: 1 = one replica "
              "busy all the time for this tenant. Chargeback: multiply by the replica price/s."),
        panel("Budget used", [(
            "max by (tenant) (loragate_tenant_spend)"
            " / on (tenant) (max by (tenant) (loragate_tenant_budget) > 0)", "{{tenant}}")],
            "percentunit", kind="bargauge"),
        panel("Gateway overhead P50 / P95", [
            ("tenant:loragate_gateway_overhead_seconds:p50_5m", "{{tenant}} P50"),
            ("tenant:loragate_gateway_overhead_seconds:p95_5m", "{{tenant}} P95"),
        ], "s"),
        panel("In-flight requests by tenant",
              [("sum by (tenant) (loragate_in_flight_requests)", "{{tenant}}")], "short"),
        panel("Queue depth by tenant (waiting for an engine slot)",
              [("sum by (tenant) (loragate_queue_depth)", "{{tenant}}")], "short"),
        panel("Limit rejections / s",
              [(f"sum by (tenant, code) (rate(loragate_limit_rejections_total{rate}))",
                "{{tenant}} {{code}}")], "reqps"),
        panel("Registry Redis up", [("min(loragate_registry_redis_up)", "up")], "bool",
              kind="stat", width=6, height=4),
        panel("Snapshot age", [("max(loragate_registry_snapshot_age_seconds)", "age")], "s",
              kind="stat", width=6, height=4),
        panel("Registry epoch", [("max(loragate_registry_epoch)", "epoch")], "none",
              kind="stat", width=6, height=4),
        panel("Healthy engines", [("sum(max by (engine) (loragate_engine_healthy))", "healthy")],
              "none",
              kind="stat", width=6, height=4),
    ]  # fmt: skip
    return dashboard("loragate-overview", "loragate / Overview", panels, [])


def tenant() -> dict[str, Any]:
    rate = "[$__rate_interval]"

    def latency(arm: str) -> Panel:
        sel = f'{{{SCOPE}, arm="{arm}"}}'
        return panel(f"Latency P50 / P95: {arm}", [
            (f"tenant_model_release_arm:loragate_request_duration_seconds:p50_5m{sel}",
             "{{release}} P50"),
            (f"tenant_model_release_arm:loragate_request_duration_seconds:p95_5m{sel}",
             "{{release}} P95"),
        ], "s")  # fmt: skip

    def errors(arm: str) -> Panel:
        sel = f'{{{SCOPE}, arm="{arm}"}}'
        return panel(f"Server error ratio: {arm}", [
            (f"tenant_model_release_arm:loragate_errors:ratio_rate5m{sel}", "{{release}}"),
        ], "percentunit")  # fmt: skip

    panels = [
        panel("Requests / s by arm and release",
              [(f"sum by (arm, release) (rate(loragate_requests_total{{{SCOPE}}}{rate}))",
                "{{arm}} {{release}}")], "reqps", width=16),
        panel("Canary weight", [(f"max(loragate_canary_weight{{{SCOPE}}})", "weight")],
              "percentunit", kind="stat", width=4),
        panel("Auto-rollbacks (range)",
              [(f"sum(increase(loragate_auto_rollbacks_total{{{SCOPE}}}[$__range]))",
                "rollbacks")], "none", kind="stat", width=4),
        latency("stable"),
        latency("canary"),
        errors("stable"),
        errors("canary"),
        panel("Time to first token P95 by arm",
              [(f"tenant_model_arm:loragate_time_to_first_token_seconds:p95_5m{{{SCOPE}}}",
                "{{arm}}")], "s"),
        panel("Inter-token latency P95 by arm", [(
            "histogram_quantile(0.95, sum by (arm, le) "
            f"(rate(loragate_inter_token_latency_seconds_bucket{{{SCOPE}}}{rate})))", "{{arm}}")],
            "s"),
        panel("Refusal ratio by arm",
              [(f"tenant_model_arm:loragate_refusals:ratio_rate5m{{{SCOPE}}}", "{{arm}}")],
              "percentunit"),
        panel("Schema violation ratio by arm",
              [(f"tenant_model_arm:loragate_schema_violations:ratio_rate5m{{{SCOPE}}}",
                "{{arm}}")], "percentunit"),
        panel("Tokens / s by arm",
              [(f"sum by (arm, kind) (rate(loragate_tokens_total{{{SCOPE}}}{rate}))",
                "{{arm}} {{kind}}")], "short"),
        panel("Cost per hour by arm",
              [(f"sum by (arm) (rate(loragate_cost_total{{{SCOPE}}}{rate})) * 3600", "{{arm}}")],
              "currencyUSD"),
        panel("Errors / s by code (tenant)",
              [('sum by (code) (rate(loragate_errors_total{tenant="$tenant"}'
                f"{rate}))", "{{code}}")], "reqps", width=24),
        panel("Queue depth (tenant, all gateways)",
              [('sum(loragate_queue_depth{tenant="$tenant"})', "waiting")], "short",
              description="Requests waiting for an engine slot in the gateways' fair queues."),
        panel("Queue wait P50 / P95 (tenant) against all tenants", [
            ("histogram_quantile(0.5, sum by (le) (rate(loragate_queue_wait_seconds_bucket"
             f'{{tenant="$tenant"}}{rate})))', "P50"),
            ("histogram_quantile(0.95, sum by (le) (rate(loragate_queue_wait_seconds_bucket"
             f'{{tenant="$tenant"}}{rate})))', "P95"),
            ("histogram_quantile(0.95, sum by (le) (rate(loragate_queue_wait_seconds_bucket"
             f"{rate})))", "P95 all tenants"),
        ], "s", description="Time waiting for an engine slot; far above all tenants' "
           "(LoragateTenantStarved) means this tenant is not getting its share."),
    ]  # fmt: skip
    variables = [
        variable("tenant", "label_values(loragate_requests_total, tenant)", "Tenant"),
        variable(
            "model", 'label_values(loragate_requests_total{tenant="$tenant"}, model)', "Model"
        ),
    ]
    return dashboard("loragate-tenant", "loragate / Tenant", panels, variables)


def engines() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        panel("In flight per replica",
              [("sum by (engine) (loragate_engine_in_flight)", "{{engine}}")], "short"),
        panel("Resident adapters per replica",
              [("max by (engine) (loragate_engine_resident_adapters)", "{{engine}}")], "short"),
        panel("Adapter miss ratio",
              [("loragate_adapter_requests:miss_ratio_rate5m", "miss ratio")], "percentunit",
              description="Share of requests whose adapter had to be loaded first."),
        panel("Adapter loads / s",
              [(f"sum by (engine, result) (rate(loragate_adapter_loads_total{rate}))",
                "{{engine}} {{result}}")], "reqps"),
        panel("Replica health", [("min by (engine) (loragate_engine_healthy)", "{{engine}}")],
              "bool", kind="state-timeline", width=12, height=6),
        panel("Ejected replicas", [("max by (engine) (loragate_engine_ejected)", "{{engine}}")],
              "bool", kind="state-timeline", width=12, height=6,
              description="Taken out of routing after consecutive failures (backoff)."),
    ]  # fmt: skip
    return dashboard("loragate-engines", "loragate / Engines", panels, [])


def build() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON."""
    return {"overview.json": overview(), "tenant.json": tenant(), "engines.json": engines()}


def render(dashboard_json: dict[str, Any]) -> str:
    return json.dumps(dashboard_json, indent=2, sort_keys=True) + "\n"


def main() -> None:
    out = Path(__file__).resolve().parent / "dashboards"
    out.mkdir(exist_ok=True)
    for name, dash in build().items():
        (out / name).write_text(render(dash))


if __name__ == "__main__":
    main()
