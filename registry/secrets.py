"""Key material: tenant API keys are stored only as HMAC-SHA256 under a server secret.

Why HMAC and not a plain hash: a leaked Redis dump alone does not let anyone test guessed keys.
Why a per-tenant cache salt: vLLM's prefix cache is shared across requests; salting it per tenant
means one tenant can never observe timing hits on another tenant's prompts.

    key_id, api_key = new_api_key()          # show api_key once, store hash_key(secret, api_key)
    hash_key(secret, api_key) == stored_hmac
"""

from __future__ import annotations

import hmac
import secrets
from functools import lru_cache

API_KEY_PREFIX = "lg-"


def hash_key(secret: bytes, api_key: str) -> str:
    """HMAC-SHA256 hex of the key; the only form of a key the registry ever stores."""
    return hmac.digest(secret, b"api-key:" + api_key.encode(), "sha256").hex()  # one-shot C path


ADMIN_TOKEN_PREFIX = "lga-"  # noqa: S105 - a prefix, not a secret


def hash_admin_token(secret: bytes, token: str) -> str:
    """HMAC-SHA256 hex of a named admin token (domain-separated from tenant keys)."""
    return hmac.digest(secret, b"admin-token:" + token.encode(), "sha256").hex()


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_api_key() -> tuple[str, str]:
    """A fresh (key_id, api_key): key_id is public (NAME_RE); api_key is `lg-` + 43 chars."""
    key_id = secrets.token_hex(8)
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key_id, api_key


@lru_cache(maxsize=4096)
def cache_salt(secret: bytes, tenant: str) -> str:
    """Per-tenant prefix-cache salt, domain-separated from key hashing (derived once per tenant)."""
    return hmac.digest(secret, b"cache-salt:" + tenant.encode(), "sha256").hex()
