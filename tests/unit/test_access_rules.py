"""Pure rules of who may do what: the role table, key refusals, the audit chain, HMAC secrets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.admin.roles import ROUTE_ROLES, Caller, allowed, best_role
from gateway.settings import Settings
from registry.auditchain import entry_hash, verify
from registry.keyrules import alias_allowed, key_refusal
from registry.models import ApiKey, Tenant
from registry.writes import encode


def test_roles_are_ordered_and_unknown_routes_are_closed() -> None:
    viewer, operator = Caller("v", "viewer"), Caller("o", "operator")
    admin, scoped_admin = Caller("a", "admin"), Caller("s", "admin", frozenset({"t1"}))
    assert allowed(viewer, "get_tenant")
    assert not allowed(viewer, "rollback")
    assert allowed(operator, "rollback")
    assert not allowed(operator, "issue_key")
    assert allowed(scoped_admin, "issue_key")
    assert not allowed(scoped_admin, "create_principal")
    assert allowed(admin, "create_principal")
    assert allowed(admin, "a_route_added_without_a_row")  # closed to all but unscoped admins
    assert not allowed(scoped_admin, "a_route_added_without_a_row")
    assert set(ROUTE_ROLES.values()) == {"viewer", "operator", "admin", "global"}


def test_oidc_claims_map_to_the_highest_role() -> None:
    assert best_role(["viewer", "admin"], {}) == "admin"
    assert best_role(["lg-ops", "x"], {"lg-ops": "operator"}) == "operator"
    assert best_role(["root"], {}) is None


def test_key_refusals() -> None:
    tenant = Tenant(id="t1")
    key = ApiKey(key_id="k", tenant="t1", key_hmac="h", expires_at=100.0, aliases=("chat",))
    assert key_refusal(tenant, key, 99.0) is None
    assert key_refusal(tenant, key, 100.0) == "key_expired"
    suspended = tenant.model_copy(update={"suspended": True})
    assert key_refusal(suspended, key, 0.0) == "tenant_suspended"
    assert alias_allowed(key, "chat")
    assert not alias_allowed(key, "other")
    assert alias_allowed(key.model_copy(update={"aliases": ()}), "other")
    # records written before key lifecycle still parse
    old = ApiKey.model_validate({"key_id": "k", "tenant": "t1", "key_hmac": "h"})
    assert old.expires_at is None
    assert old.aliases == ()
    assert old.secret_id == ""


def _chain(n: int) -> list[tuple[str, list[tuple[str, str]]]]:
    out, prev = [], ""
    for i in range(n):
        fields = [("actor", f"a{i}"), ("epoch", str(i)), ("prev", prev)]
        prev = entry_hash(fields)
        out.append((f"{i}-0", [*fields, ("hash", prev)]))
    return out


def test_audit_chain_detects_edits_gaps_and_unchained_entries() -> None:
    entries = _chain(5)
    assert verify(entries).ok
    assert verify(entries).checked == 5
    assert verify(entries[2:]).ok  # a trimmed start is the anchor
    edited = [*entries[:2], (entries[2][0], [("actor", "x"), *entries[2][1][1:]]), *entries[3:]]
    assert (verify(edited).broken_at, verify(edited).why) == (
        "2-0",
        "entry does not match its hash",
    )
    gap = entries[:2] + entries[3:]
    assert verify(gap).broken_at == "3-0"
    unchained = [*entries, ("9-0", [("actor", "z")])]
    assert verify(unchained).broken_at == "9-0"
    assert verify([("0-0", [("actor", "old")]), *entries]).ok  # from before the chain existed
    assert not verify(entries, anchor="f" * 40).ok


def test_hmac_secrets_current_first_retired_left_out() -> None:
    base: dict[str, Any] = {"key_hmac_secret": "old", "key_hmac_secrets": {"s2": "new"}}
    assert list(Settings(**base).key_secrets()) == ["", "s2"]
    rotated = Settings(**base, key_hmac_secret_current="s2")
    assert rotated.key_secrets() == {"s2": b"new", "": b"old"}
    retired = Settings(**base, key_hmac_secret_current="s2", key_hmac_secrets_retired=[""])
    assert retired.key_secrets() == {"s2": b"new"}
    with pytest.raises(ValueError, match="not a live secret"):
        Settings(**base, key_hmac_secrets_retired=[""]).key_secrets()


def test_records_without_the_new_features_keep_their_old_shape() -> None:
    """Mid rolling upgrade a gateway of the previous version (records refuse unknown fields)
    still reads tenants and keys this one writes, unless the new features are used."""
    key = ApiKey(key_id="k", tenant="t1", key_hmac="h", created_at=1.0)
    assert set(orjson.loads(encode(key))) == {
        "key_id",
        "tenant",
        "key_hmac",
        "created_at",
        "revoked",
    }
    assert "suspended" not in orjson.loads(encode(Tenant(id="t1")))
    assert orjson.loads(encode(Tenant(id="t1", suspended=True)))["suspended"] is True
    limited = key.model_copy(update={"expires_at": 5.0, "aliases": ("chat",)})
    assert ApiKey.model_validate(orjson.loads(encode(limited))) == limited
