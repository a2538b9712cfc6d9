"""One log format for every logger of the process (loragate's, uvicorn's, redis', aiohttp's): a
JSON object per line on stderr, or plain text for a terminal (`LORAGATE_LOG_FORMAT=text`).

    {"ts": 1795000000.123, "level": "info", "logger": "loragate", "msg": "listening",
     "address": "http://0.0.0.0:8000", "engines": 2, "redis": "redis://redis:6379/0"}

Structured fields go in `extra={"fields": {...}}`; they are merged into the object (and appended
as `key=value` in text). The request log (`loragate.requests`, gateway/observability/requestlog.py)
keeps its own line shape on stdout, also one JSON object with `ts`.

    configure_logging("json", "INFO")
    log.info("listening", extra={"fields": {"address": url}})
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson

# uvicorn's own loggers: they get the root handler instead of uvicorn's text config.
_FOREIGN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                doc.setdefault(str(key), value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure_logging(fmt: str, level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Replace the root handler; every library logger propagates to it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _FOREIGN:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
