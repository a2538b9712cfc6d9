"""The admin API's contract in one place: the typed client calls routes the server has, with the
methods it serves them on; every answer body is documented in /openapi.json as a `*Public` model;
an error answer reaches the caller as its envelope."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from gateway.admin import access_routes as access_api
from gateway.admin import adapter_push, retire_routes
from gateway.admin import client as api
from gateway.admin import routes as admin_api
from gateway.app import create_app
from gateway.errors import CODES, ApiError
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

CALLS: list[api.AdminCall[Any]] = [
    api.create_tenant("acme", limits={"max_concurrency": 2}),
    api.list_tenants(),
    api.get_tenant("acme"),
    api.update_tenant("acme", limits={}),
    api.issue_key("acme"),
    api.revoke_key("acme", "k1"),
    api.register_adapter("acme", "lora", "acme/lora-1"),
    api.register_prompt("acme", "main", "Be brief."),
    api.create_release("acme", "chat", adapter="lora@1", prompt=None),
    api.list_models("acme"),
    api.get_model("acme", "chat"),
    api.canary("acme", "chat", "chat-r2", 0.1, 3),
    api.promote("acme", "chat", 4),
    api.evaluate("acme", "chat"),
    api.rollback("acme", "chat", "bad answers"),
    api.set_flags("acme", "chat", kill_switch=True),
    api.audit("acme", 10),
    api.upload_adapter("acme", "lora", [b""], size=0, digest="sha256:00"),
    api.list_adapter_versions("acme"),
    api.list_prompt_versions("acme"),
    api.list_releases("acme"),
    api.retire_adapter_version("acme", "lora", 1),
    api.retire_prompt_version("acme", "main", 1),
    api.retire_release("acme", "chat-r1"),
    api.audit_export("1-0", 10, "acme"),
    api.list_keys("acme"),
    api.suspend_tenant("acme"),
    api.resume_tenant("acme"),
    api.whoami(),
    api.create_principal("ops", "operator", tenants=["acme"]),
    api.list_principals(),
    api.revoke_principal("ops"),
    api.list_secrets(),
    api.canary_status("acme", "chat"),
]
# Answers that are not one `*Public` model: the audit export is NDJSON; the adapter push and the
# version listings answer records with what uses them (gateway/admin/adapter_push.py).
NOT_PUBLIC = {"/audit/export", "/tenants/{tenant}/adapters/{adapter}/uploads",
              "/tenants/{tenant}/adapters", "/tenants/{tenant}/prompts",
              "/tenants/{tenant}/releases"}  # fmt: skip


def _routes() -> set[tuple[str, str]]:
    out = set()
    for route in (
        *admin_api.router.routes, *adapter_push.router.routes, *access_api.router.routes,
        *retire_routes.router.routes,
    ):  # fmt: skip
        assert isinstance(route, APIRoute)
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", route.path.removeprefix(api.PREFIX))
        out |= {(method, pattern) for method in route.methods or ()}
    return out


def test_the_client_covers_every_admin_route_with_its_method() -> None:
    routes = _routes()
    covered = set()
    for call in CALLS:
        matches = {
            (m, p) for m, p in routes if m == call.method and re.fullmatch(p, call.path) is not None
        }
        assert len(matches) == 1, (call.method, call.path)
        covered |= matches
    assert covered == routes


def test_every_admin_answer_is_documented_as_a_public_model() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        admin_token="x",
        key_hmac_secret="y",
        engines=["http://127.0.0.1:1"],
        base_model="base",
        adapter_store="/tmp",
    )
    document = create_app(settings, metrics_registry=CollectorRegistry()).openapi()
    operations = 0
    for path, items in document["paths"].items():
        if not path.startswith(api.PREFIX):
            continue
        for method, operation in items.items():
            operations += 1
            (status,) = [s for s in operation["responses"] if s.startswith("2")]
            if status == "204" or path.removeprefix(api.PREFIX) in NOT_PUBLIC:
                continue
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            ref = schema.get("items", schema)["$ref"]
            assert ref.endswith("Public"), (method, path, ref)
    assert operations == len(CALLS)


def test_an_error_answer_carries_the_envelope() -> None:
    error = ApiError("revision_conflict", "The alias changed.")
    response = httpx.Response(error.status, json=error.body())
    with pytest.raises(api.AdminError) as caught:
        api.answer(response)
    assert (caught.value.status, caught.value.code) == (409, "revision_conflict")
    assert caught.value.message == "The alias changed."
    assert caught.value.body == error.body()
    plain = api.error_of(httpx.Response(502, text="Bad Gateway"))
    assert (plain.status, plain.code, plain.body) == (502, "http_error", "Bad Gateway")


def test_metric_error_codes_are_the_error_table() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.count_error("acme", "not_a_code")
    for code in CODES:
        metrics.count_error("acme", code)
    for code in [*CODES, "unknown"]:
        labels = {"tenant": "unknown", "code": code}
        assert registry.get_sample_value("loragate_errors_total", labels) == 1.0, code


def test_an_answer_that_is_not_json_is_an_admin_error() -> None:
    html = httpx.Response(
        200, text="<html>proxy login</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(api.AdminError) as caught:
        api.answer(html)
    assert (caught.value.code, caught.value.message) == (
        "invalid_response",
        "the answer is not JSON (text/html)",
    )
    with pytest.raises(api.AdminError):
        api._read(api.get_tenant("acme"), {"not": "a tenant"})
