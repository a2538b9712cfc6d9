"""Adapter-layer exceptions.

AdapterError                     (code: str, the stable machine-readable reason)
├── ArtifactError                 an artifact on disk was refused (422 at the admin edge)
│     codes: invalid_name, artifact_outside_store, unsafe_artifact_format, artifact_invalid,
│            adapter_incompatible, digest_mismatch
├── EngineError                   an engine could not do what was asked
│     ├── EngineUnavailable       connect refused / timeout / 5xx before any byte
│     └── EngineLoadFailed        the engine refused to load an adapter
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


class EngineLoadFailed(EngineError):
    code = "engine_load_failed"


class DatasetError(AdapterError):
    """A training dataset is malformed (build-time tooling; never on the serving path)."""

    code = "dataset_invalid"
