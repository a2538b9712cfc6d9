"""The demo's traffic goes round-robin through every gateway listed in demo.json's
`gateway_urls` (two scripted fake engines stand in for two gateways: they answer the same route)."""

from __future__ import annotations

from gateway.demo.client import Demo, run_traffic
from tests.fixtures.fake_engine import FakeEngineFactory


def test_run_traffic_spreads_jobs_over_every_gateway(fake_engine: FakeEngineFactory) -> None:
    a, b = fake_engine(), fake_engine()
    demo = Demo(url=a.url, admin_token="x", keys={"acme": "k"}, models={"acme": "chat"},
                urls=(a.url, b.url))  # fmt: skip
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    results = run_traffic(demo, [("acme", body)] * 10, concurrency=4)
    assert [r.status for r in results] == [200] * 10
    assert (len(a.requests), len(b.requests)) == (5, 5)
    single = Demo(url=a.url, admin_token="x", keys={"acme": "k"}, models={"acme": "chat"})
    assert single.gateways == (a.url,)  # no gateway_urls: the one gateway_url
