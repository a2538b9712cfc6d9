"""The systems under test: redis, the mock engine, loragate (seeded through its admin API, with a
canary in progress) and LiteLLM proxy, each a pinned process the bench starts and stops.

Adapters for the mock are tiny but *valid* PEFT artifacts written with the standard library
(a safetensors file is an 8-byte length, a JSON header and raw bytes), so the gateway's full
validation and digest path runs without torch.

    redis = start_redis(work, cpu=1)
    mock = start_mock(work, ports=[p1, p2], cpu=1, chunks=32, interval_ms=20)
    gw = start_loragate(work, redis_url, [f"http://127.0.0.1:{p}" for p in (p1, p2)], cpu=0)
    seeded = seed_loragate(gw.url, gw.admin_token, tenants=8, canary_weight=0.2)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.ports import free_port
from adapters.safetensors_header import encode_zeros
from gateway.admin import client as api
from gateway.admin.client import AdminClient
from loadtests.procs import Proc, pinned
from registry.redis_process import RedisProcess

REPO = Path(__file__).resolve().parent.parent
BASE_MODEL = "bench-base"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LITELLM_VERSION = "1.106.2"  # 1.107.0 was a compromised release: never float this pin
LITELLM_VENV = REPO / ".venv-litellm"


@dataclass
class Service:
    proc: Proc
    url: str
    admin_token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def write_lora(
    out: Path, *, base_model: str, rank: int = 4, hidden: int = 64, seed: int = 0
) -> Path:
    """A valid rank-`rank` LoRA on q/k/v/o of a 2-layer model, fp16 zeros plus a seed byte."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight": ("F16", shape)
        for layer in range(2)
        for module in TARGETS
        for ab, shape in (("A", (rank, hidden)), ("B", (hidden, rank)))
    }
    blob = bytearray(encode_zeros(tensors))
    data_size = len(tensors) * rank * hidden * 2  # fp16
    blob[len(blob) - data_size] = seed % 251  # the first data byte: a distinct digest per seed
    (out / "adapter_model.safetensors").write_bytes(blob)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS),
        "task_type": "CAUSAL_LM",
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def start_redis(work: Path, *, cpu: int | None) -> Service:
    """Redis without persistence: the bench measures the gateway, not the disk."""
    server = RedisProcess(workdir=work / "redis", appendonly=False, launcher=pinned(cpu))
    server.start()
    assert server.proc is not None
    return Service(Proc("redis", server.proc, server.log_path), server.url)


def redis_calls(url: str) -> dict[str, int]:
    """INFO commandstats as {command: calls} (INFO itself included: subtract it when reading)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def start_mock(
    work: Path, *, ports: list[int], cpu: int | None, chunks: int, interval_ms: float
) -> Service:
    cmd = [sys.executable, "-m", "loadtests.mock_upstream", "--base-model", BASE_MODEL]
    cmd += ["--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    for port in ports:
        cmd += ["--port", str(port)]
    proc = Proc.start("mock", cmd, log_dir=work / "logs", cpu=cpu, cwd=REPO)
    url = f"http://127.0.0.1:{ports[0]}"
    for port in ports:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=20)
    return Service(proc, url, extra={"urls": [f"http://127.0.0.1:{p}" for p in ports]})


def start_loragate(
    work: Path,
    *,
    redis_url: str,
    engines: list[str],
    cpu: int | None,
    base_model: str = BASE_MODEL,
    adapter_store: Path | None = None,
    name: str = "loragate",
    settings: dict[str, str] | None = None,
    command: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    workers: int = 1,
) -> Service:
    port = free_port()
    token = "lgadm-" + secrets.token_urlsafe(16)
    store = adapter_store or (work / "adapters")
    store.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LORAGATE_PORT": str(port),
        "LORAGATE_REDIS_URL": redis_url,
        "LORAGATE_ADMIN_TOKEN": token,
        "LORAGATE_KEY_HMAC_SECRET": secrets.token_hex(32),
        "LORAGATE_ENGINES": json.dumps(engines),
        "LORAGATE_BASE_MODEL": base_model,
        "LORAGATE_ADAPTER_STORE": str(store.resolve()),
        # The gateway's own per-replica cap would queue 256 streams on 2 replicas; the bench
        # measures the relay, not that cap, so it is raised (see the report).
        "LORAGATE_ENGINE_MAX_CONCURRENCY": "1024",
        "LORAGATE_ENGINE_QUEUE_SIZE": "4096",
        "LORAGATE_MAX_CPU_LORAS": "64",
        **(settings or {}),
        **(extra_env or {}),
        "LORAGATE_WORKERS": str(workers),
    }
    token = env["LORAGATE_ADMIN_TOKEN"]
    cmd = command or [sys.executable, "-m", "gateway.cli", "serve"]
    proc = Proc.start(name, cmd, log_dir=work / "logs", cpu=cpu, env=env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/readyz", timeout=ready_timeout)
    return Service(proc, url, admin_token=token)


def seed_loragate(
    url: str,
    admin_token: str,
    *,
    store: Path,
    tenants: int,
    canary_weight: float,
    base_model: str = BASE_MODEL,
    adapters: list[Path] | None = None,
    system_prompt: str | None = "You are a concise assistant.",
    prefix: str = "t",
    limits: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tenants <prefix>0..N, alias `chat`: release 1 stable, release 2 canary at `canary_weight`.

    `adapters` (paths under `store`) replace the generated mock artifacts (real-engine arm).
    """
    out: list[dict[str, Any]] = []
    with AdminClient(url, admin_token) as admin:
        for i in range(tenants):
            tenant = f"{prefix}{i}"
            admin.send(api.create_tenant(tenant, display_name=f"Bench tenant {i}", limits=limits))
            key = admin.send(api.issue_key(tenant))
            releases = []
            for version in (1, 2):
                if adapters is not None:
                    rel = adapters[(i + version - 1) % len(adapters)].relative_to(store)
                else:
                    rel = Path(tenant) / f"a-v{version}"
                    write_lora(store / rel, base_model=base_model, seed=i * 10 + version)
                adapter = admin.send(api.register_adapter(tenant, "a", str(rel)))
                prompt_ref = None
                if system_prompt is not None:
                    text = f"{system_prompt} (v{version})"
                    prompt_ref = admin.send(api.register_prompt(tenant, "p", text)).ref
                new = api.create_release(tenant, "chat", adapter=adapter.ref, prompt=prompt_ref)
                releases.append(admin.send(new).id)
            if canary_weight > 0:
                revision = admin.send(api.get_model(tenant, "chat")).revision
                admin.send(api.canary(tenant, "chat", releases[1], canary_weight, revision))
            out.append({"id": tenant, "api_key": key.api_key, "models": ["chat"]})
    return out


def ensure_litellm_venv(log_dir: Path) -> Path:
    """LiteLLM proxy in its own virtualenv (it pins its own fastapi/pydantic), built once."""
    python = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / ".stamp"
    if stamp.exists() and python.exists():
        return LITELLM_VENV
    import subprocess

    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "litellm-install.log").open("ab") as log:
        for cmd in (
            [sys.executable, "-m", "venv", str(LITELLM_VENV)],
            [str(python), "-m", "pip", "install", "-q", "-U", "pip"],
            [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
        ):
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=900)
    stamp.touch()
    return LITELLM_VENV


def start_litellm(work: Path, *, upstream: str, cpu: int | None) -> Service:
    venv = ensure_litellm_venv(work / "logs")
    port = free_port()
    master = "sk-bench-" + secrets.token_hex(8)
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: chat\n"
        "    litellm_params:\n"
        f"      model: openai/{BASE_MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: mock\n"
        "litellm_settings:\n"
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {master}\n"
        "  disable_spend_logs: true\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the cost map from the network
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    for leaked in ("VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(leaked, None)
    cmd = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--num_workers", "1"]
    proc = Proc.start("litellm", cmd, log_dir=work / "logs", cpu=cpu, env=env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health/liveliness", timeout=120)
    return Service(proc, url, admin_token=master)
