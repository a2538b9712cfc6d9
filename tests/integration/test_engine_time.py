"""Engine-time attribution: a replica's busy seconds split among tenants by token share, once for
the whole fleet (pure core, then the in-process gateway, then 2 gateway processes sharing 2
engines, against the engines' own busy time)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.engine_time import EngineTime, decode_row, encode_row, union_ms
from gateway.observability.series import SeriesKey
from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.inprocess import InProcessFactory
from tests.fixtures.traffic import auth, wait_for

A = SeriesKey("acme", "support", "support-r1", "stable")
B = SeriesKey("globex", "chat", "chat-r2", "canary")
SLACK_S = 0.008


def test_busy_time_is_split_by_token_share_per_replica() -> None:
    et = EngineTime(period_s=10.0)
    et.add_busy("e0", [(100.0, 108.0)])
    et.add_busy("e1", [(101.0, 103.0)])
    et.add_tokens("e0", A, 300, at=105.0)
    et.add_tokens("e0", B, 100, at=106.0)
    et.add_tokens("e1", B, 50, at=102.0)
    et.add_tokens("e1", A, 0, at=102.0)  # nothing served: no share
    assert et.closed(109.0) == []  # the period is still open
    cells = et.closed(110.5)
    assert cells == [("e0", 10), ("e1", 10)]
    assert et.settle(cells[0], None) == {A: pytest.approx(6.0), B: pytest.approx(2.0)}
    assert et.settle(cells[1], None) == {B: pytest.approx(2.0)}
    assert et.closed(200.0) == []


def test_overlapping_gateways_share_the_union_not_the_sum() -> None:
    """Gateway 1 keeps the replica busy 0-4 s, gateway 2 2-6 s: the replica was busy 6 s."""
    g1, g2 = EngineTime(period_s=10.0), EngineTime(period_s=10.0)
    g1.add_busy("e0", [(0.0, 4.0)])
    g1.add_tokens("e0", A, 100, at=4.0)
    g2.add_busy("e0", [(2.0, 6.0)])
    g2.add_tokens("e0", B, 300, at=6.0)
    cell = ("e0", 0)
    rows = [g1.row(cell), g2.row(cell)]
    one, two = g1.settle(cell, rows), g2.settle(cell, rows)
    assert one == {A: pytest.approx(1.5)}
    assert two == {B: pytest.approx(4.5)}
    assert sum(one.values()) + sum(two.values()) == pytest.approx(6.0)


def test_busy_time_without_finished_requests_is_carried_and_cut_at_period_edges() -> None:
    et = EngineTime(period_s=5.0)
    et.add_busy("e0", [(0.0, 6.0)])  # a long request across the edge at 5 s
    et.add_tokens("e0", B, 7, at=6.0)
    first, second = et.closed(10.0)
    assert et.settle(first, None) == {}  # nobody to charge yet: carried
    assert et.settle(second, None) == {B: pytest.approx(6.0)}


def test_rows_round_trip_and_union() -> None:
    assert decode_row(encode_row(42, [(0, 10), (5, 20)])) == (42, [(0, 10), (5, 20)])
    assert decode_row(encode_row(0, [])) == (0, [])
    assert union_ms([(0, 10), (5, 20), (30, 40), (32, 35)]) == 30
    with pytest.raises(ValueError, match="odd"):
        decode_row(b"1|0,1,2")


def _by(text: str, family_name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    value = sample.labels[label]
                    out[value] = out.get(value, 0.0) + sample.value
    return out


async def test_gateway_exports_engine_seconds_by_tenant(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway(engine_time_period_s=0.5)
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
    busy = gw.state.pool.replicas[0].busy_s
    assert busy > 0
    deadline = time.monotonic() + 20  # the last period closes, then its grace: bounded
    replica = gw.state.pool.replicas[0]
    while time.monotonic() < deadline:
        pending = gw.state.engine_time.closed(time.time() + 3600)
        if not pending and not replica.busy_log:  # every busy interval settled
            break
        await asyncio.sleep(0.05)
    seconds = _by((await gw.client.get("/metrics")).text, "loragate_engine_seconds", "tenant")
    # Fleet rows carry milliseconds: each of the 4 busy intervals may round by 1 ms per edge.
    assert sum(seconds.values()) == pytest.approx(busy, rel=0.02, abs=SLACK_S)
    assert seconds["big"] / seconds["small"] == pytest.approx(tokens["big"] / tokens["small"])


@pytest.mark.timeout(240)
def test_two_gateways_on_two_engines_attribute_each_replicas_busy_time_once(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    engines = [fake_engine(), fake_engine()]
    for engine in engines:
        engine.default = Step("ok", tokens=8, delay_s=0.2)
    urls = [e.url for e in engines]
    first = gateway_factory(engines=urls, engine_time_period_s=1.0)
    second = gateway_factory(
        engines=urls, engine_time_period_s=1.0, redis_url=first.env["LORAGATE_REDIS_URL"],
        admin_token=first.admin_token, key_hmac_secret=first.env["LORAGATE_KEY_HMAC_SECRET"],
    )  # fmt: skip
    keys = [first.seed_tenant(t, adapter=None).api_key for t in ("big", "small")]
    first.wait_ready()
    second.wait_ready()
    errors: list[str] = []

    def client(url: str, key: str, n: int) -> None:
        with httpx.Client(base_url=url, headers=auth(key), timeout=60) as c:
            for i in range(n):
                body = {"model": "chat", "messages": [{"role": "user", "content": f"hi {i}"}]}
                r = c.post("/v1/chat/completions", json=body)
                if r.status_code != 200:
                    errors.append(r.text)

    # Both gateways keep both engines busy at the same time (3 clients each, 2 tenants).
    threads = [
        threading.Thread(target=client, args=(gw.url, keys[j % 2], 12))
        for gw in (first, second)
        for j in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors[:3]
    busy = {f"engine-{i}": e.busy_s for i, e in enumerate(engines)}
    assert all(b > 0.5 for b in busy.values()), busy

    def attributed() -> dict[str, float]:
        total: dict[str, float] = {}
        for gw in (first, second):
            text = httpx.get(gw.url + "/metrics", timeout=10).text
            for engine, s in _by(text, "loragate_engine_attributed_seconds", "engine").items():
                total[engine] = total.get(engine, 0.0) + s
        return total

    def settled() -> bool:
        got = attributed()
        return all(abs(got.get(e, 0.0) - b) <= 0.05 * b for e, b in busy.items())

    wait_for(settled, 30)
    got = attributed()
    print(f"\nengine busy (engine-side) {busy}; attributed over both gateways {got}")
    for name, b in busy.items():
        assert b * 0.95 <= got[name] <= b * 1.05  # once, not once per gateway (2x)
