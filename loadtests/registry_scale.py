"""The registry at scale: N tenants, gateways on the mock engine with traffic, one write a second.

Seeds N tenants through the product's store (one key, one adapter version, one prompt version,
three releases on alias `chat`) into a private redis-server, measures a full load and the
snapshot's memory here, starts `--gateways` gateways (loadtests/registry_probe.py: the real app
plus a probe), sends open-loop traffic to the first one for a phase without writes and a phase
with one registry write a second, and reports:

- write_visible_ms: the worst, over the writes, of write start -> applied on every gateway;
- loop_stall_p99_ms: per write, the event loop's worst lag in the 250 ms after it, P99 over the
  writes, worst gateway (the same figure at the same offsets in the phase without writes beside);
- snapshot_mib: tracemalloc of a full parse (what a gateway holds for the registry);
- full_load_ms: the first gateway's full load at start (read + parse, parsed off its loop);
- request P99 through the gateway with and without writes.

    python -m loadtests.registry_scale --tenants 10000            # last line: the summary
    python -m loadtests.registry_scale --tenants 1000 --gateways 3 --phase-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from adapters.artifact import ArtifactInfo
from adapters.ports import free_port
from gateway.settings import Settings
from loadtests import stack
from loadtests.loadgen import Target, open_loop, percentile
from registry import rollout
from registry.redis_edge import drive
from registry.state import parse_state, parse_steps
from registry.store import RegistryStore

SEED_CONCURRENCY = 64
ACTOR = "registry-scale"


@dataclass
class Seeded:
    keys: list[tuple[str, str]]  # (tenant, api key) of the tenants that get traffic
    seconds: float


async def _seed_tenant(store: RegistryStore, tenant: str, info: ArtifactInfo) -> str:
    await store.create_tenant(tenant, display_name=f"Scale tenant {tenant}", actor=ACTOR)
    _, api_key = await store.issue_key(tenant, actor=ACTOR)
    await store.register_adapter_version(tenant, "a", info, actor=ACTOR)
    await store.register_prompt_version(
        tenant, "p", system_prompt=f"You are the assistant of {tenant}. Be concise.", actor=ACTOR
    )
    for _ in range(3):
        await store.create_release(tenant, "chat", adapter="a@1", prompt="p@1", actor=ACTOR)
    return api_key


async def seed(store: RegistryStore, tenants: int, info: ArtifactInfo, traffic: int) -> Seeded:
    """Tenants run concurrently (each one's writes in order): the store's own write path, with
    `SEED_CONCURRENCY` scripts in flight instead of one round trip at a time."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    keys: list[tuple[str, str]] = []

    async def one(i: int) -> None:
        async with gate:
            tenant = f"t{i}"
            key = await _seed_tenant(store, tenant, info)
            if i < traffic:
                keys.append((tenant, key))

    await asyncio.gather(*(one(i) for i in range(tenants)))
    return Seeded(sorted(keys), time.perf_counter() - started)


async def measure_full_load(store: RegistryStore) -> dict[str, float]:
    """A full load here as a gateway does it, the loop's worst lag meanwhile, and the memory the
    parsed snapshot holds (tracemalloc, measured on a second parse)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.002)
            lags.append(time.perf_counter() - before - 0.002)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    epoch, raw = await store.load_raw()
    read_s = time.perf_counter() - started
    state = await drive(parse_steps(epoch, raw))  # as a gateway does: steps that yield
    total_s = time.perf_counter() - started
    done.set()
    await tick
    del state
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = parse_state(epoch, **raw)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del state
    return {
        "full_load_ms": total_s * 1000,
        "read_ms": read_s * 1000,
        "loop_lag_max_ms": max(lags, default=0.0) * 1000,
        "snapshot_mib": held / 2**20,
    }


async def _write(store: RegistryStore, tenants: int, i: int) -> None:
    """One registry write of the kinds operators make: canary steps, rollbacks, new keys."""
    tenant = f"t{random.randrange(tenants)}"
    kind = i % 3
    if kind == 0:
        await store.issue_key(tenant, actor=ACTOR)
        return
    alias = await store.get_alias(tenant, "chat")
    if alias.canary is None:
        change = lambda a: rollout.start_canary(a, "chat-r2", 0.1, now=time.time())  # noqa: E731
    else:
        change = lambda a: rollout.rollback(a, "scale bench", now=time.time())  # noqa: E731
    await store.mutate_alias(tenant, "chat", expected_revision=alias.revision, change=change,
                             action="canary", actor=ACTOR)  # fmt: skip


async def traffic_and_writes(
    store: RegistryStore, target: Target, *, tenants: int, rate: float, phase_s: float,
    gateways: list[str],
) -> dict[str, Any]:  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        for url in gateways:
            (await client.post(url + "/_probe/start")).raise_for_status()
        await open_loop(target, rate=rate, duration=2.0)  # warm-up: adapters loaded
        quiet_t0 = time.time()
        quiet = await open_loop(target, rate=rate, duration=phase_s)
        writes: list[tuple[float, int]] = []  # (start, epoch)

        async def writer() -> None:
            for i in range(int(phase_s)):
                await asyncio.sleep(0.5 if i == 0 else 1.0)
                started = time.time()
                await _write(store, tenants, i)
                writes.append((started, await store.epoch()))

        busy_t0 = time.time()
        busy, _ = await asyncio.gather(open_loop(target, rate=rate, duration=phase_s), writer())
        probes = [(await client.get(url + "/_probe")).json() for url in gateways]
    visible: list[float] = []
    stalls: list[float] = []
    quiet_stalls: list[float] = []
    for started, epoch in writes:
        worst = 0.0
        for probe in probes:
            at = next((t for e, t in probe["applied"] if e >= epoch), None)
            worst = max(worst, float("inf") if at is None else at - started)
        visible.append(worst)
        stalls.append(max(_lag_within(p, started, 0.25) for p in probes))
        twin = quiet_t0 + (started - busy_t0)
        quiet_stalls.append(max(_lag_within(p, twin, 0.25) for p in probes))
    return {
        "writes": len(writes),
        "write_visible_ms_max": max(visible, default=0.0) * 1000,
        "write_visible_ms_p50": percentile(sorted(visible), 50) * 1000,
        "loop_stall_p99_ms": percentile(sorted(stalls), 99) * 1000,
        "loop_stall_p99_ms_no_writes": percentile(sorted(quiet_stalls), 99) * 1000,
        "request_p99_ms_no_writes": quiet.summary().get("latency_p99_ms"),
        "request_p99_ms_writes": busy.summary().get("latency_p99_ms"),
        "request_errors": quiet.errors + busy.errors,
        "write_apply_ms_p99": percentile(sorted(a for p in probes for a in p["apply_s"]), 99)
        * 1000,
        "write_apply_ms_max": max((a for p in probes for a in p["apply_s"]), default=0.0) * 1000,
        "gateway_full_load_ms": [
            None if p["full_load_s"] is None else p["full_load_s"] * 1000 for p in probes
        ],
        "gateway_full_loads": [p["full_loads"] for p in probes],
        "gateway_max_rss_mib": [round(p["max_rss_mib"], 1) for p in probes],
    }


def _lag_within(probe: dict[str, Any], start: float, window: float) -> float:
    return max((lag for t, lag in probe["lags"] if start <= t <= start + window), default=0.0)


def run_scale(
    tenants: int, *, gateways: int = 1, phase_s: float = 15.0, rate: float = 100.0,
    traffic_tenants: int = 16, keep: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The whole benchmark; the figures, plus `line`: the summary line."""
    work = Path(tempfile.mkdtemp(prefix="lg-registry-scale-"))
    services: list[stack.Service] = []
    try:
        redis = stack.start_redis(work, cpu=None)
        services.append(redis)
        adapters = work / "adapters"
        stack.write_lora(adapters / "shared" / "a", base_model=stack.BASE_MODEL)
        settings = Settings(adapter_store=adapters, base_model=stack.BASE_MODEL)
        info = settings.validate_artifact("shared/a")
        secret = secrets.token_hex(32).encode()
        plan = {"tenants": tenants, "gateways": gateways, "phase_s": phase_s, "rate": rate,
                "traffic_tenants": traffic_tenants}  # fmt: skip
        result = asyncio.run(_run(plan, redis.url, secret, info, work, adapters, services))
    finally:
        for service in reversed(services):
            service.proc.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["line"] = (
        f"tenants={tenants} write_visible_ms={result['write_visible_ms_max']:.1f} "
        f"loop_stall_p99_ms={result['loop_stall_p99_ms']:.2f} "
        f"snapshot_mib={result['snapshot_mib']:.1f} "
        f"full_load_ms={result['gateway_full_load_ms'][0]:.0f}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--phase-s", type=float, default=15.0, help="each traffic phase")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--traffic-tenants", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    result = run_scale(
        args.tenants, gateways=args.gateways, phase_s=args.phase_s, rate=args.rate,
        traffic_tenants=args.traffic_tenants, keep=args.keep,
    )  # fmt: skip
    line = result.pop("line")
    for name, value in result.items():
        print(f"{name}: {value}")
    print(line)
    return 0


async def _run(
    plan: dict[str, Any], redis_url: str, secret: bytes, info: ArtifactInfo, work: Path,
    adapters: Path, services: list[stack.Service],
) -> dict[str, Any]:  # fmt: skip
    client = aioredis.Redis.from_url(redis_url, max_connections=SEED_CONCURRENCY * 2)
    store = RegistryStore(client, secret, timeout=30.0)
    try:
        tenants = plan["tenants"]
        seeded = await seed(store, tenants, info, plan["traffic_tenants"])
        print(f"seeded {tenants} tenants in {seeded.seconds:.1f} s", file=sys.stderr)
        here = await measure_full_load(store)
        mock_port = free_port()
        mock = stack.start_mock(work, ports=[mock_port], cpu=None, chunks=4, interval_ms=1.0)
        services.append(mock)
        urls = []
        for g in range(plan["gateways"]):
            gw = stack.start_loragate(
                work, redis_url=redis_url, engines=[mock.url], cpu=None, adapter_store=adapters,
                name=f"gateway-{g}", command=[sys.executable, "-m", "loadtests.registry_probe"],
                extra_env={
                    "LORAGATE_KEY_HMAC_SECRET": secret.decode(),
                    "LORAGATE_RETENTION_SWEEP_INTERVAL_S": "0",
                },
                ready_timeout=300.0,
            )  # fmt: skip
            services.append(gw)
            urls.append(gw.url)
        body = orjson.dumps({"model": "chat", "max_tokens": 8,
                             "messages": [{"role": "user", "content": "hello"}]})  # fmt: skip
        requests = [
            ({"authorization": f"Bearer {key}", "content-type": "application/json"}, body)
            for _, key in seeded.keys
        ]
        target = Target(urls[0] + "/v1/chat/completions", requests)
        measured = await traffic_and_writes(
            store, target, tenants=tenants, rate=plan["rate"], phase_s=plan["phase_s"],
            gateways=urls,
        )  # fmt: skip
        return {
            "tenants": tenants, "gateways": plan["gateways"],
            "load_average_1m": os.getloadavg()[0],
            "seed_s": round(seeded.seconds, 1),
            "redis_used_mib": round((await client.info("memory"))["used_memory"] / 2**20, 1),
            **{k: round(v, 2) for k, v in here.items()}, **measured,
        }  # fmt: skip
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
