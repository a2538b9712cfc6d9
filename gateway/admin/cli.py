"""`loragate admin ...`: drives the admin API. Readable tables by default, `--json` for scripts.

Connection: `--url` / LORAGATE_URL (default http://127.0.0.1:8000) and `--token` /
LORAGATE_ADMIN_TOKEN; with neither set, `.loragate/demo.json` (written by the demo) is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.admin import client as api
from gateway.admin import push_cli
from registry.models import PRIORITY_CLASSES


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    url = args.url or os.environ.get("LORAGATE_URL")
    token = args.token or os.environ.get("LORAGATE_ADMIN_TOKEN")
    demo = Path(".loragate/demo.json")
    if (not url or not token) and demo.exists():
        data = json.loads(demo.read_text())
        url = url or data["gateway_url"]
        token = token or data["admin_token"]
    return (url or "http://127.0.0.1:8000").rstrip("/"), token or ""


def _send(args: argparse.Namespace, call: api.AdminCall[Any]) -> Any:
    """Send one admin call; its answer as JSON data (what `--json` prints)."""
    url, token = _connection(args)
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
    return _data(answer)


def _data(answer: Any) -> Any:
    if isinstance(answer, BaseModel):
        return answer.model_dump(mode="json")
    if isinstance(answer, list):
        return [_data(item) for item in answer]
    return answer


def _print(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json or columns is None:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)
    ]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _json_arg(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _current_revision(args: argparse.Namespace) -> int:
    if args.expected_revision is not None:
        return int(args.expected_revision)
    return int(_send(args, api.get_model(args.tenant, args.alias))["revision"])


def _run(args: argparse.Namespace) -> int:
    action = args.admin_action
    alias_cols = ["alias", "stable", "canary", "canary_weight", "revision", "flags"]
    call: api.AdminCall[Any]
    if action == "tenants-create":
        call = api.create_tenant(
            args.tenant,
            display_name=args.display_name,
            plan=args.plan,
            limits=_json_arg(args.limits),
            weight=args.weight,
            priority=args.priority,
        )
        _print(args, _send(args, call), ["id", "display_name", "plan", "limits"])
    elif action == "tenants-list":
        _print(args, _send(args, api.list_tenants()), ["id", "display_name", "plan", "limits"])
    elif action == "tenants-show":
        data = _send(args, api.get_tenant(args.tenant))
        if args.json:
            _print(args, data)
        else:
            _print(args, data, ["id", "display_name", "plan", "limits", "usage"])
            print()
            _print(args, data.get("models", []), alias_cols)
    elif action == "tenants-limits":
        data = _send(args, api.update_tenant(args.tenant, limits=_json_arg(args.limits)))
        _print(args, data, ["id", "limits"])
    elif action == "tenants-scheduling":
        call = api.update_tenant(
            args.tenant, plan=args.plan, weight=args.weight, priority=args.priority
        )
        _print(args, _send(args, call), ["id", "plan", "weight", "priority"])
    elif action == "priority":
        call = api.set_flags(
            args.tenant, args.alias,
            priority=args.priority, expected_revision=_current_revision(args),
        )  # fmt: skip
        _print(args, _send(args, call), alias_cols)
    elif action == "keys-create":
        _print(args, _send(args, api.issue_key(args.tenant)), ["key_id", "api_key"])
    elif action == "keys-revoke":
        _send(args, api.revoke_key(args.tenant, args.key_id))
        print(f"revoked {args.key_id}")
    elif action == "adapters-register":
        call = api.register_adapter(
            args.tenant, args.name, args.path, metadata=_json_arg(args.metadata) or {}
        )
        _print(args, _send(args, call), ["ref", "digest", "rank", "target_modules", "size_bytes"])
    elif action == "prompts-register":
        system = Path(args.system_file).read_text() if args.system_file else args.system
        call = api.register_prompt(
            args.tenant, args.name, system or "",
            params=_json_arg(args.params) or {}, response_schema=_json_arg(args.schema),
        )  # fmt: skip
        _print(args, _send(args, call), ["ref", "system_prompt"])
    elif action == "releases-create":
        call = api.create_release(
            args.tenant, args.alias, adapter=args.adapter, prompt=args.prompt,
            params=_json_arg(args.params) or {}, eval=_json_arg(args.eval),
            thresholds=_json_arg(args.thresholds), schema_violation=args.schema_violation,
        )  # fmt: skip
        _print(args, _send(args, call), ["release", "adapter", "prompt"])
    elif action == "models-list":
        _print(args, _send(args, api.list_models(args.tenant)), alias_cols)
    elif action == "models-show":
        _print(args, _send(args, api.get_model(args.tenant, args.alias)), alias_cols)
    elif action == "canary":
        call = api.canary(
            args.tenant, args.alias, args.release, args.weight, _current_revision(args)
        )
        _print(args, _send(args, call), alias_cols)
    elif action == "promote":
        call = api.promote(args.tenant, args.alias, _current_revision(args))
        _print(args, _send(args, call), alias_cols)
    elif action == "rollback":
        call = api.rollback(
            args.tenant, args.alias, args.reason, expected_revision=_current_revision(args)
        )
        _print(args, _send(args, call), alias_cols)
    elif action == "kill-switch":
        call = api.set_flags(
            args.tenant, args.alias,
            kill_switch=args.state == "on", expected_revision=_current_revision(args),
        )  # fmt: skip
        _print(args, _send(args, call), alias_cols)
    elif action == "eval":
        return _eval(args)
    elif action == "audit":
        data = _send(args, api.audit(args.tenant, args.count))
        if not args.json:
            for entry in data:
                stamp = float(entry.get("time") or 0)
                entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
        _print(args, data, ["time", "actor", "action", "tenant", "target", "reason"])
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Run a release's evaluation set; exit status 1 when it does not pass (for scripts)."""
    data = _send(args, api.evaluate(args.tenant, args.alias, args.release))
    if args.json:
        _print(args, data)
    else:
        verdict = "passed" if data["passed"] else "FAILED"
        print(
            f"release {data['release']}: {verdict} "
            f"(pass rate {data['pass_rate']:.2f}, required {data['min_pass_rate']:.2f})"
        )
        _print(args, data["cases"], ["case", "name", "passed", "latency_ms", "failures"])
    return 0 if data["passed"] else 1


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operate tenants, keys, versions, releases, rollouts")
    admin.add_argument("--url", default=None)
    admin.add_argument("--token", default=None)
    admin.add_argument("--json", action="store_true", help="machine-readable output")
    actions = admin.add_subparsers(dest="admin_action", required=True)

    def add(name: str, help_text: str, *positional: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        return p

    p = add("tenants-create", "create a tenant", "tenant")
    p.add_argument("--display-name", default="")
    p.add_argument("--plan", default="default")
    p.add_argument("--limits", help='JSON, e.g. {"max_concurrency": 2}')
    _scheduling_args(p)
    add("tenants-list", "list tenants")
    add("tenants-show", "a tenant, its limits, usage and models", "tenant")
    p = add("tenants-limits", "replace a tenant's limits", "tenant")
    p.add_argument("limits", help='JSON, e.g. {"requests_per_minute": 10}')
    p = add("tenants-scheduling", "set a tenant's plan, fair-queue weight or class", "tenant")
    p.add_argument("--plan", default=None)
    _scheduling_args(p)
    add("keys-create", "issue a key (shown once)", "tenant")
    add("keys-revoke", "revoke a key", "tenant", "key_id")
    p = add(
        "adapters-register", "validate and register an adapter version", "tenant", "name", "path"
    )
    p.add_argument("--metadata", help="JSON")
    p = add("prompts-register", "register a prompt version", "tenant", "name")
    p.add_argument("--system", default=None)
    p.add_argument("--system-file", default=None)
    p.add_argument("--params", help="JSON default sampling params")
    p.add_argument("--schema", help="JSON schema the output must match")
    p = add("releases-create", "create a release (adapter@v + prompt@v)", "tenant", "alias")
    p.add_argument("--adapter", default=None, help="name@version")
    p.add_argument("--prompt", default=None, help="name@version")
    p.add_argument("--params", default=None)
    p.add_argument("--eval", default=None, help="JSON evaluation set")
    p.add_argument("--thresholds", default=None, help="JSON canary guard thresholds")
    p.add_argument("--schema-violation", choices=["pass", "reject"], default="pass")
    add("models-list", "a tenant's model aliases", "tenant")
    add("models-show", "an alias: stable, canary, weight, revision, history", "tenant", "alias")
    for name, help_text in (
        ("canary", "start a canary or change its weight"),
        ("promote", "canary becomes stable"),
        ("rollback", "back to the last good stable"),
        ("kill-switch", "serve the base model with the stable prompt"),
        ("priority", "the alias's scheduling class (overrides the tenant's)"),
    ):
        p = add(name, help_text, "tenant", "alias")
        p.add_argument("--expected-revision", type=int, default=None, help="default: current")
        if name == "canary":
            p.add_argument("release")
            p.add_argument("--weight", type=float, required=True)
        if name == "rollback":
            p.add_argument("--reason", required=True)
        if name == "kill-switch":
            p.add_argument("state", choices=["on", "off"])
        if name == "priority":
            p.add_argument("priority", choices=PRIORITY_CLASSES)
    p = add("eval", "run a release's evaluation set (default: canary, else stable)", "tenant",
            "alias")  # fmt: skip
    p.add_argument("release", nargs="?", default=None)
    push_cli.register(add)
    p = add("audit", "the audit log")
    p.add_argument("--tenant", default=None)
    p.add_argument("--count", type=int, default=50)
    admin.set_defaults(func=_run)


def _scheduling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight", type=float, default=None, help="fair-queue share (0.1-100)")
    p.add_argument("--priority", choices=PRIORITY_CLASSES, default=None)
