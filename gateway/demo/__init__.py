"""`loragate demo ...`: the whole stack on this machine and the scripts that exercise it."""

from __future__ import annotations

from typing import Any

from gateway.demo import ops, stack


def register(sub: Any) -> None:
    actions = stack.register(sub)
    ops.register(actions)
