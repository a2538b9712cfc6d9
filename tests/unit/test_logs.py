"""gateway.observability.logs: one JSON object per line for every logger, text on request."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability.logs import configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


@pytest.mark.usefixtures("restore_root")
def test_every_logger_writes_one_json_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("loragate").info("started", extra={"fields": {"engines": 2}})
    logging.getLogger("uvicorn.error").warning("a library's own line")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("registry.snapshot").exception("poll failed")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["logger"], d["level"], d["msg"]) for d in lines] == [
        ("loragate", "info", "started"),
        ("uvicorn.error", "warning", "a library's own line"),
        ("registry.snapshot", "error", "poll failed"),
    ]
    assert lines[0]["engines"] == 2
    assert "ValueError: boom" in lines[2]["exc"]
    assert all(isinstance(d["ts"], float) for d in lines)


@pytest.mark.usefixtures("restore_root")
def test_text_format_for_terminals_keeps_the_fields() -> None:
    out = io.StringIO()
    configure_logging("text", "INFO", stream=out)
    logging.getLogger("loragate").info("started", extra={"fields": {"engines": 2}})
    line = out.getvalue().strip()
    assert " INFO loragate started engines=2" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)
