"""Logs and startup (issue 21): every line a gateway process writes is one JSON object; it says
where it listens, which engines and Redis it uses and its version, and says so when the registry
is unreachable at start or an engine is never healthy; no secret appears in any line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from adapters.ports import free_port
from tests.fixtures.fake_engine import FakeEngineFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.fixtures.traffic import wait_for


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _logged(gw: GatewayProcess, msg: str) -> bool:
    return any(line.get("msg") == msg for line in _lines(gw.log_path))


def test_startup_line_then_errors_for_an_unreachable_registry_and_a_dead_engine(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    dead = f"http://127.0.0.1:{free_port()}"
    redis_url = f"redis://:hunter2-redis@127.0.0.1:{free_port()}/0"
    gw = gateway_factory(
        engines=[fake.url, dead], redis_url=redis_url, startup_grace_s=1.0,
        engine_api_key="lgeng-do-not-log-me",
    )  # fmt: skip
    wait_for(lambda: _logged(gw, "engine never healthy since start"), 20, "engine line")
    lines = _lines(gw.log_path)  # every line parses as JSON, or this raises
    (started,) = [line for line in lines if line["msg"] == "loragate started"]
    assert started["address"] == gw.url
    assert started["engines"] == [fake.url, dead]
    assert started["redis"] == redis_url.replace(":hunter2-redis@", "")
    assert started["version"] == "0.1.0"
    assert started["engine_api_key"] is True
    registry = [line for line in lines if line["msg"].startswith("registry unreachable at start")]
    assert [line["level"] for line in registry] == ["error"]
    (engine,) = [line for line in lines if line["msg"] == "engine never healthy since start"]
    assert (engine["level"], engine["engine"], engine["url"]) == ("error", "engine-1", dead)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    text = gw.log_path.read_text()
    for secret in ("hunter2-redis", "lgeng-do-not-log-me", gw.admin_token, gw.env[
        "LORAGATE_KEY_HMAC_SECRET"]):  # fmt: skip
        assert secret not in text
    # /readyz keeps the reasons.
    body = httpx.get(gw.url + "/readyz", timeout=5).json()
    assert body["redis_ok"] is False


def test_a_healthy_start_logs_no_error(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    gw = gateway_factory(engines=[fake.url], startup_grace_s=1.0)
    gw.wait_ready()
    wait_for(lambda: _logged(gw, "every engine healthy"), 10, "the engine watch's verdict")
    lines = _lines(gw.log_path)
    assert [line["msg"] for line in lines if line["level"] == "error"] == []
    assert [line["msg"] for line in lines].count("loragate started") == 1
