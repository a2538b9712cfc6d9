"""Output checks for a release: JSON-schema conformance and refusal patterns (pure, cached).

The schema comes from the release's prompt version; the engine is asked for schema-guided output
(`response_format`), and what comes back is still validated here, because guided decoding can be
disabled, truncated by `max_tokens`, or unsupported by the engine build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
import orjson

from registry.compact import AnyRelease
from registry.state import RegistryState


@dataclass(frozen=True)
class Verdict:
    schema_violation: bool = False
    refusal: bool = False


@lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> jsonschema.protocols.Validator:
    schema = orjson.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


@lru_cache(maxsize=1024)
def _refusal_re(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(re.escape(p) for p in patterns), re.IGNORECASE)


@dataclass(frozen=True)
class OutputGuard:
    schema: bytes | None = None
    refusals: tuple[str, ...] = ()
    reject: bool = False

    @property
    def active(self) -> bool:
        return self.schema is not None or bool(self.refusals)

    @classmethod
    def for_release(cls, state: RegistryState, release: AnyRelease | None) -> OutputGuard:
        if release is None:
            return cls()
        _, prompt = state.release_parts(release)
        if prompt is None:
            return cls()
        schema = (
            orjson.dumps(prompt.response_schema, option=orjson.OPT_SORT_KEYS)
            if prompt.response_schema
            else None
        )
        return cls(schema, tuple(prompt.refusal_patterns), release.schema_violation == "reject")

    def check_none(self) -> Verdict:
        """The answer was a tool call: there is no content to judge."""
        return Verdict()

    def check(self, text: str) -> Verdict:
        if not self.active:
            return Verdict()
        violation = False
        if self.schema is not None:
            violation = not conforms(self.schema, text)
        pattern = _refusal_re(self.refusals)
        refusal = bool(pattern is not None and pattern.search(text))
        return Verdict(schema_violation=violation, refusal=refusal)


def conforms(schema: bytes, text: str) -> bool:
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return bool(_validator(schema).is_valid(value))
