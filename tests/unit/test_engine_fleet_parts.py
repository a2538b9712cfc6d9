"""The pure parts of fleet routing: the engine's load from its /metrics text, and which adapters
no release references for long enough to be unloaded fleet-wide."""

from __future__ import annotations

from gateway.engines.load import EngineLoad, parse_engine_metrics
from gateway.engines.residency import Orphans, referenced_engine_names

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="base"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="base"} 2.0
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="lg-a,lg-b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="lg-c",waiting_lora_adapters="lg-d"} 1.8e9
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="base"} 0.0
"""


def test_engine_load_is_read_from_the_vllm_gauges() -> None:
    load = parse_engine_metrics(VLLM_METRICS)
    assert load == EngineLoad(3, 2, frozenset({"lg-c"}), frozenset({"lg-d"}))
    assert load is not None
    assert load.requests == 5


def test_a_text_without_the_gauges_is_no_report() -> None:
    assert parse_engine_metrics("# nothing\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_engine_metrics('vllm:num_requests_running{a="b"} not-a-number\n') is None


def test_orphans_are_due_only_after_the_grace_period_and_only_loragate_names() -> None:
    orphans = Orphans(grace_s=10)
    held = {"lg-t-a-v1-x", "lg-t-a-v2-y", "someone-elses"}
    assert orphans.due(held, {"lg-t-a-v2-y"}, now=0) == []
    assert orphans.due(held, {"lg-t-a-v2-y"}, now=9.9) == []
    assert orphans.due(held, {"lg-t-a-v2-y"}, now=10) == ["lg-t-a-v1-x"]
    # Referenced again (a rollback) before it was unloaded: the clock starts over.
    assert orphans.due(held, {"lg-t-a-v1-x", "lg-t-a-v2-y"}, now=11) == []
    assert orphans.due(held, {"lg-t-a-v2-y"}, now=12) == []


def test_referenced_names_come_from_what_aliases_route_or_roll_back_to() -> None:
    from registry.models import AdapterVersion, Alias, Release
    from registry.state import parse_state
    from registry.writes import encode

    def adapter(v: int) -> AdapterVersion:
        return AdapterVersion(
            tenant="acme", name="sup", version=v, path=f"acme/sup/{v}", digest=f"sha256:{v:064x}",
            base_model="m", rank=8, target_modules=("q_proj",), size_bytes=1,
        )  # fmt: skip

    adapters = {("acme", "sup", v): adapter(v) for v in (1, 2, 3, 4)}
    releases = {
        ("acme", f"chat-r{v}"): Release(
            id=f"chat-r{v}", tenant="acme", alias="chat", adapter=f"sup@{v}", prompt=None
        )
        for v in (1, 2, 3, 4)
    }
    alias = Alias(tenant="acme", alias="chat", stable="chat-r3", canary="chat-r4",
                  last_good=("chat-r2",))  # fmt: skip
    state = parse_state(
        1,
        tenants={},
        keys={},
        adapters={f"acme:sup:{v}": encode(a) for (_, _, v), a in adapters.items()},
        prompts={},
        releases={f"acme:{rid}": encode(r) for (_, rid), r in releases.items()},
        aliases={"acme:chat": encode(alias)},
    )
    names = referenced_engine_names(state)
    assert names == {adapters[("acme", "sup", v)].engine_name for v in (2, 3, 4)}
