"""S3 extended: the authorization matrix. Every admin route (enumerated from the app, so a new
route is covered the day it is added and fails here until it is given a row) x every kind of
caller: no token, a bad one, an expired and a revoked named token, a tenant key, named viewer /
operator / admin tokens, operators scoped to this tenant and to another one, OIDC tokens with each
role, an expired and a forged OIDC token, and the bootstrap token.

Exactly the documented callers pass (the table below is written out here, independently of
gateway/admin/roles.py); a tenant outside a caller's scope answers exactly what an unknown
tenant answers.

    FIGURE S3b: <routes> routes x 17 callers, every answer as documented
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any

from tests.fixtures.admin_routes import BODIES, admin_routes, fill
from tests.fixtures.inprocess import InProcessFactory, InProcessGateway
from tests.fixtures.oidc import oidc_setup, oidc_token

RANKS = {"viewer": 0, "operator": 1, "admin": 2}

# The documented role table: least role per route; "global": admin on every tenant.
EXPECTED: dict[str, str] = {
    "list_tenants": "viewer", "get_tenant": "viewer", "list_models": "viewer",
    "get_model": "viewer", "canary_status": "viewer", "list_keys": "viewer", "audit": "viewer", "audit_export": "viewer",
    "list_adapter_versions": "viewer", "list_prompt_versions": "viewer",
    "list_releases": "viewer", "whoami": "viewer",
    "register_adapter": "operator", "push_adapter": "operator", "register_prompt": "operator",
    "create_release": "operator", "canary": "operator", "promote": "operator",
    "run_eval": "operator", "rollback": "operator", "put_flags": "operator",
    "retire_adapter_version": "operator", "retire_prompt_version": "operator",
    "retire_release": "operator",
    "patch_tenant": "admin", "issue_key": "admin", "revoke_key": "admin",
    "suspend_tenant": "admin", "resume_tenant": "admin",
    "create_tenant": "global", "create_principal": "global", "list_principals": "global",
    "revoke_principal": "global", "list_secrets": "global",
}  # fmt: skip


async def callers(gw: InProcessGateway, tenant_key: str, key: Any, other: Any) -> dict[str, Any]:
    """name -> (bearer token or None, expected role or None for 401, scope)."""
    store = gw.state.store
    tokens: dict[str, str] = {}
    for name, role, scope in (("viewer", "viewer", ()), ("operator", "operator", ()),
                              ("named-admin", "admin", ()), ("op-t1", "operator", ("t1",)),
                              ("op-t2", "operator", ("t2",)), ("gone", "admin", ())):  # fmt: skip
        _, tokens[name] = await store.create_principal(name, role=role, tenants=scope, actor="t")  # type: ignore[arg-type]
    _, expired = await store.create_principal(
        "expired", role="admin", expires_at=time.time() - 1, actor="t"
    )
    await store.revoke_principal("gone", actor="t")
    return {
        "none": (None, None, None),
        "bad": ("lga-" + "x" * 43, None, None),
        "expired": (expired, None, None),
        "revoked": (tokens["gone"], None, None),
        "tenant_key": (tenant_key, None, None),
        "viewer": (tokens["viewer"], "viewer", None),
        "operator": (tokens["operator"], "operator", None),
        "admin": (tokens["named-admin"], "admin", None),
        "operator_own": (tokens["op-t1"], "operator", {"t1"}),
        "operator_other": (tokens["op-t2"], "operator", {"t2"}),
        "oidc_viewer": (oidc_token(key, "vera", "viewer"), "viewer", None),
        "oidc_operator": (oidc_token(key, "otto", ["lg-ops", "unrelated"]), "operator", None),
        "oidc_admin": (oidc_token(key, "ada", "admin"), "admin", None),
        "oidc_expired": (oidc_token(key, "ada", "admin", exp=time.time() - 60), None, None),
        "oidc_forged": (oidc_token(other, "eve", "admin"), None, None),
        "oidc_no_role": (oidc_token(key, "nob", "nothing"), None, None),
        "bootstrap": (gw.admin_token, "admin", None),
    }


def may(role: str, scope: set[str] | None, need: str) -> bool:
    if need == "global":
        return role == "admin" and scope is None
    return RANKS[role] >= RANKS[need]


async def test_s3b_authorization_matrix(
    inprocess_gateway: InProcessFactory, tmp_path: Path
) -> None:
    key, other, oidc = oidc_setup(tmp_path)
    gw = await inprocess_gateway(**oidc)
    t1 = await gw.seed_tenant("t1", adapter=None)
    await gw.seed_tenant("t2", adapter=None)
    who = await callers(gw, t1.api_key, key, other)
    routes = admin_routes(gw.app)
    names = {name for _, _, name in routes}
    assert names == set(EXPECTED), f"routes without a documented row: {names ^ set(EXPECTED)}"
    outcomes = {"401": 0, "403": 0, "404-foreign": 0, "passed": 0}
    for method, template, name in routes:
        body = BODIES.get(name)
        path = "/admin/v1" + fill(template).removeprefix("/admin/v1")
        for caller, (token, role, scope) in who.items():
            headers = {} if token is None else gw.bearer(token)
            r = await gw.client.request(method, path, headers=headers, json=body)
            where = (caller, method, path, r.status_code, r.text[:200])
            if role is None:
                assert r.status_code == 401, where
                assert r.json()["error"]["code"] == "invalid_admin_token", where
                outcomes["401"] += 1
            elif scope is not None and "{tenant}" in template and "t1" not in scope:
                # a foreign tenant answers exactly what an unknown one does
                unknown = "/admin/v1" + fill(template, tenant="t404").removeprefix("/admin/v1")
                u = await gw.client.request(method, unknown, headers=headers, json=body)
                assert r.status_code == u.status_code == 404, where
                assert r.text == u.text.replace("t404", "t1"), (where, u.text)
                outcomes["404-foreign"] += 1
            elif may(role, scope, EXPECTED[name]):
                assert r.status_code not in {401, 403}, where
                assert r.status_code < 500, where
                outcomes["passed"] += 1
            else:
                assert r.status_code == 403, where
                assert r.json()["error"]["code"] == "forbidden", where
                outcomes["403"] += 1
    # what an unknown tenant answers the bootstrap admin is what a foreign one answers a scoped
    # operator (the message names only what was sent)
    op_other = gw.bearer(who["operator_other"][0])
    foreign = await gw.client.get("/admin/v1/tenants/t1", headers=op_other)
    missing = await gw.client.get("/admin/v1/tenants/t404", headers=gw.bearer(gw.admin_token))
    assert (foreign.status_code, foreign.text) == (404, missing.text.replace("t404", "t1"))
    # lists are filtered to the caller's tenants; another tenant's audit looks unknown
    listed = await gw.client.get("/admin/v1/tenants", headers=op_other)
    assert [t["id"] for t in listed.json()] == ["t2"]
    audit = await gw.client.get("/admin/v1/audit", params={"tenant": "t1"}, headers=op_other)
    assert audit.status_code == 404
    own = await gw.client.get("/admin/v1/audit", headers=op_other)
    assert own.status_code == 200
    assert {e["tenant"] for e in own.json()} == {"t2"}
    who_am_i = await gw.client.get("/admin/v1/whoami", headers=gw.bearer(who["oidc_operator"][0]))
    assert who_am_i.json() == {"name": "oidc:otto", "role": "operator", "tenants": None}
    print(f"FIGURE S3b: {len(routes)} routes x {len(who)} callers: {outcomes}")
    assert min(outcomes.values()) > 0


async def test_s3b_oidc_jwks_from_a_url(
    inprocess_gateway: InProcessFactory, tmp_path: Path
) -> None:
    """The JWKS fetched over HTTP (PyJWT's client, in a worker thread): a signed token opens,
    a forged one does not."""
    key, other, oidc = oidc_setup(tmp_path)
    jwks = await asyncio.to_thread(Path(oidc["oidc_jwks"]).read_bytes)

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(jwks)))
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
            gw = await inprocess_gateway(**(oidc | {"oidc_jwks": url}))
            good = gw.bearer(oidc_token(key, "ada", "viewer"))
            r = await gw.client.get("/admin/v1/whoami", headers=good)
            assert r.json() == {"name": "oidc:ada", "role": "viewer", "tenants": None}, r.text
            forged = gw.bearer(oidc_token(other, "eve", "admin"))
            r = await gw.client.get("/admin/v1/whoami", headers=forged)
            assert r.status_code == 401
        finally:
            server.shutdown()
            thread.join(timeout=10)
