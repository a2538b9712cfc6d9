"""The tracing arm of `make bench`: the same sweep through a second loragate with OTLP export on.

`loragate-otel` is a second gateway process on the same core, Redis, registry and keys as the
`loragate` arm (a two-gateway fleet), started with `LORAGATE_OTLP_ENDPOINT` pointing at an
OTLP/HTTP receiver on 127.0.0.1 (loadtests/otlp_sink.py, on the client core) that decodes and
counts every export and keeps nothing. So the traced arm pays the whole cost: a root span and nine
phase marks per request, the child spans built when the request is metered, the batch processor's
thread serialising protobuf and POSTing it (the GIL it takes from the event loop included). The
bench interleaves it with the other arms in every repetition; `summary` pairs the two gateways run
by run (same repetition, mode and level) so the difference is read against the spread.

    sink, gw_otel = start(work, redis_url=..., engines=..., cpu=0, client_cpu=1, shared=...)
    ... the sweep ...
    totals = finish(sink, gw_otel, requests=n)     # stops the traced gateway: spans flushed
"""

from __future__ import annotations

import json
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

from adapters.ports import free_port
from loadtests import stack
from loadtests.procs import Proc

ARM = "loragate-otel"
BASE = "loragate"
COMPARED = ("latency_p50_ms", "latency_p95_ms", "throughput_rps", "gateway_cpu_us_per_req",
            "ttft_p50_ms")  # fmt: skip


def start_sink(work: Path, *, cpu: int | None) -> stack.Service:
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.otlp_sink", "--port", str(port)]
    proc = Proc.start("otlp-sink", cmd, log_dir=work / "logs", cpu=cpu, cwd=stack.REPO)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/stats", timeout=30)
    return stack.Service(proc, url, extra={"endpoint": url + "/v1/traces"})


def start(
    work: Path,
    *,
    redis_url: str,
    engines: list[str],
    cpu: int | None,
    client_cpu: int | None,
    shared: dict[str, str],
) -> tuple[stack.Service, stack.Service]:
    """The sink, then the traced gateway (`shared`: the admin token and key secret of the fleet)."""
    sink = start_sink(work, cpu=client_cpu)
    try:
        gw = stack.start_loragate(
            work, redis_url=redis_url, engines=engines, cpu=cpu, name=ARM,
            settings={**shared, "LORAGATE_OTLP_ENDPOINT": sink.extra["endpoint"],
                      "LORAGATE_OTEL_SERVICE_NAME": "loragate-bench"},
        )  # fmt: skip
    except BaseException:
        sink.proc.stop()
        raise
    return sink, gw


def sink_stats(sink: stack.Service) -> dict[str, int]:
    with urllib.request.urlopen(sink.url + "/stats", timeout=10) as resp:
        stats: dict[str, int] = json.loads(resp.read())
    return stats


def finish(sink: stack.Service, gw: stack.Service, *, requests: int) -> dict[str, Any]:
    """Stop the traced gateway (its shutdown flushes the queued spans), then read the sink."""
    gw.proc.stop(grace=30)
    stats = sink_stats(sink)
    return {
        **stats,
        "requests": requests,
        "spans_per_request": stats["spans"] / max(1, requests),
        "sink_cpu_s": sink.proc.cpu_seconds(),
    }


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, level): both gateways' medians and the traced-minus-untraced difference, its
    median and range over the repetitions (each pair from the same repetition)."""
    by_key: dict[tuple[str, float, str], dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec["arm"] in (ARM, BASE):
            by_key.setdefault((rec["mode"], float(rec["level"]), rec["rep"]), {})[rec["arm"]] = rec
    grouped: dict[tuple[str, float], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for (mode, level, _rep), pair in by_key.items():
        if ARM in pair and BASE in pair:
            grouped.setdefault((mode, level), []).append((pair[BASE], pair[ARM]))
    out = []
    for (mode, level), pairs in sorted(grouped.items()):
        row: dict[str, Any] = {"mode": mode, "level": level, "runs": len(pairs)}
        for metric in COMPARED:
            both = [
                (off[metric], on[metric]) for off, on in pairs if metric in off and metric in on
            ]
            if not both:
                continue
            diffs = [on - off for off, on in both]
            row[f"off_{metric}"] = statistics.median(off for off, _ in both)
            row[f"on_{metric}"] = statistics.median(on for _, on in both)
            row[f"diff_{metric}"] = statistics.median(diffs)
            row[f"diff_{metric}_range"] = (min(diffs), max(diffs))
        out.append(row)
    return out


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _diff(row: dict[str, Any], metric: str, fmt: str = "+.2f") -> str:
    if f"diff_{metric}" not in row:
        return "-"
    lo, hi = row[f"diff_{metric}_range"]
    spread = f" [{format(lo, fmt)}, {format(hi, fmt)}]" if row["runs"] > 1 else ""
    return format(row[f"diff_{metric}"], fmt) + spread


def markdown(doc: dict[str, Any]) -> list[str]:
    rows, totals = doc.get("tracing_rows") or [], doc.get("tracing") or {}
    if not rows:
        return []
    lines = [
        "",
        "## Tracing cost (OTLP export off vs on, same sweep)",
        "",
        f"`{BASE}`: no `LORAGATE_OTLP_ENDPOINT` (no tracer). `{ARM}`: a second gateway on the same "
        "core, Redis and keys, exporting every request's spans over OTLP/HTTP to a receiver on "
        "127.0.0.1 (client core) that decodes and discards them. Off/on are medians over the "
        "repetitions; *on - off* is the median of per-repetition differences, [min, max] over "
        "repetitions (the noise to read it against). Latency columns are added over direct.",
        "",
        "| mode | level | +P50 off | +P50 on | on - off P50 | +P95 off | +P95 on | on - off P95 "
        "| req/s off | req/s on | CPU us/req off | CPU us/req on | on - off CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    added = {(r["arm"], r["mode"], r["level"]): r for r in doc["rows"]}
    for row in rows:
        off = added.get((BASE, row["mode"], row["level"]), {})
        on = added.get((ARM, row["mode"], row["level"]), {})
        unit = {"open": "/s", "closed": " conns"}.get(row["mode"], " streams")
        p50 = "ttft_p50_ms" if row["mode"] == "sse" else "latency_p50_ms"
        lines.append(
            f"| {row['mode']} | {row['level']:.0f}{unit} "
            f"| {_f(off.get('added_' + p50))} | {_f(on.get('added_' + p50))} | {_diff(row, p50)} "
            f"| {_f(off.get('added_latency_p95_ms'))} | {_f(on.get('added_latency_p95_ms'))} "
            f"| {_diff(row, 'latency_p95_ms')} "
            f"| {_f(row.get('off_throughput_rps'), ',.0f')} "
            f"| {_f(row.get('on_throughput_rps'), ',.0f')} "
            f"| {_f(row.get('off_gateway_cpu_us_per_req'), '.0f')} "
            f"| {_f(row.get('on_gateway_cpu_us_per_req'), '.0f')} "
            f"| {_diff(row, 'gateway_cpu_us_per_req', '+.0f')} |"
        )
    if totals:
        lines += [
            "",
            f"Receiver: {totals['spans']:,} spans in {totals['exports']:,} exports "
            f"({totals['bytes'] / 2**20:.1f} MiB) for {totals['requests']:,} requests sent to "
            f"`{ARM}` ({totals['spans_per_request']:.2f} spans per request: a root and one per "
            "phase when every span arrives, fewer when the batch processor's queue (2,048 spans) "
            f"was full and it dropped some); receiver CPU {totals['sink_cpu_s']:.1f} s on the "
            "client core.",
        ]
    lines.append("SSE rows compare TTFT P50 (the +P50 columns) and end-to-end P95.")
    return lines
