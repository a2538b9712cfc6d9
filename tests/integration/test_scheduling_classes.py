"""Scheduling classes reach the engine as vLLM's `priority`, set by the gateway only (issue 16).

The fake engine records each request body: the tenant's class (admin PATCH), an alias's class (its
flags, overriding the tenant's) and the plan default arrive as 0/1/2; a client's own `priority`
is refused before any engine call; without `engine_priority_scheduling` no `priority` is sent.
"""

from __future__ import annotations

import httpx

from tests.fixtures.fake_engine import FakeEngineFactory
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.traffic import auth, chat_body


def test_classes_become_engine_priorities_and_clients_cannot_set_one(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    gw = gateway_factory(engines=[fake.url], engine_priority_scheduling=True)
    plain = gw.seed_tenant("plain", adapter=None)
    bulk = gw.seed_tenant("bulk", adapter=None)
    urgent = gw.seed_tenant("urgent", adapter=None)
    patched = gw.call("PATCH", "/tenants/bulk", {"priority": "batch", "weight": 0.5})
    assert (patched["priority"], patched["weight"]) == ("batch", 0.5)
    flags = gw.call("PUT", "/tenants/urgent/models/chat/flags", {"priority": "interactive"})
    assert flags["flags"]["priority"] == "interactive"
    bad = gw.call("PATCH", "/tenants/bulk", {"priority": "urgent-please"}, expect=422)
    assert bad["error"]["code"] == "validation_error"
    gw.wait_ready()
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for tenant in (plain, bulk, urgent):
            response = client.post(
                "/v1/chat/completions", json=chat_body("chat"), headers=auth(tenant.api_key)
            )
            assert response.status_code == 200, response.text
        body = {**chat_body("chat"), "priority": -100}
        refused = client.post("/v1/chat/completions", json=body, headers=auth(plain.api_key))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "forbidden_parameter"
    assert [r.get("priority") for r in fake.requests] == [1, 2, 0]


def test_no_priority_is_sent_unless_the_engines_schedule_by_it(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    gw = gateway_factory(engines=[fake.url])
    tenant = gw.seed_tenant("bulk", adapter=None)
    gw.call("PATCH", "/tenants/bulk", {"priority": "batch"})
    gw.wait_ready()
    response = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_body("chat"), headers=auth(tenant.api_key),
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert "priority" not in fake.requests[0]
