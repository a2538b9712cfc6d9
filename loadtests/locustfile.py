"""Locust scenario for users: many tenants with Zipf-distributed traffic, streaming and not,
against any loragate URL (a canary in progress is whatever the registry holds: see seed.py).

Keys come from a JSON file shaped like `.loragate/demo.json` (`LOADTEST_KEYS`, default that file):
`{"gateway_url": ..., "tenants": [{"id", "api_key", "models": [...]}, ...]}`.

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 200 -r 50 -t 1m \\
        --host http://127.0.0.1:8000

Knobs (environment): LOADTEST_ZIPF_S (1.1: tenant k gets weight 1/k^s), LOADTEST_STREAM_FRACTION
(0.3), LOADTEST_MAX_TOKENS (16), LOADTEST_USERS_PER_TENANT (end-user ids per tenant: 100, they
drive the sticky canary split).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task


def load_tenants(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    tenants = [t for t in doc.get("tenants", []) if t.get("api_key") and t.get("models")]
    if not tenants:
        raise SystemExit(f"{path}: no tenants with api_key and models")
    return list(tenants)


def zipf_weights(n: int, s: float) -> list[float]:
    """Tenant k (1-based) gets 1/k^s: a few heavy tenants and a long tail, as in production."""
    return [1.0 / (k**s) for k in range(1, n + 1)]


TENANTS = load_tenants(Path(os.environ.get("LOADTEST_KEYS", ".loragate/demo.json")))
WEIGHTS = zipf_weights(len(TENANTS), float(os.environ.get("LOADTEST_ZIPF_S", "1.1")))
STREAM_FRACTION = float(os.environ.get("LOADTEST_STREAM_FRACTION", "0.3"))
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "16"))
END_USERS = int(os.environ.get("LOADTEST_USERS_PER_TENANT", "100"))
QUESTIONS = (
    "My order arrived broken and I want a refund.",
    "What is the capital of France?",
    "Summarise our refund policy in one sentence.",
)


class TenantUser(FastHttpUser):  # type: ignore[misc]  # locust ships no type information
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()

    def _pick(self) -> tuple[dict[str, Any], str, str]:
        tenant = self.rng.choices(TENANTS, weights=WEIGHTS)[0]
        model = self.rng.choice(tenant["models"])
        user = f"{tenant['id']}-u{self.rng.randrange(END_USERS)}"
        return tenant, model, user

    @task  # type: ignore[untyped-decorator]
    def chat(self) -> None:
        tenant, model, user = self._pick()
        stream = self.rng.random() < STREAM_FRACTION
        body = {
            "model": model,
            "messages": [{"role": "user", "content": self.rng.choice(QUESTIONS)}],
            "max_tokens": MAX_TOKENS,
            "user": user,
            "stream": stream,
        }
        headers = {"authorization": f"Bearer {tenant['api_key']}"}
        name = f"chat {'stream' if stream else 'json'}"
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, name=name, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif stream and b"data: [DONE]" not in (resp.content or b""):
                resp.failure("stream ended without [DONE]")
            elif not resp.headers.get("x-loragate-release"):
                resp.failure("no x-loragate-release header")
            else:
                resp.success()
