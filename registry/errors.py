"""Registry exceptions; only `gateway/errors.py` maps them to HTTP.

RegistryError                  (code)
├── InvalidName                 invalid_name
├── NotFound                    not_found
├── AlreadyExists               already_exists
├── RevisionConflict            revision_conflict
├── InvalidRollout              invalid_rollout
├── InUse                       in_use (retiring what an alias or a live release still uses)
├── Retired                     retired (using a retired version or release)
└── RegistryUnavailable         registry_unavailable (Redis down, frozen or timed out)
"""

from __future__ import annotations


class RegistryError(Exception):
    code = "registry_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidName(RegistryError):
    code = "invalid_name"


class NotFound(RegistryError):
    code = "not_found"


class AlreadyExists(RegistryError):
    code = "already_exists"


class RevisionConflict(RegistryError):
    code = "revision_conflict"


class InvalidRollout(RegistryError):
    code = "invalid_rollout"


class InUse(RegistryError):
    code = "in_use"


class Retired(RegistryError):
    code = "retired"


class RegistryUnavailable(RegistryError):
    code = "registry_unavailable"
