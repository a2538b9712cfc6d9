"""The evaluation gate sends a release's cases the way the tenant path sends its requests: the same
rendering (system prompt, params, cache salt, adapter) and the same engine call (a replica that
fails before the first byte is retried on another one). In-process gateway, fake engines."""

from __future__ import annotations

from typing import Any

from gateway.admin import client as api
from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.inprocess import InProcessFactory

CASE = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


async def _seed(gw: Any, adapter: str) -> None:
    await gw.api.send(api.create_tenant("evalco"))
    version = await gw.api.send(api.register_adapter("evalco", "lora", adapter))
    prompt = await gw.api.send(
        api.register_prompt("evalco", "main", "Be brief.", params={"top_p": 0.5})
    )
    eval_set = {"cases": [{**CASE, "checks": {"must_contain": ["t0"]}}] * 4}
    release = api.create_release(
        "evalco", "chat", adapter=version.ref, prompt=prompt.ref, eval=eval_set
    )
    await gw.api.send(release)
    await gw.sync()


async def test_eval_cases_render_as_tenant_requests(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway()
    await _seed(gw, tiny_adapter_paths[0])
    key = await gw.api.send(api.issue_key("evalco"))
    await gw.sync()
    tenant_body = {"model": "chat", **CASE, "temperature": 0}
    r = await gw.client.post(
        "/v1/chat/completions", json=tenant_body, headers=gw.bearer(key.api_key)
    )
    assert r.status_code == 200, r.text
    report = await gw.api.send(api.evaluate("evalco", "chat"))
    assert report.passed, report
    assert len(report.cases) == 4
    tenant_request, *eval_requests = gw.engine.requests
    assert len(eval_requests) == 4
    for request in eval_requests:
        assert request == tenant_request  # system prompt, params, salt, adapter, temperature 0
    assert tenant_request["messages"][0] == {"role": "system", "content": "Be brief."}
    assert tenant_request["top_p"] == 0.5


async def test_eval_retries_on_another_replica_like_the_tenant_path(
    inprocess_gateway: InProcessFactory,
    fake_engine: FakeEngineFactory,
    tiny_adapter_paths: tuple[str, ...],
) -> None:
    broken, healthy = fake_engine(), fake_engine()
    broken.default = Step("status", status=500)  # answers every chat request 500, before a byte
    gw = await inprocess_gateway(engines=[broken.url, healthy.url])
    await _seed(gw, tiny_adapter_paths[0])
    report = await gw.api.send(api.evaluate("evalco", "chat"))
    assert report.passed, report
    assert [case.output.split()[0] for case in report.cases] == ["t0"] * 4
    assert len(healthy.requests) == 4
