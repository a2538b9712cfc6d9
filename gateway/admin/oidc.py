"""OIDC/JWT bearer tokens for the admin API: verified against a JWKS (file or URL), a claim mapped
to a role, another to a tenant scope.

Only asymmetric algorithms are accepted (no `none`, no HS*: a JWKS publishes public keys, and an
HMAC "key" taken from it would let anyone sign). `exp` is required; `iss` and `aud` are checked
when configured. A JWKS URL is fetched in a worker thread (PyJWT's client is blocking) and cached
by PyJWT; a JWKS file is read once per app.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt

from gateway.admin.roles import Caller, best_role
from gateway.settings import Settings

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OidcRejected(Exception):
    """The token is not a valid admin token (its reason is kept out of the answer)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        source = settings.oidc_jwks
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=5)
        else:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(source).read_text()))

    async def _key(self, token: str) -> Any:
        header = jwt.get_unverified_header(token)
        if self._client is not None:
            return (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
        assert self._keys is not None
        kid = header.get("kid")
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise OidcRejected("no key for kid")

    async def caller(self, token: str) -> Caller:
        s = self._settings
        try:
            key = await self._key(token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, audience=s.oidc_audience or None,
                issuer=s.oidc_issuer or None,
                options={"require": ["exp"], "verify_aud": bool(s.oidc_audience)},
            )  # fmt: skip
        except (jwt.PyJWTError, ValueError, OSError) as exc:
            raise OidcRejected(type(exc).__name__) from None
        raw_role = claims.get(s.oidc_role_claim)
        values = [raw_role] if isinstance(raw_role, str) else list(raw_role or [])
        role = best_role([str(v) for v in values], s.oidc_role_map)
        name = claims.get(s.oidc_name_claim)
        if role is None or not isinstance(name, str) or not name:
            raise OidcRejected("no role or name")
        scope = claims.get(s.oidc_tenants_claim)
        tenants = None if scope is None else frozenset(str(t) for t in scope)
        return Caller(name=f"oidc:{name}", role=role, tenants=tenants)
