"""Generate loragate's Grafana dashboards: `python deploy/grafana/generate.py [--currency EUR]`
rewrites deploy/grafana/dashboards/{overview,tenant,engines}.json.

Why generated: three dashboards share the datasource variable, panel layout and units; a few
helpers keep them consistent, and a test checks that the committed JSON matches this script.
P50/P95 panels read the recording rules of deploy/prometheus/recording_rules.yml; rates use
Grafana's `$__rate_interval`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every raw-metric query is scoped to the chosen namespaces and jobs (multi-value, "All" = ".*",
# which also matches series without the label). Recording-rule series aggregate those labels away.
SEL = 'namespace=~"$namespace", job=~"$job"'
SCOPE = f'{SEL}, tenant=~"$tenant", model=~"$model"'
RATE = "[$__rate_interval]"
TENANT_URL = (
    "/d/loragate-tenant/loragate-tenant?var-tenant=${__field.labels.tenant}&${__url_time_range}"
)
# Configured currency (Settings.currency): `generate.py --currency EUR` writes currencyEUR units.
CURRENCY = "USD"
TOKENS = "suffix: tok/s"

Panel = dict[str, Any]
Steps = list[tuple[float | None, str]]
NO_DATA = {
    "type": "special",
    "options": {"match": "null+nan", "result": {"text": "no data", "color": "red"}},
}
UP_DOWN = {
    "type": "value",
    "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
}


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
    steps: Steps | None = None,
    mappings: list[dict[str, Any]] | None = None,
    tenant_links: bool = False,
) -> Panel:
    """One panel; ids and grid positions are assigned by `layout`. Stats and gauges get threshold
    colours and value mappings (a gauge of healthy engines must not be green at 0)."""
    defaults: dict[str, Any] = {"unit": unit}
    if steps is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps],
        }
        defaults["color"] = {"mode": "thresholds"}
    if kind in ("stat", "gauge", "bargauge"):
        defaults["mappings"] = [*(mappings or []), NO_DATA]
    if tenant_links:
        defaults["links"] = [{"title": "Tenant ${__field.labels.tenant}", "url": TENANT_URL}]
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)],
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}  # fmt: skip


def layout(panels: list[Panel]) -> list[Panel]:
    """Flow panels left to right on a 24-column grid; a row starts a new line."""
    x = y = row_height = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24 or (p["type"] == "row" and x > 0):
            x, y, row_height = 0, y + row_height, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        row_height = max(row_height, h)
    return panels


def variable(name: str, query: str, label: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "sort": 1,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "multi": multi,
    }


SCOPE_VARIABLES = [
    variable("namespace", "label_values(loragate_build_info, namespace)", "Namespace"),
    variable("job", 'label_values(loragate_build_info{namespace=~"$namespace"}, job)', "Job"),
]

# Events drawn on every dashboard's time axis.
ANNOTATIONS = [
    ("Auto-rollbacks", "red",
     f"sum by (tenant, model) (increase(loragate_auto_rollbacks_total{{{SEL}}}[2m])) > 0",
     "{{tenant}}/{{model}}: canary rolled back by the guard"),
    ("Canary weight changes", "orange",
     f"max by (tenant, model) (changes(loragate_canary_weight{{{SEL}}}[2m])) > 0",
     "{{tenant}}/{{model}}: canary weight changed"),
    ("Deploys", "blue",
     f"count by (version, revision) (loragate_build_info{{{SEL}}})"
     f" unless count by (version, revision) (loragate_build_info{{{SEL}}} offset 5m)",
     "gateway {{version}} ({{revision}}) started"),
]  # fmt: skip


def annotation_list() -> list[dict[str, Any]]:
    builtin = {
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
        "type": "dashboard",
    }  # fmt: skip
    return [builtin] + [
        {"name": name, "datasource": DS, "enable": True, "iconColor": color, "expr": expr,
         "step": "1m", "titleFormat": name, "textFormat": text, "useValueForTime": False}
        for name, color, expr, text in ANNOTATIONS
    ]  # fmt: skip


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
        "annotations": {"list": annotation_list()},
        "templating": {"list": [datasource, *SCOPE_VARIABLES, *variables]},
        "links": [
            {
                "type": "dashboards",
                "tags": ["loragate"],
                "title": "loragate",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout(panels),
    }


def quantile(q: float, metric: str, by: str, sel: str) -> str:
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{sel}}}{RATE})))")  # fmt: skip


def overview() -> dict[str, Any]:
    currency = f"currency{CURRENCY}"
    panels = [
        row("Traffic"),
        panel("Requests / s by tenant",
              [(f"sum by (tenant) (rate(loragate_requests_total{{{SEL}}}{RATE}))", "{{tenant}}")],
              "reqps", tenant_links=True),
        panel("Tokens / s by tenant",
              [(f"sum by (tenant, kind) (rate(loragate_tokens_total{{{SEL}}}{RATE}))",
                "{{tenant}} {{kind}}")], TOKENS, tenant_links=True),
        panel("In-flight requests by tenant",
              [(f"sum by (tenant) (loragate_in_flight_requests{{{SEL}}})", "{{tenant}}")], "short",
              tenant_links=True),
        panel("Queue depth by tenant (waiting for an engine slot)",
              [(f"sum by (tenant) (loragate_queue_depth{{{SEL}}})", "{{tenant}}")], "short",
              tenant_links=True),
        panel("Limit rejections / s",
              [(f"sum by (tenant, code) (rate(loragate_limit_rejections_total{{{SEL}}}{RATE}))",
                "{{tenant}} {{code}}")], "reqps", tenant_links=True),
        row("Latency"),
        panel("Latency P50 / P95 / P99 by tenant", [
            ("tenant:loragate_request_duration_seconds:p50_5m", "{{tenant}} P50"),
            ("tenant:loragate_request_duration_seconds:p95_5m", "{{tenant}} P95"),
            (quantile(0.99, "loragate_request_duration_seconds", "tenant", SEL), "{{tenant}} P99"),
        ], "s", tenant_links=True),
        panel("Gateway overhead P50 / P95 / P99", [
            ("tenant:loragate_gateway_overhead_seconds:p50_5m", "{{tenant}} P50"),
            ("tenant:loragate_gateway_overhead_seconds:p95_5m", "{{tenant}} P95"),
            (quantile(0.99, "loragate_gateway_overhead_seconds", "tenant", SEL), "{{tenant}} P99"),
        ], "s", tenant_links=True),
        row("Errors"),
        panel("Server error ratio by tenant",
              [("tenant:loragate_errors:ratio_rate5m", "{{tenant}}")], "percentunit",
              tenant_links=True),
        panel("Errors / s by code",
              [(f"sum by (tenant, code) (rate(loragate_errors_total{{{SEL}}}{RATE}))",
                "{{tenant}} {{code}}")], "reqps", tenant_links=True),
        row("Cost"),
        panel("Cost per hour by tenant",
              [(f"sum by (tenant) (rate(loragate_cost_total{{{SEL}}}{RATE})) * 3600",
                "{{tenant}}")],
              currency, description="Currency: see loragate_cost_currency_info.",
              tenant_links=True),
        panel("Engine time by tenant (replicas busy, by token share)",
              [(f"sum by (tenant) (rate(loragate_engine_seconds_total{{{SEL}}}{RATE}))",
                "{{tenant}}")],
              "short", description="Replica busy time split by token share: 1 = one replica "
              "busy all the time for this tenant. Chargeback: multiply by the replica price/s.",
              tenant_links=True),
        panel("Budget used", [(
            f"max by (tenant) (loragate_tenant_spend{{{SEL}}})"
            f" / on (tenant) (max by (tenant) (loragate_tenant_budget{{{SEL}}}) > 0)",
            "{{tenant}}")],
            "percentunit", kind="bargauge", width=24, height=6,
            steps=[(None, "green"), (0.75, "orange"), (0.9, "red")], tenant_links=True),
        row("Platform"),
        panel("Registry Redis up", [(f"min(loragate_registry_redis_up{{{SEL}}})", "up")], "bool",
              kind="stat", width=6, height=4, steps=[(None, "red"), (1, "green")],
              mappings=[UP_DOWN]),
        panel("Snapshot age", [(f"max(loragate_registry_snapshot_age_seconds{{{SEL}}})", "age")],
              "s", kind="stat", width=6, height=4,
              steps=[(None, "green"), (30, "orange"), (60, "red")]),
        panel("Registry epoch", [(f"max(loragate_registry_epoch{{{SEL}}})", "epoch")], "none",
              kind="stat", width=6, height=4, steps=[(None, "red"), (1, "green")],
              description="0: an empty or unreachable registry."),
        panel("Healthy engines",
              [(f"sum(max by (engine) (loragate_engine_healthy{{{SEL}}}))", "healthy")], "none",
              kind="stat", width=6, height=4, steps=[(None, "red"), (1, "green")],
              description="Red at 0: no replica passes its health check, requests get 503."),
        panel("Redis pool connections in use",
              [(f'max by (pool) (loragate_redis_pool_connections{{{SEL}, state="in_use"}})',
                "{{pool}} in use (busiest gateway)"),
               (f"max by (pool) (loragate_redis_pool_max_connections{{{SEL}}})", "{{pool}} max")],
              "none", width=24, height=6,
              description="Per gateway process. In use at the max: Redis calls wait for a "
              "connection (LORAGATE_REDIS_MAX_CONNECTIONS). In use that stays up while the "
              "gateway is idle: a connection taken and never returned."),
    ]  # fmt: skip
    return dashboard("loragate-overview", "loragate / Overview", panels, [])


def tenant() -> dict[str, Any]:
    currency = f"currency{CURRENCY}"

    def latency(arm: str) -> Panel:
        sel = f'{{{SCOPE}, arm="{arm}"}}'.replace(f"{SEL}, ", "")
        return panel(f"Latency P50 / P95 / P99: {arm}", [
            (f"tenant_model_release_arm:loragate_request_duration_seconds:p50_5m{sel}",
             "{{tenant}} {{release}} P50"),
            (f"tenant_model_release_arm:loragate_request_duration_seconds:p95_5m{sel}",
             "{{tenant}} {{release}} P95"),
            (quantile(0.99, "loragate_request_duration_seconds", "tenant, release",
                      f'{SCOPE}, arm="{arm}"'), "{{tenant}} {{release}} P99"),
        ], "s")  # fmt: skip

    def errors(arm: str) -> Panel:
        sel = f'{{{SCOPE}, arm="{arm}"}}'.replace(f"{SEL}, ", "")
        return panel(f"Server error ratio: {arm}", [
            (f"tenant_model_release_arm:loragate_errors:ratio_rate5m{sel}",
             "{{tenant}} {{release}}"),
        ], "percentunit")  # fmt: skip

    rules = SCOPE.replace(f"{SEL}, ", "")  # recording-rule series have no namespace/job
    panels = [
        panel("Requests / s by arm and release",
              [(f"sum by (tenant, arm, release) (rate(loragate_requests_total{{{SCOPE}}}{RATE}))",
                "{{tenant}} {{arm}} {{release}}")], "reqps", width=16),
        panel("Canary weight", [(f"max(loragate_canary_weight{{{SCOPE}}})", "weight")],
              "percentunit", kind="stat", width=4,
              steps=[(None, "green"), (0.5, "orange"), (1, "blue")],
              description="Share of traffic on the canary (0: no canary)."),
        panel("Auto-rollbacks (range)",
              [(f"sum(increase(loragate_auto_rollbacks_total{{{SCOPE}}}[$__range]))",
                "rollbacks")], "none", kind="stat", width=4,
              steps=[(None, "green"), (1, "orange")]),
        latency("stable"),
        latency("canary"),
        errors("stable"),
        errors("canary"),
        panel("Time to first token P50 / P95 / P99 by arm", [
            (quantile(0.5, "loragate_time_to_first_token_seconds", "tenant, arm", SCOPE),
             "{{tenant}} {{arm}} P50"),
            (f"tenant_model_arm:loragate_time_to_first_token_seconds:p95_5m{{{rules}}}",
             "{{tenant}} {{arm}} P95"),
            (quantile(0.99, "loragate_time_to_first_token_seconds", "tenant, arm", SCOPE),
             "{{tenant}} {{arm}} P99"),
        ], "s"),
        panel("Inter-token latency P95 by arm", [(
            quantile(0.95, "loragate_inter_token_latency_seconds", "tenant, arm", SCOPE),
            "{{tenant}} {{arm}}")], "s"),
        panel("Refusal ratio by arm",
              [(f"tenant_model_arm:loragate_refusals:ratio_rate5m{{{rules}}}",
                "{{tenant}} {{arm}}")], "percentunit"),
        panel("Schema violation ratio by arm",
              [(f"tenant_model_arm:loragate_schema_violations:ratio_rate5m{{{rules}}}",
                "{{tenant}} {{arm}}")], "percentunit"),
        panel("Tokens / s by arm",
              [(f"sum by (tenant, arm, kind) (rate(loragate_tokens_total{{{SCOPE}}}{RATE}))",
                "{{tenant}} {{arm}} {{kind}}")], TOKENS),
        panel("Cost per hour by arm",
              [(f"sum by (tenant, arm) (rate(loragate_cost_total{{{SCOPE}}}{RATE})) * 3600",
                "{{tenant}} {{arm}}")], currency),
        panel("Errors / s by code (tenant)",
              [(f'sum by (tenant, code) (rate(loragate_errors_total{{{SEL}, tenant=~"$tenant"}}'
                f"{RATE}))", "{{tenant}} {{code}}")], "reqps", width=24),
        panel("Queue depth (tenant, all gateways)",
              [(f'sum by (tenant) (loragate_queue_depth{{{SEL}, tenant=~"$tenant"}})',
                "{{tenant}} waiting")], "short",
              description="Requests waiting for an engine slot in the gateways' fair queues."),
        panel("Queue wait P50 / P95 (tenant) against all tenants", [
            ("histogram_quantile(0.5, sum by (tenant, le) (rate("
             f'loragate_queue_wait_seconds_bucket{{{SEL}, tenant=~"$tenant"}}{RATE})))',
             "{{tenant}} P50"),
            ("histogram_quantile(0.95, sum by (tenant, le) (rate("
             f'loragate_queue_wait_seconds_bucket{{{SEL}, tenant=~"$tenant"}}{RATE})))',
             "{{tenant}} P95"),
            (f"histogram_quantile(0.95, sum by (le) (rate(loragate_queue_wait_seconds_bucket"
             f"{{{SEL}}}{RATE})))", "P95 all tenants"),
        ], "s", description="Time waiting for an engine slot; far above all tenants' "
           "(LoragateTenantStarved) means this tenant is not getting its share."),
    ]  # fmt: skip
    variables = [
        variable("tenant", "label_values(loragate_requests_total, tenant)", "Tenant"),
        variable(
            "model", 'label_values(loragate_requests_total{tenant=~"$tenant"}, model)', "Model"
        ),
    ]
    return dashboard("loragate-tenant", "loragate / Tenant", panels, variables)


# vLLM's own metrics (checked against vLLM 0.32.0's /metrics, tests/e2e/test_engine_auth.py).
VLLM = f"{{{SEL}}}"


def engines() -> dict[str, Any]:
    panels = [
        row("Engines as vLLM sees them (per replica)"),
        panel("Waiting requests (queue depth)",
              [(f"sum by (instance) (vllm:num_requests_waiting{VLLM})", "{{instance}}")], "short",
              width=8),
        panel("Running requests",
              [(f"sum by (instance) (vllm:num_requests_running{VLLM})", "{{instance}}")], "short",
              width=8),
        panel("KV-cache use",
              [(f"max by (instance) (vllm:kv_cache_usage_perc{VLLM})", "{{instance}}")],
              "percentunit", kind="gauge", width=8,
              steps=[(None, "green"), (0.8, "orange"), (0.95, "red")],
              description="Near 100%: requests queue or get preempted."),
        panel("Preemptions / s",
              [(f"sum by (instance) (rate(vllm:num_preemptions_total{VLLM}{RATE}))",
                "{{instance}}")], "reqps", width=12,
              description="Running requests evicted for lack of KV cache (recomputed later)."),
        panel("Running LoRA adapters", [(
            "max by (instance, running_lora_adapters, max_lora) "
            f"(vllm:lora_requests_info{VLLM}) * 1000", "{{instance}}: {{running_lora_adapters}}")],
            "dateTimeFromNow", kind="table", width=12,
            description="Adapters in the running batch per replica (label running_lora_adapters) "
            "and when vLLM last reported them."),
        row("Engines as the gateway sees them"),
        panel("In flight per replica",
              [(f"sum by (engine) (loragate_engine_in_flight{{{SEL}}})", "{{engine}}")], "short"),
        panel("Resident adapters per replica",
              [(f"max by (engine) (loragate_engine_resident_adapters{{{SEL}}})", "{{engine}}")],
              "short"),
        panel("Adapter miss ratio",
              [("loragate_adapter_requests:miss_ratio_rate5m", "miss ratio")], "percentunit",
              description="Share of requests whose adapter had to be loaded first."),
        panel("Adapter loads / s",
              [(f"sum by (engine, result) (rate(loragate_adapter_loads_total{{{SEL}}}{RATE}))",
                "{{engine}} {{result}}")], "reqps"),
        panel("Replica health",
              [(f"min by (engine) (loragate_engine_healthy{{{SEL}}})", "{{engine}}")],
              "bool", kind="state-timeline", width=12, height=6),
        panel("Ejected replicas",
              [(f"max by (engine) (loragate_engine_ejected{{{SEL}}})", "{{engine}}")],
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
    global CURRENCY
    if "--currency" in sys.argv:
        CURRENCY = sys.argv[sys.argv.index("--currency") + 1].upper()
    out = Path(__file__).resolve().parent / "dashboards"
    out.mkdir(exist_ok=True)
    for name, dash in build().items():
        (out / name).write_text(render(dash))


if __name__ == "__main__":
    main()
