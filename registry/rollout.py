"""Pure rollout: each function maps an `Alias` to the next `Alias`, or raises InvalidRollout.

Why pure: the store applies these inside a compare-and-set on `revision`, so the same function runs
against whatever state won the race, and every rule is testable without Redis. Each transition bumps
`revision` by one and appends a HistoryEntry (the last `HISTORY_LIMIT` are kept).

    alias = first_release("acme", "support", "support-r1", now=t)
    alias = start_canary(alias, "support-r2", 0.1, now=t)
    alias = promote(alias, now=t)            # r2 stable, r1 remembered in last_good
    alias = rollback(alias, "p95 up", now=t)  # r1 stable again
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from registry.errors import InvalidRollout
from registry.models import Alias, Flags, HistoryEntry

HISTORY_LIMIT = 50
LAST_GOOD_LIMIT = 20


def release_id(alias_name: str, n: int) -> str:
    """Release ids are `<alias>-r<n>`: a release belongs to exactly one alias."""
    return f"{alias_name}-r{n}"


def belongs_to(alias_name: str, rid: str) -> bool:
    """True if `rid` is a release id of this alias (`<alias>-r<n>`)."""
    pattern = rf"{re.escape(alias_name)}-r[1-9][0-9]*"
    return isinstance(rid, str) and re.fullmatch(pattern, rid) is not None


def _check_release(alias: Alias, rid: str) -> None:
    if not belongs_to(alias.alias, rid):
        raise InvalidRollout(f"unknown release {rid!r} for alias {alias.alias!r}")


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise InvalidRollout(f"canary weight must be a number in 0..1, got {weight!r}")
    if not 0.0 <= weight <= 1.0:
        raise InvalidRollout(f"canary weight must be in 0..1, got {weight}")
    return float(weight)


def _advance(alias: Alias, action: str, *, now: float, reason: str = "", **changes: Any) -> Alias:
    fields = {**dict(alias), **changes}
    revision = alias.revision + 1
    entry = HistoryEntry(
        revision=revision,
        action=action,
        stable=fields["stable"],
        canary=fields["canary"],
        canary_weight=fields["canary_weight"],
        reason=reason,
        at=now,
    )
    fields["revision"] = revision
    fields["history"] = (*alias.history, entry)[-HISTORY_LIMIT:]
    return Alias.model_validate(fields)


def first_release(tenant: str, alias_name: str, release_id: str, *, now: float) -> Alias:
    """The alias created by its first release: that release is stable, revision 1."""
    empty = Alias(tenant=tenant, alias=alias_name)
    _check_release(empty, release_id)
    return _advance(empty, "create", now=now, reason="first release", stable=release_id)


def start_canary(
    alias: Alias, release_id: str, weight: float, *, now: float, reason: str = ""
) -> Alias:
    """Route `weight` of traffic to `release_id`; replaces a canary already running."""
    _check_release(alias, release_id)
    w = _check_weight(weight)
    if alias.stable is None:
        raise InvalidRollout(f"alias {alias.alias!r} has no stable release to compare against")
    if release_id == alias.stable:
        raise InvalidRollout(f"{release_id!r} is already the stable release")
    return _advance(alias, "canary", now=now, reason=reason, canary=release_id, canary_weight=w)


def canary_started_at(alias: Alias) -> float | None:
    """When the running canary was started (its newest `canary` history entry, wall seconds);
    None without a canary, or when that entry has aged out of the bounded history."""
    if alias.canary is None:
        return None
    for entry in reversed(alias.history):
        if entry.action == "canary" and entry.canary == alias.canary:
            return entry.at
    return None


def set_weight(alias: Alias, weight: float, *, now: float) -> Alias:
    w = _check_weight(weight)
    if alias.canary is None:
        raise InvalidRollout(f"alias {alias.alias!r} has no canary to weigh")
    return _advance(alias, "set_weight", now=now, canary_weight=w)


def promote(alias: Alias, *, now: float) -> Alias:
    """Canary becomes stable; the previous stable is remembered as the last good one."""
    if alias.canary is None:
        raise InvalidRollout(f"alias {alias.alias!r} has no canary to promote")
    last_good = alias.last_good
    if alias.stable is not None:
        last_good = (*last_good, alias.stable)[-LAST_GOOD_LIMIT:]
    return _advance(
        alias,
        "promote",
        now=now,
        stable=alias.canary,
        canary=None,
        canary_weight=0.0,
        last_good=last_good,
    )


def rollback(alias: Alias, reason: str, *, now: float) -> Alias:
    """Drop the canary if there is one; otherwise return stable to the last good stable."""
    if alias.canary is not None:
        return _advance(alias, "rollback", now=now, reason=reason, canary=None, canary_weight=0.0)
    if not alias.last_good:
        raise InvalidRollout(f"alias {alias.alias!r} has no canary and no earlier stable release")
    return _advance(
        alias,
        "rollback",
        now=now,
        reason=reason,
        stable=alias.last_good[-1],
        last_good=alias.last_good[:-1],
    )


def set_flags(alias: Alias, flags: Flags | Mapping[str, bool], *, now: float) -> Alias:
    """Replace the flags (a Flags) or update some of them (a mapping of flag name -> bool)."""
    if isinstance(flags, Flags):
        new = flags
    else:
        unknown = set(flags) - set(Flags.model_fields)
        if unknown:
            raise InvalidRollout(f"unknown flags: {', '.join(sorted(unknown))}")
        new = Flags.model_validate({**dict(alias.flags), **flags})
    return _advance(alias, "set_flags", now=now, flags=new)
