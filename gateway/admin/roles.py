"""Who may call which admin route (pure): the role table and the tenant scope rule.

Roles are ordered: `viewer` < `operator` < `admin`; each may do what the ones before it may.

| role     | may                                                                               |
|----------|-----------------------------------------------------------------------------------|
| viewer   | read tenants, usage, models, versions, releases, keys (never key material), audit |
| operator | + register/push adapters and prompts, create releases, canary, promote, eval,     |
|          |   rollback, flags (kill switch, auto-rollback, priority), retire versions and     |
|          |   releases                                                                        |
| admin    | + tenants (create, limits, scheduling, suspend/resume), keys (issue, revoke)      |
| admin, all tenants | + principals (create, list, revoke), HMAC secret ids                     |

A principal scoped to tenants sees only those: any other tenant, existing or not, gets the same
404 as an unknown tenant, and lists are filtered. Routes outside the table need `admin` on all
tenants, so a route added without an entry is closed rather than open.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.models import ROLES, Role

# endpoint function name -> least role; GLOBAL: admin, unscoped principals only.
GLOBAL = "global"
ROUTE_ROLES: dict[str, Role | str] = {
    # read
    "list_tenants": "viewer",
    "get_tenant": "viewer",
    "list_models": "viewer",
    "get_model": "viewer",
    "canary_status": "viewer",
    "list_keys": "viewer",
    "audit": "viewer",
    "audit_export": "viewer",
    "list_adapter_versions": "viewer",
    "list_prompt_versions": "viewer",
    "list_releases": "viewer",
    "whoami": "viewer",
    # releases and rollouts
    "register_adapter": "operator",
    "push_adapter": "operator",
    "register_prompt": "operator",
    "create_release": "operator",
    "canary": "operator",
    "promote": "operator",
    "run_eval": "operator",
    "rollback": "operator",
    "put_flags": "operator",
    "retire_adapter_version": "operator",
    "retire_prompt_version": "operator",
    "retire_release": "operator",
    # tenants and keys
    "patch_tenant": "admin",
    "issue_key": "admin",
    "revoke_key": "admin",
    "suspend_tenant": "admin",
    "resume_tenant": "admin",
    # the whole gateway
    "create_tenant": GLOBAL,
    "create_principal": GLOBAL,
    "list_principals": GLOBAL,
    "revoke_principal": GLOBAL,
    "list_secrets": GLOBAL,
}


@dataclass(frozen=True)
class Caller:
    """The authenticated admin identity of one request. `tenants` None: every tenant."""

    name: str  # what the audit records
    role: Role
    tenants: frozenset[str] | None = None

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


def rank(role: Role) -> int:
    return ROLES.index(role)


def allowed(caller: Caller, endpoint: str) -> bool:
    """Whether the caller's role opens the route (the tenant scope is checked separately)."""
    need = ROUTE_ROLES.get(endpoint, GLOBAL)
    if need == GLOBAL:
        return caller.role == "admin" and caller.tenants is None
    return rank(caller.role) >= rank(need)  # type: ignore[arg-type]


def best_role(values: list[str], mapping: dict[str, str]) -> Role | None:
    """The highest role a token's claim values map to (role names map to themselves)."""
    found = [mapping.get(v, v) for v in values]
    roles = [r for r in ROLES if r in found]
    return roles[-1] if roles else None
