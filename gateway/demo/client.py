"""The demo stack as an operator's scripts see it: `.loragate/demo.json`, the admin API (through
gateway.admin.client), a local `prometheus` process, and chat traffic sent the way a client sends
it. Used by `loragate demo observe` and `loragate demo bad-canary` (gateway/demo/ops.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.admin import client as api
from gateway.admin.client import AdminClient
from gateway.admin.schemas import ReleasePublic
from gateway.demo import panels as observe
from gateway.demo.common import ROOT
from gateway.observability.prometheus_process import PrometheusProcess


@dataclass(frozen=True)
class Demo:
    url: str
    admin_token: str
    keys: dict[str, str]  # tenant id -> API key
    models: dict[str, str]  # tenant id -> first alias
    engines: tuple[str, ...] = ()  # engine URLs (their /metrics feed the engines dashboard)
    # every gateway of the demo fleet (`gateway_urls` when the stack runs several), else `url`
    urls: tuple[str, ...] = ()

    @property
    def gateways(self) -> tuple[str, ...]:
        return self.urls or (self.url,)


def load_demo() -> Demo:
    path = ROOT / "demo.json"
    if not path.exists():
        raise SystemExit("no demo running (.loragate/demo.json missing): run `make demo-up` first")
    data = json.loads(path.read_text())
    return Demo(
        url=data["gateway_url"],
        admin_token=data["admin_token"],
        keys={t["id"]: t["api_key"] for t in data["tenants"]},
        models={t["id"]: t["models"][0] for t in data["tenants"]},
        engines=tuple(data.get("engines", [])),
        urls=tuple(data.get("gateway_urls") or ()),
    )


def admin_client(demo: Demo) -> AdminClient:
    """The admin API of the demo gateway (close it when done)."""
    return AdminClient(demo.url, demo.admin_token)


def stable_adapter(admin: AdminClient, tenant: str, alias: str) -> str | None:
    """The adapter ref of the alias's stable release (from its create_release audit entry)."""
    stable = admin.send(api.get_model(tenant, alias)).stable
    for entry in admin.send(api.audit(tenant, 1000)):
        if entry.action == "create_release" and entry.target == stable:
            adapter: str | None = entry.after["adapter"]
            return adapter
    raise RuntimeError(f"no audit entry for release {stable}")


def start_canary(
    admin: AdminClient, release: api.AdminCall[ReleasePublic], weight: float
) -> ReleasePublic:
    """Create the release and put it on a canary of `weight` at the alias's current revision."""
    created = admin.send(release)
    current = admin.send(api.get_model(created.tenant, created.alias))
    admin.send(api.canary(created.tenant, created.alias, created.id, weight, current.revision))
    return created


def prometheus(
    exe: str, interval_s: float, targets: Sequence[str], rules: Sequence[Path]
) -> PrometheusProcess:
    """A `prometheus` on a free loopback port with its own temporary storage (removed by
    `stop_prometheus`)."""
    workdir = Path(tempfile.mkdtemp(prefix="loragate-observe-"))
    return PrometheusProcess(workdir, targets, rules, interval_s=interval_s, exe=exe)


def stop_prometheus(prom: PrometheusProcess) -> None:
    prom.stop()
    shutil.rmtree(prom.workdir, ignore_errors=True)


@dataclass(frozen=True)
class Result:
    tenant: str
    status: int
    release: str
    code: str
    text: str


def send(client: httpx.Client, demo: Demo, tenant: str, body: dict[str, Any]) -> Result:
    """One chat request (streaming or not) as a client sees it."""
    headers = {"authorization": f"Bearer {demo.keys[tenant]}"}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            code = json.loads(response.read()).get("error", {}).get("code", "")
            return Result(tenant, response.status_code, "", code, "")
        release = response.headers.get("x-loragate-release", "")
        if not body.get("stream"):
            message = json.loads(response.read())["choices"][0]["message"]
            return Result(tenant, 200, release, "", message.get("content") or "")
        parts = []
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
        return Result(tenant, 200, release, "", "".join(parts))


def run_traffic(
    demo: Demo, jobs: Sequence[tuple[str, dict[str, Any]]], concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> list[Result]:  # fmt: skip
    """Job i goes to gateway i mod N of the demo fleet (round-robin over `demo.gateways`)."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=concurrency) as pool:
        clients = [
            stack.enter_context(httpx.Client(base_url=url, timeout=120)) for url in demo.gateways
        ]
        futures = [
            pool.submit(send, clients[i % len(clients)], demo, tenant, body)
            for i, (tenant, body) in enumerate(jobs)
        ]
        results = []
        for i, future in enumerate(futures, 1):
            results.append(future.result())
            if progress is not None:
                progress(i)
        return results


def scrape_metric(url: str, name: str, **labels: str) -> float:
    value = observe.sample_value(httpx.get(url + "/metrics", timeout=10).text, name, **labels)
    return 0.0 if value is None else value
