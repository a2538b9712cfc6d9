"""Two gateway processes sharing Redis and the engines act as one pool (fake engines: they count
what arrives, load calls, unload calls, and answer 404 for an adapter they do not hold).

- The per-replica cap C holds at the engine across gateways: each takes C / live gateways.
- Under adapter pressure (more adapters than --max-cpu-loras) no gateway unloads an adapter: the
  engine's own LRU evicts, so no request fails or reloads because another gateway unloaded it,
  and each adapter is loaded on one replica only.
- Adapters no release references are unloaded fleet-wide after the grace period.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter

import httpx

from tests.fixtures.fake_engine import FakeEngine, FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import auth, chat_body, wait_for

CAP = 4
SECRET = secrets.token_hex(32)  # gateways sharing a registry share the key HMAC secret


def _fleet_ready(gateways: list[GatewayProcess], timeout: float = 30.0) -> None:
    """Both gateways count each other (limiter heartbeats, every 5 s) before traffic starts."""

    def counted() -> bool:
        bodies = [httpx.get(g.url + "/readyz", timeout=5).json() for g in gateways]
        return all(b["live_gateways"] == len(gateways) for b in bodies)

    wait_for(counted, timeout, "every gateway counts the others")


async def _send(
    gateways: list[GatewayProcess], tenants: list[SeededTenant], n: int, concurrency: int
) -> list[httpx.Response]:
    """`n` requests, every tenant through every gateway in turn, `concurrency` at a time."""
    pairs = itertools.cycle(itertools.product(tenants, gateways))
    jobs = [(gw, tenant) for tenant, gw in itertools.islice(pairs, n)]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(gw: GatewayProcess, tenant: SeededTenant) -> httpx.Response:
            async with gate:
                return await client.post(
                    gw.url + "/v1/chat/completions",
                    json=chat_body(tenant.alias),
                    headers=auth(tenant.api_key),
                )

        return await asyncio.gather(*(one(gw, t) for gw, t in jobs))


def test_the_per_replica_cap_holds_at_the_engine_across_two_gateways(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory, redis_private: RedisServer
) -> None:
    engine = fake_engine()
    engine.default = Step("ok", tokens=3, delay_s=0.3)
    gateways = [
        gateway_factory(
            engines=[engine.url],
            redis_url=redis_private.url,
            key_hmac_secret=SECRET,
            engine_max_concurrency=CAP,
        )
        for _ in range(2)
    ]
    tenant = gateways[0].seed_tenant("capped", adapter=None)
    for gw in gateways:
        gw.wait_ready()
    _fleet_ready(gateways)
    assert {httpx.get(g.url + "/readyz").json()["engine_cap_share"] for g in gateways} == {CAP // 2}
    responses = asyncio.run(_send(gateways, [tenant], n=24, concurrency=24))
    assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses][:3]
    # The stated slack is zero while the live-gateway count is current (it is, see above).
    assert CAP // 2 < engine.peak_active <= CAP, engine.peak_active


def test_no_request_pays_for_another_gateways_eviction(
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    redis_private: RedisServer,
    tiny_models: TinyModels,
) -> None:
    engines = [fake_engine(), fake_engine()]
    for e in engines:
        e.strict_models = True  # 404 for an adapter it does not hold, as vLLM does
        e.default = Step("ok", tokens=2, delay_s=0.02)
    gateways = [
        gateway_factory(
            engines=[e.url for e in engines],
            redis_url=redis_private.url,
            key_hmac_secret=SECRET,
            max_cpu_loras=2,
        )
        for _ in range(2)
    ]
    paths = tiny_models.adapter_relpaths
    tenants = [
        gateways[i % 2].seed_tenant(f"chaos{i}", adapter=paths[i % len(paths)]) for i in range(6)
    ]
    for gw in gateways:
        gw.wait_ready()
    _fleet_ready(gateways)
    responses = asyncio.run(_send(gateways, tenants, n=120, concurrency=12))
    assert [r.status_code for r in responses] == [200] * 120, [r.text for r in responses][:3]
    assert [e.not_found for e in engines] == [0, 0]  # nothing pulled from under a request
    assert [e.unload_calls for e in engines] == [[], []]  # capacity is the engine's LRU's job
    # Every adapter resident, each loaded at most once per gateway on a replica (a gateway that
    # has not read the engine's list yet asks again; the engine answers "already loaded"). Where
    # an adapter lives is the placement tests' subject: under contention the bounded-load spill
    # may also place a hot adapter on its second choice, which every gateway agrees on.
    holders = Counter(name for e in engines for name in e.loaded)
    assert len(holders) == 6
    assert set(holders.values()) <= {1, 2}
    calls = Counter((i, name) for i, e in enumerate(engines) for name in e.load_calls)
    assert max(calls.values()) <= len(gateways)


def _orphan_gone(engine: FakeEngine, name: str) -> bool:
    return name not in engine.loaded


def test_adapters_no_release_references_are_unloaded_fleet_wide_after_the_grace(
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    redis_private: RedisServer,
    tiny_models: TinyModels,
) -> None:
    engines = [fake_engine(), fake_engine()]
    gateways = [
        gateway_factory(
            engines=[e.url for e in engines],
            redis_url=redis_private.url,
            key_hmac_secret=SECRET,
            adapter_unload_grace_s=1.0,
            adapter_sweep_interval_s=0.25,
        )
        for _ in range(2)
    ]
    tenant = gateways[0].seed_tenant("keeper", adapter=tiny_models.adapter_relpaths[0])
    for gw in gateways:
        gw.wait_ready()
    (kept,) = set().union(*(e.loaded for e in engines))
    orphan, foreign = "lg-gone-lora-v1-0123456789ab", "not-ours"
    for engine in engines:  # as left by a release that no alias routes to any more
        response = httpx.post(engine.url + "/v1/load_lora_adapter",
                              json={"lora_name": orphan, "lora_path": "/x"}, timeout=5)  # fmt: skip
        assert response.status_code == 200
        httpx.post(engine.url + "/v1/load_lora_adapter",
                   json={"lora_name": foreign, "lora_path": "/y"}, timeout=5)  # fmt: skip
    wait_for(lambda: all(_orphan_gone(e, orphan) for e in engines), 30, "orphan unloaded")
    assert all(foreign in e.loaded for e in engines)  # only loragate's own names are touched
    assert kept in set().union(*(e.loaded for e in engines))  # a referenced one stays
    response = httpx.post(gateways[1].url + "/v1/chat/completions", json=chat_body(tenant.alias),
                          headers=auth(tenant.api_key), timeout=30)  # fmt: skip
    assert response.status_code == 200
