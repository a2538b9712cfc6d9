"""Pure parts of the registry: rollout transitions, canary choice, key material, refs."""

from __future__ import annotations

import re

import pytest

from registry import rollout
from registry.canary import select_arm
from registry.errors import InvalidName, InvalidRollout
from registry.models import Alias, Flags
from registry.refs import check_release_id, parse_ref
from registry.secrets import cache_salt, hash_key, new_api_key

NOW = 1_700_000_000.0


def live() -> Alias:
    alias = rollout.first_release("acme", "support", "support-r1", now=NOW)
    return rollout.start_canary(alias, "support-r2", 0.2, now=NOW, reason="try")


def test_each_transition_bumps_revision_and_records_history() -> None:
    a = rollout.first_release("acme", "support", "support-r1", now=NOW)
    assert (a.stable, a.revision, len(a.history)) == ("support-r1", 1, 1)
    b = rollout.start_canary(a, "support-r2", 0.1, now=NOW + 1, reason="new adapter")
    c = rollout.set_weight(b, 0.5, now=NOW + 2)
    d = rollout.promote(c, now=NOW + 3)
    e = rollout.set_flags(d, {"kill_switch": True}, now=NOW + 4)
    assert [x.revision for x in (a, b, c, d, e)] == [1, 2, 3, 4, 5]
    assert [h.action for h in e.history] == [
        "create",
        "canary",
        "set_weight",
        "promote",
        "set_flags",
    ]
    assert e.history[1].reason == "new adapter"
    assert (d.stable, d.canary, d.canary_weight, d.last_good) == (
        "support-r2",
        None,
        0.0,
        ("support-r1",),
    )
    assert e.flags == Flags(kill_switch=True, auto_rollback=True)
    assert a.revision == 1  # inputs untouched (frozen)


def test_rollback_drops_canary_first_then_returns_to_last_good() -> None:
    with_canary = live()
    dropped = rollout.rollback(with_canary, "errors", now=NOW)
    assert (dropped.stable, dropped.canary, dropped.canary_weight) == ("support-r1", None, 0.0)
    promoted = rollout.promote(rollout.start_canary(dropped, "support-r3", 1.0, now=NOW), now=NOW)
    back = rollout.rollback(promoted, "p95", now=NOW)
    assert (back.stable, back.last_good) == ("support-r1", ())
    with pytest.raises(InvalidRollout, match="no canary and no earlier stable"):
        rollout.rollback(back, "again", now=NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: rollout.start_canary(a, "support-r2", 1.01, now=NOW), "0..1"),
        (lambda a: rollout.start_canary(a, "support-r2", -0.1, now=NOW), "0..1"),
        (lambda a: rollout.start_canary(a, "support-r2", float("nan"), now=NOW), "0..1"),
        (lambda a: rollout.start_canary(a, "support-r1", 0.5, now=NOW), "already the stable"),
        (lambda a: rollout.start_canary(a, "other-r2", 0.5, now=NOW), "unknown release"),
        (lambda a: rollout.start_canary(a, "support-r0", 0.5, now=NOW), "unknown release"),
        (lambda a: rollout.set_weight(a, 0.5, now=NOW), "no canary"),
        (lambda a: rollout.promote(a, now=NOW), "no canary to promote"),
        (lambda a: rollout.set_flags(a, {"turbo": True}, now=NOW), "unknown flags"),
    ],
)
def test_invalid_transitions_raise(change: object, message: str) -> None:
    alias = rollout.first_release("acme", "support", "support-r1", now=NOW)
    with pytest.raises(InvalidRollout, match=re.escape(message)):
        change(alias)  # type: ignore[operator]


def test_history_is_bounded() -> None:
    alias = live()
    for i in range(rollout.HISTORY_LIMIT + 10):
        alias = rollout.set_weight(alias, (i % 10) / 10, now=NOW + i)
    assert len(alias.history) == rollout.HISTORY_LIMIT
    assert alias.history[-1].revision == alias.revision


def test_canary_started_at_is_the_running_canarys_start() -> None:
    a = rollout.first_release("acme", "support", "support-r1", now=NOW)
    assert rollout.canary_started_at(a) is None
    b = rollout.start_canary(a, "support-r2", 0.1, now=NOW + 10)
    c = rollout.set_weight(b, 0.5, now=NOW + 20)  # a new weight is not a new start
    assert rollout.canary_started_at(c) == NOW + 10
    d = rollout.start_canary(c, "support-r3", 0.1, now=NOW + 30)  # replaced: its own start
    assert rollout.canary_started_at(d) == NOW + 30
    assert rollout.canary_started_at(rollout.rollback(d, "bad", now=NOW + 40)) is None
    for i in range(rollout.HISTORY_LIMIT):
        d = rollout.set_weight(d, 0.2, now=NOW + 50 + i)
    assert rollout.canary_started_at(d) is None  # the start aged out: no cut


def test_canary_share_is_close_to_the_weight() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    for weight in (0.01, 0.1, 0.25, 0.5, 0.9):
        alias = rollout.set_weight(live(), weight, now=NOW)
        share = sum(select_arm(alias, "acme", k) == "canary" for k in keys) / len(keys)
        assert abs(share - weight) <= 0.015, (weight, share)


def test_canary_choice_is_sticky_and_monotone_in_the_weight() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    alias = live()
    arms = [select_arm(alias, "acme", k) for k in keys]
    assert arms == [select_arm(alias, "acme", k) for k in keys]
    previous = arms
    for weight in (0.3, 0.5, 0.8, 1.0):
        alias = rollout.set_weight(alias, weight, now=NOW)
        current = [select_arm(alias, "acme", k) for k in keys]
        moved = [(p, c) for p, c in zip(previous, current, strict=True) if p != c]
        assert all(move == ("stable", "canary") for move in moved)
        previous = current
    assert set(previous) == {"canary"}
    no_canary = rollout.rollback(alias, "x", now=NOW)
    assert {select_arm(no_canary, "acme", k) for k in keys[:100]} == {"stable"}
    zero = rollout.set_weight(live(), 0.0, now=NOW)
    assert {select_arm(zero, "acme", k) for k in keys[:100]} == {"stable"}


def test_key_material() -> None:
    key_id, api_key = new_api_key()
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert re.fullmatch(r"lg-[A-Za-z0-9_-]{43}", api_key)
    assert new_api_key() != (key_id, api_key)
    h = hash_key(b"s1", api_key)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == hash_key(b"s1", api_key) != hash_key(b"s2", api_key)
    assert cache_salt(b"s1", "acme") != cache_salt(b"s1", "beta")
    assert cache_salt(b"s1", "acme") != hash_key(b"s1", "acme")


def test_refs() -> None:
    assert parse_ref("support@12") == ("support", 12)
    for bad in ("support", "support@", "support@0", "support@01", "Sup@1", "a@1@2", "a@²"):
        with pytest.raises(InvalidName):
            parse_ref(bad)
    assert check_release_id("support-r3") == "support-r3"
    with pytest.raises(InvalidName):
        check_release_id("support")
