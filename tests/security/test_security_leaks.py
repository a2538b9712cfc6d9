"""S5 secrets and prompts never leak: marker keys and marker prompts go through a representative
slice (served, streamed, refused, malformed); none appears in logs, error bodies, /metrics or Redis,
where keys exist only as HMACs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from registry.secrets import hash_key
from tests.fixtures.inprocess import InProcessFactory

MARKER_PROMPT = "MRKPROMPT7f3a9c"
MARKER_KEY = "lg-MRKKEY5b1e22d0"


def _dump(url: str) -> bytes:
    """Every key and value in the Redis database, as one blob."""
    client: Any = redis.Redis.from_url(url)  # bytes in, bytes out
    out: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            out.append(key)
            kind = client.type(key)
            if kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"hash":
                out.extend(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"set":
                out.extend(client.smembers(key))
            elif kind == b"zset":
                out.extend(client.zrange(key, 0, -1))
            elif kind == b"list":
                out.extend(client.lrange(key, 0, -1))
            elif kind == b"stream":
                for _, fields in client.xrange(key):
                    out.extend(k + b"=" + v for k, v in fields.items())
    finally:
        client.close()
    return b"\n".join(out)


async def test_s5_no_marker_in_logs_errors_metrics_or_redis(
    inprocess_gateway: InProcessFactory,
    tiny_adapter_paths: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await inprocess_gateway(request_log=True)  # its lines are in the logs checked below
    t = await gw.seed_tenant("leak", adapter=tiny_adapter_paths[0], limits={"max_tokens": 64})
    url = "/v1/chat/completions"
    msgs = [{"role": "user", "content": MARKER_PROMPT}]
    bodies: list[bytes] = []
    slice_: list[tuple[str, Any, str | None]] = [
        (t.api_key, {"model": "chat", "messages": msgs}, None),
        (t.api_key, {"model": "chat", "messages": msgs, "stream": True}, None),
        (t.api_key, {"model": "chat", "messages": msgs, "user": MARKER_PROMPT}, None),
        (MARKER_KEY, {"model": "chat", "messages": msgs}, None),
        (t.api_key + "x", {"model": "chat", "messages": msgs}, None),
        (t.api_key, {"model": "nope", "messages": msgs}, None),
        (t.api_key, {"model": "chat", "messages": msgs, "lora_path": MARKER_PROMPT}, None),
        (t.api_key, {"model": "chat", "messages": msgs, "max_tokens": 10**9}, None),
        (t.api_key, {"model": "chat", "messages": [{"role": MARKER_PROMPT, "content": "x"}]}, None),
        (t.api_key, None, '{"model":"chat","messages":[{"role":"user","content":"' + MARKER_PROMPT),
    ]
    for key, body, raw in slice_:
        headers = {**gw.bearer(key), "content-type": "application/json"}
        if raw is not None:
            r = await gw.client.post(url, content=raw, headers=headers)
        else:
            r = await gw.client.post(url, json=body, headers=headers)
        if r.status_code != 200:
            bodies.append(r.content)
    r = await gw.client.get("/v1/models", headers=gw.bearer(MARKER_KEY))
    bodies.append(r.content)
    assert len(bodies) >= 7
    metrics = (await gw.client.get("/metrics")).content
    store = _dump(gw.redis.url)
    logs = "\n".join(rec.getMessage() + repr(rec.args) for rec in caplog.records)
    for secret in (MARKER_KEY, t.api_key, MARKER_PROMPT):
        for where, blob in (("error body", b"\n".join(bodies)), ("metrics", metrics),
                            ("redis", store), ("logs", logs.encode())):  # fmt: skip
            assert secret.encode() not in blob, f"{secret[:6]}... found in {where}"
    hmac_secret = gw.settings.key_hmac_secret.get_secret_value().encode()
    assert hash_key(hmac_secret, t.api_key).encode() in store  # keys exist only as HMACs
    assert len(gw.engine.requests) == 3  # the slice really reached the engine
    lines = [r.getMessage() for r in caplog.records if r.name == "loragate.requests"]
    assert len(lines) == len(slice_)  # one line per request, refused ones included
