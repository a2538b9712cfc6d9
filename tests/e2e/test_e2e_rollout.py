"""Releases end to end: validation that writes nothing, canary/promote/rollback while traffic flows,
and serving through a Redis outage. Real gateway, real Redis, real vLLM-CPU engine."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from adapters.engine_process import EngineProcess
from registry.keyspace import Keyspace
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.fixtures.models import TinyModels
from tests.fixtures.redis import RedisServer

pytestmark = pytest.mark.engine
MESSAGES = [{"role": "user", "content": "hello"}]


def _chat(gw: GatewayProcess, key: str, model: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    if user is not None:
        body["user"] = user
    return httpx.post(
        gw.url + "/v1/chat/completions", json=body,
        headers={"authorization": f"Bearer {key}"}, timeout=30,
    )  # fmt: skip


def _dump(gw: GatewayProcess) -> dict[bytes, Any]:
    """Every key and value of the gateway's Redis database (streams by length); keys' last use
    is left out: each gateway writes it once a minute, whatever the test is doing."""
    client = redis.Redis.from_url(gw.env["LORAGATE_REDIS_URL"])
    out: dict[bytes, Any] = {}
    for key in client.scan_iter():
        if key == Keyspace().key_seen.encode():
            continue
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"string":
            out[key] = client.get(key)
        elif kind == b"stream":
            out[key] = client.xlen(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = client.smembers(key)
        else:
            out[key] = kind
    client.close()
    return out


@pytest.fixture(scope="module")
def gw(module_gateway_factory: GatewayFactory, engine: EngineProcess) -> GatewayProcess:
    return module_gateway_factory(engines=[engine.url], max_lora_rank=8)


@pytest.fixture(scope="module")
def hostile(tiny_models: TinyModels) -> dict[str, str]:
    """Hostile artifacts inside the store root (and one outside it)."""
    store = tiny_models.store_root
    good = tiny_models.adapter_dirs[0]
    out: dict[str, str] = {}
    pickle_dir = store / "hostile" / "pickle"
    shutil.copytree(good, pickle_dir)
    marker = store.parent / "PWNED"
    # A pickle that would create the marker file if anything ever unpickled it.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (pickle_dir / "adapter_model.bin").write_bytes(payload)
    out["pickle"] = "hostile/pickle"
    out["marker"] = str(marker)
    base_dir = store / "hostile" / "other-base"
    shutil.copytree(good, base_dir)
    config = json.loads((base_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-other-model"
    (base_dir / "adapter_config.json").write_text(json.dumps(config))
    out["base"] = "hostile/other-base"
    rank_dir = store / "hostile" / "rank16"
    shutil.copytree(good, rank_dir)
    config = json.loads((rank_dir / "adapter_config.json").read_text())
    config["r"] = 16
    (rank_dir / "adapter_config.json").write_text(json.dumps(config))
    out["rank"] = "hostile/rank16"
    link = store / "hostile" / "escape"
    link.symlink_to(store.parent)
    out["symlink"] = "hostile/escape"
    return out


def test_bad_admin_inputs_are_refused_and_write_nothing(
    gw: GatewayProcess, hostile: dict[str, str], tiny_models: TinyModels
) -> None:
    gw.call("POST", "/tenants", {"id": "ops"}, expect=201)
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/tenants/ops/adapters/a/versions", {"path": "../outside"}, 422, "artifact_outside_store"),
        ("POST", "/tenants/ops/adapters/a/versions", {"path": "/etc"}, 422, "invalid_name"),
        ("POST", "/tenants/ops/adapters/a/versions", {"path": hostile["symlink"]}, 422, "artifact_outside_store"),
        ("POST", "/tenants/ops/adapters/a/versions", {"path": hostile["pickle"]}, 422, "unsafe_artifact_format"),
        ("POST", "/tenants/ops/adapters/a/versions", {"path": hostile["base"]}, 422, "adapter_incompatible"),
        ("POST", "/tenants/ops/adapters/a/versions", {"path": "nope/missing"}, 422, "artifact_invalid"),
        ("POST", "/tenants/ops/adapters/Bad Name/versions", {"path": "x"}, 422, "invalid_name"),
        ("POST", "/tenants/ghost/prompts/p/versions", {"system_prompt": "x"}, 404, "not_found"),
        ("POST", "/tenants/ops/prompts/p/versions", {"system_prompt": "x", "extra": 1}, 422, "validation_error"),
        ("POST", "/tenants/ops/models/m/releases", {"adapter": "a@1", "prompt": None}, 404, "not_found"),
        ("POST", "/tenants/ops/models/m/canary", {"release": "m-r1", "weight": 0.5, "expected_revision": 0}, 404, "not_found"),
        ("POST", "/tenants", {"id": "ops"}, 409, "already_exists"),
        ("POST", "/tenants", {"id": "UPPER"}, 422, "invalid_name"),
    ]  # fmt: skip
    before = _dump(gw)
    for method, path, body, status, code in cases:
        response = gw.admin.request(method, path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error"]["code"] == code, (path, body, response.text)
    rank = gw.admin.post("/tenants/ops/adapters/a/versions", json={"path": hostile["rank"]})
    assert rank.status_code == 422
    assert rank.json()["error"]["code"] in {"adapter_incompatible", "artifact_invalid"}
    assert _dump(gw) == before
    assert not Path(hostile["marker"]).exists()


def test_rank_above_the_engine_limit_is_adapter_incompatible(
    gateway_factory: GatewayFactory, engine: EngineProcess, tiny_models: TinyModels
) -> None:
    strict = gateway_factory(engines=[engine.url], max_lora_rank=4)
    strict.call("POST", "/tenants", {"id": "ops"}, expect=201)
    before = _dump(strict)
    r = strict.admin.post(
        "/tenants/ops/adapters/a/versions", json={"path": tiny_models.adapter_relpaths[0]}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "adapter_incompatible"
    assert _dump(strict) == before


def test_admin_routes_refuse_tenant_keys_and_bad_tokens(gw: GatewayProcess) -> None:
    tenant = gw.seed_tenant("keyholder", adapter=None, system_prompt="x")
    for token in ("x", "wrong", tenant.api_key):
        r = httpx.get(gw.url + "/admin/v1/tenants", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_admin_token"


def test_canary_promote_rollback_while_traffic_flows(
    gw: GatewayProcess, tiny_models: TinyModels
) -> None:
    t = gw.seed_tenant(
        "rollco", adapter=tiny_models.adapter_relpaths[0], system_prompt="v1", alias="bot"
    )
    v2 = gw.call(
        "POST", "/tenants/rollco/adapters/lora/versions", {"path": tiny_models.adapter_relpaths[1]}
    )
    p2 = gw.call("POST", "/tenants/rollco/prompts/main/versions", {"system_prompt": "v2"})
    r2 = gw.call(
        "POST", "/tenants/rollco/models/bot/releases", {"adapter": v2["ref"], "prompt": p2["ref"]}
    )["release"]
    r1 = t.release

    failures: list[str] = []
    served: Counter[str] = Counter()
    timeline: list[tuple[float, str]] = []  # (request start, release that served it)
    stop = threading.Event()

    def traffic(worker: int) -> None:
        n = 0
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            started = time.monotonic()
            r = _chat(gw, t.api_key, "bot", user=f"user-{worker}-{n % 40}")
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")
            else:
                served[r.headers["x-loragate-release"]] += 1
                timeline.append((started, r.headers["x-loragate-release"]))

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        state = gw.call("GET", "/tenants/rollco/models/bot")
        state = gw.call(
            "POST", "/tenants/rollco/models/bot/canary",
            {"release": r2, "weight": 0.5, "expected_revision": state["revision"]},
        )  # fmt: skip
        _wait(lambda: served[r2] >= 5 and served[r1] >= 5, "both releases serve during the canary")
        state = gw.call(
            "POST", "/tenants/rollco/models/bot/promote", {"expected_revision": state["revision"]}
        )
        assert state["stable"] == r2
        assert state["canary"] is None
        state = gw.call(
            "POST", "/tenants/rollco/models/bot/rollback",
            {"expected_revision": state["revision"], "reason": "quality regression"},
        )  # fmt: skip
        assert state["stable"] == r1
        rolled_back_at = time.monotonic()
        _wait(
            lambda: sum(1 for at, _ in timeline if at > rolled_back_at + 1.0) >= 10,
            "traffic after the rollback",
        )
        # Every request admitted more than a second after the rollback is served by the old release.
        after = [release for at, release in timeline if at > rolled_back_at + 1.0]
        assert set(after) == {r1}
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    stale = gw.admin.post("/tenants/rollco/models/bot/promote", json={"expected_revision": 1})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "revision_conflict"
    audit = gw.call("GET", "/audit?tenant=rollco")
    actions = [entry["action"] for entry in audit]
    for action in ("canary", "promote", "rollback"):
        assert action in actions
    assert t.api_key not in json.dumps(audit)


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def test_kill_switch_serves_the_base_model(gw: GatewayProcess, tiny_models: TinyModels) -> None:
    t = gw.seed_tenant(
        "killco", adapter=tiny_models.adapter_relpaths[2], system_prompt="x", alias="bot"
    )
    with_adapter = _chat(gw, t.api_key, "bot").json()["choices"][0]["message"]["content"]
    state = gw.call("GET", "/tenants/killco/models/bot")
    gw.call("PUT", "/tenants/killco/models/bot/flags",
            {"kill_switch": True, "expected_revision": state["revision"]})  # fmt: skip
    r = _chat(gw, t.api_key, "bot")
    assert r.status_code == 200
    assert r.headers["x-loragate-release"] == t.release
    assert r.json()["model"] == "bot"
    assert r.json()["choices"][0]["message"]["content"] != with_adapter


def test_redis_outage_keeps_known_tenants_served(
    gateway_factory: GatewayFactory, engine: EngineProcess, redis_private: RedisServer,
    tiny_models: TinyModels,
) -> None:  # fmt: skip
    gw = gateway_factory(engines=[engine.url], redis_url=redis_private.url)
    t = gw.seed_tenant("steady", adapter=tiny_models.adapter_relpaths[0], system_prompt="x")
    assert _chat(gw, t.api_key, "chat").status_code == 200
    redis_private.kill()
    for _ in range(5):
        started = time.monotonic()
        assert _chat(gw, t.api_key, "chat").status_code == 200
        assert time.monotonic() - started < 10
    started = time.monotonic()
    unknown = _chat(gw, "lg-unknown-key", "chat")
    assert unknown.status_code == 503
    assert unknown.json()["error"]["code"] == "auth_backend_unavailable"
    assert "retry-after" in unknown.headers
    write = gw.admin.post("/tenants", json={"id": "newco"})
    assert write.status_code == 503
    assert write.json()["error"]["code"] == "registry_unavailable"
    assert time.monotonic() - started < 5
    # The watcher notices on its next epoch poll (every 0.5 s).
    _wait(lambda: httpx.get(gw.url + "/readyz").json()["redis_ok"] is False, "redis_ok false", 5)
    assert httpx.get(gw.url + "/healthz").status_code == 200
    redis_private.start()
    _wait(lambda: httpx.get(gw.url + "/readyz").json()["redis_ok"], "resync after restart", 10)
    # AOF kept every acknowledged write: the tenant is still there, and writes work again.
    assert gw.admin.post("/tenants", json={"id": "newco"}).status_code == 201
    assert _chat(gw, t.api_key, "chat").status_code == 200
