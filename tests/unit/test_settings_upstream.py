"""The upstream client setting: the lean client refuses engines it cannot speak to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_lean_client_refuses_https_engines_at_startup() -> None:
    with pytest.raises(ValidationError, match="speaks plain HTTP"):
        Settings(upstream_client="lean", engines=["http://a:8001", "HTTPS://b:8443"])


def test_lean_client_takes_plain_http_and_discovered_engines() -> None:
    engines = ["http://a:8001", "dns://_http._tcp.vllm"]
    assert Settings(upstream_client="lean", engines=engines).upstream_client == "lean"
    assert Settings(engines=["https://b:8443"]).upstream_client == "aiohttp"
