"""The app factory. Everything with a lifetime (Redis, aiohttp session, engine pool, snapshot
watcher, metrics registry) is built in the lifespan of `create_app`, never at import.

    app = create_app(Settings(...))
    uvicorn.run(app, host=..., port=...)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from adapters.engine_client import engine_headers
from adapters.errors import AdapterError
from gateway.admin import access_routes as access_api
from gateway.admin import adapter_push, keyuse, retire_routes
from gateway.admin import routes as admin_api
from gateway.engines.discovery import discovery_from
from gateway.engines.lean import LeanClient
from gateway.engines.pool import EnginePool
from gateway.engines.replica import PoolConfig
from gateway.engines.residency import referenced_engine_names
from gateway.engines.upstream import Upstream
from gateway.errors import ApiError, from_domain
from gateway.limits.limiter import Limiter
from gateway.observability import startup
from gateway.observability.engine_time import EngineTime
from gateway.observability.fleet import FleetWindows
from gateway.observability.fleet_time import EngineTimeLoop
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.requestlog import start_writer
from gateway.observability.tracing import Tracing
from gateway.observability.windows import Windows
from gateway.observability.workers import (
    WORKERS_DIR_ENV,
    fleet_payload,
    serve_worker_metrics,
    stop_worker_metrics,
)
from gateway.openapi import install_openapi
from gateway.rollout import guard as canary
from gateway.serving import routes as tenant_api
from gateway.serving.asgi import error_response
from gateway.serving.chat import handle_chat
from gateway.serving.completions import PATH as COMPLETIONS_PATH
from gateway.serving.completions import handle_completions
from gateway.settings import Settings
from gateway.state import AppState
from registry.compact import AnyAdapter
from registry.errors import RegistryError
from registry.fleet import FleetStore
from registry.limits import LimitStore
from registry.models import AdapterVersion
from registry.redis_client import Close, pool_counts, redis_client
from registry.snapshot import SnapshotWatcher
from registry.state import Delta, RegistryState
from registry.store import RegistryStore

log = logging.getLogger("loragate")
VERSION = startup.version()
CHAT_PATH = "/v1/chat/completions"
RAW_ROUTES = {CHAT_PATH: handle_chat, COMPLETIONS_PATH: handle_completions}
CONFIG_ENV = "LORAGATE_WORKERS_CONFIG"  # the --config file, for `serve --workers N` processes


class Gateway(FastAPI):
    """FastAPI, with the hot route served as raw ASGI ahead of the middleware stack and router
    (measured: they cost more than the gateway's own work per request). Everything else, the
    OpenAPI schema included, is plain FastAPI."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = RAW_ROUTES.get(scope["path"])
            state: AppState | None = getattr(self.state, "lg", None)
            if handler is not None and state is not None:
                await handler(state, scope, receive, send)  # it answers every error itself
                return
        await super().__call__(scope, receive, send)


def _redis_client(settings: Settings, url: str) -> tuple[aioredis.Redis, Close]:
    """A bounded pool that makes callers wait for a connection (within the call's own timeout)
    instead of failing: a burst of limited-tenant admissions must queue, not fall back. A
    `redis+sentinel://` URL follows the master through failovers."""
    return redis_client(
        url, max_connections=settings.redis_max_connections, timeout=settings.redis_timeout_s * 4
    )


def create_app(
    settings: Settings,
    *,
    metrics_registry: CollectorRegistry | None = None,
    workers_dir: Path | None = None,
) -> FastAPI:
    """`workers_dir`: set by `loragate serve --workers N` (one of N processes on one port):
    /metrics then merges every worker's (gateway/observability/workers.py)."""
    registry = metrics_registry if metrics_registry is not None else CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = settings.key_hmac_secret.get_secret_value().encode()
        if not secret:
            raise RuntimeError("LORAGATE_KEY_HMAC_SECRET must be set")
        redis, close_redis = _redis_client(settings, settings.redis_url)
        limits_redis, close_limits = (
            _redis_client(settings, settings.limits_redis_url)
            if settings.limits_redis_url and settings.limits_redis_url != settings.redis_url
            else (redis, None)
        )
        # Admin writes, snapshot loads and the canary guard are off the request path: a burst of 50
        # concurrent admin writers queues for more than one redis_timeout_s on a busy core and got
        # 503s (R7, tests/reliability/test_reliability_gateway.py), so they get the client's
        # socket budget.
        store = RegistryStore(
            redis,
            secret,
            timeout=max(settings.redis_timeout_s * 4, 0.05) + settings.wait_replicas_s,
            wait_replicas=settings.wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        watcher = SnapshotWatcher(
            store,
            redis,
            poll_interval=settings.snapshot_poll_interval_s,
            max_staleness=settings.snapshot_max_staleness_s,
        )
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=30)
        # Every engine call (chat relay, LoRA load/unload, model list) goes through this session.
        to_engines = engine_headers(settings.engine_api_key.get_secret_value())
        session = aiohttp.ClientSession(
            connector=connector, json_serialize=_dumps, headers=to_engines
        )
        lean = LeanClient(to_engines) if settings.upstream_client == "lean" else None
        # Engine labels follow the pool's membership (static or discovered): `_pool_gauges`.
        metrics = GatewayMetrics(
            registry,
            currency=settings.currency,
            build={"version": VERSION, "revision": settings.build_revision},
        )
        metrics.watch_redis_pool("registry", lambda: pool_counts(redis))
        if close_limits is not None:
            metrics.watch_redis_pool("limits", lambda: pool_counts(limits_redis))
        engine_root = settings.engine_adapter_root or settings.adapter_store
        base_adapter = _base_adapter(settings)
        pool = EnginePool(
            discovery_from(settings.engines, nameservers=settings.engine_dns_nameservers),
            session,
            PoolConfig(
                base_model=settings.base_model,
                adapter_store=settings.adapter_store.resolve(),
                engine_adapter_root=engine_root.resolve(),
                max_concurrency=settings.engine_max_concurrency,
                queue_size=settings.engine_queue_size,
                tenant_queue_size=settings.engine_tenant_queue_size,
                health_interval_s=settings.health_interval_s,
                discovery_interval_s=settings.engine_discovery_interval_s,
                unload_grace_s=settings.adapter_unload_grace_s,
                sweep_interval_s=settings.adapter_sweep_interval_s,
                engines_fetch=settings.object_store() is not None,
            ),
            on_route=metrics.count_adapter_request,
            on_load=metrics.count_adapter_load,
            on_wait=metrics.observe_queue_wait,
            referenced=lambda: _referenced(watcher, base_adapter),
        )
        windows = Windows(settings.canary)
        limiter = Limiter(
            LimitStore(limits_redis, timeout=max(settings.redis_timeout_s * 4, 0.05)),
            metrics,
            settings.price_for,
            default_max_tokens=settings.default_max_tokens_cap,
        )
        fleet_store = FleetStore(redis, timeout=max(settings.redis_timeout_s * 4, 0.05))
        state = AppState(
            settings=settings,
            store=store,
            watcher=watcher,
            pool=pool,
            upstream=Upstream(
                pool,
                session,
                connect_timeout=settings.engine_connect_timeout_s,
                read_timeout=settings.engine_read_timeout_s,
                lean=lean,
            ),
            metrics=metrics,
            hmac_secret=secret,
            admin_token=settings.admin_token.get_secret_value(),
            limiter=limiter,
            fleet=FleetWindows(
                windows,
                fleet_store if settings.canary.fleet else None,
                limiter.process_id,
                metrics,
                lease_s=settings.canary.fleet_lease_s,
            ),
            canary_windows=windows,
            base_adapter=base_adapter,
            tracing=(
                Tracing.otlp(settings.otlp_endpoint, settings.otel_service_name,
                             settings.otlp_headers, settings.otel_sample_ratio)
                if settings.otlp_endpoint else None
            ),
            engine_time=EngineTime(settings.engine_time_period_s),
            key_secrets=settings.key_secrets(),
        )  # fmt: skip
        app.state.lg = state
        # Metric label bounds follow the registry synchronously (no request is metered under a
        # stale universe); in-process only, no Redis calls.
        watcher.on_change = lambda new, delta: _label_universe(metrics, new, delta)
        await watcher.start()
        await state.limiter.start()
        # Each gateway takes its share of a replica's cap: the heartbeats count the live ones.
        state.limiter.on_live_gateways = pool.set_live_gateways
        pool.set_live_gateways(state.limiter.live_gateways)
        metrics.set_snapshot_age_source(lambda: watcher.age_s)
        await pool.start()
        guard = canary.start_guard(state)
        startup.log_started(settings, VERSION, registry_ok=watcher.redis_ok)
        watch = asyncio.create_task(
            startup.watch_engines(
                pool.replicas, settings.startup_grace_s, settings.health_interval_s
            ),
            name="engine-startup-watch",
        )
        retention = (
            asyncio.create_task(_retention_loop(store, settings), name="registry-retention")
            if settings.retention_sweep_interval_s > 0
            else None
        )
        worker_server = (
            None
            if workers_dir is None
            else await serve_worker_metrics(workers_dir, lambda: _scrape(state))
        )
        engine_time = asyncio.create_task(
            EngineTimeLoop(
                state.engine_time, fleet_store, limiter.process_id, metrics,
                lambda now: _busy_since_last(metrics, pool, now),
            ).run(),
            name="engine-time",
        )  # fmt: skip
        key_use = asyncio.create_task(keyuse.flush_loop(state), name="loragate-key-use")
        # Everything built so far lives as long as the process: out of the collector's sight, a
        # full collection no longer walks it (measured: P95 at 4k req/s 54 ms -> 5 ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            if worker_server is not None and workers_dir is not None:
                stop_worker_metrics(worker_server, workers_dir)
            await canary.stop_guard(guard)
            engine_time.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine_time
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
            key_use.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await key_use
            await keyuse.flush(state)
            await state.limiter.stop()
            await pool.stop()
            await watcher.stop()
            await session.close()
            if lean is not None:
                lean.close()
            if state.tracing is not None:
                await asyncio.to_thread(state.tracing.shutdown)  # flushes queued spans
            await close_redis()
            if close_limits is not None:
                await close_limits()
            adapter_push.close_object_store(app)

    app = Gateway(
        title="loragate",
        version=VERSION,
        description="OpenAI-compatible multi-tenant LoRA gateway in front of vLLM.",
        lifespan=lifespan,
        # loragate exports its own metrics; OpenTelemetry hooks would cost time on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.include_router(tenant_api.router)
    app.include_router(admin_api.router)
    app.include_router(adapter_push.router)
    app.include_router(retire_routes.router)
    app.include_router(access_api.router)
    _install_error_handlers(app)
    install_openapi(app)  # the chat route, bearer schemes and error envelopes documented

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        state: AppState = request.app.state.lg
        if workers_dir is None:
            payload = _scrape(state)
        else:
            payload = await fleet_payload(workers_dir, lambda: _scrape(state))
        return Response(payload, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        state: AppState = request.app.state.lg
        fresh = state.watcher.state.epoch >= 0 and not state.watcher.stale
        engines = state.pool.any_available()
        body = {
            "snapshot_fresh": fresh,
            "redis_ok": state.watcher.redis_ok,
            "engine_available": engines,
            "snapshot_age_s": round(state.watcher.age_s, 3),
            # Fleet view: gateways alive by the heartbeats, and this one's part of each replica's
            # concurrency cap (engine_max_concurrency divided among them).
            "live_gateways": state.pool.live_gateways,
            "engine_cap_share": state.pool.share(),
        }
        status = 200 if fresh and engines else 503
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    return app


def _scrape(state: AppState) -> bytes:
    _pool_gauges(state.metrics, state.pool)  # at scrape time, not on every acquire/release
    state.metrics.set_registry_state(
        redis_up=state.watcher.redis_ok, epoch=state.watcher.state.epoch
    )
    return state.metrics.render()[0]


def worker_app() -> FastAPI:
    """The app of one `loragate serve --workers N` process (uvicorn imports it by name)."""
    config = os.environ.get(CONFIG_ENV)
    settings = Settings.from_file(Path(config)) if config else Settings()
    if settings.request_log:  # each worker writes its own lines (the supervisor serves nothing)
        atexit.register(start_writer().stop)
    return create_app(settings, workers_dir=Path(os.environ[WORKERS_DIR_ENV]))


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _base_adapter(settings: Settings) -> AdapterVersion | None:
    """The zero LoRA adapter-less requests go through, validated like any tenant artifact (a
    broken one stops startup: silently serving the bare base model is what it exists to avoid)."""
    if not settings.base_adapter:
        return None
    info = settings.validate_artifact(settings.base_adapter)
    return AdapterVersion(
        tenant="base", name="null", version=1, path=info.relpath, digest=info.digest,
        base_model=info.base_model, rank=info.rank, target_modules=info.target_modules,
        size_bytes=info.size_bytes, alpha=info.alpha, created_by="gateway",
    )  # fmt: skip


async def _retention_loop(store: RegistryStore, settings: Settings) -> None:
    """Every gateway wakes up; a lease in Redis lets one of the fleet sweep per interval."""
    every = settings.retention_sweep_interval_s
    while True:
        await asyncio.sleep(min(every, 60.0))
        try:
            counts = await store.sweep_if_due(settings.retention_s, every)
        except RegistryError as exc:
            log.warning("retention sweep failed: %s", exc.code)
        except Exception:
            log.exception("retention sweep failed")
        else:
            if counts is not None:
                log.info("retention sweep: %s", counts)


def _referenced(watcher: SnapshotWatcher, base_adapter: AnyAdapter | None) -> set[str] | None:
    """What releases reference, or None while the snapshot is missing or stale (an empty or old
    registry must not make every adapter look unreferenced)."""
    if watcher.state.epoch < 0 or watcher.stale:
        return None
    names = referenced_engine_names(watcher.state)
    if base_adapter is not None:
        names.add(base_adapter.engine_name)
    return names


def _label_universe(metrics: GatewayMetrics, state: RegistryState, delta: Delta) -> None:
    """Label bounds follow the snapshot: its own indexes are the universe (a dict lookup per
    label, nothing copied per write). Only releases an alias can still route to (or roll back
    to) get series of their own: old releases drop out of /metrics instead of growing it."""
    universe = metrics.universe
    if delta.shrank or universe.tenants is not state.tenants:
        metrics.set_label_universe(state.tenants, state.aliases, state.routable)
    for alias in delta.aliases:
        if not isinstance(alias, tuple):
            weight = alias.canary_weight if alias.canary else 0.0
            metrics.set_canary_weight(alias.tenant, alias.alias, weight)


def _engine_labels(metrics: GatewayMetrics, pool: EnginePool) -> None:
    names = frozenset(r.name for r in pool.replicas)
    if names != metrics.engines:  # discovery changed the membership: labels follow it
        metrics.set_engines(names)


def _busy_since_last(
    metrics: GatewayMetrics, pool: EnginePool, now_wall: float
) -> dict[str, list[tuple[float, float]]]:
    """Each replica's busy intervals for the engine-time settlement, whose series carry the
    replica's name: the label universe follows the membership first (no scrape may have yet)."""
    _engine_labels(metrics, pool)
    return {r.name: r.take_busy(now_wall) for r in pool.replicas}


def _pool_gauges(metrics: GatewayMetrics, pool: EnginePool) -> None:
    now = time.monotonic()
    _engine_labels(metrics, pool)
    for replica in pool.replicas:
        metrics.set_engine_ejected(replica.name, now < replica.ejected_until)
        metrics.set_engine_in_flight(replica.name, replica.in_flight)
        metrics.set_engine_healthy(replica.name, replica.healthy)
        metrics.set_engine_resident_adapters(replica.name, len(replica.resident))
    metrics.set_queue_depths(pool.queue_depths())


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError) -> Response:
        return error_response(from_domain(exc))

    @app.exception_handler(AdapterError)
    async def adapter_error(request: Request, exc: AdapterError) -> Response:
        return error_response(from_domain(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = str(first.get("msg", "Invalid request."))
        code = "invalid_request" if request.url.path.startswith("/v1/") else "validation_error"
        return error_response(ApiError(code, message, param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods for a path
            headers["allow"] = _allowed_methods(request)
        return error_response(ApiError(code, str(exc.detail), headers=headers))

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> Response:
        error = from_domain(exc)
        if error.code == "internal_error":
            log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
        return error_response(error)


def _allowed_methods(request: Request) -> str:
    methods = [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(methods)
