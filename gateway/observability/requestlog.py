"""The request log: one JSON line per tenant request, for operators (`LORAGATE_REQUEST_LOG=true`).

What a line holds, and why only this: the ids a support ticket brings (`request_id` is the
`x-request-id` the client got), where the request went (tenant, key id, alias, release, arm,
engine replica), how it ended (outcome, error code, HTTP status) and what it cost (seconds,
tokens, cost). Never the prompt, the completion, the API key, the end-user `user` field or the
client address: the log is read by more people than the tenants' data may be.

    {"ts": 1795000000.123, "request_id": "req-...", "tenant": "acme", "key_id": "k1f2...",
     "model": "support", "release": "support-r2", "arm": "canary", "engine": "engine-0",
     "stream": true, "outcome": "ok", "code": null, "http_status": 200, "duration_ms": 412.7,
     "overhead_ms": 0.4, "prompt_tokens": 31, "completion_tokens": 64, "cost": 0.000127}

Lines go to the `loragate.requests` logger; `loragate serve` writes them to stdout through a
queue and a writer thread (`start_writer`), so a slow log sink never stalls the event loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from typing import IO, Any

import orjson

REQUEST_LOGGER = "loragate.requests"
CANCELLED_STATUS = 499  # the client went away first (nginx's convention)


def request_record(
    *,
    request_id: str,
    tenant: str,
    key_id: str | None,
    model: str,
    release: str,
    arm: str | None,
    engine: str | None,
    stream: bool,
    outcome: str,
    code: str | None,
    http_status: int,
    duration_s: float,
    overhead_s: float,
    prompt_tokens: int,
    completion_tokens: int,
    cost: float,
    now: float,
) -> dict[str, Any]:
    """The line for one finished request (pure; see the module docstring for what is left out)."""
    return {
        "ts": round(now, 3),
        "request_id": request_id,
        "tenant": tenant,
        "key_id": key_id,
        "model": model,
        "release": release,
        "arm": arm,
        "engine": engine,
        "stream": stream,
        "outcome": outcome,
        "code": code,
        "http_status": http_status,
        "duration_ms": round(duration_s * 1000, 3),
        "overhead_ms": round(overhead_s * 1000, 3),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost": round(cost, 9),
    }


def emit(record: dict[str, Any]) -> None:
    logging.getLogger(REQUEST_LOGGER).info(orjson.dumps(record).decode())


def start_writer(stream: IO[str] | None = None) -> logging.handlers.QueueListener:
    """Route `loragate.requests` through a queue to `stream` (stdout) as bare JSON lines; the
    caller stops the returned listener at exit (it flushes what is queued)."""
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(stream or sys.stdout)
    writer.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(REQUEST_LOGGER)
    logger.handlers = [logging.handlers.QueueHandler(lines)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    listener = logging.handlers.QueueListener(lines, writer)
    listener.start()
    return listener
