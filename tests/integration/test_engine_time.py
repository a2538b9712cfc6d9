"""Engine-time attribution: a replica's busy seconds split among tenants by token share, exported
as `loragate_engine_seconds_total` (pure core, then through the in-process gateway)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.engine_time import EngineTime
from gateway.observability.series import SeriesKey
from tests.fixtures.inprocess import InProcessFactory

A = SeriesKey("acme", "support", "support-r1", "stable")
B = SeriesKey("globex", "chat", "chat-r2", "canary")


def test_busy_time_is_split_by_token_share_per_replica() -> None:
    et = EngineTime()
    et.add_tokens("e0", A, 300)
    et.add_tokens("e0", B, 100)
    et.add_tokens("e1", B, 50)
    et.add_tokens("e1", A, 0)  # nothing served: no share
    shares = et.settle({"e0": 8.0, "e1": 2.0})
    assert shares == {A: pytest.approx(6.0), B: pytest.approx(2.0 + 2.0)}
    # the next settle splits only what is new
    et.add_tokens("e0", A, 10)
    assert et.settle({"e0": 9.0, "e1": 2.0}) == {A: pytest.approx(1.0)}


def test_busy_time_without_finished_requests_is_carried_to_the_next_ones() -> None:
    et = EngineTime()
    assert et.settle({"e0": 5.0}) == {}  # a long request still running: nobody to charge yet
    et.add_tokens("e0", B, 7)
    assert et.settle({"e0": 6.0}) == {B: pytest.approx(6.0)}
    assert et.settle({"e0": 6.0}) == {}


def _engine_seconds(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "loragate_engine_seconds":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    tenant = sample.labels["tenant"]
                    out[tenant] = out.get(tenant, 0.0) + sample.value
    return out


async def test_gateway_exports_engine_seconds_by_tenant(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway()
    big = await gw.seed_tenant("big", adapter=tiny_adapter_paths[0])
    small = await gw.seed_tenant("small", adapter=tiny_adapter_paths[1])
    tokens: dict[str, int] = {"big": 0, "small": 0}
    for tenant, n in ((big, 3), (small, 1)):
        for _ in range(n):
            r = await gw.client.post(
                "/v1/chat/completions",
                headers=gw.bearer(tenant.api_key),
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200, r.text
            tokens[tenant.id] += r.json()["usage"]["total_tokens"]
    seconds = _engine_seconds((await gw.client.get("/metrics")).text)
    busy = gw.state.pool.replicas[0].busy_s
    assert busy > 0
    assert sum(seconds.values()) == pytest.approx(busy)
    assert seconds["big"] / seconds["small"] == pytest.approx(tokens["big"] / tokens["small"])
    assert _engine_seconds((await gw.client.get("/metrics")).text) == pytest.approx(seconds)
