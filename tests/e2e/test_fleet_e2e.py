"""Two gateway processes, two real vLLM-CPU engines, real Redis, a real DNS server: one pool.

One test function (two vLLM engines at once are heavy on a 2-core box; run this file alone). The
engines are found through SRV records the test changes (tests/fixtures/dnsserver.py); six tenants
send with the `openai` SDK through both gateways alternately; what the engines did is read from
the engines themselves (GET /v1/models, and the "Loaded new LoRA adapter" lines of their logs).

1. Steady state: every request succeeds; each adapter is loaded on one replica only, once.
2. vllm-0 is killed by pid: traffic moves to vllm-1 with no failure; restarted on the same port,
   it takes its adapters' traffic back, with no gateway restart.
3. DNS changes: vllm-1 leaves the answer while a stream is in flight on it (the stream finishes,
   new requests go elsewhere); the same process joins again as a new replica `vllm-2` and takes
   the traffic of the adapters whose home it is.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from adapters.engine_process import EngineProcess
from gateway.engines.placement import rendezvous_order
from tests.fixtures.dnsserver import Zone
from tests.fixtures.engine import EngineFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels
from tests.fixtures.placement import engine_name, homed_tenant
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import metric, wait_for

pytestmark = pytest.mark.engine

SRV = "_http._tcp.vllm.test"
LOADED = re.compile(rb"Loaded new LoRA adapter: name '([^']+)'")


def _loads(engine: EngineProcess, since: int = 0) -> list[str]:
    """Adapter names the engine loaded (its own log), after byte offset `since`."""
    data = Path(engine.log_path).read_bytes()[since:]
    return [m.group(1).decode() for m in LOADED.finditer(data)]


def _log_size(engine: EngineProcess) -> int:
    return Path(engine.log_path).stat().st_size


def _held(engine: EngineProcess) -> set[str]:
    doc = httpx.get(engine.url + "/v1/models", timeout=10).json()
    return {e["id"] for e in doc["data"] if e.get("parent")}


class Fleet:
    def __init__(self, gateways: list[GatewayProcess], tenants: list[SeededTenant]) -> None:
        self.gateways = gateways
        self.tenants = tenants
        self.clients = {
            (g.url, t.id): OpenAI(
                base_url=g.url + "/v1", api_key=t.api_key, max_retries=0, timeout=120
            )
            for g in gateways
            for t in tenants
        }
        self.turn = 0
        self.failures: list[str] = []

    def ask(self, tenant: SeededTenant, max_tokens: int = 8) -> str:
        """One request through the next gateway in turn; returns the replica that served it."""
        gw = self.gateways[self.turn % len(self.gateways)]
        self.turn += 1
        raw = self.clients[(gw.url, tenant.id)].chat.completions.with_raw_response.create(
            model=tenant.alias, messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=max_tokens,
        )  # fmt: skip
        completion = raw.parse()
        assert completion.choices[0].message.content is not None
        return raw.headers["x-loragate-engine"]

    def round(self) -> dict[str, str]:
        """Every tenant through both gateways: tenant id -> the replica that served it."""
        served: dict[str, set[str]] = {}
        for tenant in self.tenants:
            for _ in self.gateways:
                served.setdefault(tenant.id, set()).add(self.ask(tenant))
        assert all(len(s) == 1 for s in served.values()), served  # both gateways agree
        return {t: next(iter(s)) for t, s in served.items()}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _healthy_everywhere(gateways: list[GatewayProcess], engine: str, value: float | None) -> bool:
    return all(metric(g.url, "loragate_engine_healthy", engine=engine) == value for g in gateways)


@pytest.mark.timeout(1800)  # two vLLM starts and a restart on a shared 2-core box
def test_two_gateways_and_two_engines_act_as_one_pool(
    gateway_factory: GatewayFactory,
    engine_factory: EngineFactory,
    dns_server: Callable[[], Zone],
    redis_private: RedisServer,
    tiny_models: TinyModels,
) -> None:
    zone = dns_server()
    engines = [engine_factory(), engine_factory()]
    for i in range(len(engines)):
        zone.set_a(f"vllm-{i}.vllm.test", ["127.0.0.1"])
    zone.set_srv(SRV, [(f"vllm-{i}.vllm.test", e.port) for i, e in enumerate(engines)])
    secret = secrets.token_hex(32)
    gateways = [
        gateway_factory(
            engines=[f"dns://{SRV}"],
            engine_dns_nameservers=[zone.nameserver],
            engine_discovery_interval_s=0.5,
            redis_url=redis_private.url,
            key_hmac_secret=secret,
        )
        for _ in range(2)
    ]
    store, paths = tiny_models.store_root, tiny_models.adapter_relpaths
    names = ("vllm-0", "vllm-1")
    tenants = [
        gateways[i % 2].seed_tenant(
            homed_tenant(f"fleet{i}x", store, paths[i % 3], names[i // 3], names),
            adapter=paths[i % 3],
        )
        for i in range(6)
    ]
    for gw in gateways:
        gw.wait_ready()
    fleet = Fleet(gateways, tenants)
    try:
        # 1. Steady state: each adapter on its home replica only, loaded there once.
        homes = fleet.round()
        fleet.round()
        assert homes == {t.id: names[i // 3] for i, t in enumerate(tenants)}
        held = [_held(e) for e in engines]
        assert not held[0] & held[1], held
        assert len(held[0] | held[1]) == 6
        loads = _loads(engines[0]) + _loads(engines[1])
        assert sorted(loads) == sorted(held[0] | held[1])  # one load call that loaded, each

        # 2. vllm-0 killed by pid: everything moves to vllm-1; restarted, its tenants come back.
        engines[0].kill()
        wait_for(lambda: _healthy_everywhere(gateways, "vllm-0", 0), 30, "vllm-0 down")
        assert set(fleet.round().values()) == {"vllm-1"}
        offset = _log_size(engines[0])
        engines[0].restart(timeout=600)
        wait_for(lambda: _healthy_everywhere(gateways, "vllm-0", 1), 60, "vllm-0 back")
        assert fleet.round() == homes
        assert sorted(_loads(engines[0], offset)) == sorted(held[0])  # loaded back once each

        # 3. DNS: vllm-1 leaves while a stream is in flight there, then joins again as vllm-2.
        on_one = [t for t in tenants if homes[t.id] == "vllm-1"]
        stream_done: list[int] = []
        first_chunk = threading.Event()

        def stream() -> None:
            client = fleet.clients[(gateways[0].url, on_one[0].id)]
            chunks = 0
            # ignore_eos: random weights may pick the end token at any step, which ended the
            # stream before the DNS change was seen; this way it runs its max_tokens.
            with client.chat.completions.create(
                model=on_one[0].alias, messages=[{"role": "user", "content": "Count to fifty."}],
                max_tokens=1900, stream=True, extra_body={"ignore_eos": True},
            ) as events:  # fmt: skip
                for _ in events:
                    chunks += 1
                    first_chunk.set()
            stream_done.append(chunks)

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert first_chunk.wait(120), "the stream did not start"
        zone.set_srv(SRV, [("vllm-0.vllm.test", engines[0].port)])
        wait_for(lambda: fleet.ask(on_one[1]) == "vllm-0", 30, "vllm-1 out of the answer")
        # Out of the answer, but kept until its last request ends: the stream is draining there.
        assert metric(gateways[0].url, "loragate_engine_in_flight", engine="vllm-1") == 1
        streamer.join(timeout=600)
        assert stream_done
        assert stream_done[0] > 1
        wait_for(lambda: _healthy_everywhere(gateways, "vllm-1", None), 30, "vllm-1 drained")
        assert set(fleet.round().values()) == {"vllm-0"}

        zone.set_a("vllm-2.vllm.test", ["127.0.0.1"])
        zone.set_srv(SRV, [("vllm-0.vllm.test", engines[0].port),
                           ("vllm-2.vllm.test", engines[1].port)])  # fmt: skip
        wait_for(lambda: _healthy_everywhere(gateways, "vllm-2", 1), 30, "vllm-2 joined")
        members = ("vllm-0", "vllm-2")
        expected = {
            t.id: rendezvous_order(engine_name(t.id, store, paths[i % 3]), members)[0]
            for i, t in enumerate(tenants)
        }
        assert "vllm-2" in expected.values()  # the new replica is some adapter's home
        assert fleet.round() == expected
    finally:
        fleet.close()
