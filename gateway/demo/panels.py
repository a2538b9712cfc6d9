"""Pure helpers for `loragate demo observe`: dashboard panel queries, tables,
one sample read from a /metrics text.

Why here and not in deploy/grafana/queries.py: the `loragate` console script only imports the
installed packages (gateway, registry, adapters), so the few lines that walk a dashboard live here;
the test suite keeps using deploy/grafana/queries.py, and both read the same JSON files.

    panels = load_panels(Path("deploy/grafana/dashboards"))
    expr = substitute(panels[0].exprs[0], {"tenant": "acme", "model": "support"})
    print(panel_table([(panels[0], [True])]))
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Grafana's built-in interval variables, replaced by values Prometheus accepts for a short run.
# The scope variables at "All" (their allValue), which also matches series without the label.
BUILTIN_VARIABLES: dict[str, str] = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "5m", "namespace": ".*", "job": ".*",
}  # fmt: skip
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class Panel:
    dashboard: str  # the JSON file's stem
    title: str
    exprs: tuple[str, ...]


def iter_dashboard_panels(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including panels nested in (collapsed) rows."""
    for panel in node.get("panels", []):
        yield panel
        yield from iter_dashboard_panels(panel)


def load_panels(dashboards: Path) -> list[Panel]:
    """Every panel with at least one PromQL target, dashboard by dashboard, in panel order."""
    out = []
    for path in sorted(dashboards.glob("*.json")):
        for panel in iter_dashboard_panels(json.loads(path.read_text())):
            exprs = tuple(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            if exprs:
                out.append(Panel(path.stem, str(panel.get("title", "")), exprs))
    return out


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$var` / `${var}` with `values` plus Grafana's built-ins; unknown ones raise."""
    merged = {**BUILTIN_VARIABLES, **values}

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in merged:
            raise KeyError(f"no value for dashboard variable ${match.group(1)}")
        return merged[match.group(1)]

    return _VARIABLE.sub(replace, expr)


def has_data(response: Mapping[str, Any]) -> bool:
    """A Prometheus instant-query answer with at least one non-NaN sample."""
    if response.get("status") != "success":
        return False
    data = response["data"]
    result = [{"value": data["result"]}] if data["resultType"] == "scalar" else data["result"]
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The first sample `name` whose labels include `labels`, in a /metrics text; None if absent."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def panel_table(results: Sequence[tuple[Panel, Sequence[bool]]]) -> str:
    """One line per panel: dashboard, title, targets with data, verdict."""
    rows = [
        (p.dashboard, p.title, f"{sum(ok)}/{len(ok)}", "data" if all(ok) else "NO DATA")
        for p, ok in results
    ]
    return _table(("DASHBOARD", "PANEL", "TARGETS", "RESULT"), rows)


def rule_table(rules: Sequence[Mapping[str, Any]]) -> str:
    """One line per rule from Prometheus's /api/v1/rules: group, type, name, health, state."""
    rows = [
        (
            str(r.get("group", "")),
            "alert" if r.get("type") == "alerting" else "record",
            str(r["name"]),
            str(r.get("health", "")),
            str(r.get("state", "")),
        )
        for r in rules
    ]
    return _table(("GROUP", "TYPE", "RULE", "HEALTH", "STATE"), rows)
