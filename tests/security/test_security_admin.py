"""S3 admin authentication on every route (roles: test_security_roles.py), S4 hostile adapter names and paths via the admin API.

Routes are enumerated from the app itself, so a new admin route is covered the day it is added.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI

from tests.fixtures.admin_routes import BODIES, admin_routes, fill
from tests.fixtures.inprocess import InProcessFactory
from tests.fixtures.models import TinyModels


def _admin_routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """Every admin route the app serves, with its path parameters filled in."""
    return [(method, fill(path), name) for method, path, name in admin_routes(app)]


async def test_s3_only_the_admin_token_opens_admin_routes(
    inprocess_gateway: InProcessFactory,
) -> None:
    gw = await inprocess_gateway()
    tenant = await gw.seed_tenant("t1", adapter=None)
    routes = _admin_routes(gw.app)
    assert len(routes) >= 30
    for method, path, name in routes:
        body = BODIES.get(name)
        for auth in (None, "Bearer", "Bearer wrong", f"Bearer {tenant.api_key}",
                     gw.admin_token, f"Basic {gw.admin_token}", f"Bearer {gw.admin_token}x"):  # fmt: skip
            headers = {} if auth is None else {"authorization": auth}
            for content in (body, "{not json", {"zzz": 1}):
                kw: dict[str, Any] = (
                    {"content": content} if isinstance(content, str) else {"json": content}
                )
                r = await gw.client.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (method, path, auth, content, r.text)
                assert r.json()["error"]["code"] == "invalid_admin_token"
        # the admin token passes authentication (the outcome then depends on the resource)
        r = await gw.client.request(method, path, headers=gw.bearer(gw.admin_token), json=body)
        assert r.status_code not in {401, 403}, (method, path, r.text)
        assert r.status_code < 500, (method, path, r.text)
        if body is not None:
            r = await gw.client.request(
                method, path, headers=gw.bearer(gw.admin_token), json={**body, "zzz_extra": 1}
            )
            assert r.status_code == 422, (method, path, r.text)
            assert "zzz_extra" in r.text
    # nothing the refused requests carried was written
    tenants = await gw.admin("GET", "/tenants")
    assert sorted(t["id"] for t in tenants) == ["t1", "t9"]
    paged, cursor = [], "0"
    for _ in range(10):  # pages of one: every tenant once, then cursor 0
        r = await gw.client.get(
            f"/admin/v1/tenants?limit=1&cursor={cursor}", headers=gw.bearer(gw.admin_token)
        )
        paged += [t["id"] for t in r.json()]
        cursor = r.headers["x-next-cursor"]
        if cursor == "0":
            break
    assert sorted(paged) == ["t1", "t9"]
    for bad in ("limit=0", "limit=1001", "cursor=-1", f"cursor={2**64}"):
        r = await gw.client.get(f"/admin/v1/tenants?{bad}", headers=gw.bearer(gw.admin_token))
        assert r.status_code == 422, bad


def _hostile_names() -> list[str]:
    base = ["..", ".", "../x", "a/b", "a\\b", "A", "Lora", "x" * 49, "", " ", "a b", "a\x00b",
            "a\nb", "\u0430", "l\u200bora", "lora\u0301", "%2e%2e", "a:b", "a@1", "a$", "-a",
            "a.b", "~", "*", "a;b", "a|b", "`id`", "$(id)", "a'b", 'a"b', "a<b>", "\ufeffa",
            "lora\t", "CON", "a%00", "lora\n", "unknown"]  # fmt: skip
    return base


def _hostile_paths(store: Path, outside: Path) -> list[str]:
    abs_inside = str(store / "tiny" / "tiny-lora-1")
    base = ["../outside", "../../etc", "/etc", "/etc/passwd", abs_inside, str(outside),
            "tiny/../../outside", "tiny/tiny-lora-1/../../../outside", "./../outside",
            "tiny/tiny-lora-1\x00", "\x00", "tiny/./../..", "~", "~/x", "$HOME", "C:\\x",
            "\\\\host\\share", "tiny\\..\\..\\x", "link-out", "link-out/x", "pickle",
            "pickle/adapter_model.bin", "empty", "missing", "tiny/tiny-lora-1/adapter_config.json",
            "x" * 300, "tiny/" + "a/" * 120, "%2e%2e/outside", "file:///etc/passwd",
            "http://127.0.0.1/x", "//etc", "tiny//..//..//outside",
            " ../outside", "../outside ", "tiny/\u2025/x", "..\u2215outside", ".."]  # fmt: skip
    return base


@pytest.fixture
def hostile_store(tiny_models: TinyModels, tmp_path: Path) -> tuple[Path, Path]:
    """Hostile files inside the session's adapter store: a pickle that would write a marker when
    loaded, a symlink pointing outside, an empty directory."""
    store = tiny_models.store_root
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "PWNED"

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.write_text, (marker, "pwned"))

    pickled = store / "pickle"
    pickled.mkdir(exist_ok=True)
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(Boom()))
    (pickled / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (store / "empty").mkdir(exist_ok=True)
    link = store / "link-out"
    if not link.is_symlink():
        link.symlink_to(outside)
    return outside, marker


REFUSALS = {"invalid_name", "not_found", "artifact_outside_store", "unsafe_artifact_format",
            "artifact_invalid", "adapter_incompatible", "validation_error", "method_not_allowed"}  # fmt: skip


async def test_s4_hostile_adapter_names_and_paths_are_refused(
    inprocess_gateway: InProcessFactory, tiny_models: TinyModels, hostile_store: tuple[Path, Path]
) -> None:
    outside, marker = hostile_store
    gw = await inprocess_gateway()
    await gw.seed_tenant("t1", adapter=None)
    cases: list[tuple[str, Any]] = []
    for raw in _hostile_names():
        name = quote(raw, safe="")  # control characters cannot travel raw in a URL
        cases.append((f"/tenants/t1/adapters/{name}/versions", {"path": "tiny/tiny-lora-1"}))
        cases.append((f"/tenants/{name}/adapters/lora/versions", {"path": "tiny/tiny-lora-1"}))
        cases.append((f"/tenants/t1/models/{name}/releases", {"adapter": "lora@1", "prompt": None}))
    for path in _hostile_paths(tiny_models.store_root, outside):
        for adapter in ("lora", "other"):
            cases.append((f"/tenants/t1/adapters/{adapter}/versions", {"path": path}))
        cases.append(("/tenants/t1/adapters/lora/versions", {"path": path, "metadata": {}}))
    for ref in ("../lora@1", "lora@1/../x", "lora@-1", "lora@0", "lora@1.0", "other@1", "lora",
                "lora@99", "LORA@1", "lora@1 ", "lora@\u0661", "@1", "lora@@1"):  # fmt: skip
        cases.append(("/tenants/t1/models/chat2/releases", {"adapter": ref, "prompt": None}))
    assert len(cases) >= 200
    codes: dict[str, int] = {}
    for path, body in cases:
        r = await gw.client.post("/admin/v1" + path, json=body, headers=gw.bearer(gw.admin_token))
        assert r.status_code in {404, 405, 422}, (path, body, r.text)
        code = r.json()["error"]["code"]
        assert code in REFUSALS, (path, body, r.text)
        codes[code] = codes.get(code, 0) + 1
    assert gw.engine.loaded == set()  # no engine load call ever made
    assert not marker.exists()
    assert list(outside.iterdir()) == []
    # a rejected request writes nothing
    aliases = await gw.admin("GET", "/tenants/t1/models")
    assert [a["alias"] for a in aliases] == ["chat"]
    assert codes["artifact_outside_store"] > 0
    assert codes["unsafe_artifact_format"] + codes.get("artifact_invalid", 0) > 0
