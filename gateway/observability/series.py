"""`SeriesKey`: the one order of (tenant, alias, release, arm) every per-release series uses.

The Prometheus labels (`tenant`, `model`, `release`, `arm`), the canary outcome windows, engine-time
attribution and the fleet's published windows all key on it, so a tuple built for one cannot be
read in another order by the next.

    key = SeriesKey("acme", "support", "support-r2", "canary")
    key.release   # "support-r2"
"""

from __future__ import annotations

from typing import NamedTuple


class SeriesKey(NamedTuple):
    tenant: str
    alias: str  # the `model` label
    release: str
    arm: str  # "stable" | "canary"
