"""Everything a running gateway owns, built by the lifespan in `create_app` (never at import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.engines.pool import EnginePool
from gateway.engines.upstream import Upstream
from gateway.limits.limiter import Limiter
from gateway.observability.engine_time import EngineTime
from gateway.observability.fleet import FleetWindows
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.observability.windows import Windows
from gateway.settings import CanaryConfig, Settings
from registry.models import AdapterVersion
from registry.snapshot import SnapshotWatcher
from registry.store import RegistryStore


@dataclass
class AppState:
    settings: Settings
    store: RegistryStore
    watcher: SnapshotWatcher
    pool: EnginePool
    upstream: Upstream  # the engine call: pool, HTTP session, timeouts
    metrics: GatewayMetrics
    hmac_secret: bytes
    admin_token: str
    limiter: Limiter  # tenant limits: admit before the engine, settle after
    # the fleet's canary windows: this process's `canary_windows`, published and summed in Redis
    fleet: FleetWindows
    # canary analysis: outcome windows fed by the chat pipeline, judged by gateway/rollout/guard.py
    canary_windows: Windows = field(default_factory=lambda: Windows(CanaryConfig()))
    # what "no adapter" is served through (settings.base_adapter), None: the bare base model
    base_adapter: AdapterVersion | None = None
    # replica busy time split by token share, settled into the metrics at scrape time
    engine_time: EngineTime = field(default_factory=EngineTime)
    # OpenTelemetry (settings.otlp_endpoint); None: requests carry no trace at all
    tracing: Tracing | None = None
    # HMAC secrets keys verify under, by id, the one new keys are made under first (rotation:
    # settings.key_hmac_secrets); empty: `hmac_secret` alone, id "".
    key_secrets: dict[str, bytes] = field(default_factory=dict)
    # key HMAC -> unix minute of its last use on this gateway, flushed to Redis once a minute
    key_use: dict[str, int] = field(default_factory=dict)
