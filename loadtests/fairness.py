"""Fair queuing between tenants (issue 16), measured through a real gateway on the mock engine.

The gateway's slot cap (SLOTS) is the bottleneck: every request is a stream that holds its slot
for `chunks x interval_ms` at the mock. Two scenarios, every tenant saturating (more requests in
flight than its share of the slots):

- weights 3:1: tenants `heavy` (weight 3) and `light` (weight 1), CONC requests in flight each;
  served throughput should split 3:1 (within 10%);
- 10 tenants, one flooding: `t0` keeps FLOOD in flight, t1..t9 keep OTHERS each; Jain's fairness
  index over the served throughputs (1.0: equal shares) and the flood's share.

    python -m loadtests.fairness --out bench-results/fairness [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from adapters.ports import free_port
from loadtests import stack

SLOTS = 8
CONC = 32
FLOOD = 64
OTHERS = 8
CHUNKS, INTERVAL_MS = 10, 50.0  # 0.5 s per request at the mock: the slots are the bottleneck


def jain(xs: list[float]) -> float:
    """Jain's fairness index: 1 for equal shares, 1/n when one takes everything."""
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else 0.0


def _seed(url: str, token: str, tenants: dict[str, float]) -> dict[str, str]:
    keys: dict[str, str] = {}
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url + "/admin/v1", headers=headers, timeout=60) as admin:
        for tenant, weight in tenants.items():
            admin.post("/tenants", json={"id": tenant, "weight": weight}).raise_for_status()
            key = admin.post(f"/tenants/{tenant}/keys").raise_for_status().json()
            admin.post(
                f"/tenants/{tenant}/models/chat/releases", json={"adapter": None, "prompt": None}
            ).raise_for_status()
            keys[tenant] = key["api_key"]
    return keys


async def _drive(url: str, load: dict[str, tuple[str, int]], duration: float) -> Counter[str]:
    """`load`: tenant -> (key, requests in flight). Returns streams served per tenant in the
    measured window (after a warm-up of a fifth of it)."""
    served: Counter[str] = Counter()
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    warm_until = time.monotonic() + duration / 5
    stop_at = warm_until + duration

    async def one(client: httpx.AsyncClient, tenant: str, key: str) -> None:
        headers = {"authorization": f"Bearer {key}"}
        while time.monotonic() < stop_at:
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                await response.aread()
                ok = response.status_code == 200
            done = time.monotonic()
            if ok and warm_until <= done < stop_at:
                served[tenant] += 1
            elif not ok:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(
            *(one(client, t, key) for t, (key, n) in load.items() for _ in range(n))
        )
    return served


def run(work: Path, *, duration: float = 10.0) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    services: list[stack.Service] = []
    try:
        redis = stack.start_redis(work, cpu=None)
        services.append(redis)
        mock = stack.start_mock(
            work, ports=[free_port()], cpu=None, chunks=CHUNKS, interval_ms=INTERVAL_MS
        )
        services.append(mock)
        gw = stack.start_loragate(
            work, redis_url=redis.url, engines=[mock.url], cpu=None, name="loragate-fair",
            settings={"LORAGATE_ENGINE_MAX_CONCURRENCY": str(SLOTS),
                      "LORAGATE_ENGINE_QUEUE_SIZE": "256",
                      "LORAGATE_ENGINE_QUEUE_TIMEOUT_S": "30"},
        )  # fmt: skip
        services.append(gw)
        tenants = {"heavy": 3.0, "light": 1.0} | {f"t{i}": 1.0 for i in range(10)}
        keys = _seed(gw.url, gw.admin_token, tenants)
        weighted = asyncio.run(
            _drive(gw.url, {"heavy": (keys["heavy"], CONC), "light": (keys["light"], CONC)},
                   duration)
        )  # fmt: skip
        load = {f"t{i}": (keys[f"t{i}"], FLOOD if i == 0 else OTHERS) for i in range(10)}
        ten = asyncio.run(_drive(gw.url, load, duration))
    finally:
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.proc.stop()
    ratio = weighted["heavy"] / max(1, weighted["light"])
    rates = [ten[f"t{i}"] / duration for i in range(10)]
    result = {
        "slots": SLOTS,
        "request_s": CHUNKS * INTERVAL_MS / 1000,
        "weights_3_1": {
            "heavy_rps": weighted["heavy"] / duration,
            "light_rps": weighted["light"] / duration,
            "ratio": ratio,
            "within_10pct": abs(ratio / 3 - 1) <= 0.10,
        },
        "ten_tenants_one_flooding": {
            "flood_in_flight": FLOOD,
            "others_in_flight": OTHERS,
            "rps": rates,
            "flood_share": rates[0] / sum(rates) if sum(rates) else 0.0,
            "jain_index": jain(rates),
        },
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/fairness"))
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = run((args.out / "work").resolve(), duration=args.duration)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
