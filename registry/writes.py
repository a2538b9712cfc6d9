"""The data side of `write.lua`: a declarative spec of one guarded write, and JSON encoding.

Why a declarative spec and one script: every mutation has the same shape (check, write, bump the
epoch, audit, publish), so one audited Lua script does it for all of them and Python only says
what to check and what to write. A failed check maps back to the domain error registered with it.

Version numbers are allocated inside the script (HINCRBY) and substituted into the JSON: the
record is rendered with a random 18-digit `marker` where the number goes, `template()` turns that
marker into a 0x01 byte (which orjson never emits: it escapes control characters), and the script
replaces every 0x01 by the allocated number.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from registry.errors import RegistryError

SEQ_BYTE = "\x01"
FIRST_HASH_KEY = (
    5  # KEYS[1..4]: the epoch, the audit stream, the tenant audit stream, the chain head
)


def new_marker() -> int:
    """A random 18-digit number (< 2**63, so orjson encodes it) standing for the version."""
    return 10**17 + secrets.randbelow(9 * 10**17)


def template(text: str, marker: int) -> str:
    return text.replace(str(marker), SEQ_BYTE)


# Fields records gained after they were first written, left out of the stored JSON while empty:
# records refuse unknown fields, so a gateway of the previous version (mid rolling upgrade) still
# reads what this one writes unless the new feature is used (a suspension, a key's expiry...).
LATER_FIELDS: dict[str, frozenset[str]] = {
    "Tenant": frozenset({"suspended", "weight", "priority"}),
    "ApiKey": frozenset({"expires_at", "aliases", "limits", "secret_id", "revoked_at"}),
    "AdapterVersion": frozenset({"retired_at"}),
    "PromptVersion": frozenset({"retired_at"}),
    "Release": frozenset({"retired_at"}),
}


def _empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == []


def encode(record: BaseModel) -> str:
    data = record.model_dump(mode="json")
    for name in LATER_FIELDS.get(type(record).__name__, ()):
        if name in data and _empty(data[name]):
            del data[name]
    return orjson.dumps(data).decode()


def encode_value(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class WriteSpec:
    """What one call of write.lua checks and writes (`RegistryStore._write` runs it)."""

    hashes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[RegistryError] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    seq: dict[str, Any] | None = None

    def _key(self, name: str) -> int:
        if name not in self.hashes:
            self.hashes.append(name)
        return self.hashes.index(name) + FIRST_HASH_KEY

    def _check(self, kind: str, key: str, fld: str, error: RegistryError, **extra: Any) -> None:
        self.checks.append({"kind": kind, "key": self._key(key), "field": fld, **extra})
        self.failures.append(error)

    def require_absent(self, key: str, fld: str, error: RegistryError) -> None:
        self._check("absent", key, fld, error)

    def require_present(self, key: str, fld: str, error: RegistryError) -> None:
        self._check("present", key, fld, error)

    def require_equals(self, key: str, fld: str, value: str, error: RegistryError) -> None:
        self._check("equals", key, fld, error, value=value)

    def require_unchanged(
        self, key: str, fld: str, value: str | None, error: RegistryError
    ) -> None:
        """The field is still as it was read: absent if it was, else equal to `value`."""
        if value is None:
            self.require_absent(key, fld, error)
        else:
            self.require_equals(key, fld, value, error)

    def require_revision(self, key: str, fld: str, revision: int, error: RegistryError) -> None:
        self._check("revision", key, fld, error, revision=revision)

    def allocate(self, key: str, fld: str) -> None:
        self.seq = {"key": self._key(key), "field": fld}

    def put(self, key: str, fld: str, value: str, *, nx: bool = False) -> None:
        self.writes.append({"key": self._key(key), "field": fld, "value": value, "nx": nx})

    def delete(self, key: str, fld: str) -> None:
        self.writes.append({"key": self._key(key), "field": fld, "value": "", "del": True})

    def to_json(self, audit: list[str]) -> bytes:
        body: dict[str, Any] = {"checks": self.checks, "writes": self.writes, "audit": audit}
        if self.seq is not None:
            body["seq"] = self.seq
        return orjson.dumps(body)
