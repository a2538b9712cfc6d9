"""The `loragate` console script: `serve`, `admin ...`, `adapters ...`, `demo run|up|down`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import Settings

    settings = Settings()
    if args.config:
        from pathlib import Path

        settings = Settings.from_file(Path(args.config))
    host = args.host or settings.host
    port = args.port or settings.port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    writer = None
    if settings.request_log:
        from gateway.observability.requestlog import start_writer

        writer = start_writer()
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,  # the request log (LORAGATE_REQUEST_LOG) says more, as JSON
            proxy_headers=False,  # loragate never uses the client address; saves work per request
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if writer is not None:
            writer.stop()
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
