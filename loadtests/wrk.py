"""Closed-loop throughput with Debian's `wrk` (C, one thread): the Python generator cannot drive
thousands of requests per second from the core it shares with the mock, wrk can.

A generated Lua script rotates over the same (headers, body) pairs as the Python generator and
prints one JSON line from `done()` with the percentiles we report (wrk's own text has no P95).

    result = run_wrk(target, concurrency=64, duration=4.0, cpu=1)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loadtests.loadgen import Target

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50": %d, "p95": %d, "p99": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(raw: str) -> str:
    return json.dumps(raw)  # JSON string escapes are valid Lua string escapes for ASCII


def lua_script(target: Target) -> str:
    lines = ["local reqs = {}", "local n = 0", "init = function(args)"]
    for headers, body in target.requests:
        pairs = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
        lines.append(
            f'  n = n + 1; reqs[n] = wrk.format("POST", nil, {{{pairs}}}, '
            f"{_lua_string(body.decode())})"
        )
    lines += [
        "end",
        "local i = 0",
        "request = function()",
        "  i = i % n + 1",
        "  return reqs[i]",
        "end",
        _DONE,
    ]
    return "\n".join(lines)


def run_wrk(
    target: Target, *, concurrency: int, duration: float, cpu: int | None
) -> dict[str, Any]:
    """Run wrk for `duration` seconds; returns a summary shaped like `RunStats.summary()`."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (make bench installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(lua_script(target))
        cmd = [exe, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
        cmd += ["-s", str(script), target.url]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    raw = json.loads(line[len("WRKJSON ") :])
    elapsed = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = max(0, raw["requests"] - raw["status"])
    kinds = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "requests": raw["requests"],
        "ok": ok,
        "errors": errors,
        "error_rate": errors / raw["requests"] if raw["requests"] else 0.0,
        "error_kinds": kinds,
        "throughput_rps": ok / elapsed if elapsed else 0.0,
        "elapsed_s": elapsed,
        "latency_p50_ms": raw["p50"] / 1000.0,
        "latency_p95_ms": raw["p95"] / 1000.0,
        "latency_p99_ms": raw["p99"] / 1000.0,
    }
