"""One /metrics for several worker processes on one port (`loragate serve --workers N`).

Why an aggregator instead of prometheus_client's multiprocess mode: that mode writes every
increment to an mmap file under a lock (several microseconds per observation, six per request),
cannot remove the series of releases that leave the registry, and drops function gauges. Here each
worker keeps its own in-memory registry (the hot path is unchanged) and answers its exposition on
a unix socket in a directory the supervisor made; the worker a scrape lands on collects the
others' and merges them: counters, histograms and most gauges add up (requests in flight, per
replica in-flight), state gauges take the worst or the latest (`GAUGE_RULES`). A worker that died
is skipped (its socket refuses) until the supervisor replaces it.

    server = await serve_worker_metrics(directory, render)   # in each worker's lifespan
    payload = await fleet_payload(directory, render)         # in GET /metrics
    stop_worker_metrics(server, directory)                   # at shutdown
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

WORKERS_DIR_ENV = "LORAGATE_WORKERS_DIR"
# gauge family -> how worker values combine (default: sum)
GAUGE_RULES: dict[str, Callable[[list[float]], float]] = {
    "loragate_registry_redis_up": min,
    "loragate_engine_healthy": max,
    "loragate_engine_ejected": max,
    "loragate_engine_resident_adapters": max,
    "loragate_registry_snapshot_age_seconds": max,
    "loragate_registry_epoch": max,
    "loragate_canary_weight": max,
    "loragate_canary_local_fallback": max,
    "loragate_canary_fleet_gateways": max,
    "loragate_tenant_budget": max,
    "loragate_tenant_budget_period_seconds": max,
    "loragate_tenant_spend": max,
}
Render = Callable[[], bytes]


async def serve_worker_metrics(directory: Path, render: Render) -> asyncio.Server:
    path = directory / f"worker-{os.getpid()}.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(render())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_unix_server(answer, path=str(path))


FETCH_TIMEOUT_S = 2.0


def stop_worker_metrics(server: asyncio.Server, directory: Path) -> None:
    server.close()
    with contextlib.suppress(FileNotFoundError):
        (directory / f"worker-{os.getpid()}.sock").unlink()


async def _fetch(path: Path) -> bytes | None:
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                return await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None  # a worker that died (or is being replaced): skipped


def _sockets(directory: Path) -> list[Path]:
    own = f"worker-{os.getpid()}.sock"
    return sorted(p for p in directory.glob("worker-*.sock") if p.name != own)


async def fleet_payload(directory: Path, render: Render) -> bytes:
    others = _sockets(directory)  # a directory of N entries: no thread needed
    fetched = await asyncio.gather(*(_fetch(p) for p in others))
    return merge([render(), *(f for f in fetched if f is not None)])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def merge(payloads: list[bytes]) -> bytes:
    """The text expositions of several workers as one (same families, values combined)."""
    docs: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for payload in payloads:
        for family in text_string_to_metric_families(payload.decode()):
            docs.setdefault(family.name, (family.documentation, family.type))
            per = values.setdefault(family.name, {})
            for s in family.samples:
                assert isinstance(s, Sample)
                key = (s.name, tuple(sorted(s.labels.items())))
                per.setdefault(key, []).append(s.value)
    lines: list[str] = []
    for name, (doc, kind) in docs.items():
        lines.append(f"# HELP {name} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {name} {kind}")
        rule = GAUGE_RULES.get(name, sum) if kind == "gauge" else sum
        for (sample, labels), vals in values[name].items():
            if sample.endswith("_created"):
                value = min(vals)
            elif kind == "info":
                value = max(vals)
            else:
                value = rule(vals)
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample}{{{label_text}}} {value!r}" if labels else f"{sample} {value!r}")
    return ("\n".join(lines) + "\n").encode()
