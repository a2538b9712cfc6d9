"""LORAGATE_LIMITS_REDIS_URL: tenant limits on a Redis of their own, apart from the registry's.

Through the in-process gateway (fake engine): the limits' keys land only in the limits Redis, the
registry's only in the registry Redis, and losing the limits Redis degrades limits to local shares
while the registry, admin API and chat keep working.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.fixtures.inprocess import InProcessFactory
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import chat_body


async def _keys(url: str) -> set[str]:
    client = aioredis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    try:
        return {key async for key in client.scan_iter("*")}
    finally:
        await client.aclose()


async def test_limits_live_on_their_own_redis(
    inprocess_gateway: InProcessFactory,
    redis_private: RedisServer,
    tiny_adapter_paths: tuple[str, ...],
) -> None:
    gw = await inprocess_gateway(limits_redis_url=redis_private.url)
    limited = await gw.seed_tenant("lim", adapter=tiny_adapter_paths[0], limits={"max_tokens": 64,
                                   "requests_per_minute": 100})  # fmt: skip
    for _ in range(3):
        r = await gw.client.post(
            "/v1/chat/completions", json=chat_body("chat"), headers=gw.bearer(limited.api_key)
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining-requests"]
    await gw.state.limiter.drain()

    registry_keys = await _keys(gw.settings.redis_url)
    limit_keys = await _keys(redis_private.url)
    assert any(k.startswith("lg:v1:tenants") for k in registry_keys)
    assert not any(":lim:" in k for k in registry_keys), registry_keys
    assert limit_keys
    assert all(k.startswith("lg:v1:lim:") for k in limit_keys), limit_keys
    usage = (await gw.admin("GET", "/tenants/lim"))["usage"]
    assert usage["source"] == "redis"
    assert usage["requests_last_minute"] == 3

    redis_private.kill()  # the limits Redis is gone; the registry's is not
    r = await gw.client.post(
        "/v1/chat/completions", json=chat_body("chat"), headers=gw.bearer(limited.api_key)
    )
    assert r.status_code == 200, r.text  # admitted on the local share
    assert (await gw.admin("GET", "/tenants/lim"))["usage"]["source"] == "local"
    other = await gw.seed_tenant("other", adapter=None)  # registry writes still work
    r = await gw.client.post(
        "/v1/chat/completions", json=chat_body("chat"), headers=gw.bearer(other.api_key)
    )
    assert r.status_code == 200, r.text
