"""What every `loragate admin` command shares: the connection (URL and token, from options, the
environment or the demo), sending one admin call, and printing its answer as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.admin import client as api


class UsageError(Exception):
    """Bad input on the command line (a one-line error and exit 2, never a traceback)."""


def given_token(args: argparse.Namespace) -> str | None:
    """--token, --token-file, LORAGATE_ADMIN_TOKEN, LORAGATE_ADMIN_TOKEN_FILE, in that order."""
    if getattr(args, "token", None):
        return str(args.token)
    path = getattr(args, "token_file", None) or None
    if path is None and not os.environ.get("LORAGATE_ADMIN_TOKEN"):
        path = os.environ.get("LORAGATE_ADMIN_TOKEN_FILE") or None
    if path is not None:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    return os.environ.get("LORAGATE_ADMIN_TOKEN")


def connection(args: argparse.Namespace) -> tuple[str, str]:
    url = getattr(args, "url", None) or os.environ.get("LORAGATE_URL")
    token = given_token(args)
    demo = Path(".loragate/demo.json")
    if (not url or not token) and demo.exists():
        try:
            data = json.loads(demo.read_text())
            url = url or data["gateway_url"]
            token = token or data["admin_token"]
        except (ValueError, KeyError, TypeError, OSError):
            raise UsageError(f"{demo} is not a demo file; set --url and --token") from None
    return (url or "http://127.0.0.1:8000").rstrip("/"), token or ""


def send(args: argparse.Namespace, call: api.AdminCall[Any]) -> Any:
    """Send one admin call; its answer as JSON data (what `--json` prints)."""
    url, token = connection(args)
    try:
        with api.AdminClient(url, token) as client:
            answer = client.send(call)
    except api.AdminUnreachable as exc:
        print(f"error: cannot reach {url}: {exc.reason}", file=sys.stderr)
        raise SystemExit(3) from None
    except api.AdminError as exc:
        if args.json:
            print(json.dumps(exc.body, indent=2))
        else:
            print(f"error {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    return data_of(answer)


def data_of(answer: Any) -> Any:
    if isinstance(answer, BaseModel):
        return answer.model_dump(mode="json")
    if isinstance(answer, list):
        return [data_of(item) for item in answer]
    return answer


def show(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json or columns is None:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    table = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)
    ]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
