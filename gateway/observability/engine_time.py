"""Engine-time attribution: each replica's busy seconds split among tenants by token share.

vLLM batches every tenant's requests on one engine, so "whose time was it" has no exact answer;
the share of tokens each (tenant, alias, release, arm) got from the replica in an interval is the
usual chargeback rule (a GPU-hour costs the same whoever fills the batch). A replica is busy
while this gateway has at least one request in flight on it; busy time in an interval in which no
request finished is carried over to the next one that has tokens, so long requests are charged
when they end.

With several gateways each attributes the time it saw: the sum across gateways can exceed a
replica's wall-clock time when they overlap (divide by the gateway count for an estimate).

    attribution = EngineTime()
    attribution.add_tokens("engine-0", ("acme", "support", "support-r2", "canary"), 240)
    shares = attribution.settle({"engine-0": busy_seconds_so_far})   # {key: seconds}
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.observability.series import SeriesKey as Key


class EngineTime:
    """Pure bookkeeping: tokens per replica and key since the last settle, busy seconds seen."""

    __slots__ = ("_carry", "_seen", "_tokens")

    def __init__(self) -> None:
        self._tokens: dict[str, dict[Key, int]] = {}
        self._seen: dict[str, float] = {}
        self._carry: dict[str, float] = {}

    def add_tokens(self, replica: str, key: Key, tokens: int) -> None:
        if tokens <= 0:
            return
        per_key = self._tokens.setdefault(replica, {})
        per_key[key] = per_key.get(key, 0) + tokens

    def settle(self, busy_s: Mapping[str, float]) -> dict[Key, float]:
        """Split the busy seconds since the last settle (plus carried time) by token share.
        `busy_s` is each replica's cumulative busy time; it never goes backwards."""
        out: dict[Key, float] = {}
        for replica, busy in busy_s.items():
            delta = max(0.0, busy - self._seen.get(replica, 0.0))
            self._seen[replica] = busy
            pending = self._carry.get(replica, 0.0) + delta
            tokens = self._tokens.pop(replica, None)
            if not tokens:
                self._carry[replica] = pending
                continue
            self._carry[replica] = 0.0
            total = sum(tokens.values())
            for key, n in tokens.items():
                out[key] = out.get(key, 0.0) + pending * n / total
        return out
