"""A/B of the limits arms between source trees: one gateway per tree on one Redis and mock,
arms interleaved (order rotated per round), the bench's tenants and limits (`BENCH_LIMITS`).

    git archive <base> | tar -x -C /tmp/base
    python -m loadtests.limits_ab --src A=/tmp/base --src B=. --rounds 4 --nolimits
    python -m loadtests.limits_ab --src B=. --profile B      # py-spy under wrk (16 connections)
    python -m loadtests.limits_ab --src B=. --nolimits --profile B      # ... its arm without limits

Per arm and round: wrk at `--conc` connections (throughput, P50/P95, gateway CPU per request,
Redis commands per request) and an open loop at `--rate` (P50/P95 added over direct to the mock
in the same round), with the 1-minute load average. Rows go to `<out>/rows.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adapters.ports import free_port
from loadtests import stack, wrk
from loadtests.bench import BENCH_LIMITS, targets
from loadtests.loadgen import Target, open_loop, run_sync
from loadtests.procs import Proc

GATEWAY_CPU, CLIENT_CPU = 0, 1


def start_gateway(
    work: Path, label: str, src: Path, redis_url: str, engines: list[str], shared: dict[str, str]
) -> stack.Service:
    """`python -m gateway.cli serve` run from `src`: its own code, this interpreter."""
    port = free_port()
    (work / "adapters").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LORAGATE_PORT": str(port),
        "LORAGATE_REDIS_URL": redis_url,
        "LORAGATE_ENGINES": json.dumps(engines),
        "LORAGATE_BASE_MODEL": stack.BASE_MODEL,
        "LORAGATE_ADAPTER_STORE": str((work / "adapters").resolve()),
        "LORAGATE_ENGINE_MAX_CONCURRENCY": "1024",
        "LORAGATE_ENGINE_QUEUE_SIZE": "4096",
        "LORAGATE_MAX_CPU_LORAS": "64",
        "LORAGATE_WORKERS": "1",
        "PYTHONPATH": str(src),
        **shared,
    }
    cmd = [sys.executable, "-m", "gateway.cli", "serve"]
    proc = Proc.start(f"gw-{label}", cmd, log_dir=work / "logs", cpu=GATEWAY_CPU, env=env, cwd=src)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/readyz", timeout=90)
    return stack.Service(proc, url, admin_token=shared["LORAGATE_ADMIN_TOKEN"])


def profile(gw: stack.Service, target: Target, out: Path, seconds: float) -> str:
    raw = out / "profile.txt"
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
         "-o", str(raw), "-p", str(gw.proc.pid), "-d", str(int(seconds)), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    cpu0 = gw.proc.cpu_seconds()
    result = wrk.run_wrk(target, concurrency=16, duration=seconds - 1, cpu=CLIENT_CPU)
    used = gw.proc.cpu_seconds() - cpu0
    spy.wait(timeout=60)
    per_req = used / max(1, result["ok"]) * 1e6
    return f"{result['throughput_rps']:.0f} req/s, {per_req:.0f} us/request; samples in {raw}"


def one_round(
    name: str, gw: stack.Service, target: Target, direct: dict[str, Any], redis_url: str,
    args: argparse.Namespace, rnd: int,
) -> dict[str, Any]:  # fmt: skip
    cpu0, calls0 = gw.proc.cpu_seconds(), stack.redis_calls(redis_url)
    closed = wrk.run_wrk(target, concurrency=args.conc, duration=args.duration, cpu=CLIENT_CPU)
    used, calls1 = gw.proc.cpu_seconds() - cpu0, stack.redis_calls(redis_url)
    calls = sum(v - calls0.get(k, 0) for k, v in calls1.items() if k != "info")
    opened = run_sync(open_loop(target, rate=args.rate, duration=args.duration)).summary()
    return {
        "round": rnd, "arm": name, "rps": closed["throughput_rps"],
        "c_p50": closed["latency_p50_ms"], "c_p95": closed["latency_p95_ms"],
        "us_req": used / max(1, closed["ok"]) * 1e6,
        "redis_per_req": calls / max(1, closed["requests"]),
        "errors": closed["errors"] + opened["errors"],
        "o_p50": opened["latency_p50_ms"] - direct["latency_p50_ms"],
        "o_p95": opened["latency_p95_ms"] - direct["latency_p95_ms"],
        "load": os.getloadavg()[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", action="append", required=True, help="label=path to a source tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--conc", type=int, default=64)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--nolimits", action="store_true", help="also the arms without limits")
    p.add_argument("--profile", default="",
                   help="arm (label, or label+limits) to py-spy under wrk, nothing else; "
                   "a bare label is its limits arm unless --nolimits")  # fmt: skip
    p.add_argument("--profile-s", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("bench-results/limits-ab"))
    args = p.parse_args(argv)
    work: Path = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    shared = {
        "LORAGATE_ADMIN_TOKEN": "lgadm-" + secrets.token_urlsafe(16),
        "LORAGATE_KEY_HMAC_SECRET": secrets.token_hex(32),
    }
    services: list[stack.Service] = []
    try:
        redis = stack.start_redis(work, cpu=CLIENT_CPU)
        services.append(redis)
        mock = stack.start_mock(
            work, ports=[free_port(), free_port()], cpu=CLIENT_CPU, chunks=4, interval_ms=5
        )
        services.append(mock)
        gateways: dict[str, stack.Service] = {}
        for spec in args.src:
            label, path = spec.split("=", 1)
            gateways[label] = start_gateway(
                work, label, Path(path).resolve(), redis.url, mock.extra["urls"], shared
            )
            services.append(gateways[label])
        first = next(iter(gateways.values()))
        seed: dict[str, Any] = {"store": work / "adapters", "tenants": 8, "canary_weight": 0.2}
        keys = [t["api_key"] for t in stack.seed_loragate(first.url, first.admin_token, **seed)]
        limited = [t["api_key"] for t in stack.seed_loragate(
            first.url, first.admin_token, prefix="l", limits=BENCH_LIMITS, **seed)]  # fmt: skip
        arms: dict[str, tuple[stack.Service, Target]] = {}
        for label, gw in gateways.items():
            arms[label + "+limits"] = (gw, targets(gw.url, "chat", limited, frames=4)[0])
            if args.nolimits:
                arms[label] = (gw, targets(gw.url, "chat", keys, frames=4)[0])
        for _, target in arms.values():  # adapters resident, pools filled
            run_sync(open_loop(target, rate=200, duration=1.0))
        if args.profile:
            gw, target = arms.get(args.profile) or arms[args.profile + "+limits"]
            print(f"profile {args.profile}: {profile(gw, target, work, args.profile_s)}")
            return 0
        direct = targets(mock.url, stack.BASE_MODEL, [], frames=4)[0]
        rows: list[dict[str, Any]] = []
        names = list(arms)
        for rnd in range(args.rounds):
            base = run_sync(open_loop(direct, rate=args.rate, duration=args.duration)).summary()
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                gw, target = arms[name]
                rows.append(one_round(name, gw, target, base, redis.url, args, rnd))
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                  for k, v in rows[-1].items()}), flush=True)  # fmt: skip
        (work / "rows.json").write_text(json.dumps(rows))
    finally:
        for service in reversed(services):
            service.proc.stop()
        os.sched_setaffinity(0, all_cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
