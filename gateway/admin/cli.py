"""`loragate admin ...`: drives the admin API. Readable tables by default, `--json` (or
`-o json`) for scripts.

Connection: `--url` / LORAGATE_URL (default http://127.0.0.1:8000) and the token from `--token`,
`--token-file`, LORAGATE_ADMIN_TOKEN or LORAGATE_ADMIN_TOKEN_FILE, in that order; with no URL or
token set, `.loragate/demo.json` (written by the demo) is used. These options go anywhere on the
line. JSON arguments take `@path` to read a file. Errors are one line on stderr: exit 2 for a
refused request or bad input, 3 when the gateway cannot be reached; `audit --verify` exits 1 when
the chain does not hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.admin import client as api
from gateway.admin import push_cli
from gateway.admin.console import UsageError
from gateway.admin.console import send as _send
from gateway.admin.console import show as _print
from registry.auditchain import verify
from registry.models import PRIORITY_CLASSES, ROLES


def _json_arg(text: str | None) -> Any:
    """A JSON argument, or `@path` to read it from a file."""
    if text is None:
        return None
    source = "the argument"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None


def _current_revision(args: argparse.Namespace) -> int:
    if args.expected_revision is not None:
        return int(args.expected_revision)
    return int(_send(args, api.get_model(args.tenant, args.alias))["revision"])


def _run(args: argparse.Namespace) -> int:
    action = args.admin_action
    if action in ACCESS_ACTIONS:
        return _access(args)
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
        call = api.issue_key(
            args.tenant, name=args.name, expires_in_s=args.expires_in, aliases=args.alias,
            limits=_json_arg(args.limits),
        )  # fmt: skip
        _print(args, _send(args, call), ["key_id", "api_key", "name", "expires_at", "aliases"])
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
        if args.verify or args.export:
            return _audit_chain(args)
        data = _send(args, api.audit(args.tenant, args.count))
        if not args.json:
            for entry in data:
                stamp = float(entry.get("time") or 0)
                entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
        _print(args, data, ["time", "actor", "action", "tenant", "target", "reason"])
    return 0


ACCESS_ACTIONS = {
    "principals-create", "principals-list", "principals-revoke", "keys-list", "tenants-suspend",
    "tenants-resume", "secrets-list", "whoami",
}  # fmt: skip


def _access(args: argparse.Namespace) -> int:
    action = args.admin_action
    principal_cols = ["name", "role", "tenants", "expires_at", "revoked", "created_by"]
    if action == "principals-create":
        call = api.create_principal(
            args.name, args.role, tenants=args.tenant or None, expires_in_s=args.expires_in
        )
        data = _send(args, call)
        if args.json:
            _print(args, data)
        else:
            print(data["token"])  # shown once: the registry keeps only its HMAC
            print(f"principal {data['name']} ({data['role']}): keep the token above, it is not "
                  "shown again", file=sys.stderr)  # fmt: skip
    elif action == "principals-list":
        _print(args, _send(args, api.list_principals()), principal_cols)
    elif action == "principals-revoke":
        _print(args, _send(args, api.revoke_principal(args.name)), principal_cols)
    elif action == "keys-list":
        data = _send(args, api.list_keys(args.tenant))
        if not args.json:
            for row in data:
                for col in ("created_at", "expires_at", "last_used_at"):
                    row[col] = _stamp(row.get(col))
        cols = ["key_id", "name", "prefix", "created_at", "expires_at", "last_used_at", "aliases",
                "revoked"]  # fmt: skip
        _print(args, data, cols)
    elif action in ("tenants-suspend", "tenants-resume"):
        change = api.suspend_tenant if action == "tenants-suspend" else api.resume_tenant
        _print(args, _send(args, change(args.tenant)), ["id", "suspended"])
    elif action == "secrets-list":
        _print(args, _send(args, api.list_secrets()), ["id", "current", "keys"])
    elif action == "whoami":
        _print(args, _send(args, api.whoami()), ["name", "role", "tenants"])
    return 0


def _stamp(value: Any) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value)))


def _audit_chain(args: argparse.Namespace) -> int:
    """`--export`: NDJSON on stdout from `--after`; `--verify`: walk the chain, exit 0 when it
    holds, 1 with the first broken entry. Both page through /audit/export."""
    after = args.after
    entries: list[tuple[str, list[tuple[str, str]]]] = []
    while True:
        page = _send(args, api.audit_export(after, 1000, args.tenant))
        for item in page:
            if args.export:
                print(json.dumps(item, separators=(",", ":")))
            entries.append((str(item["id"]), [(str(k), str(v)) for k, v in item["fields"]]))
        if len(page) < 1000:
            break
        after = str(page[-1]["id"])
    if not args.verify:
        return 0
    scoped = args.tenant is not None or _send(args, api.whoami())["tenants"] is not None
    if scoped:
        # a tenant's stream holds copies of the global entries: each is checked on its own
        broken = [(i, f) for i, f in entries if not _self_consistent(f)]
        result_ok, first = not broken, broken[0][0] if broken else None
        head = ""
        why = "entry does not match its hash"
        checked = len(entries)
    else:
        result = verify(entries, anchor=args.anchor)
        result_ok, first, why, checked = result.ok, result.broken_at, result.why, result.checked
        head = f", head {result.head}"  # the anchor for the next run (--after, --anchor)
    if result_ok:
        print(f"audit chain holds: {checked} entries checked{head}")
        return 0
    print(f"audit chain broken at entry {first}: {why}", file=sys.stderr)
    return 1


def _self_consistent(fields: list[tuple[str, str]]) -> bool:
    from registry.auditchain import entry_hash

    stored = dict(fields).get("hash")
    return stored is not None and entry_hash(fields) == stored


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


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    """--url, --token, --token-file, --json/-o: on `admin` and on every command, so they may go
    anywhere on the line (a command's own value wins; SUPPRESS keeps it from hiding the other)."""
    p.add_argument("--url", default=default, help="gateway URL (LORAGATE_URL)")
    p.add_argument("--token", default=default, help="admin token (LORAGATE_ADMIN_TOKEN)")
    p.add_argument(
        "--token-file", default=default, help="file holding the token (LORAGATE_ADMIN_TOKEN_FILE)"
    )
    p.add_argument(
        "--json", action="store_true", default=False if default is None else default,
        help="machine-readable output",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", choices=["table", "json"], dest="output", default=default,
        help="output format (-o json is --json)",
    )  # fmt: skip


def _normalise(args: argparse.Namespace) -> int:
    if getattr(args, "output", None) == "json":
        args.json = True
    try:
        result: int = args.admin_func(args)
    except UsageError as exc:  # bad input: one line and exit 2, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operate tenants, keys, versions, releases, rollouts")
    _global_options(admin, None)
    actions = admin.add_subparsers(dest="admin_action", required=True)

    def add(name: str, help_text: str, *positional: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        for arg in positional:
            p.add_argument(arg)
        _global_options(p, argparse.SUPPRESS)
        return p

    p = add("tenants-create", "create a tenant", "tenant")
    p.add_argument("--display-name", default="")
    p.add_argument("--plan", default="default")
    p.add_argument("--limits", help='JSON or @file, e.g. {"max_concurrency": 2}')
    _scheduling_args(p)
    add("tenants-list", "list tenants")
    add("tenants-show", "a tenant, its limits, usage and models", "tenant")
    p = add("tenants-limits", "replace a tenant's limits", "tenant")
    p.add_argument("limits", help='JSON or @file, e.g. {"requests_per_minute": 10}')
    p = add("tenants-scheduling", "set a tenant's plan, fair-queue weight or class", "tenant")
    p.add_argument("--plan", default=None)
    _scheduling_args(p)
    add("tenants-suspend", "every key of the tenant answers 403 tenant_suspended", "tenant")
    add("tenants-resume", "undo tenants-suspend", "tenant")
    p = add("keys-create", "issue a key (shown once)", "tenant")
    p.add_argument("--name", default=None)
    p.add_argument("--expires-in", type=int, default=None, help="seconds")
    p.add_argument("--alias", action="append", default=None, help="allowed alias (repeatable)")
    p.add_argument("--limits", default=None, help="per-key limits, JSON or @file")
    add("keys-list", "a tenant's keys: name, prefix, created, expires, last used", "tenant")
    add("keys-revoke", "revoke a key", "tenant", "key_id")
    p = add("principals-create", "a named admin token (printed once)", "name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--tenant", action="append", default=None, help="scope (repeatable)")
    p.add_argument("--expires-in", type=int, default=None, help="seconds")
    add("principals-list", "named admin tokens")
    add("principals-revoke", "revoke a named admin token", "name")
    add("secrets-list", "HMAC secret ids keys verify under")
    add("whoami", "the identity, role and tenants of the token in use")
    p = add(
        "adapters-register", "validate and register an adapter version", "tenant", "name", "path"
    )
    p.add_argument("--metadata", help="JSON or @file")
    p = add("prompts-register", "register a prompt version", "tenant", "name")
    p.add_argument("--system", default=None)
    p.add_argument("--system-file", default=None)
    p.add_argument("--params", help="JSON or @file: default sampling params")
    p.add_argument("--schema", help="JSON or @file: schema the output must match")
    p = add("releases-create", "create a release (adapter@v + prompt@v)", "tenant", "alias")
    p.add_argument("--adapter", default=None, help="name@version")
    p.add_argument("--prompt", default=None, help="name@version")
    p.add_argument("--params", default=None)
    p.add_argument("--eval", default=None, help="JSON or @file: evaluation set")
    p.add_argument("--thresholds", default=None, help="JSON or @file: canary guard thresholds")
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
    p = add("audit", "the audit log; --export as NDJSON, --verify the hash chain")
    p.add_argument("--tenant", default=None)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--export", action="store_true", help="NDJSON, oldest first, from --after")
    p.add_argument("--after", default=None, help="stream id to export or verify after")
    p.add_argument("--verify", action="store_true", help="exit 0 if the chain holds, else 1")
    p.add_argument(
        "--anchor", default=None, help="with --after: the hash of that entry (from an export)"
    )
    admin.set_defaults(func=_normalise, admin_func=_run)


def _scheduling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight", type=float, default=None, help="fair-queue share (0.1-100)")
    p.add_argument("--priority", choices=PRIORITY_CLASSES, default=None)
