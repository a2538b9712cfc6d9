"""The pure helpers behind `loragate demo observe` agree with the dashboards and the tests' own
query reader, and fail where they must."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploy.grafana.queries import iter_panel_queries, substitute_variables
from gateway.demo import panels as observe
from gateway.observability.prometheus_process import prometheus_config

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def test_panels_carry_every_query_the_tests_check() -> None:
    panels = observe.load_panels(DASHBOARDS)
    ours = [e for p in panels for e in p.exprs]
    theirs = [q for path in sorted(DASHBOARDS.glob("*.json")) for q in iter_panel_queries(path)]
    assert ours == theirs
    assert all(p.title for p in panels)
    values = {"tenant": "acme", "model": "support"}
    assert [observe.substitute(e, values) for e in ours] == [
        substitute_variables(e, values) for e in theirs
    ]
    with pytest.raises(KeyError):
        observe.substitute('x{tenant="$tenant"}', {})


def test_has_data_needs_a_number() -> None:
    def vector(*values: str) -> dict[str, Any]:
        result = [{"metric": {}, "value": [0, v]} for v in values]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    assert not observe.has_data(vector())
    assert not observe.has_data(vector("NaN"))
    assert observe.has_data(vector("0"))
    assert observe.has_data(vector("NaN", "2.5"))
    assert observe.has_data(
        {"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}
    )
    assert not observe.has_data({"status": "error", "error": "parse error"})


def test_config_durations_are_whole_milliseconds() -> None:
    config = prometheus_config(["127.0.0.1:8000"], ["rules.yml"], 2.0)
    assert config["global"] == {
        "scrape_interval": "2000ms", "scrape_timeout": "1800ms", "evaluation_interval": "2000ms"
    }  # fmt: skip
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:8000"]}]


def test_tables_name_the_empty_panel_and_each_rule() -> None:
    a = observe.Panel("overview", "Requests", ("up",))
    b = observe.Panel("tenant", "Refusals", ("x", "y"))
    table = observe.panel_table([(a, [True]), (b, [True, False])]).splitlines()
    assert table[1].split() == ["overview", "Requests", "1/1", "data"]
    assert table[2].split() == ["tenant", "Refusals", "1/2", "NO", "DATA"]
    rules = observe.rule_table(
        [{"group": "g", "type": "alerting", "name": "A", "health": "ok", "state": "inactive"}]
    )
    assert rules.splitlines()[1].split() == ["g", "alert", "A", "ok", "inactive"]


def test_sample_value_matches_name_and_a_subset_of_labels() -> None:
    text = (
        "# TYPE loragate_requests counter\n"
        'loragate_requests_total{tenant="acme",model="support",code="200"} 3.0\n'
        'loragate_requests_total{tenant="globex",model="chat",code="200"} 5.0\n'
    )
    assert observe.sample_value(text, "loragate_requests_total", tenant="globex") == 5.0
    assert observe.sample_value(text, "loragate_requests_total") == 3.0  # the first one
    assert observe.sample_value(text, "loragate_requests_total", tenant="initech") is None
    assert observe.sample_value(text, "loragate_requests", tenant="acme") is None  # family name
