"""The registry at one epoch, as the gateway serves from it: compact records and their indexes.

Pure: no Redis, no I/O. `registry/redis_edge.py` reads the hashes, `registry/snapshot.py` keeps
the current state in step with Redis.

Why a state that changes in place: each write publishes the records it changed (see
registry/write.lua), and the watcher applies just those with `apply`, in one synchronous step on
the event loop, so no reader between two awaits sees half a write. Copying the indexes per write
would cost time in proportion to the tenant count. A full load (`parse_state`) builds a new state
off the loop and the watcher swaps it in. Records themselves are immutable; a reader that keeps a
record across an await keeps that version; one that iterates an index across an await copies it.

Only what serves requests is held: keys that are not revoked; per record, `registry.compact`'s
fields. `aliases_of` reads a per-tenant index; `canaries` lists the aliases with a canary (the
canary guard's work list); `routable` counts the aliases naming each release (metric labels).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from registry.compact import (
    AdapterRec,
    AliasRec,
    KeyRec,
    PromptRec,
    ReleaseRec,
    TenantRec,
    decode_adapter,
    decode_alias,
    decode_key,
    decode_many,
    decode_prompt,
    decode_release,
    decode_tenant,
)
from registry.refs import parse_ref

KINDS = ("tenants", "keys", "adapters", "prompts", "releases", "aliases")
Change = tuple[str, str, bytes | str | None]  # (kind, hash field, new JSON or None: deleted)


def _version_key(fld: str) -> tuple[str, str, int]:
    tenant, name, version = fld.split(":")
    return tenant, name, int(version)


def _pair(fld: str) -> tuple[str, str]:
    tenant, _, rest = fld.partition(":")
    return tenant, rest


@dataclass
class Delta:
    """What one applied write (or a full load, against the state it replaced) changed."""

    aliases: list[AliasRec | tuple[str, str]] = field(default_factory=list)  # new or deleted
    shrank: bool = False  # a tenant, alias or routable release left (series to drop)


class RegistryState:
    """The registry's serving view at `epoch`; lookups are pure and do no I/O."""

    __slots__ = (
        "_by_tenant",
        "_dropped",
        "adapters",
        "aliases",
        "canaries",
        "epoch",
        "keys",
        "prompts",
        "releases",
        "routable",
        "tenants",
    )  # fmt: skip

    def __init__(self, epoch: int = -1) -> None:  # -1: never loaded
        self.epoch = epoch
        self.tenants: dict[str, TenantRec] = {}
        self.keys: dict[str, KeyRec] = {}  # by HMAC, revoked keys left out
        self.adapters: dict[tuple[str, str, int], AdapterRec] = {}
        self.prompts: dict[tuple[str, str, int], PromptRec] = {}
        self.releases: dict[tuple[str, str], ReleaseRec] = {}
        self.aliases: dict[tuple[str, str], AliasRec] = {}
        self.canaries: set[tuple[str, str]] = set()
        self.routable: dict[tuple[str, str], int] = {}  # (tenant, release id) -> references
        self._by_tenant: dict[str, dict[str, AliasRec]] = {}
        self._dropped: list[tuple[str, str]] = []

    # -- lookups (the request path) -------------------------------------------------------------

    def tenant_for_key(self, key_hmac: str) -> KeyRec | None:
        """The key record if the key is known, not revoked and its tenant exists."""
        key = self.keys.get(key_hmac)
        if key is None or key.tenant not in self.tenants:
            return None
        return key

    def alias(self, tenant: str, alias: str) -> AliasRec | None:
        return self.aliases.get((tenant, alias))

    def aliases_of(self, tenant: str) -> list[AliasRec]:
        """The tenant's aliases by name (its own index: no scan of other tenants')."""
        own = self._by_tenant.get(tenant)
        return [] if own is None else [own[name] for name in sorted(own)]

    def release(self, tenant: str, release_id: str) -> ReleaseRec | None:
        return self.releases.get((tenant, release_id))

    def release_parts(self, release: Any) -> tuple[AdapterRec | None, PromptRec | None]:
        """The adapter and prompt of a release (a ReleaseRec or a full `Release`)."""
        adapter = prompt = None
        if release.adapter is not None:
            name, version = parse_ref(release.adapter)
            adapter = self.adapters.get((release.tenant, name, version))
        if release.prompt is not None:
            name, version = parse_ref(release.prompt)
            prompt = self.prompts.get((release.tenant, name, version))
        return adapter, prompt

    # -- changes --------------------------------------------------------------------------------

    def apply(self, epoch: int, changes: Iterable[Change]) -> Delta:
        """Apply one write's record changes and move to `epoch`."""
        delta = Delta()
        self._dropped = []
        for kind, fld, raw in changes:
            put = _PUT.get(kind)
            if put is None:
                continue
            done = put(self, fld, raw)
            if kind == "aliases":
                delta.aliases.append(done if done is not None else _pair(fld))
            if raw is None and kind in ("tenants", "aliases"):
                delta.shrank = True
        if any(ref not in self.routable for ref in self._dropped):
            delta.shrank = True
        self._dropped = []
        self.epoch = epoch
        return delta

    def diff(self, old: RegistryState) -> Delta:
        """What a full load changed against `old` (the state it replaces)."""
        return run(self.diff_steps(old))

    def diff_steps(self, old: RegistryState, every: int = 1024) -> Generator[None, None, Delta]:
        """`diff` in steps of `every` aliases (a caller on an event loop yields between them)."""
        delta = Delta()
        for i, (key, alias) in enumerate(self.aliases.items()):
            if old.aliases.get(key) != alias:
                delta.aliases.append(alias)
            if i % every == every - 1:
                yield
        for key in old.aliases.keys() - self.aliases.keys():
            delta.aliases.append(key)
            delta.shrank = True
        if old.tenants.keys() - self.tenants.keys() or old.routable.keys() - self.routable.keys():
            delta.shrank = True
        return delta

    # Each kind: `_add_*` indexes a decoded record under keys made of its own fields (no second
    # copy of the ids); `_put_*` applies a published change (None: the hash field was deleted).

    def _add_tenant(self, rec: TenantRec) -> None:
        self.tenants[rec.id] = rec

    def _put_tenant(self, fld: str, raw: bytes | str | None) -> None:
        if raw is None:
            self.tenants.pop(fld, None)
        else:
            self._add_tenant(decode_tenant(raw))

    def _add_key(self, rec: KeyRec) -> None:
        if rec.revoked:
            self.keys.pop(rec.key_hmac, None)
        else:
            self.keys[rec.key_hmac] = rec

    def _put_key(self, fld: str, raw: bytes | str | None) -> None:
        if raw is None:
            self.keys.pop(fld, None)
        else:
            self._add_key(decode_key(raw))

    def _add_adapter(self, rec: AdapterRec) -> None:
        self.adapters[(rec.tenant, rec.name, rec.version)] = rec

    def _put_adapter(self, fld: str, raw: bytes | str | None) -> None:
        if raw is None:
            self.adapters.pop(_version_key(fld), None)
        else:
            self._add_adapter(decode_adapter(raw))

    def _add_prompt(self, rec: PromptRec) -> None:
        self.prompts[(rec.tenant, rec.name, rec.version)] = rec

    def _put_prompt(self, fld: str, raw: bytes | str | None) -> None:
        if raw is None:
            self.prompts.pop(_version_key(fld), None)
        else:
            self._add_prompt(decode_prompt(raw))

    def _add_release(self, rec: ReleaseRec) -> None:
        self.releases[(rec.tenant, rec.id)] = rec

    def _put_release(self, fld: str, raw: bytes | str | None) -> None:
        if raw is None:
            self.releases.pop(_pair(fld), None)
        else:
            self._add_release(decode_release(raw))

    def _put_alias(self, fld: str, raw: bytes | str | None) -> AliasRec | None:
        key = _pair(fld)
        old = self.aliases.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        if raw is None:
            return None
        new = decode_alias(raw)
        self._add_alias(new)
        return new

    def _add_alias(self, new: AliasRec) -> None:
        key = (new.tenant, new.alias)
        self.aliases[key] = new
        self._by_tenant.setdefault(new.tenant, {})[new.alias] = new
        if new.canary is not None:
            self.canaries.add(key)
        for rid in _names(new):
            ref = (new.tenant, rid)
            self.routable[ref] = self.routable.get(ref, 0) + 1

    def _unindex(self, key: tuple[str, str], old: AliasRec) -> None:
        own = self._by_tenant.get(key[0])
        if own is not None:
            own.pop(key[1], None)
            if not own:
                del self._by_tenant[key[0]]
        self.canaries.discard(key)
        for rid in _names(old):
            ref = (key[0], rid)
            left = self.routable.get(ref, 0) - 1
            if left > 0:
                self.routable[ref] = left
            else:
                self.routable.pop(ref, None)
                self._dropped.append(ref)

    # -- comparison (tests: incremental == full load) --------------------------------------------

    def view(self) -> dict[str, Any]:
        """Everything the state holds, indexes included, as plain comparable values."""
        return {
            "epoch": self.epoch, "tenants": self.tenants, "keys": self.keys,
            "adapters": self.adapters, "prompts": self.prompts, "releases": self.releases,
            "aliases": self.aliases, "canaries": self.canaries, "routable": self.routable,
            "by_tenant": self._by_tenant,
        }  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegistryState) and self.view() == other.view()

    __hash__ = None  # type: ignore[assignment]  # mutable


def parse_changes(
    payload: bytes | str, kinds: Mapping[str, str]
) -> tuple[int, float, list[Change]]:
    """One message of the invalidation channel (registry/write.lua): (epoch, the server's time of
    the write, the changes to the snapshot's hashes); `kinds` maps a hash key to its kind."""
    doc = orjson.loads(payload)
    changes: list[Change] = []
    raw = doc.get("changes")
    if isinstance(raw, list):  # Lua's cjson encodes an empty list as {}
        for hash_key, fld, value in raw:
            kind = kinds.get(hash_key)
            if kind is not None:
                changes.append((kind, fld, None if value is False else value))
    return int(doc["epoch"]), float(doc.get("time") or 0.0), changes


def _names(alias: AliasRec) -> set[str]:
    """Releases an alias routes to or can roll back to (deduplicated: counted once per alias)."""
    return {r for r in (alias.stable, alias.canary, *alias.last_good) if r is not None}


_PUT: dict[str, Callable[[RegistryState, str, bytes | str | None], AliasRec | None]] = {
    "tenants": RegistryState._put_tenant,
    "keys": RegistryState._put_key,
    "adapters": RegistryState._put_adapter,
    "prompts": RegistryState._put_prompt,
    "releases": RegistryState._put_release,
    "aliases": RegistryState._put_alias,
}


_ADD: dict[str, Callable[[RegistryState, Any], None]] = {
    "tenants": RegistryState._add_tenant,
    "keys": RegistryState._add_key,
    "adapters": RegistryState._add_adapter,
    "prompts": RegistryState._add_prompt,
    "releases": RegistryState._add_release,
    "aliases": RegistryState._add_alias,
}


T = TypeVar("T")
PARSE_CHUNK = 256  # records per step: a fraction of a millisecond of decoding


def run(steps: Generator[None, None, T]) -> T:
    """Run a stepwise computation to its end in one go."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value: T = done.value
            return value


def parse_steps(
    epoch: int, raw: Mapping[str, Mapping[Any, Any]], *, chunk: int = PARSE_CHUNK
) -> Generator[None, None, RegistryState]:
    """Build a state from raw HGETALL results (kind -> field -> JSON), `chunk` records per step;
    pure.

    Why steps: a full load of 10,000 tenants is a few hundred ms of CPU. Run on an event loop
    with a yield between steps (registry.redis_edge.drive), requests go on between the chunks; a
    worker thread would not do better, since it holds the GIL for whole decoder calls."""
    state = RegistryState()
    for kind in KINDS:
        add = _ADD[kind]
        values = list(raw[kind].values())
        for start in range(0, len(values), chunk):
            for rec in decode_many(kind, values[start : start + chunk]):
                add(state, rec)
            yield
    state.epoch = epoch
    return state


def parse_state(epoch: int, **raw: Mapping[Any, Any]) -> RegistryState:
    """`parse_steps` in one go (tests, tools): the same state."""
    return run(parse_steps(epoch, raw, chunk=1 << 30))
