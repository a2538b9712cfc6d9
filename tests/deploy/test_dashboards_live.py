"""Every dashboard query and every rule against a real Prometheus scraping GatewayMetrics.

The gateway is not needed: a tiny HTTP endpoint serves `GatewayMetrics.render()` and feeds one
more batch of synthetic observations (two tenants, both arms) before each scrape, so rates are
never zero. A query passes when it parses and returns at least one non-NaN sample.

tests/e2e/test_dashboards_gateway.py runs the same queries against a real gateway under load; this
synthetic one stays because it is fast (no engine) and feeds series a short clean run cannot
produce: server errors (non-zero error ratios), auto rollbacks counted, two engines, adapter load
errors.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from deploy.grafana.queries import iter_annotation_queries, substitute_variables
from gateway.demo.panels import has_data
from gateway.observability.metrics import GatewayMetrics, InFlight
from gateway.observability.series import SeriesKey
from registry.redis_client import PoolCounts
from tests.fixtures.prometheus import MetricsEndpoint, PrometheusServer, panel_failures

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = [ROOT / "deploy" / "prometheus" / n for n in ("recording_rules.yml", "alert_rules.yml")]
TENANTS = {
    "acme": ("support", "support-r1", "support-r2"),
    "globex": ("sales", "sales-r1", "sales-r2"),
}
ENGINES = ["replica-0", "replica-1"]
VARIABLES = {"tenant": "acme", "model": "support"}


def synthetic_metrics() -> tuple[GatewayMetrics, list[InFlight]]:
    metrics = GatewayMetrics(CollectorRegistry(), currency="USD", engines=ENGINES)
    metrics.set_label_universe(
        set(TENANTS),
        {(t, m) for t, (m, _, _) in TENANTS.items()},
        {(t, r) for t, (_, *rs) in TENANTS.items() for r in rs},
    )
    held = [metrics.in_flight(t) for t in TENANTS]
    metrics.watch_redis_pool("registry", lambda: PoolCounts(idle=3, in_use=1, limit=128))
    return metrics, held


def feed(metrics: GatewayMetrics) -> None:
    for tenant, (model, stable, canary) in TENANTS.items():
        for arm, release, slow in (("stable", stable, 1.0), ("canary", canary, 1.5)):
            args = SeriesKey(tenant, model, release, arm)
            metrics.observe_request(*args, "ok", 0.4 * slow, 0.0003, 20, 16, 0.002)
            metrics.observe_request(*args, "server_error", 1.2 * slow, 0.0005, 20, 0, 0.0)
            metrics.observe_request(*args, "client_error", 0.01, 0.0002)
            metrics.observe_ttft(*args, 0.15 * slow)
            metrics.observe_itl(*args, [0.02, 0.03 * slow])
            metrics.count_refusal(*args)
            metrics.count_schema_violation(*args)
            metrics.add_engine_seconds({args: 0.25 * slow}, ENGINES[0])
        metrics.count_error(tenant, "engine_unavailable")
        metrics.count_limit_rejection(tenant, "rate_limited")
        metrics.count_auto_rollback(tenant, model)
        metrics.set_canary_weight(tenant, model, 0.1)
        metrics.set_tenant_budget(tenant, 100.0, period_s=86400)
        metrics.set_tenant_spend(tenant, 5.0)
        metrics.observe_queue_wait(tenant, 0.0)
        metrics.observe_queue_wait(tenant, 0.3)
    for i, engine in enumerate(ENGINES):
        metrics.set_engine_in_flight(engine, i + 1)
        metrics.set_engine_healthy(engine, True)
        metrics.set_engine_resident_adapters(engine, 2)
        metrics.set_engine_ejected(engine, i == 1)
        metrics.count_adapter_load(engine, "ok")
    metrics.count_adapter_request(hit=True)
    metrics.count_adapter_request(hit=False)
    metrics.set_registry_state(redis_up=True, epoch=3)
    metrics.set_snapshot_age(0.4)
    metrics.set_queue_depths({"acme": 2})


def vllm_exposition(scrape: int) -> tuple[bytes, str]:
    """An engine's /metrics, in vLLM 0.32.0's names and labels (tests/e2e/test_engine_auth.py
    reads the same names off a real engine; tests/e2e/test_dashboards_gateway.py scrapes one)."""
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="base"} 2.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="base"} 1.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="base"} 0.42\n'
        "# TYPE vllm:num_preemptions_total counter\n"
        f'vllm:num_preemptions_total{{engine="0",model_name="base"}} {scrape}.0\n'
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="lg-acme-1",'
        'waiting_lora_adapters=""} 1.7964e+09\n'
    )
    return text.encode(), "text/plain; version=0.0.4; charset=utf-8"


def test_every_panel_query_returns_data(
    metrics_endpoint_factory: Callable[[Callable[[], tuple[bytes, str]]], MetricsEndpoint],
    prometheus_factory: Callable[[list[str], list[Path]], PrometheusServer],
) -> None:
    metrics, held = synthetic_metrics()

    def scrape() -> tuple[bytes, str]:
        feed(metrics)
        return metrics.render()

    endpoint = metrics_endpoint_factory(scrape)
    scrapes = itertools.count()
    engine = metrics_endpoint_factory(lambda: vllm_exposition(next(scrapes)))
    prom = prometheus_factory([endpoint.target, engine.target], RULES)
    deadline = time.monotonic() + 90

    up = prom.query_until("up == 1", has_data, timeout=30)
    assert has_data(up), (up, prom.log())

    failures = panel_failures(prom, DASHBOARDS, VARIABLES, deadline)
    assert not failures, failures
    # Annotation queries parse and run (they have data only when their event happens).
    for path in DASHBOARDS:
        for raw in iter_annotation_queries(path):
            response = prom.query(substitute_variables(raw, VARIABLES))
            assert response.get("status") == "success", (path.name, raw, response)
    # The check can fail: a query for a series nobody exports has no data.
    assert not has_data(prom.query('loragate_requests_total{tenant="initech"}'))
    assert endpoint.scrapes >= 2
    for handle in held:
        handle.release()


def test_every_rule_evaluates_cleanly(
    metrics_endpoint_factory: Callable[[Callable[[], tuple[bytes, str]]], MetricsEndpoint],
    prometheus_factory: Callable[[list[str], list[Path]], PrometheusServer],
) -> None:
    metrics, held = synthetic_metrics()

    def scrape() -> tuple[bytes, str]:
        feed(metrics)
        return metrics.render()

    endpoint = metrics_endpoint_factory(scrape)
    prom = prometheus_factory([endpoint.target], RULES)
    # A recording rule at the end of the last group has data once all groups evaluated.
    probe = prom.query_until("loragate_adapter_requests:rate5m > 0", has_data, timeout=30)
    assert has_data(probe), (probe, prom.log())
    deadline = time.monotonic() + 30
    while True:
        rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(rules) == sum(
        len(g["rules"]) for p in RULES for g in yaml.safe_load(p.read_text())["groups"]
    )
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The recorded P95 per tenant, model, release and arm exists for all four combinations.
    expr = "tenant_model_release_arm:loragate_request_duration_seconds:p95_5m"
    expected = {(t, a) for t in TENANTS for a in ("stable", "canary")}

    def all_arms(result: dict[str, Any]) -> bool:
        return {
            (s["metric"]["tenant"], s["metric"]["arm"]) for s in result["data"]["result"]
        } == expected

    p95 = prom.query_until(expr, all_arms, timeout=30)  # the rule's next evaluation, bounded
    arms = {(s["metric"]["tenant"], s["metric"]["arm"]) for s in p95["data"]["result"]}
    assert arms == {(t, a) for t in TENANTS for a in ("stable", "canary")}
    for handle in held:
        handle.release()
