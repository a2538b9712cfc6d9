"""Memory and decode time of one registry record in the candidate forms (NOTES-17.md's table).

    python -m loadtests.registry_records        # 10,000 releases and aliases each form

The candidates hold what the request path needs of a release and of an alias: pydantic models
(the full records), slotted frozen dataclasses, msgspec structs (`gc=False`) and plain tuples.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from registry import rollout
from registry.compact import decode_many
from registry.models import Alias, Release
from registry.writes import encode

N = 10_000


@dataclass(frozen=True, slots=True)
class ReleaseDC:
    id: str
    tenant: str
    alias: str
    adapter: str | None
    prompt: str | None
    params: dict[str, Any]
    schema_violation: str
    thresholds: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AliasDC:
    tenant: str
    alias: str
    stable: str | None
    canary: str | None
    canary_weight: float
    revision: int
    flags: tuple[bool, bool]
    last_good: tuple[str, ...]


def _thresholds(d: dict[str, Any]) -> tuple[float, ...]:
    return tuple(d.values())


def _release_dc(d: dict[str, Any]) -> ReleaseDC:
    return ReleaseDC(d["id"], d["tenant"], d["alias"], d["adapter"], d["prompt"], d["params"],
                     d["schema_violation"], _thresholds(d["thresholds"]))  # fmt: skip


def _alias_dc(d: dict[str, Any]) -> AliasDC:
    f = d["flags"]
    flags = (f["kill_switch"], f["auto_rollback"])
    return AliasDC(d["tenant"], d["alias"], d["stable"], d["canary"], d["canary_weight"],
                   d["revision"], flags, tuple(d["last_good"]))  # fmt: skip


def _release_tuple(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d["id"], d["tenant"], d["alias"], d["adapter"], d["prompt"], d["params"],
            d["schema_violation"], _thresholds(d["thresholds"]))  # fmt: skip


def _alias_tuple(d: dict[str, Any]) -> tuple[Any, ...]:
    f = d["flags"]
    return (d["tenant"], d["alias"], d["stable"], d["canary"], d["canary_weight"], d["revision"],
            (f["kill_switch"], f["auto_rollback"]), tuple(d["last_good"]))  # fmt: skip


def records() -> tuple[list[bytes], list[bytes]]:
    releases, aliases = [], []
    for i in range(N):
        t = f"t{i}"
        releases.append(encode(Release(id="chat-r2", tenant=t, alias="chat", adapter="a@1",
                                       prompt="p@1", created_at=1.7e9)).encode())  # fmt: skip
        alias = rollout.first_release(t, "chat", "chat-r1", now=1.7e9)
        alias = rollout.start_canary(alias, "chat-r2", 0.1, now=1.7e9)
        aliases.append(encode(alias).encode())
    return releases, aliases


def measure(build: Callable[[list[bytes]], list[Any]], raw: list[bytes]) -> tuple[float, float]:
    """(bytes per record held, microseconds per record to decode)."""
    build(raw[:100])
    started = time.perf_counter()
    out = build(raw)
    seconds = time.perf_counter() - started
    del out
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = build(raw)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del out
    return held / len(raw), seconds / len(raw) * 1e6


def main() -> None:
    releases, aliases = records()
    forms: dict[str, tuple[Callable[[list[bytes]], list[Any]], Callable[[list[bytes]], list[Any]]]]
    forms = {
        "pydantic (full records)": (
            lambda raw: [Release.model_validate_json(r) for r in raw],
            lambda raw: [Alias.model_validate_json(r) for r in raw],
        ),
        "slotted dataclass (orjson)": (
            lambda raw: [_release_dc(orjson.loads(r)) for r in raw],
            lambda raw: [_alias_dc(orjson.loads(r)) for r in raw],
        ),
        "tuple (orjson)": (
            lambda raw: [_release_tuple(orjson.loads(r)) for r in raw],
            lambda raw: [_alias_tuple(orjson.loads(r)) for r in raw],
        ),
        "msgspec struct, one call per kind (chosen)": (
            lambda raw: decode_many("releases", raw),
            lambda raw: decode_many("aliases", raw),
        ),
    }
    print(f"msgspec {msgspec.__version__}; {N:,} records per kind")
    print("| form | release B | release us | alias B | alias us |")
    print("|---|---|---|---|---|")
    for name, (rel, ali) in forms.items():
        rb, ru = measure(rel, releases)
        ab, au = measure(ali, aliases)
        print(f"| {name} | {rb:.0f} | {ru:.1f} | {ab:.0f} | {au:.1f} |")


if __name__ == "__main__":
    main()
