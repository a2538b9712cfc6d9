"""Engines locked by an API key (issue 21): vLLM started with VLLM_API_KEY (= `--api-key`) refuses
every /v1 call without it, LoRA load routes included, while /health and /metrics stay open for
probes and Prometheus; a gateway with LORAGATE_ENGINE_API_KEY serves through it (adapter load,
model list and chat all carry the key)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from deploy.grafana.queries import VLLM_METRICS
from tests.fixtures.engine import EngineFactory
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels

ENGINE_METRICS = sorted(VLLM_METRICS)  # what the engines dashboard reads


@pytest.mark.engine
def test_engine_refuses_calls_without_the_key_and_the_gateway_carries_it(
    engine_factory: EngineFactory, gateway_factory: GatewayFactory, tiny_models: TinyModels
) -> None:
    key = "lgeng-" + secrets.token_hex(16)
    engine = engine_factory(api_key=key)
    bearer = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=engine.url, timeout=30) as raw:
        assert raw.get("/v1/models").status_code == 401
        assert raw.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        load = {"lora_name": "intruder", "lora_path": str(tiny_models.store_root)}
        assert raw.post("/v1/load_lora_adapter", json=load).status_code == 401
        assert raw.get("/v1/models", headers=bearer).status_code == 200
        assert raw.get("/health").status_code == 200
        metrics = raw.get("/metrics")
    assert metrics.status_code == 200
    dump = os.environ.get("LORAGATE_DUMP_ENGINE_METRICS")
    if dump:  # how the names above were read off the real engine
        Path(dump).write_text(metrics.text)

    gw = gateway_factory(engines=[engine.url], engine_api_key=key)
    tenant = gw.seed_tenant("authco", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    with OpenAI(base_url=gw.url + "/v1", api_key=tenant.api_key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=tenant.alias, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert reply.choices[0].message.content is not None
    with httpx.Client(base_url=engine.url, timeout=30) as raw:
        after = raw.get("/metrics").text
    missing = [n for n in ENGINE_METRICS if not re.search(rf"^{re.escape(n)}{{", after, re.M)]
    assert missing == []
