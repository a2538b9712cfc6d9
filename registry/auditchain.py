"""The audit chain (pure): recompute an entry's hash and walk a run of entries.

`write.lua` gives every audit entry `prev` (the hash of the entry before it in the global stream)
and `hash` = SHA-1 over its fields in stream order, each name and value as `<length>:<bytes>`,
`hash` itself left out. Whoever holds an export can check it without trusting the gateway:

    result = verify(entries)          # entries oldest first, each a list of (name, value)
    result.ok, result.broken_at, result.why

The first entry of a run is taken as the anchor (its `prev` points before the run: trimmed by
retention, or an earlier export). Entries written before the chain existed (no `hash`) are
skipped while nothing chained has been seen yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def entry_hash(fields: Sequence[tuple[str, str]]) -> str:
    parts = []
    for name, value in fields:
        if name == "hash":
            continue
        for item in (name.encode(), value.encode()):
            parts.append(b"%d:%s" % (len(item), item))
    return hashlib.sha1(b"".join(parts), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    checked: int
    broken_at: str | None = None  # the stream id of the first entry that does not hold
    why: str = ""
    head: str = ""  # hash of the last entry checked (an anchor for the next run)


def verify(
    entries: Iterable[tuple[str, Sequence[tuple[str, str]]]], *, anchor: str | None = None
) -> ChainResult:
    """Walk (stream id, fields) oldest first. `anchor`: the hash the first entry's `prev` must
    be (from an earlier run); None takes the first chained entry as given."""
    prev = anchor
    checked = 0
    for entry_id, fields in entries:
        values = dict(fields)
        stored = values.get("hash")
        if stored is None:
            if prev is None:
                continue  # written before the chain existed
            return ChainResult(False, checked, entry_id, "entry has no hash", prev)
        if entry_hash(fields) != stored:
            return ChainResult(
                False, checked, entry_id, "entry does not match its hash", prev or ""
            )
        if prev is not None and values.get("prev", "") != prev:
            why = "previous entry missing or changed"
            return ChainResult(False, checked, entry_id, why, prev)
        prev = stored
        checked += 1
    return ChainResult(True, checked, None, "", prev or "")
