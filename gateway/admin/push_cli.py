"""`loragate admin adapters-push TENANT NAME ./dir`, the lifecycle listings and retiring:

    loragate admin adapters-list TENANT            versions, what uses them, retired_at
    loragate admin adapters-retire TENANT NAME VERSION
    loragate admin prompts-retire TENANT NAME VERSION
    loragate admin releases-retire TENANT RELEASE   (409 in_use names what still uses it)

Push packs the files the engine needs (trainer leftovers skipped and listed on stderr; pickles
and links refused locally, every one named), computes the digest, streams the tar to
POST .../adapters/NAME/uploads and prints `NAME@VERSION`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapters.artifact import compute_digest
from adapters.errors import ArtifactError
from adapters.push import pack
from gateway.admin import client as api
from gateway.admin import console

CHUNK = 1 << 20


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("adapters-push", "upload an adapter directory as a new version", "tenant", "name")
    p.add_argument("directory", type=Path)
    p.set_defaults(admin_func=run)
    for name, what in (("adapters", "adapter"), ("prompts", "prompt")):
        p = add(f"{name}-list", f"a tenant's {what} versions and what uses them", "tenant")
        p.set_defaults(admin_func=run)
    p = add("releases-list", "a tenant's releases and the aliases using them", "tenant")
    p.set_defaults(admin_func=run)
    for name, what in (("adapters", "an adapter"), ("prompts", "a prompt")):
        p = add(f"{name}-retire", f"retire {what} version (refused while in use)", "tenant",
                "name")  # fmt: skip
        p.add_argument("version", type=int)
        p.set_defaults(admin_func=run)
    p = add("releases-retire", "retire a release (refused while an alias uses it)", "tenant",
            "release")  # fmt: skip
    p.set_defaults(admin_func=run)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def push(args: argparse.Namespace, tenant: str, name: str, directory: Path) -> dict[str, Any]:
    """Upload `directory`; the version record (with `ref` and `skipped`) or SystemExit(2)."""
    with tempfile.TemporaryDirectory(prefix="loragate-push-") as tmp:
        try:
            tar_path, _listing = pack(directory, Path(tmp) / "artifact.tar")
            digest = compute_digest(directory)
        except (ArtifactError, OSError) as exc:
            code = exc.code if isinstance(exc, ArtifactError) else "artifact_invalid"
            print(f"error {code}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        call = api.upload_adapter(
            tenant, name, _file_chunks(tar_path), size=tar_path.stat().st_size, digest=digest
        )
        data: dict[str, Any] = console.send(args, call)
    return data


def run(args: argparse.Namespace) -> int:
    action = args.admin_action
    if action == "adapters-push":
        data = push(args, args.tenant, args.name, args.directory)
        for skipped in data.get("skipped", []):
            print(f"skipped {skipped}", file=sys.stderr)
        if args.json:
            console.show(args, data)
        else:
            print(data["ref"])
        return 0
    if action.endswith("-retire"):
        return _retire(args, action.removesuffix("-retire"))
    kind = action.removesuffix("-list")
    lists: dict[str, Callable[[str], api.AdminCall[Any]]] = {
        "adapters": api.list_adapter_versions,
        "prompts": api.list_prompt_versions,
        "releases": api.list_releases,
    }
    data = console.send(args, lists[kind](args.tenant))
    columns = {
        "adapters": ["ref", "digest", "rank", "size_bytes", "retired_at", "used_by"],
        "prompts": ["ref", "created_at", "retired_at", "used_by"],
        "releases": ["id", "alias", "adapter", "prompt", "retired_at", "used_by"],
    }[kind]
    console.show(args, data, columns)
    return 0


def _retire(args: argparse.Namespace, kind: str) -> int:
    call: api.AdminCall[Any]
    if kind == "adapters":
        call = api.retire_adapter_version(args.tenant, args.name, args.version)
    elif kind == "prompts":
        call = api.retire_prompt_version(args.tenant, args.name, args.version)
    else:
        call = api.retire_release(args.tenant, args.release)
    data = console.send(args, call)
    if args.json:
        console.show(args, data)
    else:
        print(f"retired {data.get('ref') or data.get('id')}")
    return 0
