"""Adapter-layer exceptions.

AdapterError                     (code: str, the stable machine-readable reason)
├── ArtifactError                 an artifact on disk was refused (422 at the admin edge)
│     codes: invalid_name, artifact_outside_store, unsafe_artifact_format, artifact_invalid,
│            adapter_incompatible, digest_mismatch
├── EngineError                   an engine could not do what was asked
│     ├── EngineUnavailable       connect refused / timeout / 5xx before any byte
│     │     └── NoReplicaAvailable   no replica of the pool is up (engine_unavailable)
│     ├── EngineLoadFailed        the engine refused to load an adapter
│     └── PoolOverloaded          every replica is at its cap and the wait queue is full or
│                                 timed out (overloaded)
└── DatasetError                  a training dataset is malformed (dataset_invalid)
"""

from __future__ import annotations


class AdapterError(Exception):
    code = "adapter_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ArtifactError(AdapterError):
    code = "artifact_invalid"


class EngineError(AdapterError):
    code = "engine_error"


class EngineUnavailable(EngineError):
    code = "engine_unavailable"


class NoReplicaAvailable(EngineUnavailable):
    """No replica of the pool is healthy (or all are excluded): nothing to retry on."""


class EngineLoadFailed(EngineError):
    code = "engine_load_failed"


class PoolOverloaded(EngineError):
    """Every available replica is at its concurrency cap and the request could not wait."""

    code = "overloaded"


class QueueLimited(EngineError):
    """The tenant's own share of the wait queue is full (its excess, not another tenant's)."""

    code = "queue_limited"


class DatasetError(AdapterError):
    """A training dataset is malformed (build-time tooling; never on the serving path)."""

    code = "dataset_invalid"
