"""`loragate serve --workers 2`: two processes on one port behave as one gateway to clients and
to Prometheus (one merged /metrics), and as two gateways to Redis (limits, fleet numbers)."""

from __future__ import annotations

import re

import httpx
import pytest
import redis

from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.traffic import auth, chat_body, wait_for

pytestmark = pytest.mark.timeout(180)


def _total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_serve_one_port_with_one_merged_metrics(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    engine = fake_engine()
    engine.default = Step("ok", tokens=4)
    gw = gateway_factory(engines=[engine.url], workers=2)
    tenant = gw.seed_tenant("acme", adapter=None)
    gw.wait_ready()
    # Both workers heartbeat into the limits' gateway set: Redis sees two gateways.
    client = redis.Redis.from_url(gw.env["LORAGATE_REDIS_URL"])
    try:
        wait_for(lambda: client.zcard("lg:v1:lim:gateways") == 2, 30)
    finally:
        client.close()
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each: both workers serve
    with httpx.Client(base_url=gw.url, headers=auth(tenant.api_key), limits=fresh) as c:
        for _ in range(40):
            r = c.post("/v1/chat/completions", json=chat_body("chat"), timeout=30)
            assert r.status_code == 200, r.text
    # Whichever worker a scrape lands on, it reports both workers' requests.
    with httpx.Client(base_url=gw.url, limits=fresh, timeout=30) as scraper:
        for _ in range(6):
            text = scraper.get("/metrics").text
            assert _total(text, "loragate_requests_total", tenant="acme", status="ok") == 40
            assert re.search(r"^loragate_registry_redis_up 1\.0$", text, re.M), text[:500]
            count = _total(text, "loragate_request_duration_seconds_count", tenant="acme")
            assert count == 40
