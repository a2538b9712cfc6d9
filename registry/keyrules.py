"""Whether a known key may be used now, and for which aliases (pure; read from the snapshot's
records on the hot path, no Redis)."""

from __future__ import annotations

from registry.compact import AnyKey, AnyTenant


def key_refusal(tenant: AnyTenant, key: AnyKey, now: float) -> str | None:
    """The error code refusing the key, or None: `tenant_suspended` (403) before `key_expired`."""
    if tenant.suspended:
        return "tenant_suspended"
    if key.expires_at is not None and key.expires_at <= now:
        return "key_expired"
    return None


def alias_allowed(key: AnyKey, alias: str) -> bool:
    return not key.aliases or alias in key.aliases
