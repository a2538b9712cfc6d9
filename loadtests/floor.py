"""The floor under the gateway: what a Python server and client cost with no gateway in them.

Issue 22 asks for 8,000 requests/s per core through the full feature path. This harness measures
what is left when the feature path is removed: four minimal apps, each on one pinned core, that
read the request body and either answer a canned completion (`echo`: the server alone) or forward
the body to the mock engine and relay its answer (`proxy`: server plus aiohttp client, the two
halves of a gateway). Beside them, in the same run and on the same core, loragate itself. Arms
are interleaved per repetition; wrk drives each from the other core.

    .venv/bin/python -m loadtests.floor --out bench-results/floor     # also in `make bench-22`

Servers: uvicorn (httptools + uvloop: loragate's default), granian's ASGI and RSGI interfaces
(Rust HTTP core; RSGI passes the body and the answer without ASGI's message dicts), and
aiohttp.web (one library for both halves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from adapters.ports import free_port
from gateway.engines.lean import LeanClient
from loadtests import stack, wrk
from loadtests.bench import chat_body, targets
from loadtests.loadgen import Target
from loadtests.mock_upstream import completion_body
from loadtests.procs import Proc

ENV_UPSTREAM = "FLOOR_UPSTREAM"  # the mock's chat route, or "" for echo
ENV_LEAN = "FLOOR_LEAN"  # set: forward with the lean keep-alive client, not aiohttp
CANNED = completion_body(stack.BASE_MODEL)  # what the mock engine answers
JSON_HEADERS = {"content-type": "application/json"}
GATEWAY_CPU, CLIENT_CPU = 0, 1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class Forward:
    """The one thing every minimal app does: the body in, the engine's answer (or the canned
    one) out. The aiohttp session is made on first use, inside the server's loop."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, body: bytes) -> tuple[int, bytes]:
        if not self.upstream:
            return 200, CANNED
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), skip_auto_headers=("User-Agent",)
            )
        async with self._session.post(self.upstream, data=body, headers=JSON_HEADERS) as r:
            return r.status, await r.read()


class LeanForward(Forward):
    """`Forward` over the gateway's own lean keep-alive client (`gateway/engines/lean.py`), so
    the minimal app's figure is that client's cost, not a sketch of it."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.client = LeanClient()

    async def __call__(self, body: bytes) -> tuple[int, bytes]:
        response = await self.client.post(
            self.upstream, body, None, connect_timeout=5.0, read_timeout=30.0
        )
        try:
            return response.status, await response.read()
        finally:
            response.release()


def _forward() -> Forward:
    upstream = os.environ.get(ENV_UPSTREAM, "")
    return LeanForward(upstream) if upstream and os.environ.get(ENV_LEAN) else Forward(upstream)


def asgi_app() -> Callable[..., Awaitable[None]]:
    """Factory for uvicorn and granian (`--factory loadtests.floor:asgi_app`); `FLOOR_LEAN=1`
    forwards with the lean client instead of aiohttp."""
    forward = _forward()

    async def app(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        status, payload = await forward(b"".join(chunks))
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


class _Rsgi:
    def __init__(self) -> None:
        self.forward = _forward()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        status, payload = await self.forward(await protocol())
        protocol.response_bytes(status, [("content-type", "application/json")], payload)


def rsgi_app() -> _Rsgi:
    """Factory for granian's RSGI interface."""
    return _Rsgi()


def serve_aiohttp(port: int) -> None:
    forward = _forward()

    async def handle(request: web.Request) -> web.Response:
        status, payload = await forward(await request.read())
        return web.Response(status=status, body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=_uvloop())


def _uvloop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": lambda port: [
        sys.executable, "-m", "uvicorn", "--factory", "loadtests.floor:asgi_app",
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--no-server-header",
    ],
    "granian-asgi": lambda port: [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--http", "1", "--no-ws",
        "--runtime-threads", "1", "--loop", "uvloop", "--log-level", "warning",
        "loadtests.floor:asgi_app",
    ],
    "granian-rsgi": lambda port: [
        sys.executable, "-m", "granian", "--interface", "rsgi", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--http", "1", "--no-ws",
        "--runtime-threads", "1", "--loop", "uvloop", "--log-level", "warning",
        "loadtests.floor:rsgi_app",
    ],
    "aiohttp": lambda port: [sys.executable, "-m", "loadtests.floor", "--serve-aiohttp", str(port)],
}  # fmt: skip


def _measure(target: Target, proc: Proc | None, seconds: float) -> dict[str, Any]:
    cpu0 = proc.cpu_seconds() if proc else 0.0
    started = time.perf_counter()
    result = wrk.run_wrk(target, concurrency=16, duration=seconds, cpu=CLIENT_CPU)
    wall = time.perf_counter() - started
    if proc is not None:
        used = proc.cpu_seconds() - cpu0
        result["cpu_us_per_req"] = used / max(1, result["ok"]) * 1e6
        result["cpu_util"] = used / wall
    return result


def run(out: Path, *, reps: int, seconds: float) -> dict[str, Any]:
    work = (out / "work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    services: list[Proc] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    load: list[float] = []
    try:
        mock = stack.start_mock(work, ports=[free_port()], cpu=CLIENT_CPU, chunks=8,
                                interval_ms=1)  # fmt: skip
        services.append(mock.proc)
        route = "/v1/chat/completions"
        body = chat_body(stack.BASE_MODEL, stream=False)
        arms: dict[str, tuple[Target, Proc | None]] = {
            "direct (mock)": (Target(mock.url + route, [(JSON_HEADERS, body)]), None)
        }
        for name, command in SERVERS.items():
            modes = [("echo", "", ""), ("proxy", mock.url + route, "")]
            if name == "uvicorn":
                modes.append(("lean proxy", mock.url + route, "1"))
            for mode, upstream, lean in modes:
                port = free_port()
                env = {**os.environ, ENV_UPSTREAM: upstream, ENV_LEAN: lean}
                proc = Proc.start(
                    f"{name}-{mode.replace(' ', '-')}", command(port), log_dir=work / "logs",
                    cpu=GATEWAY_CPU, env=env, cwd=stack.REPO,
                )  # fmt: skip
                services.append(proc)
                status, _ = post(f"http://127.0.0.1:{port}{route}", body, proc)
                if status != 200:
                    raise RuntimeError(f"{proc.name} answered {status}:\n{proc.tail()}")
                arms[f"{name} {mode}"] = (Target(f"http://127.0.0.1:{port}{route}",
                                                 [(JSON_HEADERS, body)]), proc)  # fmt: skip
        redis = stack.start_redis(work, cpu=CLIENT_CPU)
        services.append(redis.proc)
        # Both gateways on the one registry (same key secret and admin token), seeded once.
        shared = {
            "LORAGATE_ADMIN_TOKEN": "lgadm-" + secrets.token_urlsafe(16),
            "LORAGATE_KEY_HMAC_SECRET": secrets.token_hex(32),
        }
        keys: list[str] = []
        for client in ("aiohttp", "lean"):
            gw = stack.start_loragate(
                work, redis_url=redis.url, engines=[mock.url], cpu=GATEWAY_CPU,
                name=f"loragate-{client}",
                settings={**shared, "LORAGATE_UPSTREAM_CLIENT": client},
            )  # fmt: skip
            services.append(gw.proc)
            keys = keys or [t["api_key"] for t in stack.seed_loragate(
                gw.url, gw.admin_token, store=work / "adapters", tenants=8, canary_weight=0.2,
            )]  # fmt: skip
            target = targets(gw.url, "chat", keys, frames=8)[0]
            arms[f"loragate, {client} client"] = (target, gw.proc)
        for target, server in arms.values():  # warm: connections open, adapters resident
            _measure(target, server, 1.0)
        names = list(arms)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                target, server = arms[name]
                row = _measure(target, server, seconds)
                rows.setdefault(name, []).append(row)
                load.append(os.getloadavg()[0])
                print(f"[floor] r{rep} {name:22} {row['throughput_rps']:8.0f} req/s "
                      f"{row.get('cpu_us_per_req', 0):6.0f} us/req errors {row['errors']}",
                      flush=True)  # fmt: skip
    finally:
        for proc in reversed(services):
            proc.stop()
        os.sched_setaffinity(0, all_cpus)
    summary = {
        name: {
            "req_s": statistics.median(r["throughput_rps"] for r in runs),
            "cpu_us_per_req": statistics.median(r.get("cpu_us_per_req", 0.0) for r in runs),
            "cpu_util": statistics.median(r.get("cpu_util", 0.0) for r in runs),
            "p95_ms": statistics.median(r["latency_p95_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
        for name, runs in rows.items()
    }
    result = {"summary": summary, "load_avg": load, "reps": reps, "seconds": seconds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "floor.json").write_text(json.dumps(result, indent=2))
    (out / "floor.md").write_text(report(result))
    return result


def post(url: str, body: bytes, proc: Proc, timeout: float = 30.0) -> tuple[int, bytes]:
    """The first answer of an app that is starting (bounded; the minimal apps have no /health)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            request = urllib.request.Request(url, data=body, headers=JSON_HEADERS)
            with urllib.request.urlopen(request, timeout=1) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)  # poll interval of a bounded wait: not up yet
    raise TimeoutError(f"{proc.name} not answering at {url}:\n{proc.tail()}")


def report(result: dict[str, Any]) -> str:
    load = result["load_avg"]
    lines = [
        "# The floor under the gateway (issue 22)",
        "",
        f"- wrk, 16 connections, {result['seconds']:.0f} s per run, {result['reps']} "
        "repetitions, arms interleaved; server on core 0, wrk and the mock engine on core 1",
        f"- load average (1 min) during the runs: min {min(load):.2f}, mean "
        f"{statistics.mean(load):.2f}, max {max(load):.2f}",
        "- echo: the server answers a canned completion; proxy: it forwards the body to the mock "
        "with aiohttp and relays the answer",
        "",
        "| arm | req/s (median) | server CPU us/req | server CPU use | P95 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        cpu = f"{s['cpu_us_per_req']:.0f}" if s["cpu_us_per_req"] else "-"
        util = f"{s['cpu_util'] * 100:.0f}%" if s["cpu_util"] else "-"
        lines.append(
            f"| {name} | {s['req_s']:,.0f} | {cpu} | {util} | {s['p95_ms']:.2f} | {s['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/floor"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve-aiohttp", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_aiohttp is not None:
        serve_aiohttp(args.serve_aiohttp)
        return 0
    if (os.cpu_count() or 1) < 2 or not wrk.available():
        print("[floor] needs 2 cores and wrk (make bench installs it)", file=sys.stderr)
        return 2
    result = run(args.out, reps=args.reps, seconds=args.seconds)
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
