"""In-repo load generators: open-loop fixed rate (latency) and closed-loop (throughput, streams).

Open loop schedules request i at t0 + i/rate whatever happened before, and measures latency from
that *intended* start, so a slow server cannot hide its queueing (no coordinated omission). Closed
loop keeps `concurrency` requests in flight; it is used for SSE streams and as the fallback when
`wrk` is missing. Both run on one aiohttp session with a pooled connector, like a real client.

    stats = await open_loop(target, rate=500, duration=5.0)
    summary = stats.summary()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

REQUEST_TIMEOUT_S = 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where to send and what: requests rotate over `requests` (headers, body) pairs."""

    url: str  # full URL of the chat completions route
    requests: Sequence[tuple[dict[str, str], bytes]]
    expect_frames: int = 0  # SSE: data frames the upstream sends per stream


@dataclass
class RunStats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # between consecutive SSE frames
    frames: int = 0
    lost_frames: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    elapsed: float = 0.0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies)
        out: dict[str, Any] = {
            "requests": self.sent,
            "ok": done,
            "errors": self.errors,
            "error_rate": self.errors / self.sent if self.sent else 0.0,
            "error_kinds": dict(self.error_kinds),
            "throughput_rps": done / self.elapsed if self.elapsed else 0.0,
            "elapsed_s": self.elapsed,
            **percentiles_ms("latency", self.latencies),
        }
        if self.ttft or self.frames:
            out.update(percentiles_ms("ttft", self.ttft))
            out.update(percentiles_ms("gap", self.gaps))
            out["frames"] = self.frames
            out["lost_frames"] = self.lost_frames
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[index]


def percentiles_ms(name: str, values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"{name}_p{q}_ms": percentile(ordered, q) * 1000.0 for q in (50, 95, 99)}


def new_session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=30, force_close=False)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    )


async def one_request(
    session: aiohttp.ClientSession, target: Target, index: int, start: float, stats: RunStats
) -> None:
    headers, body = target.requests[index % len(target.requests)]
    stats.sent += 1
    try:
        async with session.post(target.url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                stats.error(f"http_{resp.status}")
                return
            if target.expect_frames:
                await _read_stream(resp, target.expect_frames, start, stats)
            else:
                await resp.read()
                stats.latencies.append(time.perf_counter() - start)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        stats.error(type(exc).__name__)


async def _read_stream(
    resp: aiohttp.ClientResponse, expected: int, start: float, stats: RunStats
) -> None:
    frames = 0
    done = False
    last = 0.0
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        now = time.perf_counter()
        if line.startswith(b"data: [DONE]"):
            done = True
            continue
        if line.startswith(b'data: {"error"'):
            break
        if frames == 0:
            stats.ttft.append(now - start)
        else:
            stats.gaps.append(now - last)
        last = now
        frames += 1
    stats.frames += frames
    stats.lost_frames += max(0, expected - frames)
    if done and frames >= expected:
        stats.latencies.append(time.perf_counter() - start)
    else:
        stats.error("stream_incomplete")


async def open_loop(target: Target, *, rate: float, duration: float) -> RunStats:
    """Fixed-rate arrivals; in-flight requests are awaited (bounded by the request timeout)."""
    stats = RunStats()
    total = max(1, int(rate * duration))
    async with new_session(limit=1024) as session:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter() + 0.05
        for i in range(total):
            intended = t0 + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_request(session, target, i, intended, stats)))
        await asyncio.gather(*tasks)
        stats.elapsed = time.perf_counter() - t0
    return stats


async def closed_loop(target: Target, *, concurrency: int, duration: float) -> RunStats:
    """`concurrency` workers, each sending its next request when the previous one is done."""
    stats = RunStats()
    async with new_session(limit=concurrency) as session:
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                await one_request(session, target, i, time.perf_counter(), stats)
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        stats.elapsed = time.perf_counter() - t0
    return stats


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a generator on uvloop when present: the client shares a core with the mock."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def steady_streams(
    target: Target, *, concurrency: int, stream_s: float, duration: float, seed: int = 22
) -> RunStats:
    """Streams that start at Poisson arrivals, at the rate that keeps `concurrency` of them open
    (Little's law: rate = concurrency / stream length), never more than `concurrency` at once:
    the steady state of many clients, not `concurrency` streams begun at the same instant. TTFT
    counts from the intended start (an arrival that waited for a slot includes the wait)."""
    import random

    stats = RunStats()
    rate = concurrency / max(stream_s, 1e-3)
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)
    async with new_session(limit=concurrency) as session:

        async def one(i: int, intended: float) -> None:
            async with slots:
                await one_request(session, target, i, intended, stats)

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter() + 0.05
        at, i = t0, 0
        while at < t0 + duration:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
            i += 1
            at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        stats.elapsed = time.perf_counter() - t0
    return stats
