"""Reliability row R11 (issue 21): the registry's Redis behind real Redis Sentinel (three
redis-server processes, three `redis-sentinel`s on 127.0.0.1), three gateways on
`redis+sentinel://`, the master SIGKILLed under chat traffic and admin writes.

Holds: known tenants are served throughout; every admin write either succeeds (201) or fails with
503 within the deadline; every acknowledged write is on the new master; writes resume by themselves
(the figure: seconds from the kill to the first acknowledged write after it)."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from registry.keyspace import Keyspace
from tests.fixtures.fake_engine import FakeEngineFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.fixtures.sentinel import SentinelCluster
from tests.fixtures.traffic import auth, chat_body, metric, wait_for

DEADLINE_S = 3.0  # no admin write may take longer, failover or not
RESUME_WITHIN_S = 30.0  # generous on a loaded 2-core box; the figure says what it took


def _chat_loop(
    gateways: list[GatewayProcess], key: str, stop: threading.Event, out: list[int]
) -> None:
    with httpx.Client(timeout=10) as client:
        for gw in itertools.cycle(gateways):
            if stop.is_set():
                return
            r = client.post(
                gw.url + "/v1/chat/completions", json=chat_body("chat", max_tokens=3),
                headers=auth(key),
            )  # fmt: skip
            out.append(r.status_code)


def _subscribers(client: redis.Redis) -> int:
    reply: Any = client.pubsub_numsub(Keyspace().channel(0))
    return int(reply[0][1])


def _holds(gw: GatewayProcess, epoch: int) -> Callable[[], bool]:
    return lambda: metric(gw.url, "loragate_registry_epoch") == epoch


@pytest.mark.timeout(240)
def test_r11_sentinel_failover_under_traffic(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory,
    sentinel_cluster: SentinelCluster,
) -> None:  # fmt: skip
    fake = fake_engine()
    fleet = {
        "admin_token": "adm-" + secrets.token_hex(16),
        "key_hmac_secret": secrets.token_hex(32),
    }
    gateways = [
        gateway_factory(engines=[fake.url], redis_url=sentinel_cluster.url, **fleet)
        for _ in range(3)
    ]
    first = gateways[0]
    t = first.seed_tenant("r11co", adapter=None, system_prompt="x")
    for gw in gateways:
        gw.wait_ready()
    statuses: list[int] = []
    stop = threading.Event()
    chats = threading.Thread(target=_chat_loop, args=(gateways, t.api_key, stop, statuses))
    chats.start()
    acked: list[str] = []
    admin: list[tuple[int, float]] = []
    killed_at = resumed_at = None
    old_master = sentinel_cluster.master()
    try:
        for n in itertools.count():
            gw = gateways[n % len(gateways)]
            if killed_at is None and n == 20:
                old_master.kill()
                killed_at = time.monotonic()
            started = time.monotonic()
            r = gw.admin.post("/tenants", json={"id": f"w{n}"}, timeout=10)
            admin.append((r.status_code, time.monotonic() - started))
            if r.status_code == 201:
                acked.append(f"w{n}")
                if killed_at is not None and resumed_at is None:
                    resumed_at = time.monotonic()
            if resumed_at is not None and time.monotonic() - resumed_at > 2.0:
                break  # two seconds of writes on the new master
            if killed_at is not None and time.monotonic() - killed_at > RESUME_WITHIN_S:
                break
    finally:
        stop.set()
        chats.join(timeout=30)
    assert killed_at is not None
    new_master = sentinel_cluster.master_port()
    # Every gateway's snapshot follows the new master: each one holds its epoch.
    client = redis.Redis(port=new_master, socket_timeout=2)
    try:
        epoch = int(client.get(Keyspace().epoch) or 0)
        for gw in gateways:
            wait_for(_holds(gw, epoch), 10, "every gateway follows the new master")
        # Each gateway's snapshot watcher listens on the new master again.
        wait_for(lambda: _subscribers(client) == len(gateways), 20, "watchers resubscribed")
    finally:
        client.close()
    lost = [tid for tid in acked if first.admin.get(f"/tenants/{tid}").status_code != 200]
    codes = sorted({s for s, _ in admin})
    slowest = max(took for _, took in admin)
    resume = (resumed_at - killed_at) if resumed_at is not None else float("inf")
    print(
        f"FIGURE R11: Sentinel failover (master SIGKILLed, down-after 1 s, 3 gateways): chats "
        f"{sum(s == 200 for s in statuses)}/{len(statuses)} served; admin writes {len(admin)}, "
        f"statuses {codes}, {sum(s == 503 for s, _ in admin)} x 503, slowest "
        f"{slowest * 1000:.0f} ms; acknowledged {len(acked)}, lost {len(lost)}; writes resumed "
        f"{resume:.2f} s after the kill (master {old_master.port} -> {new_master})"
    )
    assert statuses
    assert all(s == 200 for s in statuses), sorted(set(statuses))
    assert set(codes) <= {201, 503}
    assert slowest < DEADLINE_S
    assert new_master != old_master.port
    assert resumed_at is not None
    assert lost == []
