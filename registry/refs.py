"""Parsing of `name@version` references and name validation, shared by store and snapshot."""

from __future__ import annotations

import re

from registry.errors import InvalidName
from registry.models import NAME_RE, is_name

RELEASE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}-r[1-9][0-9]{0,17}")


def check_name(value: str, what: str = "name") -> str:
    """Return `value` if it is a name (`is_name`), else raise InvalidName; called before Redis."""
    if not is_name(value):
        raise InvalidName(f"invalid {what} {value!r}: expected {NAME_RE.pattern}, not 'unknown'")
    return value


def check_release_id(value: str) -> str:
    """Release ids are `<alias>-r<n>`: longer than a name when the alias has 48 chars."""
    if not isinstance(value, str) or RELEASE_ID_RE.fullmatch(value) is None:
        raise InvalidName(f"invalid release id {value!r}: expected <alias>-r<n>")
    return value


def parse_ref(ref: str) -> tuple[str, int]:
    """`"support@3"` -> `("support", 3)`; anything else raises InvalidName."""
    name, sep, version = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    if not sep or not (version.isascii() and version.isdigit()) or version.startswith("0"):
        raise InvalidName(f"invalid reference {ref!r}: expected name@version")
    return check_name(name), int(version)
