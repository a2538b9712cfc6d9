"""What every demo command shares: where the demo lives, its tenants, and how it talks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(".loragate")
PIDS = ROOT / "demo.pids.json"
REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "adapters" / "datasets"
BASE_MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True)
class DemoTenant:
    id: str
    display_name: str
    alias: str
    adapter: str
    dataset: str
    steps: int


TENANTS = (
    DemoTenant("acme", "Acme Support", "support", "triage", "support_triage.jsonl", 40),
    DemoTenant("blackbeard", "Blackbeard Travel", "chat", "pirate", "pirate.jsonl", 40),
)
QUESTION = "My order arrived broken and I want a refund."


NULL_ADAPTER = "base/null"  # store-relative; see adapters/nulladapter.py


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _system_prompt(dataset: Path) -> str:
    """The demo serves the same system prompt the adapter was trained with."""
    first = json.loads(dataset.read_text().splitlines()[0])
    for message in first["messages"]:
        if message["role"] == "system":
            return str(message["content"])
    return ""
