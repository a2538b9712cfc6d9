"""Real-engine arm: the same chat requests to a vLLM-CPU engine directly and through loragate.

The tiny Llama and one LoRA from `adapters.tinymodel` (built once, cached under .loragate/) are
served by `adapters.engine_process.EngineProcess`. The gateway loads the adapter under its own
engine name; the direct requests then use that same name, so both paths run the same weights and
the same prompt (the release has no system prompt). Requests alternate direct / gateway so the
engine's warm-up and the machine's noise hit both alike. `stream` in the result holds streamed
TTFT and end-to-end figures for both paths (`ignore_eos`, so each answer is 16 tokens). Returns a
dict, or {"skipped": why}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from loadtests import stack
from loadtests.loadgen import percentile

CACHE = stack.REPO / ".loragate" / "bench-tiny"


def _build_tiny() -> tuple[Path, Path, str]:
    from adapters.tinymodel import TINY_SERVED_NAME, TINY_VERSION, build_tiny_lora, build_tiny_model

    root = CACHE / TINY_VERSION
    base = root / "base"
    if not (base / "config.json").exists():
        build_tiny_model(base)
    lora = root / "store" / "bench" / "lora-1"
    if not (lora / "adapter_model.safetensors").exists():
        build_tiny_lora(base, lora, seed=1)
    return base, lora, TINY_SERVED_NAME


def run(work: Path, *, requests: int) -> dict[str, Any]:
    try:
        from adapters.engine_process import EngineProcess
        from adapters.errors import EngineUnavailable

        base, lora, served = _build_tiny()
    except ImportError as exc:
        return {"skipped": f"adapters tiny model / engine process unavailable ({exc})"}
    if not EngineProcess(model_dir=base, served_name=served, log_dir=work).engine_venv.exists():
        return {"skipped": "no .venv-engine (make engine-venv)"}
    engine = EngineProcess(
        model_dir=base, served_name=served, log_dir=work / "logs", kv_cache_gib=1
    )
    services: list[stack.Service] = []
    try:
        try:
            engine.start(timeout=300)
        except EngineUnavailable as exc:
            return {"skipped": f"engine did not start: {str(exc)[:300]}"}
        redis = stack.start_redis(work / "engine-arm", cpu=None)
        services.append(redis)
        store = lora.parent.parent
        gw = stack.start_loragate(
            work / "engine-arm",
            redis_url=redis.url,
            engines=[engine.url],
            cpu=None,
            base_model=served,
            adapter_store=store,
            name="loragate-engine",
        )
        services.append(gw)
        tenants = stack.seed_loragate(
            gw.url,
            gw.admin_token,
            store=store,
            tenants=1,
            canary_weight=0.0,
            base_model=served,
            adapters=[lora],
            system_prompt=None,
        )
        result = _measure(engine.url, gw.url, tenants[0]["api_key"], requests)
        result["stream"] = _measure_stream(engine.url, gw.url, tenants[0]["api_key"], requests)
        return result
    finally:
        for service in reversed(services):
            service.proc.stop()
        engine.stop()


def _measure(engine_url: str, gateway_url: str, key: str, requests: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body: dict[str, Any] = {"messages": messages, "max_tokens": 16, "temperature": 0}
    with httpx.Client(timeout=120) as client:

        def through_gateway() -> tuple[float, dict[str, Any]]:
            t = time.perf_counter()
            r = client.post(
                gateway_url + "/v1/chat/completions",
                json={**body, "model": "chat"},
                headers={"authorization": f"Bearer {key}"},
            )
            r.raise_for_status()
            return time.perf_counter() - t, r.json()

        through_gateway()  # loads the adapter on the engine
        models = client.get(engine_url + "/v1/models").json()["data"]
        lora_name = next(m["id"] for m in models if m.get("parent"))

        def direct() -> tuple[float, dict[str, Any]]:
            t = time.perf_counter()
            r = client.post(engine_url + "/v1/chat/completions", json={**body, "model": lora_name})
            r.raise_for_status()
            return time.perf_counter() - t, r.json()

        for _ in range(3):  # warm-up both paths
            direct()
            through_gateway()
        d_times, g_times = [], []
        same = True
        for i in range(requests):  # interleaved, order alternating: no arm always goes first
            if i % 2:
                gt, gj = through_gateway()
                dt, dj = direct()
            else:
                dt, dj = direct()
                gt, gj = through_gateway()
            d_times.append(dt)
            g_times.append(gt)
            same = same and (
                dj["choices"][0]["message"]["content"] == gj["choices"][0]["message"]["content"]
            )
    d_sorted, g_sorted = sorted(d_times), sorted(g_times)
    d50, g50 = percentile(d_sorted, 50), percentile(g_sorted, 50)
    return {
        "requests": requests,
        "direct_p50_ms": d50 * 1000,
        "direct_p95_ms": percentile(d_sorted, 95) * 1000,
        "loragate_p50_ms": g50 * 1000,
        "loragate_p95_ms": percentile(g_sorted, 95) * 1000,
        "p50_ratio": g50 / d50 if d50 else float("nan"),
        "same_output": same,
    }


def _stream_once(
    client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[float, float]:
    """(time to the first content event, time to [DONE]) of one streamed chat request."""
    t = time.perf_counter()
    ttft = None
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if ttft is None and line.startswith("data: ") and '"content"' in line:
                ttft = time.perf_counter() - t
            if line == "data: [DONE]":
                break
    e2e = time.perf_counter() - t
    return (ttft if ttft is not None else e2e), e2e


def _measure_stream(engine_url: str, gateway_url: str, key: str, requests: int) -> dict[str, Any]:
    """TTFT and end-to-end time of streamed requests, through loragate and straight to the
    engine side by side (interleaved, as `_measure`)."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body: dict[str, Any] = {"messages": messages, "max_tokens": 16, "temperature": 0,
                            "stream": True, "ignore_eos": True}  # fmt: skip
    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(timeout=120) as client:
        models = client.get(engine_url + "/v1/models").json()["data"]
        lora_name = next(m["id"] for m in models if m.get("parent"))
        arms = {
            "direct": (engine_url + "/v1/chat/completions", {**body, "model": lora_name}, {}),
            "loragate": (gateway_url + "/v1/chat/completions", {**body, "model": "chat"}, auth),
        }
        samples: dict[str, list[tuple[float, float]]] = {"direct": [], "loragate": []}
        for name in ("direct", "loragate"):  # warm-up
            _stream_once(client, *arms[name])
        for i in range(requests):
            order = ("loragate", "direct") if i % 2 else ("direct", "loragate")
            for name in order:
                samples[name].append(_stream_once(client, *arms[name]))
    out: dict[str, Any] = {"requests": requests}
    for name, values in samples.items():
        ttft = sorted(v[0] for v in values)
        e2e = sorted(v[1] for v in values)
        out[f"{name}_ttft_p50_ms"] = percentile(ttft, 50) * 1000
        out[f"{name}_ttft_p95_ms"] = percentile(ttft, 95) * 1000
        out[f"{name}_e2e_p50_ms"] = percentile(e2e, 50) * 1000
        out[f"{name}_e2e_p95_ms"] = percentile(e2e, 95) * 1000
    return out
