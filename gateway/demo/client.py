"""The demo stack as an operator's scripts see it: `.loragate/demo.json`, the admin API, a local
`prometheus` process, and chat traffic sent the way a client sends it. Used by `loragate demo
observe` and `loragate demo bad-canary` (gateway/demo/ops.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.demo import panels as observe
from gateway.demo.common import ROOT, _free_port


@dataclass(frozen=True)
class Demo:
    url: str
    admin_token: str
    keys: dict[str, str]  # tenant id -> API key
    models: dict[str, str]  # tenant id -> first alias
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
        urls=tuple(data.get("gateway_urls") or ()),
    )


class Admin:
    """The admin API of the demo gateway; any 4xx/5xx raises with the server's answer."""

    def __init__(self, demo: Demo) -> None:
        self._client = httpx.Client(
            base_url=demo.url + "/admin/v1",
            headers={"authorization": f"Bearer {demo.admin_token}"},
            timeout=120,
        )

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        response = self._client.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code} {response.text}")
        return response.json() if response.content else None

    def close(self) -> None:
        self._client.close()

    def stable_adapter(self, tenant: str, alias: str) -> str | None:
        """The adapter ref of the alias's stable release (from its create_release audit entry)."""
        stable = self("GET", f"/tenants/{tenant}/models/{alias}")["stable"]
        for entry in self("GET", f"/audit?tenant={tenant}&count=1000"):
            if entry["action"] == "create_release" and entry["target"] == stable:
                adapter: str | None = entry["after"]["adapter"]
                return adapter
        raise RuntimeError(f"no audit entry for release {stable}")

    def start_canary(self, tenant: str, alias: str, body: dict[str, Any], weight: float) -> str:
        release: str = self("POST", f"/tenants/{tenant}/models/{alias}/releases", body)["release"]
        revision = self("GET", f"/tenants/{tenant}/models/{alias}")["revision"]
        self(
            "POST", f"/tenants/{tenant}/models/{alias}/canary",
            {"release": release, "weight": weight, "expected_revision": revision},
        )  # fmt: skip
        return release


class LocalPrometheus:
    """A `prometheus` process on a free loopback port with its own temporary storage."""

    def __init__(self, exe: str, interval_s: float) -> None:
        self.exe = exe
        self.interval_s = interval_s
        self.workdir = Path(tempfile.mkdtemp(prefix="loragate-observe-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, targets: Sequence[str], rules: Sequence[Path], timeout: float = 30) -> None:
        for rule in rules:
            shutil.copy(rule, self.workdir / rule.name)
        config = observe.prometheus_config(targets, [r.name for r in rules], self.interval_s)
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [self.exe, f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout:.0f}s: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        return httpx.get(f"{self.url}/api/v1/{path}?{query}", timeout=10).json()

    def query_until(self, expr: str, deadline: float) -> Any:
        """Poll an instant query until it has data, errors, or the deadline passes."""
        while True:
            response = self.api("query", query=expr)
            if response.get("status") != "success" or observe.has_data(response):
                return response
            if time.monotonic() > deadline:
                return response
            time.sleep(0.5)

    def rules(self) -> list[dict[str, Any]]:
        return [
            {**rule, "group": group["name"]}
            for group in self.api("rules")["data"]["groups"]
            for rule in group["rules"]
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


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
