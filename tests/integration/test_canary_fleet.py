"""Fleet-wide canary analysis through real gateway processes sharing one Redis.

Three gateways take a canary's traffic round-robin; each publishes its windows every guard pass
(0.1 s) and judges the sum over the live ones. The engine is the scripted fake: it answers plain
text, so a canary release whose prompt carries a JSON response schema violates it on every answer
(passed through to clients), which is the "deliberately bad" canary; a release without a schema
is the good one.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fixtures.fake_engine import FakeEngine, FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.fixtures.traffic import auth, wait_for

pytestmark = pytest.mark.timeout(300)

MIN_REQUESTS = 30
INTERVAL_S = 0.1
LEASE_S = 1.0
CANARY = {"interval_s": INTERVAL_S, "fleet_lease_s": LEASE_S, "window_s": 600}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@dataclass
class Run:
    canary_served: int  # canary answers the clients got before the rollback was visible
    audited_n: int | None  # the fleet's canary n in the auto_rollback reason
    reason: str | None
    rate_per_s: float  # canary answers per second during the run
    per_gateway: list[int]  # canary answers each gateway served


def _fleet(factory: GatewayFactory, engine: FakeEngine, n: int) -> list[GatewayProcess]:
    first = factory(engines=[engine.url], canary=CANARY)
    shared = {
        "redis_url": first.env["LORAGATE_REDIS_URL"],
        "admin_token": first.admin_token,
        "key_hmac_secret": first.env["LORAGATE_KEY_HMAC_SECRET"],
    }
    return [first] + [factory(engines=[engine.url], canary=CANARY, **shared) for _ in range(n - 1)]


@pytest.fixture
def engine(fake_engine: FakeEngineFactory) -> FakeEngine:
    engine = fake_engine()
    engine.default = Step("ok", tokens=4)
    return engine


def _canary(gw: GatewayProcess, tenant: str, *, bad: bool, min_requests: int) -> tuple[str, str]:
    """A tenant on the base model with a canary at 50%: (api key, canary release id)."""
    seeded = gw.seed_tenant(tenant, adapter=None, system_prompt="You are support.")
    prompt: dict[str, Any] = {"system_prompt": "Answer in JSON."}
    if bad:
        prompt["response_schema"] = SCHEMA
    ref = gw.call("POST", f"/tenants/{tenant}/prompts/main/versions", prompt, expect=201)["ref"]
    thresholds = {"min_requests": min_requests, "max_schema_violation_rate_delta": 0.2}
    release = gw.call(
        "POST", f"/tenants/{tenant}/models/chat/releases",
        {"adapter": None, "prompt": ref, "thresholds": thresholds, "schema_violation": "pass"},
        expect=201,
    )["release"]  # fmt: skip
    revision = gw.call("GET", f"/tenants/{tenant}/models/chat")["revision"]
    gw.call(
        "POST", f"/tenants/{tenant}/models/chat/canary",
        {"release": release, "weight": 0.5, "expected_revision": revision},
    )  # fmt: skip
    return seeded.api_key, release


def _body(user: str) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": "Where is my parcel?"}],
        "max_tokens": 4,
        "user": user,
    }


def _drive(
    gateways: list[GatewayProcess], key: str, tenant: str, canary: str, *, limit: int
) -> Run:
    """Round-robin traffic until the canary is rolled back or `limit` canary answers."""
    clients = [httpx.Client(base_url=g.url, headers=auth(key), timeout=60) for g in gateways]
    admin = gateways[0]
    served = 0
    per_gateway = [0] * len(gateways)
    started = time.monotonic()
    try:
        for i in range(limit * 4):
            r = clients[i % len(clients)].post("/v1/chat/completions", json=_body(f"u{i}"))
            assert r.status_code == 200, r.text
            hit = r.headers.get("x-loragate-release") == canary
            served += hit
            per_gateway[i % len(clients)] += hit
            if admin.call("GET", f"/tenants/{tenant}/models/chat")["canary"] is None:
                break
            if served >= limit:
                break
    finally:
        for client in clients:
            client.close()
    elapsed = time.monotonic() - started
    audit = [e for e in admin.call("GET", f"/audit?tenant={tenant}") if
             e["action"] == "auto_rollback"]  # fmt: skip
    reason = audit[0]["reason"] if audit else None
    n = None
    if reason is not None:
        found = re.search(r"canary n=(\d+)", reason)
        assert found is not None, reason
        n = int(found[1])
    assert len(audit) <= 1, audit
    return Run(served, n, reason, served / max(elapsed, 1e-6), per_gateway)


def test_three_gateways_roll_back_after_about_the_same_canary_count_as_one(
    gateway_factory: GatewayFactory, engine: FakeEngine
) -> None:
    solo = _fleet(gateway_factory, engine, 1)
    fleet = _fleet(gateway_factory, engine, 3)
    key1, canary1 = _canary(solo[0], "solo", bad=True, min_requests=MIN_REQUESTS)
    key3, canary3 = _canary(fleet[0], "fleet", bad=True, min_requests=MIN_REQUESTS)
    for gw in (*solo, *fleet):
        gw.wait_ready()

    one = _drive(solo, key1, "solo", canary1, limit=6 * MIN_REQUESTS)
    three = _drive(fleet, key3, "fleet", canary3, limit=6 * MIN_REQUESTS)
    per_interval = math.ceil(max(one.rate_per_s, three.rate_per_s) * INTERVAL_S)
    print(
        f"\ncanary answers at the rollback: 1 gateway {one.canary_served} "
        f"(audit n={one.audited_n}), 3 gateways {three.canary_served} (audit n={three.audited_n}); "
        f"one publish interval = {per_interval} canary answers; reason: {three.reason}"
    )
    assert one.reason is not None, "1 gateway: no rollback"
    assert three.reason is not None, "3 gateways: no rollback"
    assert "fleet totals over 3 gateway process(es)" in three.reason
    assert "schema violation rate 1.000 vs stable 0.000" in three.reason
    assert three.audited_n is not None
    assert MIN_REQUESTS <= three.audited_n <= three.canary_served
    # The fleet's sum lags by at most one publish (another gateway's numbers) plus one guard pass;
    # a single gateway's only by the pass. Judged per process instead, each of the 3 would need
    # MIN_REQUESTS itself: about 3x as many canary answers in all.
    assert abs(three.canary_served - one.canary_served) <= 2 * per_interval + 4
    assert three.canary_served < 2 * MIN_REQUESTS
    # Every gateway counted exactly one rollback between them (the compare-and-set).
    total = 0.0
    for gw in fleet:
        text = httpx.get(gw.url + "/metrics", timeout=10).text
        found = re.search(
            r'loragate_auto_rollbacks_total\{model="chat",tenant="fleet"\} (\S+)', text
        )
        total += float(found[1]) if found else 0.0
    assert total == 1.0


def test_a_good_canary_is_not_rolled_back_and_a_killed_gateway_leaves_the_sum(
    gateway_factory: GatewayFactory, engine: FakeEngine
) -> None:
    fleet = _fleet(gateway_factory, engine, 3)
    key, canary = _canary(fleet[0], "good", bad=False, min_requests=MIN_REQUESTS)
    for gw in fleet:
        gw.wait_ready()
    run = _drive(fleet, key, "good", canary, limit=3 * MIN_REQUESTS)
    assert run.reason is None, run.reason
    assert run.canary_served >= 3 * MIN_REQUESTS

    def status() -> dict[str, Any]:
        result: dict[str, Any] = fleet[0].call("GET", "/tenants/good/models/chat/canary")
        return result

    wait_for(lambda: status()["arms"]["canary"]["n"] == run.canary_served, 10)
    before = status()
    assert (before["source"], before["gateways"], before["action"]) == ("fleet", 3, "hold")
    assert before["would_trip"] == []
    victim = fleet[2]
    victim_canary = run.per_gateway[2]
    with httpx.Client(base_url=victim.url, headers=auth(key), timeout=60) as client:
        for i in range(40):
            r = client.post("/v1/chat/completions", json=_body(f"v{i}"))
            victim_canary += r.headers.get("x-loragate-release") == canary
    total = run.canary_served + victim_canary - run.per_gateway[2]
    wait_for(lambda: status()["arms"]["canary"]["n"] == total, 10)
    assert victim.proc is not None
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(timeout=30)
    killed = time.monotonic()
    wait_for(lambda: status()["gateways"] == 2, LEASE_S + 10)
    left_after = time.monotonic() - killed
    after = status()
    print(f"\nkilled gateway left the sum after {left_after:.2f} s (lease {LEASE_S} s)")
    assert after["gateways"] == 2
    assert after["arms"]["canary"]["n"] == total - victim_canary  # exactly its numbers left
    assert left_after <= LEASE_S + 2.0  # the lease, plus a loaded box's scheduling
    audit = fleet[0].call("GET", "/audit?tenant=good")
    assert not [e for e in audit if e["action"] == "auto_rollback"]
    # A manual decision records the fleet's numbers it was taken on.
    fleet[1].call("POST", "/tenants/good/models/chat/rollback", {"reason": "seen enough"})
    entry = fleet[0].call("GET", "/audit?tenant=good")[0]
    assert entry["action"] == "rollback"
    assert entry["reason"].startswith("seen enough (numbers: all within thresholds")
    assert "fleet totals over 2 gateway process(es)" in entry["reason"]
