"""Where the engine replicas are: a static list, or a DNS name re-resolved on an interval.

    discovery = discovery_from(["dns://vllm:8000"], nameservers=[])   # A records, port given
    discovery = discovery_from(["dns://_http._tcp.vllm"])               # SRV records
    discovery = discovery_from(["http://127.0.0.1:8001", "http://127.0.0.1:8002"])
    endpoints = await discovery.resolve()    # None: keep the last answer (DNS trouble)

A replica's identity (`Endpoint.name`) is stable, because routing hashes it and metric labels
carry it: `engine-<i>` for the i-th static URL; for SRV, the target's first label (a StatefulSet
pod's hostname, `vllm-0`, reached at the target's address); for A records, the address. A short
name resolves through the host's search domains, so manifests need no namespace in their URLs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

log = logging.getLogger("loragate.engines")


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str


class StaticDiscovery:
    dynamic = False

    def __init__(self, urls: Sequence[str]) -> None:
        self.endpoints = [Endpoint(f"engine-{i}", u.rstrip("/")) for i, u in enumerate(urls)]

    async def resolve(self) -> list[Endpoint] | None:
        return list(self.endpoints)


class DnsDiscovery:
    """`dns://name:port` (A records) or `dns://name` (SRV records, ports from the answers)."""

    dynamic = True

    def __init__(
        self, specs: Sequence[str], *, nameservers: Sequence[str] = (), timeout_s: float = 2.0
    ) -> None:
        self._targets: list[tuple[str, int | None]] = []
        for spec in specs:
            parts = urlsplit(spec)
            if parts.scheme != "dns" or not parts.hostname:
                raise ValueError(f"not a dns:// engine address: {spec!r}")
            self._targets.append((parts.hostname, parts.port))
        self._resolver = _resolver(nameservers, timeout_s)

    async def resolve(self) -> list[Endpoint] | None:
        found: dict[str, Endpoint] = {}
        for host, port in self._targets:
            try:
                endpoints = await (self._a(host, port) if port else self._srv(host))
            except (dns.exception.DNSException, OSError) as exc:
                log.warning("engine discovery for %s failed: %s", host, type(exc).__name__)
                return None
            for ep in endpoints:
                found.setdefault(ep.name, ep)
        return sorted(found.values(), key=lambda e: e.name)

    async def _a(self, host: str, port: int) -> list[Endpoint]:
        try:
            answer = await self._resolver.resolve(host, "A", search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []  # the Service has no ready pod: no replica, not an error
        return [Endpoint(r.address, f"http://{r.address}:{port}") for r in answer]

    async def _srv(self, host: str) -> list[Endpoint]:
        try:
            answer = await self._resolver.resolve(host, "SRV", search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        out = []
        for r in answer:
            target = r.target.to_text(omit_final_dot=True)
            name = target.split(".", 1)[0]
            # The address through the same resolver (the HTTP client would use the system's);
            # the identity stays the pod name when the pod comes back with a new address.
            try:
                addresses = await self._resolver.resolve(r.target, "A", search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue  # a target without an address is not reachable yet
            out.append(Endpoint(name, f"http://{addresses[0].address}:{r.port}"))
        return out


Discovery = StaticDiscovery | DnsDiscovery


def discovery_from(
    engines: Sequence[str], *, nameservers: Sequence[str] = (), timeout_s: float = 2.0
) -> Discovery:
    """All `dns://` entries or all URLs; a mix is refused (identities would collide)."""
    dns_specs = [e for e in engines if e.startswith("dns://")]
    if not dns_specs:
        return StaticDiscovery(engines)
    if len(dns_specs) != len(engines):
        raise ValueError("engines: either all dns:// names or all URLs, not a mix")
    return DnsDiscovery(dns_specs, nameservers=nameservers, timeout_s=timeout_s)


def _resolver(nameservers: Sequence[str], timeout_s: float) -> dns.asyncresolver.Resolver:
    if not nameservers:
        resolver = dns.asyncresolver.Resolver()  # the host's resolv.conf, search domains included
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        hosts, ports = [], set()
        for ns in nameservers:
            host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "53")
            hosts.append(host)
            ports.add(int(port or 53))
        resolver.nameservers = hosts
        resolver.port = ports.pop() if len(ports) == 1 else 53
    resolver.lifetime = timeout_s
    resolver.cache = None  # re-resolution must see a changed answer
    return resolver
