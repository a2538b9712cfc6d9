"""The `loragate` console script: `serve`, `admin ...`, `adapters ...`, `demo run|up|down`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.servers import run
    from gateway.settings import Settings

    settings = Settings()
    if args.config:
        from pathlib import Path

        settings = Settings.from_file(Path(args.config))
    from gateway.observability.logs import configure_logging

    update: dict[str, object] = {
        "host": args.host or settings.host,
        "port": args.port or settings.port,
    }
    if args.server:
        update["server"] = args.server
    settings = settings.model_copy(update=update)
    configure_logging(settings.log_format, settings.log_level)
    workers = args.workers or settings.workers
    if workers > 1:
        return _serve_workers(args, settings, workers)  # each worker starts its own writer
    writer = None
    if settings.request_log:
        from gateway.observability.requestlog import start_writer

        writer = start_writer()
    try:
        run(create_app(settings), settings)
    finally:
        if writer is not None:
            writer.stop()
    return 0


def _serve_workers(args: argparse.Namespace, settings: Settings, workers: int) -> int:
    """N processes on one port (the server's supervisor shares the listening socket and restarts
    a worker that dies). Each is a gateway of its own to Redis: limits, canary windows and engine
    time are shared there; /metrics merges the workers' (gateway/observability/workers.py)."""
    import os
    import tempfile
    from pathlib import Path

    from gateway.app import CONFIG_ENV
    from gateway.observability.workers import WORKERS_DIR_ENV
    from gateway.servers import run_workers

    with tempfile.TemporaryDirectory(prefix="loragate-workers-") as directory:
        os.environ[WORKERS_DIR_ENV] = directory
        os.environ["LORAGATE_SERVER"] = settings.server
        if args.config:
            os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
        run_workers("gateway.app:worker_app", settings, workers)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loragate")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loragate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loragate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (configured by LORAGATE_* env vars)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--config", default=None, help="JSON settings file")
    serve.add_argument(
        "--workers", type=int, default=None,
        help="processes on the one port (default: LORAGATE_WORKERS or 1)",
    )  # fmt: skip
    serve.add_argument(
        "--server", choices=("uvicorn", "granian"), default=None,
        help="the HTTP server under the app (default: LORAGATE_SERVER or uvicorn)",
    )  # fmt: skip
    serve.set_defaults(func=_serve)

    from gateway import demo
    from gateway.admin import cli as admin_cli

    admin_cli.register(sub)
    demo.register(sub)
    try:
        from adapters import cli as adapters_cli
    except ImportError:  # pragma: no cover - only without the adapters package
        pass
    else:
        adapters_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
