"""A real `prometheus` server on a loopback port, scraping the given targets with the given rule
files: `loragate demo observe` and the deploy tests both start theirs here.

    prom = PrometheusProcess(workdir, targets=["127.0.0.1:8000"], rule_files=[rules])
    prom.start()                                    # returns once /-/ready answers 200
    prom.query_until("up == 1", has_data, timeout=30)
    prom.rules(); prom.stop()

The HTTP calls use the standard library (no client session to close) and return the API's JSON
even on an HTTP error, since a PromQL error is an answer the callers look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.ports import free_port

LOG_TAIL_CHARS = 2000


class PrometheusNotInstalled(RuntimeError):
    """No `prometheus` on PATH (the Makefile's sysdeps target installs it)."""


def prometheus_config(
    targets: Sequence[str], rule_files: Sequence[str], interval_s: float
) -> dict[str, Any]:
    """A scrape config for the gateway (JSON is YAML); scrape and evaluation every `interval_s`."""
    interval = f"{round(interval_s * 1000)}ms"  # Prometheus durations take no fractions
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": f"{round(interval_s * 900)}ms",
            "evaluation_interval": interval,
        },
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": "loragate", "static_configs": [{"targets": list(targets)}]}
        ],
    }


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document; an HTTP error with a JSON body (a Prometheus API error) is returned."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return json.loads(exc.read())


@dataclass
class PrometheusProcess:
    """A prometheus process its starter owns: its own storage under `workdir`, a free port."""

    workdir: Path
    targets: Sequence[str]
    rule_files: Sequence[Path] = ()
    interval_s: float = 1.0
    exe: str | None = None  # default: `prometheus` on PATH
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        for rule in self.rule_files:
            shutil.copy(rule, self.workdir / rule.name)
        names = [rule.name for rule in self.rule_files]
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(prometheus_config(self.targets, names, self.interval_s)))
        return path

    def start(self, timeout: float = 30.0) -> None:
        """Launch and wait (bounded) until /-/ready answers 200; raise with the log tail."""
        exe = self.exe or shutil.which("prometheus")
        if exe is None:
            raise PrometheusNotInstalled("prometheus is not installed (`make sysdeps` installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        config = self.write_config()
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [exe, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus not ready in {timeout:.0f}s: {self.log()}")
            time.sleep(0.1)  # poll interval of a bounded readiness wait

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:  # noqa: S310
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        return get_json(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")

    def query(self, expr: str) -> Any:
        """One instant query; the API's JSON (status "success" or "error")."""
        return self.api("query", query=expr)

    def query_until(self, expr: str, ready: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        """Poll an instant query until `ready(answer)`, a query error, or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.query(expr)
            if response.get("status") != "success" or ready(response):
                return response
            if time.monotonic() >= deadline:
                return response
            time.sleep(0.25)  # poll interval of a bounded wait for a scrape or an evaluation

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its group's name under `group`."""
        return [
            {**rule, "group": group["name"]}
            for group in self.api("rules")["data"]["groups"]
            for rule in group["rules"]
        ]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
