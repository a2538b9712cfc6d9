"""Who is calling the admin API: the bootstrap token, a named admin token or an OIDC token; and
whether the route and tenant are theirs (gateway/admin/roles.py has the table).

    bootstrap (LORAGATE_ADMIN_TOKEN)  -> `admin`, role admin, every tenant (no Redis needed)
    named token (`lga-...`)           -> its principal, looked up by HMAC in Redis per request
    JWT (when LORAGATE_OIDC_JWKS set) -> `oidc:<sub>`, role and tenants from its claims

Unknown, revoked or expired: 401 `invalid_admin_token` (one answer for all, so a token's state
is not revealed). A known caller without the role: 403 `forbidden`. A tenant outside the
caller's scope: the same 404 as a tenant that does not exist.
"""

from __future__ import annotations

import hmac
import time

from fastapi import Request

from gateway.admin.oidc import OidcRejected, OidcVerifier, looks_like_jwt
from gateway.admin.roles import Caller, allowed
from gateway.errors import ApiError
from gateway.state import AppState
from registry.access import BOOTSTRAP_PRINCIPAL
from registry.errors import RegistryUnavailable

MAX_TOKEN_CHARS = 8192  # a JWT with a few claims is well under this


def unauthorized() -> ApiError:
    return ApiError("invalid_admin_token", "Missing or invalid admin token.")


def unknown_tenant(tenant: str) -> ApiError:
    """What a tenant outside the caller's scope answers: what a missing tenant answers."""
    return ApiError("not_found", f"tenant {tenant!r} not found")


def _verifier(request: Request, state: AppState) -> OidcVerifier | None:
    if not state.settings.oidc_jwks:
        return None
    verifier: OidcVerifier | None = getattr(request.app.state, "lg_oidc", None)
    if verifier is None:
        verifier = OidcVerifier(state.settings)
        request.app.state.lg_oidc = verifier
    return verifier


async def identify(request: Request, state: AppState) -> Caller:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise unauthorized()
    if state.admin_token and hmac.compare_digest(token.encode(), state.admin_token.encode()):
        return Caller(BOOTSTRAP_PRINCIPAL, "admin")
    verifier = _verifier(request, state)
    if verifier is not None and looks_like_jwt(token):
        try:
            return await verifier.caller(token)
        except OidcRejected:
            raise unauthorized() from None
    try:
        principal = await state.store.principal_for_token(token)
    except RegistryUnavailable:
        raise ApiError(
            "auth_backend_unavailable", "Admin token verification is unavailable; retry."
        ) from None
    if principal is None or principal.revoked:
        raise unauthorized()
    if principal.expires_at is not None and principal.expires_at <= time.time():
        raise unauthorized()
    return Caller(principal.name, principal.role, frozenset(principal.tenants) or None)


async def authorize(request: Request, state: AppState) -> Caller:
    """Identify the caller, then check the route's role and the path's tenant."""
    caller = await identify(request, state)
    endpoint = request.scope.get("endpoint")
    name = getattr(endpoint, "__name__", "")
    tenant = request.path_params.get("tenant")
    if isinstance(tenant, str) and not caller.sees(tenant):
        raise unknown_tenant(tenant)
    if not allowed(caller, name):
        raise ApiError("forbidden", f"The {caller.role} role may not do this.")
    request.state.lg_caller = caller
    return caller
