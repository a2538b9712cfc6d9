"""The request log (LORAGATE_REQUEST_LOG): one JSON line per tenant request, whatever its outcome,
joined to the client's `x-request-id`; no prompt, completion, key or end-user id in it (S5 checks
the same with marker secrets)."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from gateway.observability.requestlog import REQUEST_LOGGER, emit, start_writer
from tests.fixtures.inprocess import InProcessFactory

PROMPT = "a question only the tenant may read"


async def test_one_line_per_request_with_ids_route_outcome_and_usage(
    inprocess_gateway: InProcessFactory,
    tiny_adapter_paths: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="loragate.requests")
    gw = await inprocess_gateway(request_log=True)
    t = await gw.seed_tenant("logged", adapter=tiny_adapter_paths[0])
    url = "/v1/chat/completions"
    msgs = [{"role": "user", "content": PROMPT}]
    ok = await gw.client.post(url, json={"model": "chat", "messages": msgs, "user": "end-user-9"},
                              headers=gw.bearer(t.api_key))  # fmt: skip
    streamed = await gw.client.post(url, json={"model": "chat", "messages": msgs, "stream": True},
                                    headers=gw.bearer(t.api_key))  # fmt: skip
    missing = await gw.client.post(url, json={"model": "nope", "messages": msgs},
                                   headers=gw.bearer(t.api_key))  # fmt: skip
    anonymous = await gw.client.post(url, json={"model": "chat", "messages": msgs})
    assert [r.status_code for r in (ok, streamed, missing, anonymous)] == [200, 200, 404, 401]

    records = [
        orjson.loads(r.getMessage()) for r in caplog.records if r.name == "loragate.requests"
    ]
    by_id = {rec["request_id"]: rec for rec in records}
    assert len(records) == len(by_id) == 4
    first = by_id[ok.headers["x-request-id"]]
    assert first["tenant"] == "logged"
    assert first["key_id"] == t.key_id
    assert (first["model"], first["release"], first["arm"]) == ("chat", t.release, "stable")
    assert first["engine"] == "engine-0"
    assert (first["outcome"], first["code"], first["http_status"]) == ("ok", None, 200)
    assert first["stream"] is False
    usage = ok.json()["usage"]
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])  # fmt: skip
    assert first["duration_ms"] >= first["overhead_ms"] > 0
    assert by_id[streamed.headers["x-request-id"]]["stream"] is True
    refused = by_id[missing.headers["x-request-id"]]
    assert (refused["outcome"], refused["code"], refused["http_status"]) == (
        "client_error", "model_not_found", 404)  # fmt: skip
    assert (refused["release"], refused["arm"], refused["engine"]) == ("unknown", None, None)
    unknown = by_id[anonymous.headers["x-request-id"]]
    assert (unknown["tenant"], unknown["key_id"], unknown["code"]) == (
        "unknown", None, "invalid_api_key")  # fmt: skip
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PROMPT, t.api_key, "end-user-9", ok.json()["choices"][0]["message"]["content"]):
        assert secret not in text


async def test_off_by_default(
    inprocess_gateway: InProcessFactory,
    tiny_adapter_paths: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="loragate.requests")
    gw = await inprocess_gateway()
    t = await gw.seed_tenant("quiet", adapter=tiny_adapter_paths[0])
    r = await gw.client.post("/v1/chat/completions", headers=gw.bearer(t.api_key),
                             json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 200
    assert not [rec for rec in caplog.records if rec.name == "loragate.requests"]


def test_writer_prints_bare_json_lines_off_the_event_loop() -> None:
    out = io.StringIO()
    listener = start_writer(out)
    try:
        emit({"request_id": "req-1", "tenant": "t"})
        emit({"request_id": "req-2", "tenant": "t"})
    finally:
        listener.stop()  # flushes the queue
        logger = logging.getLogger(REQUEST_LOGGER)
        logger.handlers, logger.propagate = [], True  # as it was: the other tests use caplog
        logger.setLevel(logging.NOTSET)
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == ["req-1", "req-2"]
