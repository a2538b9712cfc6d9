"""The floor benchmark's minimal apps work (`python -m loadtests.floor`, part of `make bench-22`):
each server, in echo and in proxy mode, answers the chat route with the completion the mock
engine gives. It asserts answers, never timings (those are the benchmark's)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from adapters.ports import free_port
from loadtests import floor, stack
from loadtests.bench import chat_body
from loadtests.procs import Proc

pytestmark = pytest.mark.timeout(120)
ROUTE = "/v1/chat/completions"


@pytest.mark.parametrize("server", sorted(floor.SERVERS))
def test_minimal_app_relays_the_engine_answer(server: str, tmp_path: Path) -> None:
    mock = stack.start_mock(tmp_path, ports=[free_port()], cpu=None, chunks=2, interval_ms=1)
    started: list[Proc] = [mock.proc]
    try:
        body = chat_body(stack.BASE_MODEL, stream=False)
        modes = [("", ""), (mock.url + ROUTE, ""), (mock.url + ROUTE, "1")]  # echo, proxy, lean
        for upstream, lean in modes:
            port = free_port()
            env = {**os.environ, floor.ENV_UPSTREAM: upstream, floor.ENV_LEAN: lean}
            proc = Proc.start(
                f"{server}-{port}", floor.SERVERS[server](port), log_dir=tmp_path / "logs",
                env=env, cwd=stack.REPO,
            )  # fmt: skip
            started.append(proc)
            status, answer = floor.post(f"http://127.0.0.1:{port}{ROUTE}", body, proc)
            assert status == 200
            assert orjson.loads(answer)["choices"][0]["message"]["content"]
            assert answer == floor.CANNED  # the mock's answer, relayed unchanged
    finally:
        for proc in reversed(started):
            proc.stop()
