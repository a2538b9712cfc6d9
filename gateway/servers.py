"""The HTTP server under the gateway app: uvicorn (httptools + uvloop) or granian (a Rust HTTP
core, its ASGI interface), chosen by `LORAGATE_SERVER` or `loragate serve --server`.

    run(create_app(settings), settings)                  # one process, blocks until SIGTERM/SIGINT
    run_workers("gateway.app:worker_app", settings, 4)   # N processes on one port

Both serve the same ASGI app: the hot route is raw ASGI (gateway/serving/asgi.py) either way.
granian's RSGI interface is not offered: it is a second request interface (no ASGI `receive`/
`send`), so it would need a second copy of the HTTP edge of every route; see loadtests/README.md.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Literal

from starlette.types import ASGIApp

from gateway.settings import Settings

ServerName = Literal["uvicorn", "granian"]
GRACEFUL_S = 10
# granian logs through the process's root handler (gateway/observability/logs.py), like uvicorn.
_GRANIAN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"propagate": True, "level": "WARNING"},
        "granian.access": {"propagate": True, "level": "WARNING"},
    },
}


def run(app: ASGIApp, settings: Settings) -> None:
    if settings.server == "granian":
        _run_granian(app, settings)
        return
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's loggers go through loragate's one format
        **uvicorn_options(),
    )


def run_workers(factory: str, settings: Settings, workers: int) -> None:
    """N processes on one port; `factory` ("module:function") builds each one's app."""
    if settings.server == "granian":
        from granian.constants import Interfaces
        from granian.server import Server

        server = Server(
            factory,
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=workers,
            workers_kill_timeout=GRACEFUL_S,
            **granian_options(),
        )
        server.serve()
        return
    import uvicorn

    uvicorn.run(
        factory, factory=True, workers=workers, host=settings.host, port=settings.port,
        **uvicorn_options(),
    )  # fmt: skip


def uvicorn_options() -> dict[str, Any]:
    from gateway.serving.head_limit import BoundedHeadProtocol

    return {
        "http": BoundedHeadProtocol,  # httptools, with a bound on the request head
        "log_level": "warning",
        "access_log": False,  # the request log (LORAGATE_REQUEST_LOG) says more, as JSON
        "proxy_headers": False,  # loragate never uses the client address; saves work per request
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_S,
    }


def granian_options() -> dict[str, Any]:
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    return {
        "http": HTTPModes.http1,  # what vLLM clients and the OpenAI SDK speak; no h2c upgrade
        "runtime_threads": 1,  # one Rust I/O thread next to the event loop's
        "websockets": False,
        "backlog": 2048,  # uvicorn's default: a burst of connects is queued, not refused
        "http1_settings": HTTP1Settings(header_read_timeout=30_000, keep_alive=True),
        "log_enabled": True,
        "log_level": LogLevels.warning,
        "log_dictconfig": _GRANIAN_LOGGING,
        "log_access": False,
    }


def _run_granian(app: ASGIApp, settings: Settings) -> None:
    """granian's embedded server, in this process's uvloop loop (the app object as it is, its
    lifespan run by granian); SIGTERM and SIGINT stop it gracefully."""
    import uvloop
    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def serve() -> None:
        server = Server(
            app,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            **granian_options(),
        )
        server.workers_kill_timeout = GRACEFUL_S
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.stop)
        await server.serve()

    uvloop.run(serve())
