"""The workers arm: closed-loop JSON throughput of `loragate serve --workers N` on the mock engine.

Each N gets a fresh stack (Redis, mock engine, gateway), so one run's state does not warm the
next. The gateway is not pinned to a core here (N workers need N cores); the client is, when the
machine has more than two. A short arm: it answers "does a second worker add throughput", the
full sweeps stay with the main arms.

    rows = run(work, workers=(1, 2), make_target=lambda url, keys: ..., duration=4.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapters.ports import free_port
from loadtests import stack
from loadtests.loadgen import Target, closed_loop, open_loop, run_sync


def run(
    work: Path,
    *,
    workers: Sequence[int],
    make_target: Callable[[str, list[str]], Target],
    concurrency: int = 64,
    duration: float = 4.0,
    tenants: int = 4,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in workers:
        base = work / f"workers-{n}"
        base.mkdir(parents=True, exist_ok=True)
        services: list[stack.Service] = []
        try:
            redis = stack.start_redis(base, cpu=None)
            services.append(redis)
            ports = [free_port(), free_port()]
            mock = stack.start_mock(base, ports=ports, cpu=None, chunks=4, interval_ms=5.0)
            services.append(mock)
            gw = stack.start_loragate(
                base, redis_url=redis.url, engines=mock.extra["urls"], cpu=None, workers=n
            )
            services.append(gw)
            seeded = stack.seed_loragate(
                gw.url, gw.admin_token, store=base / "adapters", tenants=tenants, canary_weight=0.2
            )
            target = make_target(gw.url, [t["api_key"] for t in seeded])
            run_sync(open_loop(target, rate=200, duration=1.0))  # warm: adapters, connections
            result = run_sync(
                closed_loop(target, concurrency=concurrency, duration=duration)
            ).summary()
            row = {"workers": n, "concurrency": concurrency, **result}
            rows.append(row)
            say(
                f"workers={n} closed c={concurrency}: {row['throughput_rps']:8.0f} req/s "
                f"p50 {row['latency_p50_ms']:.2f} ms p99 {row['latency_p99_ms']:.2f} ms "
                f"errors {row['errors']}"
            )
        finally:
            for service in reversed(services):
                with contextlib.suppress(Exception):
                    service.proc.stop()
    return rows
