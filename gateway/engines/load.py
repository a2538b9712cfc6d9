"""What an engine says about its own load, read from vLLM's Prometheus text (`GET /metrics`).

    report = parse_engine_metrics(text)
    report.requests        # vllm:num_requests_running + vllm:num_requests_waiting, all gateways'
    report.running_adapters, report.waiting_adapters   # from vllm:lora_requests_info

Pure (no I/O): a line scan for the three families the pool needs, not a full exposition parser
(the text is mostly histograms the pool never reads). Every gateway reads the same numbers, so a
least-loaded choice made by one gateway sees the requests the others sent.
"""

from __future__ import annotations

from dataclasses import dataclass

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_LORA_INFO = "vllm:lora_requests_info"


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: int
    waiting: int
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()

    @property
    def requests(self) -> int:
        return self.running + self.waiting


def parse_engine_metrics(text: str) -> EngineLoad | None:
    """The engine's load, or None when the text has neither request gauge (not a vLLM engine)."""
    running = waiting = 0.0
    seen = False
    info_at = -1.0
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, labels, value = _split(line)
        if value is None:
            continue
        if name == _RUNNING:
            running += value
            seen = True
        elif name == _WAITING:
            waiting += value
            seen = True
        elif name == _LORA_INFO and value >= info_at:
            # One sample per distinct label set; its value is when it was set: the newest wins.
            info_at = value
            running_adapters = _names(labels.get("running_lora_adapters", ""))
            waiting_adapters = _names(labels.get("waiting_lora_adapters", ""))
    if not seen:
        return None
    return EngineLoad(int(running), int(waiting), running_adapters, waiting_adapters)


def _names(csv: str) -> frozenset[str]:
    return frozenset(n for n in csv.split(",") if n)


def _split(line: str) -> tuple[str, dict[str, str], float | None]:
    """`name{a="x",b="y"} 1.0 [ts]` -> (name, labels, value); value None on a malformed line."""
    brace = line.find("{")
    labels: dict[str, str] = {}
    if brace >= 0:
        end = line.rfind("}")
        if end < brace:
            return line, labels, None
        name = line[:brace]
        labels = _labels(line[brace + 1 : end])
        rest = line[end + 1 :].split()
    else:
        parts = line.split()
        name, rest = (parts[0], parts[1:]) if parts else ("", [])
    try:
        return name, labels, float(rest[0])
    except (IndexError, ValueError):
        return name, labels, None


def _labels(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(body):
        eq = body.find("=", i)
        if eq < 0 or eq + 1 >= len(body) or body[eq + 1] != '"':
            break
        key = body[i:eq].strip().lstrip(",").strip()
        j = eq + 2
        value: list[str] = []
        while j < len(body) and body[j] != '"':
            if body[j] == "\\" and j + 1 < len(body):
                j += 1
            value.append(body[j])
            j += 1
        out[key] = "".join(value)
        i = j + 1
    return out
