"""Gateway metrics on an injected `CollectorRegistry`, with bounded labels and cached children.

Why this shape:
- The registry is injected (never prometheus_client's global one), so every app instance and every
  test owns its metrics and reads them back with `registry.get_sample_value(...)`.
- Label values come only from registered ids. `set_label_universe` is called whenever the registry
  snapshot changes; `bound` maps anything else (a typo'd alias, a random tenant string, a prompt
  pasted into the `model` field) to "unknown", so no request can create a new time series.
- `.labels(...)` costs ~1.5 us (deploy/ENGINE.md); children are cached per bounded label tuple,
  so the hot path pays a dict lookup instead. Caches are keyed by *bounded* tuples only, so they
  stay bounded.
- Series of tenants, aliases, releases or engines that leave the universe are removed, so /metrics
  does not grow with every release ever made.

Usage (the app factory owns the registry; the request path calls the typed methods):

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, currency="USD", engines=["replica-0"])
    metrics.set_label_universe({"acme"}, {("acme", "support")}, {("acme", "support-r1")})
    metrics.observe_request("acme", "support", "support-r1", "stable", "ok",
                            duration_s=0.8, overhead_s=0.0004, prompt_tokens=12,
                            completion_tokens=16, cost=0.0001)
    body, content_type = metrics.render()
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from gateway.errors import CODES
from gateway.observability.pools import PoolCounts, RedisPoolMetrics
from gateway.observability.series import SeriesKey
from registry.models import Arm

UNKNOWN = "unknown"

Status = Literal["ok", "client_error", "server_error", "cancelled"]
AdapterLoadResult = Literal["ok", "error"]

ARMS: frozenset[str] = frozenset(get_args(Arm))
STATUSES: frozenset[str] = frozenset({"ok", "client_error", "server_error", "cancelled"})
ADAPTER_LOAD_RESULTS: frozenset[str] = frozenset({"ok", "error"})

# The `code` label takes the error table's codes (gateway/errors.py); anything else is "unknown".
ERROR_CODES: frozenset[str] = frozenset(CODES)

# fmt: off
# End-to-end latency and TTFT of a small LLM: 5 ms .. 120 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 60.0, 120.0,
)
# Gap between two streamed chunks: 1 ms .. 5 s.
ITL_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# Time a request waits for an engine slot in the fair queue: 0 .. the queue timeout and beyond.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)
# Time spent in the gateway itself: 50 us .. 50 ms.
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
)
# fmt: on


@dataclass(frozen=True, slots=True)
class LabelUniverse:
    """The ids a label may take: tenants, (tenant, alias) and (tenant, release id) pairs.

    Containers, not copies: the gateway passes its registry snapshot's own indexes, which follow
    each write in place (copying 10,000 tenants per write would stall the event loop)."""

    tenants: Container[str] = frozenset()
    models: Container[tuple[str, str]] = frozenset()
    releases: Container[tuple[str, str]] = frozenset()


def bound(universe: LabelUniverse, tenant: str, model: str, release: str) -> tuple[str, str, str]:
    """Map (tenant, model, release) onto registered ids; each unregistered part becomes "unknown".

    A model or release only counts as registered under its own tenant, so another tenant's alias
    name cannot mint series under this tenant.
    """
    if tenant not in universe.tenants:
        return UNKNOWN, UNKNOWN, UNKNOWN
    model_out = model if (tenant, model) in universe.models else UNKNOWN
    release_out = release if (tenant, release) in universe.releases else UNKNOWN
    return tenant, model_out, release_out


def bound_value(value: str, allowed: frozenset[str]) -> str:
    """One label against a fixed set (arm, status, error code, engine)."""
    return value if value in allowed else UNKNOWN


def validate_engine_label(name: str) -> str:
    """Engine labels are replica names or indexes, never URLs (which may carry credentials)."""
    if not name or "://" in name or "@" in name or "/" in name:
        raise ValueError("engine label must be a replica name or index, not a URL")
    return name


M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(Generic[M]):
    """A labelled metric plus a cache of its children keyed by (already bounded) label tuples."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def get(self, key: tuple[str, ...]) -> M:
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = self._metric.labels(*key)
        return child

    def items(self) -> list[tuple[tuple[str, ...], M]]:
        return list(self._cache.items())

    def prune(self, keep: Callable[[tuple[str, ...]], bool]) -> None:
        for key in [k for k in self._cache if not keep(k)]:
            del self._cache[key]
            self._metric.remove(*key)


_Hist = _Children[Histogram]
_AnyChildren = _Children[Counter] | _Children[Gauge] | _Children[Histogram]


@dataclass(frozen=True, slots=True)
class _RequestSeries:
    """The six children one finished request touches, behind a single cache lookup."""

    duration: Histogram
    requests: Counter
    prompt_tokens: Counter
    completion_tokens: Counter
    cost: Counter
    overhead: Histogram


class InFlight:
    """Handle for one request counted in `loragate_in_flight_requests`; `release()` is idempotent.

    The handle keeps the child it incremented, so a universe change mid-request cannot make the
    decrement land on another series.
    """

    __slots__ = ("_gauge",)

    def __init__(self, gauge: Gauge | None) -> None:
        self._gauge = gauge
        if gauge is not None:
            gauge.inc()

    def release(self) -> None:
        if self._gauge is not None:
            self._gauge.dec()
            self._gauge = None

    def __enter__(self) -> InFlight:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class GatewayMetrics:
    """Every `loragate_*` metric the gateway exports; see the module docstring for usage."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        currency: str = "USD",
        engines: Sequence[str] = (),
        error_codes: Iterable[str] = ERROR_CODES,
        build: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self._universe = LabelUniverse()
        self._engines: frozenset[str] = frozenset()
        self._error_codes = frozenset(error_codes)

        def hist(name: str, doc: str, labels: Sequence[str], b: Sequence[float]) -> _Hist:
            return _Children(Histogram(name, doc, labels, registry=registry, buckets=b))

        def counter(name: str, doc: str, labels: Sequence[str]) -> _Children[Counter]:
            return _Children(Counter(name, doc, labels, registry=registry))

        def gauge(name: str, doc: str, labels: Sequence[str]) -> _Children[Gauge]:
            return _Children(Gauge(name, doc, labels, registry=registry))

        rel = ("tenant", "model", "release", "arm")
        # fmt: off
        self._duration = hist("loragate_request_duration_seconds",
                              "End-to-end request duration as the client sees it.",
                              (*rel, "status"), LATENCY_BUCKETS)
        self._ttft = hist("loragate_time_to_first_token_seconds",
                          "Time from request arrival to the first streamed token.",
                          rel, LATENCY_BUCKETS)
        self._itl = hist("loragate_inter_token_latency_seconds",
                         "Gap between consecutive streamed chunks.", rel, ITL_BUCKETS)
        self._overhead = hist("loragate_gateway_overhead_seconds",
                              "Time spent in the gateway itself (duration minus engine time).",
                              ("tenant",), OVERHEAD_BUCKETS)
        self._requests = counter("loragate_requests", "Finished requests.", (*rel, "status"))
        self._tokens = counter("loragate_tokens", "Tokens by kind (prompt|completion).",
                               (*rel, "kind"))
        self._cost = counter("loragate_cost", f"Cost of served tokens, in {currency}.", rel)
        self._engine_seconds = counter(
            "loragate_engine_seconds",
            "Engine replica busy time attributed by token share.", rel)
        self._refusals = counter("loragate_refusals",
                                 "Completions that matched a refusal pattern.", rel)
        self._schema_violations = counter(
            "loragate_schema_violations",
            "Completions that did not match the release's response schema.", rel)
        self._errors = counter("loragate_errors", "Error responses by contract error code.",
                               ("tenant", "code"))
        Info("loragate_cost_currency", "Currency of loragate_cost_total.",
             registry=registry).info({"currency": currency})
        # The dashboards annotate deploys where a (version, revision) series starts.
        Info("loragate_build", "The gateway's version and source revision.",
             registry=registry).info(dict(build or {"version": "unknown", "revision": "unknown"}))

        # Engine pool.
        self._engine_busy = counter("loragate_engine_attributed_seconds",
                                    "Replica busy time this gateway attributed to its series (its "
                                    "share of the fleet's); summed over gateways: the replica's "
                                    "busy time.", ("engine",))
        self._engine_in_flight = gauge("loragate_engine_in_flight",
                                       "Requests in flight per engine replica.", ("engine",))
        self._engine_healthy = gauge("loragate_engine_healthy",
                                     "1 when the replica's last health check passed.",
                                     ("engine",))
        self._engine_adapters = gauge("loragate_engine_resident_adapters",
                                      "Adapters loaded on the replica.", ("engine",))
        self._engine_ejected = gauge("loragate_engine_ejected",
                                     "1 while the replica is ejected after consecutive failures "
                                     "(healthy by probe, but taken out of routing).", ("engine",))
        self._adapter_loads = counter("loragate_adapter_loads",
                                      "Adapter load attempts by result (ok|error).",
                                      ("engine", "result"))
        self._adapter_requests = counter(
            "loragate_adapter_requests",
            "Requests needing an adapter: hit = already resident, miss = had to load it.",
            ("result",))

        # Registry.
        self._snapshot_age = Gauge("loragate_registry_snapshot_age_seconds",
                                   "Seconds since the registry snapshot was last refreshed.",
                                   registry=registry)
        self._redis_up = Gauge("loragate_registry_redis_up",
                               "1 when the last Redis call succeeded.", registry=registry)
        self._epoch = Gauge("loragate_registry_epoch",
                            "Registry epoch of the current snapshot.", registry=registry)
        self._redis_pools = RedisPoolMetrics(registry)

        # Rollouts, limits, budgets.
        self._canary_weight = gauge("loragate_canary_weight",
                                    "Share of traffic (0..1) sent to the canary release.",
                                    ("tenant", "model"))
        self._auto_rollbacks = counter("loragate_auto_rollbacks",
                                       "Automatic canary rollbacks.", ("tenant", "model"))
        self._canary_fallback = Gauge("loragate_canary_local_fallback",
                                      "1 while the canary guard judges this process's own windows "
                                      "because the fleet's (Redis) did not answer.",
                                      registry=registry)
        self._canary_gateways = Gauge("loragate_canary_fleet_gateways",
                                      "Gateway processes in the canary guard's last fleet sum.",
                                      registry=registry)
        self._limit_rejections = counter("loragate_limit_rejections",
                                         "Requests rejected by a tenant limit.",
                                         ("tenant", "code"))
        self._in_flight = gauge("loragate_in_flight_requests", "Requests in flight per tenant.",
                                ("tenant",))
        self._queue_depth = gauge("loragate_queue_depth",
                                  "Requests waiting for an engine slot in the fair queue.",
                                  ("tenant",))
        self._queue_wait = hist("loragate_queue_wait_seconds",
                                "Time a request waited for an engine slot (0: none was taken), "
                                "refused or timed-out waits included.", ("tenant",),
                                QUEUE_WAIT_BUCKETS)
        self._budget = gauge("loragate_tenant_budget",
                             f"Tenant budget per period, in {currency}.", ("tenant",))
        self._budget_period = gauge("loragate_tenant_budget_period_seconds",
                                    "Length of the tenant's budget period.", ("tenant",))
        self._spend = gauge("loragate_tenant_spend",
                            f"Tenant spend in the current budget period, in {currency}.",
                            ("tenant",))
        # fmt: on
        self._by_release: tuple[_AnyChildren, ...] = (
            self._duration,
            self._ttft,
            self._itl,
            self._requests,
            self._tokens,
            self._cost,
            self._engine_seconds,
            self._refusals,
            self._schema_violations,
        )  # fmt: skip
        self._by_tenant: tuple[_AnyChildren, ...] = (
            self._overhead, self._errors, self._limit_rejections, self._in_flight, self._budget,
            self._budget_period, self._spend, self._queue_depth, self._queue_wait,
        )  # fmt: skip
        self._by_model: tuple[_AnyChildren, ...] = (self._canary_weight, self._auto_rollbacks)
        self._request_series: dict[tuple[str, ...], _RequestSeries] = {}
        self._by_engine: tuple[_AnyChildren, ...] = (
            self._engine_in_flight, self._engine_busy, self._engine_healthy, self._engine_adapters,
            self._engine_ejected,
            self._adapter_loads,
        )  # fmt: skip
        self.set_engines(engines)

    # -- label universe -------------------------------------------------------------------------

    @property
    def universe(self) -> LabelUniverse:
        return self._universe

    def set_label_universe(
        self,
        tenants: Container[str],
        models: Container[tuple[str, str]],
        releases: Container[tuple[str, str]],
    ) -> None:
        """Refresh the registered ids (call when ids leave, or with new containers) and drop
        departed series; the containers are kept, not copied."""
        u = LabelUniverse(tenants, models, releases)
        self._universe = u
        self._request_series.clear()  # rebuilt lazily from the pruned caches below

        def release_key(k: tuple[str, ...]) -> bool:
            return bound(u, k[0], k[1], k[2]) == k[:3]

        def tenant_key(k: tuple[str, ...]) -> bool:
            return k[0] == UNKNOWN or k[0] in u.tenants

        def model_key(k: tuple[str, ...]) -> bool:
            return bound(u, k[0], k[1], UNKNOWN)[:2] == k[:2]

        for fam in self._by_release:
            fam.prune(release_key)
        for fam in self._by_tenant:
            fam.prune(tenant_key)
        for fam in self._by_model:
            fam.prune(model_key)

    @property
    def engines(self) -> frozenset[str]:
        return self._engines

    def set_engines(self, names: Iterable[str]) -> None:
        """Register the replica labels (names or indexes, never URLs); others become "unknown"."""
        self._engines = frozenset(validate_engine_label(n) for n in names)
        allowed = self._engines | {UNKNOWN}
        for fam in self._by_engine:
            fam.prune(lambda k: k[0] in allowed)

    def _release_key(self, tenant: str, model: str, release: str, arm: str) -> tuple[str, ...]:
        return (*bound(self._universe, tenant, model, release), bound_value(arm, ARMS))

    def _tenant(self, tenant: str) -> str:
        return tenant if tenant in self._universe.tenants else UNKNOWN

    def _engine(self, engine: str) -> str:
        return engine if engine in self._engines else UNKNOWN

    # -- request path ---------------------------------------------------------------------------

    def observe_request(
        self,
        tenant: str,
        model: str,
        release: str,
        arm: str,
        status: str,
        duration_s: float,
        overhead_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Record one finished request (any status, streaming or not)."""
        skey = (*self._release_key(tenant, model, release, arm), bound_value(status, STATUSES))
        series = self._request_series.get(skey)
        if series is None:
            series = self._request_series[skey] = self._new_request_series(skey)
        series.duration.observe(duration_s)
        series.requests.inc()
        if prompt_tokens > 0:
            series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens > 0:
            series.completion_tokens.inc(completion_tokens)
        if cost > 0:
            series.cost.inc(cost)
        if overhead_s is not None:
            series.overhead.observe(max(overhead_s, 0.0))

    def _new_request_series(self, skey: tuple[str, ...]) -> _RequestSeries:
        key = skey[:4]
        return _RequestSeries(
            duration=self._duration.get(skey),
            requests=self._requests.get(skey),
            prompt_tokens=self._tokens.get((*key, "prompt")),
            completion_tokens=self._tokens.get((*key, "completion")),
            cost=self._cost.get(key),
            overhead=self._overhead.get((key[0],)),
        )

    def add_engine_seconds(self, shares: Mapping[SeriesKey, float], engine: str) -> None:
        """One replica's busy seconds attributed to series (engine_time.py)."""
        total = 0.0
        for key, seconds in shares.items():
            if seconds > 0:
                self._engine_seconds.get(self._release_key(*key)).inc(seconds)
                total += seconds
        if total > 0:
            self._engine_busy.get((self._engine(engine),)).inc(total)

    def observe_ttft(self, tenant: str, model: str, release: str, arm: str, ttft_s: float) -> None:
        self._ttft.get(self._release_key(tenant, model, release, arm)).observe(ttft_s)

    def observe_itl(
        self, tenant: str, model: str, release: str, arm: str, gaps_s: Iterable[float]
    ) -> None:
        """Record the gaps between streamed chunks of one request in one call (one bounding)."""
        child = self._itl.get(self._release_key(tenant, model, release, arm))
        for gap in gaps_s:
            child.observe(gap)

    def count_refusal(self, tenant: str, model: str, release: str, arm: str) -> None:
        self._refusals.get(self._release_key(tenant, model, release, arm)).inc()

    def count_schema_violation(self, tenant: str, model: str, release: str, arm: str) -> None:
        self._schema_violations.get(self._release_key(tenant, model, release, arm)).inc()

    def count_error(self, tenant: str, code: str) -> None:
        self._errors.get((self._tenant(tenant), bound_value(code, self._error_codes))).inc()

    def count_limit_rejection(self, tenant: str, code: str) -> None:
        key = (self._tenant(tenant), bound_value(code, self._error_codes))
        self._limit_rejections.get(key).inc()

    def in_flight(self, tenant: str) -> InFlight:
        """`with metrics.in_flight(tenant): ...` or keep the handle and `release()` it later."""
        return InFlight(self._in_flight.get((self._tenant(tenant),)))

    def observe_queue_wait(self, tenant: str, seconds: float) -> None:
        key = (self._tenant(tenant),)
        self._queue_wait.get(key).observe(seconds)
        self._queue_depth.get(key)  # a tenant that sent traffic has a depth series, 0 or more

    def set_queue_depths(self, depths: Mapping[str, int]) -> None:
        """Requests waiting per tenant, at scrape time; tenants absent from `depths` read 0."""
        bounded: dict[str, int] = {}
        for tenant, n in depths.items():
            key = self._tenant(tenant)
            bounded[key] = bounded.get(key, 0) + n
        for (tenant,), child in self._queue_depth.items():
            if tenant not in bounded:
                child.set(0)
        for tenant, n in bounded.items():
            self._queue_depth.get((tenant,)).set(n)

    # -- engine pool ----------------------------------------------------------------------------

    def set_engine_in_flight(self, engine: str, n: int) -> None:
        self._engine_in_flight.get((self._engine(engine),)).set(n)

    def set_engine_healthy(self, engine: str, healthy: bool) -> None:
        self._engine_healthy.get((self._engine(engine),)).set(1 if healthy else 0)

    def set_engine_resident_adapters(self, engine: str, n: int) -> None:
        self._engine_adapters.get((self._engine(engine),)).set(n)

    def set_engine_ejected(self, engine: str, ejected: bool) -> None:
        self._engine_ejected.get((self._engine(engine),)).set(1 if ejected else 0)

    def count_adapter_load(self, engine: str, result: str) -> None:
        key = (self._engine(engine), bound_value(result, ADAPTER_LOAD_RESULTS))
        self._adapter_loads.get(key).inc()

    def count_adapter_request(self, hit: bool) -> None:
        self._adapter_requests.get(("hit" if hit else "miss",)).inc()

    # -- registry -------------------------------------------------------------------------------

    def set_registry_state(self, *, redis_up: bool, epoch: int | None = None) -> None:
        self._redis_up.set(1 if redis_up else 0)
        if epoch is not None:
            self._epoch.set(epoch)

    def set_snapshot_age(self, age_s: float) -> None:
        self._snapshot_age.set(age_s)

    def watch_redis_pool(self, name: str, counts: Callable[[], PoolCounts]) -> None:
        """Report a Redis client's pool at scrape time (`gateway/observability/pools.py`)."""
        self._redis_pools.watch(name, counts)

    def set_snapshot_age_source(self, age_s: Callable[[], float]) -> None:
        """Compute the age at scrape time, so a stuck refresher still shows a growing age."""
        self._snapshot_age.set_function(age_s)

    # -- rollouts and budgets -------------------------------------------------------------------

    def set_canary_weight(self, tenant: str, model: str, weight: float) -> None:
        """Ignored for unregistered aliases: a gauge for "unknown" would mean nothing.

        The app sets it for every alias on each snapshot change, so the alias's auto-rollback
        counter is exported here too, at 0 until the first rollback: "none yet" is a value on a
        dashboard and in `increase()`, not a gap.
        """
        if (tenant, model) in self._universe.models:
            self._canary_weight.get((tenant, model)).set(weight)
            self._auto_rollbacks.get((tenant, model))

    def set_canary_fleet(self, *, fallback: bool, gateways: int) -> None:
        self._canary_fallback.set(1 if fallback else 0)
        self._canary_gateways.set(gateways)

    def count_auto_rollback(self, tenant: str, model: str) -> None:
        t, m, _ = bound(self._universe, tenant, model, UNKNOWN)
        self._auto_rollbacks.get((t, m)).inc()

    def set_tenant_budget(self, tenant: str, amount: float, period_s: float) -> None:
        """Budget per period (e.g. 86400 s for "day"); ignored for unregistered tenants."""
        if tenant in self._universe.tenants:
            self._budget.get((tenant,)).set(amount)
            self._budget_period.get((tenant,)).set(period_s)

    def set_tenant_spend(self, tenant: str, amount: float) -> None:
        if tenant in self._universe.tenants:
            self._spend.get((tenant,)).set(amount)

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """Payload and content type for GET /metrics (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
