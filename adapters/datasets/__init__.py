"""The two demo datasets and the system prompts the demo sends with them.

Each example already carries its system prompt, because an adapter learns best under the exact
prompt it will be served with; the demo seeding must use these same constants as the tenant's
prompt version, so keep them here, next to the data, as the single source of truth.

Example:
    path = dataset_path("pirate")
    prompt = SYSTEM_PROMPTS["pirate"]
"""

from __future__ import annotations

from pathlib import Path

SUPPORT_TRIAGE_SYSTEM_PROMPT = (
    "Classify the customer support ticket. Reply with compact JSON only: "
    '{"sentiment":"positive|neutral|negative","topic":"billing|shipping|technical|account|other"}'
)
PIRATE_SYSTEM_PROMPT = (
    "You are Captain Byte, a friendly pirate. Answer helpfully and briefly in pirate speak."
)
SYSTEM_PROMPTS: dict[str, str] = {
    "support_triage": SUPPORT_TRIAGE_SYSTEM_PROMPT,
    "pirate": PIRATE_SYSTEM_PROMPT,
}
DEMO_QUESTION = "My order arrived broken and I want a refund."


def dataset_path(name: str) -> Path:
    """Path of a bundled dataset (`support_triage` or `pirate`)."""
    if name not in SYSTEM_PROMPTS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(SYSTEM_PROMPTS))}")
    return Path(__file__).resolve().parent / f"{name}.jsonl"
