"""Read the PromQL out of Grafana dashboards, so tests can check and run every panel query.

Why: dashboards drift silently (a renamed metric shows "No data", nobody notices). Tests use
`iter_panel_queries` to check each expr against the metrics `GatewayMetrics` registers and to run
it against a real Prometheus; `metric_names` is the (deliberately small) PromQL scanner for that.

    for expr in iter_panel_queries(Path("deploy/grafana/dashboards/overview.json")):
        print(substitute_variables(expr, {"tenant": "acme"}))

Panel walking and `$variable` substitution are `gateway.demo.panels`'s (what `loragate demo observe`
runs against a live stack), re-exported here: one implementation for the demo and the tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.demo.panels import BUILTIN_VARIABLES, iter_dashboard_panels
from gateway.demo.panels import substitute as substitute_variables

__all__ = [
    "BUILTIN_VARIABLES",
    "VLLM_METRICS",
    "iter_annotation_queries",
    "iter_dashboard_panels",
    "iter_panel_queries",
    "metric_names",
    "substitute_variables",
]

_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
        "offset", "bool", "atan2", "inf", "nan",
    }
)  # fmt: skip
_AGGREGATORS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
        "count_values", "group",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_.:$])[A-Za-z_:][A-Za-z0-9_:]*")


# vLLM's own metrics the engines dashboard reads, as vLLM 0.32.0 names them (tests/e2e/
# test_engine_auth.py reads them off a real engine's /metrics).
VLLM_METRICS = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:lora_requests_info",
    }
)


def iter_annotation_queries(path: Path) -> list[str]:
    """The PromQL of every Prometheus annotation of one dashboard JSON file."""
    dashboard = json.loads(path.read_text())
    return [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]


def iter_panel_queries(path: Path) -> list[str]:
    """The PromQL `expr` of every panel target of one dashboard JSON file, in panel order."""
    dashboard = json.loads(path.read_text())
    return [
        target["expr"]
        for panel in iter_dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def metric_names(expr: str) -> set[str]:
    """Metric (or recording rule) names an expr selects; labels, functions, keywords excluded."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word in _KEYWORDS or word in _AGGREGATORS:
            continue
        names.add(word)
    return names
