"""Pure canary choice: a hash of (tenant, canary release, routing key) mapped to [0, 1).

Why a hash and not a random draw: the same end user (routing key) stays on the same arm while the
weight is unchanged, and raising the weight only moves users from stable to canary (a user's point
in [0, 1) never changes, the threshold only grows). Including the canary release id reshuffles
users between different canaries, so the same users do not always get the experiment first.

    arm = select_arm(alias, "acme", routing_key=user_id)   # "stable" | "canary"
"""

from __future__ import annotations

import hashlib

from registry.compact import AnyAlias
from registry.models import Arm

_PERSON = b"loragate-canary"


def bucket(tenant: str, release_id: str, routing_key: str) -> float:
    """The routing key's fixed point in [0, 1) for this canary release."""
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    # tenant and release id cannot contain NUL (NAME_RE), so the encoding is unambiguous.
    h.update(f"{tenant}\0{release_id}\0{routing_key}".encode())
    return int.from_bytes(h.digest(), "big") / 2.0**64


def select_arm(alias: AnyAlias, tenant: str, routing_key: str) -> Arm:
    if alias.canary is None or alias.canary_weight <= 0.0:
        return "stable"
    return "canary" if bucket(tenant, alias.canary, routing_key) < alias.canary_weight else "stable"
