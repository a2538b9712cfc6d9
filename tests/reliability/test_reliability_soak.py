"""R10: a soak with 5% client disconnects and 1% engine faults. The gateway must not grow:
RSS under 10% above its level after warm-up, and file descriptors and Redis connections flat.

The gateway is the real subprocess (`loragate serve`) so its memory and descriptors are its own:
read from /proc/<pid> (VmRSS, fd/, net/tcp by socket inode) and from Redis (`CLIENT LIST` of the
gateway's database). The engine is the scripted fake, because the faults must be injected on cue:
1% of engine requests fail (a stream drops its connection after a few tokens, a non-streaming
request gets a 500 before any byte; with one replica there is nowhere to retry, so the client sees
one SSE error event or a 503). Clients are closed-loop workers over keep-alive connections; 5% of
requests instead go out on a raw socket that is closed (FIN) or reset (RST) at a random moment.

Measurements are taken at idle checkpoints (traffic paused, every client connection closed, the
in-flight gauges at 0), after warm-up and at the end, so both are the same state of the process.
Tolerances, and why:
- RSS: < 10% growth; measured after warm-up, so first-use allocations are excluded.
- fds that are not established TCP connections (log, epoll, pipes, listening socket): equal.
- Engine connections: aiohttp keeps idle keep-alive connections for 30 s, at most one per request
  that was in flight at once, so at idle they are bounded by the peak concurrency (+2 for the
  health probes), not by the number of requests served. The warm-up ends with a burst of `BURST`
  concurrent limited-tenant requests, so that peak is known.
- Redis connections: a pool's size is a high-water mark of concurrent calls, which a stall of the
  shared box raises, so a count is no leak test. The gateway's own pool gauges are
  (`loragate_redis_pool_connections`): at idle every connection but the snapshot watcher's
  subscription must be back in the pool (a leaked one never comes back), and every connection
  Redis sees from the gateway must be one of the pool's (none opened beside it).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from registry.redis_client import PoolCounts
from tests.fixtures.fake_engine import FakeEngine, FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels
from tests.fixtures.procstats import ProcessStats, process_stats
from tests.fixtures.traffic import auth, chat_body, errors, metric_sum, sse_payloads, wait_for

CONCURRENCY = 16
DISCONNECT_RATE = 0.05
FAULT_RATE = 0.01
SEED = 8010
SAMPLE_EVERY_S = 2.0
RSS_GROWTH_MAX = 0.10
LISTENERS = 1  # the snapshot watcher's pub/sub subscription holds its connection
BURST = 2 * CONCURRENCY
ENGINE_SLACK = 2


@dataclass
class Tally:
    ok: int = 0
    stream_faults: int = 0  # one SSE error event, no [DONE]
    plain_faults: int = 0  # 503 engine_unavailable (the replica answered 500, no other to try)
    disconnects: int = 0
    unexpected: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.ok + self.stream_faults + self.plain_faults + self.disconnects


@dataclass
class Peaks:
    rss_kib: int = 0
    fds: int = 0
    samples: int = 0


class FaultyEngine:
    """The fake engine's per-request choice: 1% faults (seeded), otherwise a short paced answer."""

    def __init__(self, fake: FakeEngine, seed: int) -> None:
        self._rng = random.Random(seed)  # used on the engine's own thread only
        self.faults: Counter[str] = Counter()
        fake.respond = self.respond

    def respond(self, body: dict[str, Any]) -> Step:
        if self._rng.random() < FAULT_RATE:
            if body.get("stream"):
                self.faults["drop"] += 1
                return Step("drop_after", tokens=self._rng.randint(1, 4))
            self.faults["500"] += 1
            return Step("status", status=500)
        return Step("ok", tokens=self._rng.randint(4, 12), gap_s=0.003)


def _classify(tally: Tally, stream: bool, status: int, raw: bytes) -> None:
    if not stream:
        if status == 200 and orjson.loads(raw)["choices"]:
            tally.ok += 1
        elif status == 503 and orjson.loads(raw)["error"]["code"] == "engine_unavailable":
            tally.plain_faults += 1
        else:
            tally.unexpected.append(f"{status} {raw[:200]!r}")
        return
    payloads = sse_payloads([raw]) if status == 200 else []
    errs = errors(payloads)
    if status == 200 and payloads and payloads[-1] == b"[DONE]" and not errs:
        tally.ok += 1
    elif status == 200 and b"[DONE]" not in payloads and len(errs) == 1:
        tally.stream_faults += 1
    else:
        tally.unexpected.append(f"{status} {raw[-200:]!r}")


async def _disconnect(
    port: int, tenant: SeededTenant, stream: bool, after_s: float, rst: bool
) -> None:
    """A client that sends its request and leaves `after_s` later, without reading."""
    payload = orjson.dumps(chat_body(tenant.alias, stream=stream, max_tokens=16))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {tenant.api_key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + payload)
        await writer.drain()
        await asyncio.sleep(after_s)  # the random disconnect point itself
        if rst:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
    finally:
        writer.close()


async def _traffic(
    gw: GatewayProcess, tenants: list[SeededTenant], seconds: float, rng: random.Random,
    tally: Tally, sample: Any,
) -> None:  # fmt: skip
    port = int(urlsplit(gw.url).port or 80)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client:

        async def worker(seed: int) -> None:
            wrng = random.Random(seed)
            while time.monotonic() < deadline:
                tenant = wrng.choice(tenants)
                stream = wrng.random() < 0.5
                if wrng.random() < DISCONNECT_RATE:
                    await _disconnect(
                        port, tenant, stream, wrng.uniform(0, 0.05), wrng.random() < 0.5
                    )
                    tally.disconnects += 1
                    continue
                body = chat_body(tenant.alias, stream=stream, max_tokens=16)
                body["user"] = f"u{wrng.randrange(100)}"
                async with client.stream(
                    "POST", "/v1/chat/completions", json=body, headers=auth(tenant.api_key)
                ) as response:
                    raw = await response.aread()
                _classify(tally, stream, response.status_code, raw)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                sample()
                await asyncio.sleep(SAMPLE_EVERY_S)

        await asyncio.gather(
            *(worker(rng.randrange(1 << 30)) for _ in range(CONCURRENCY)), sampler()
        )


async def _burst(gw: GatewayProcess, tenants: list[SeededTenant]) -> None:
    """BURST concurrent non-streaming requests of limited tenants (see the module docstring)."""
    limits = httpx.Limits(max_connections=BURST)
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client:

        async def one(i: int) -> int:
            tenant = tenants[i % len(tenants)]
            body = chat_body(tenant.alias, max_tokens=16)
            response = await client.post(
                "/v1/chat/completions", json=body, headers=auth(tenant.api_key)
            )
            return response.status_code

        statuses = await asyncio.gather(*(one(i) for i in range(BURST)))
    assert set(statuses) <= {200, 503}, statuses  # 503: a scripted engine fault


def _redis_clients(url: str) -> int:
    """Connections Redis sees on the gateway's database (this helper's own excluded)."""
    db = int(urlsplit(url).path.lstrip("/") or 0)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        me = client.client_id()
        return sum(1 for c in client.client_list() if int(c["db"]) == db and int(c["id"]) != me)
    finally:
        client.close()


def _pool(gw: GatewayProcess) -> PoolCounts:
    """The gateway's registry pool, from its /metrics (limits share it: one Redis URL)."""
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    values: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pool") == "registry":
                values[sample.labels.get("state", "limit")] = int(sample.value)
    return PoolCounts(idle=values["idle"], in_use=values["in_use"], limit=values["limit"])


def _idle(gw: GatewayProcess, stats: Any) -> tuple[ProcessStats, int, PoolCounts]:
    """Wait (bounded) until nothing is in flight, no client connection is open and every Redis
    connection but the listeners' is back in the pool; then measure."""

    def quiet() -> bool:
        if metric_sum(gw.url, "loragate_in_flight_requests") != 0:
            return False
        if metric_sum(gw.url, "loragate_engine_in_flight") != 0:
            return False
        return int(stats().sockets["clients"]) == 0

    wait_for(quiet, 30, "gateway idle")
    now = stats()
    seen = _redis_clients(gw.env["LORAGATE_REDIS_URL"])
    pools: list[PoolCounts] = []

    def returned() -> bool:
        # A background call (heartbeat, snapshot poll) may hold a connection for a moment. The
        # pool only grows, so counting it after the sockets still bounds them.
        pools.append(_pool(gw))
        return pools[-1].in_use == LISTENERS

    wait_for(returned, 10, "Redis connections back in the pool")
    return now, seen, pools[-1]


@pytest.mark.parametrize(
    ("warmup_s", "seconds"),
    [
        pytest.param(15.0, 45.0, marks=pytest.mark.timeout(240)),
        pytest.param(60.0, 600.0, marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
    ],
)
async def test_r10_soak_with_disconnects_and_engine_faults_leaks_nothing(
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    tiny_models: TinyModels,
    warmup_s: float,
    seconds: float,
) -> None:
    fake = fake_engine()
    engine = FaultyEngine(fake, SEED)
    gw = gateway_factory(engines=[fake.url])
    limits = {"max_concurrency": 1000, "requests_per_minute": 1_000_000,
              "tokens_per_minute": 100_000_000, "budget": {"amount": 1e6, "period": "day"}}  # fmt: skip
    tenants = [
        gw.seed_tenant("soakfree", adapter=tiny_models.adapter_relpaths[0]),
        gw.seed_tenant("soaklimited", adapter=tiny_models.adapter_relpaths[1], limits=limits),
        gw.seed_tenant("soakbase", adapter=None, limits=limits),
    ]
    gw.wait_ready()
    port = int(urlsplit(gw.url).port or 80)
    redis_port = int(urlsplit(gw.env["LORAGATE_REDIS_URL"]).port or 6379)
    peers = {"redis": redis_port, "engine": fake.port}

    def stats() -> ProcessStats:
        return process_stats(gw.pid, listen_port=port, peers=peers)

    peaks = Peaks()

    def sample() -> None:
        # The fake engine's request log is not read here and would grow with the run.
        fake.requests.clear()
        fake.aborted.clear()
        now = stats()
        peaks.rss_kib = max(peaks.rss_kib, now.rss_kib)
        peaks.fds = max(peaks.fds, now.fds)
        peaks.samples += 1

    rng = random.Random(SEED)
    warm = Tally()
    await _traffic(gw, tenants, warmup_s, rng, warm, sample)
    await _burst(gw, tenants[1:])
    base, base_redis, base_pool = _idle(gw, stats)

    tally = Tally()
    started = time.monotonic()
    await _traffic(gw, tenants, seconds, rng, tally, sample)
    ran_s = time.monotonic() - started
    end, end_redis, end_pool = _idle(gw, stats)

    growth = (end.rss_kib - base.rss_kib) / base.rss_kib
    rate = tally.requests / ran_s
    print(
        f"FIGURE R10: soak {ran_s:.0f} s after {warmup_s:.0f} s warm-up, {tally.requests} requests "
        f"({rate:.0f}/s, {CONCURRENCY} closed-loop clients, 3 tenants, half streaming): "
        f"{tally.disconnects} client disconnects ({tally.disconnects / tally.requests:.1%}), "
        f"{sum(engine.faults.values())} engine faults injected ({dict(engine.faults)}) -> "
        f"{tally.stream_faults} streams ended with one error event, {tally.plain_faults} 503s, "
        f"{len(tally.unexpected)} unexpected outcomes; gateway RSS {base.rss_kib / 1024:.1f} -> "
        f"{end.rss_kib / 1024:.1f} MiB ({growth:+.1%}, peak {peaks.rss_kib / 1024:.1f}); "
        f"fds {base.fds} -> {end.fds} (peak {peaks.fds}; non-connection {base.sockets['other']} -> "
        f"{end.sockets['other']}, engine keep-alive {base.sockets['engine']} -> "
        f"{end.sockets['engine']}); Redis connections {base.sockets['redis']} -> "
        f"{end.sockets['redis']} (Redis CLIENT LIST on the gateway's db: {base_redis} -> "
        f"{end_redis}; pool idle/in use {base_pool.idle}/{base_pool.in_use} -> "
        f"{end_pool.idle}/{end_pool.in_use} of {end_pool.limit})"
    )

    for tenant in tenants:
        usage = gw.call("GET", f"/tenants/{tenant.id}")["usage"]
        assert usage["in_flight"] == 0, (tenant.id, usage)
    assert not warm.unexpected, warm.unexpected[:5]
    assert not tally.unexpected, tally.unexpected[:5]
    assert tally.disconnects > 0
    assert tally.stream_faults + tally.plain_faults > 0
    assert sum(engine.faults.values()) >= tally.stream_faults + tally.plain_faults
    assert end.sockets["clients"] == 0

    assert growth < RSS_GROWTH_MAX, (base.rss_kib, end.rss_kib)
    assert end.sockets["other"] == base.sockets["other"], (base.sockets, end.sockets)
    assert end.sockets["other_tcp"] == base.sockets["other_tcp"] == 0
    assert end.sockets["engine"] <= BURST + ENGINE_SLACK, end.sockets
    for sockets, seen, pool in (
        (base.sockets, base_redis, base_pool),
        (end.sockets, end_redis, end_pool),
    ):
        assert pool.in_use == LISTENERS, pool
        assert sockets["redis"] <= pool.idle + pool.in_use <= pool.limit, (sockets, pool)
        assert seen <= pool.idle + pool.in_use, (seen, pool)
