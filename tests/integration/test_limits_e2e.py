"""Tenant limits through the real gateway subprocess and real Redis.

The engine is the scripted fake (tests/fixtures/fake_engine.py) because these tests need the
engine to *hold* requests until the test lets them go, which a real vLLM cannot do on demand; what
the engine sees (`active`, `requests`) is the engine-side measurement the limits must hold at.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.traffic import auth, chat_body, metric, open_raw_chat, wait_for


@pytest.mark.parametrize("workers", [1, 2])
def test_burst_of_100_holds_5_at_the_engine_and_others_pass(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory, workers: int
) -> None:
    """With 2 worker processes on the port the limit is the tenant's, not each worker's, and the
    merged /metrics counts every refusal once."""
    engine = fake_engine()
    engine.default = Step("hold")
    # A burst of 100 admissions on a loaded 2-core box must not outlast the Redis budget: a worker
    # that times out enforces its local share (ceil(5 / 2) each), which is another test's subject.
    gw = gateway_factory(engines=[engine.url], workers=workers, redis_timeout_s=1.0)
    limited = gw.seed_tenant("limited", adapter=None, limits={"max_concurrency": 5})
    free = gw.seed_tenant("free", adapter=None)
    gw.wait_ready()

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        barrier = asyncio.Barrier(100)
        pool = httpx.Limits(max_connections=101, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=gw.url, timeout=180, limits=pool) as client:

            async def one(key: str, alias: str, wait: bool = True) -> httpx.Response:
                if wait:
                    await barrier.wait()
                return await client.post(
                    "/v1/chat/completions", json=chat_body(alias), headers=auth(key)
                )

            burst = [asyncio.create_task(one(limited.api_key, limited.alias)) for _ in range(100)]
            pending = set(burst)
            while len(pending) > 5:  # the 95 refusals come back while 5 are held
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.to_thread(engine.wait_until, lambda e: e.active == 5, 30)
            # The other tenant reaches the engine while `limited` is at its limit.
            other = asyncio.create_task(one(free.api_key, free.alias, wait=False))
            await asyncio.to_thread(engine.wait_until, lambda e: e.active == 6, 30)
            assert len(engine.requests) == 6  # never more than 5 of `limited` at the engine
            engine.open_gate()
            return list(await asyncio.gather(*burst)), await other

    responses, other = asyncio.run(asyncio.wait_for(scenario(), 240))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 5
    assert codes.count(429) == 95
    assert len(engine.requests) == 6  # never more than 5 of `limited` reached the engine
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "concurrency_limited"
    assert refused.headers["retry-after"] == "1"
    assert other.status_code == 200
    wait_for(lambda: metric(gw.url, "loragate_in_flight_requests", tenant="limited") == 0, 10)
    assert metric(gw.url, "loragate_limit_rejections_total", tenant="limited",
                  code="concurrency_limited") == 95  # fmt: skip


def test_requests_per_minute_exactly_and_admin_usage(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    engine = fake_engine()
    gw = gateway_factory(engines=[engine.url])
    limits = {"max_concurrency": 2, "requests_per_minute": 10,
              "budget": {"amount": 100.0, "period": "day"}}  # fmt: skip
    limited = gw.seed_tenant("rpm", adapter=None, limits=limits)
    free = gw.seed_tenant("other", adapter=None)
    gw.wait_ready()
    with httpx.Client(base_url=gw.url, timeout=30) as client:

        def send(key: str, alias: str) -> httpx.Response:
            return client.post("/v1/chat/completions", json=chat_body(alias), headers=auth(key))

        answers = [send(limited.api_key, limited.alias) for _ in range(12)]
        assert [r.status_code for r in answers] == [200] * 10 + [429] * 2
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers[:10]] == [
            str(9 - i) for i in range(10)
        ]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "10"
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert send(free.api_key, free.alias).status_code == 200  # the other tenant is unaffected
        assert len(engine.requests) == 11
    usage = gw.call("GET", "/tenants/rpm")["usage"]
    assert usage["requests_last_minute"] == 10
    assert usage["in_flight"] == 0
    assert usage["spent"] > 0
    assert usage["reserved"] == 0
    assert usage["remaining_budget"] == 100.0 - usage["spent"]


def test_client_disconnect_frees_the_slot_at_once(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    engine = fake_engine()
    engine.default = Step("hold")
    gw = gateway_factory(engines=[engine.url])
    limited = gw.seed_tenant("single", adapter=None, limits={"max_concurrency": 1})
    gw.wait_ready()
    for stream in (True, False):
        sock = open_raw_chat(gw.url, limited.api_key, chat_body(limited.alias, stream=stream))
        engine.wait_until(lambda e: e.active == 1, 10)
        sock.close()  # the client leaves while the engine holds the request
        engine.wait_until(lambda e: e.active == 0, 10)
        # The gauge (absent until the tenant joins the metric label universe) goes back to zero;
        # the next request being admitted (next iteration, then below) is the real check.
        wait_for(lambda: not metric(gw.url, "loragate_in_flight_requests", tenant="single"), 10)
    engine.open_gate()
    engine.default = Step("ok")
    response = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(limited.alias),
                          headers=auth(limited.api_key), timeout=30)  # fmt: skip
    assert response.status_code == 200
