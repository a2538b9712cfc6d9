"""Engine discovery through DNS: a real DNS server on 127.0.0.1 (tests/fixtures/dnsserver.py)
whose answers the test changes; A and SRV records, re-resolved on an interval, stable replica
identities; replicas join and drain without a gateway restart."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from gateway.engines.discovery import DnsDiscovery, Endpoint, discovery_from
from tests.fixtures.dnsserver import Zone
from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels
from tests.fixtures.placement import homed_tenant
from tests.fixtures.traffic import auth, chat_body, metric, wait_for

DnsServer = Callable[[], Zone]


async def test_a_records_give_one_replica_per_address_and_follow_changes(
    dns_server: DnsServer,
) -> None:
    zone = dns_server()
    zone.set_a("vllm.test", ["127.0.0.2", "127.0.0.3"])
    discovery = DnsDiscovery(["dns://vllm.test:8000"], nameservers=[zone.nameserver])
    assert await discovery.resolve() == [
        Endpoint("127.0.0.2", "http://127.0.0.2:8000"),
        Endpoint("127.0.0.3", "http://127.0.0.3:8000"),
    ]
    zone.set_a("vllm.test", ["127.0.0.3", "127.0.0.4"])  # one left, one joined
    assert [e.name for e in await discovery.resolve() or []] == ["127.0.0.3", "127.0.0.4"]
    zone.set_a("vllm.test", [])  # no ready pod: no replica, and not an error
    assert await discovery.resolve() == []


async def test_srv_records_name_replicas_by_pod_and_keep_the_name_across_addresses(
    dns_server: DnsServer,
) -> None:
    zone = dns_server()
    zone.set_srv("_http._tcp.vllm.test", [("vllm-0.vllm.test", 8001), ("vllm-1.vllm.test", 8002)])
    zone.set_a("vllm-0.vllm.test", ["127.0.0.5"])
    zone.set_a("vllm-1.vllm.test", ["127.0.0.6"])
    discovery = discovery_from(["dns://_http._tcp.vllm.test"], nameservers=[zone.nameserver])
    assert isinstance(discovery, DnsDiscovery)
    assert await discovery.resolve() == [
        Endpoint("vllm-0", "http://127.0.0.5:8001"),
        Endpoint("vllm-1", "http://127.0.0.6:8002"),
    ]
    zone.set_a("vllm-1.vllm.test", ["127.0.0.9"])  # the pod came back elsewhere: same identity
    assert (await discovery.resolve() or [])[1] == Endpoint("vllm-1", "http://127.0.0.9:8002")


async def test_a_dns_failure_keeps_what_was_known() -> None:
    # Nothing listens there: the resolver times out, discovery answers None (keep the last set).
    discovery = DnsDiscovery(["dns://vllm.test:8000"], nameservers=["127.0.0.1:9"], timeout_s=0.5)
    assert await discovery.resolve() is None


def test_urls_and_dns_names_do_not_mix() -> None:
    with pytest.raises(ValueError, match="not a mix"):
        discovery_from(["dns://vllm:8000", "http://127.0.0.1:8001"])


def test_replicas_join_take_traffic_and_drain_without_a_gateway_restart(
    dns_server: DnsServer,
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    tiny_models: TinyModels,
) -> None:
    zone = dns_server()
    first, second = fake_engine(), fake_engine()
    zone.set_a("vllm-0.vllm.test", ["127.0.0.1"])
    zone.set_a("vllm-1.vllm.test", ["127.0.0.1"])
    zone.set_srv("_http._tcp.vllm.test", [("vllm-0.vllm.test", first.port)])
    gw = gateway_factory(
        engines=["dns://_http._tcp.vllm.test"],
        engine_dns_nameservers=[zone.nameserver],
        engine_discovery_interval_s=0.25,
    )
    path = tiny_models.adapter_relpaths[0]
    name = homed_tenant("joiner", tiny_models.store_root, path, "vllm-1", ("vllm-0", "vllm-1"))
    tenant = gw.seed_tenant(name, adapter=path)
    gw.wait_ready()

    def ask() -> httpx.Response:
        response = httpx.post(
            gw.url + "/v1/chat/completions", json=chat_body(tenant.alias),
            headers=auth(tenant.api_key), timeout=30,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        return response

    assert ask().headers["x-loragate-engine"] == "vllm-0"  # the only replica

    # A new engine appears in DNS: it joins, and the adapter whose home it is moves there.
    zone.set_srv(
        "_http._tcp.vllm.test",
        [("vllm-0.vllm.test", first.port), ("vllm-1.vllm.test", second.port)],
    )
    wait_for(lambda: metric(gw.url, "loragate_engine_healthy", engine="vllm-1") == 1, 15, "joined")
    assert ask().headers["x-loragate-engine"] == "vllm-1"
    assert second.load_calls == [next(iter(second.loaded))]

    # It leaves DNS with a request in flight: no new request goes there, the held one finishes.
    second.script(Step("hold"))
    with httpx.Client(timeout=30) as client:
        held = client.build_request(
            "POST", gw.url + "/v1/chat/completions", json=chat_body(tenant.alias),
            headers=auth(tenant.api_key),
        )  # fmt: skip
        result: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: result.append(client.send(held)))
        sender.start()
        second.wait_until(lambda e: e.active == 1, 15)
        zone.set_srv("_http._tcp.vllm.test", [("vllm-0.vllm.test", first.port)])
        wait_for(lambda: ask().headers["x-loragate-engine"] == "vllm-0", 15, "left")
        assert ask().headers["x-loragate-engine"] == "vllm-0"
        assert second.active == 1  # still draining
        assert metric(gw.url, "loragate_engine_in_flight", engine="vllm-1") == 1
        second.open_gate()
        sender.join(timeout=30)
    assert [r.status_code for r in result] == [200]
    assert result[0].headers["x-loragate-engine"] == "vllm-1"
    wait_for(
        lambda: metric(gw.url, "loragate_engine_healthy", engine="vllm-1") is None, 15, "drained"
    )
