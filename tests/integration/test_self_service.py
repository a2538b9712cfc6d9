"""Customer self-service through the CLI, across gateways sharing one Redis: a tenant-scoped
operator (a named admin token made on one gateway, used on another) pushes an adapter, registers
a prompt, creates releases, canaries and rolls back its own alias; it cannot see another tenant;
the audit names it on every entry it caused; `audit --verify` holds, and fails after an entry is
edited or deleted in Redis by hand. Also the key lifecycle on the hot path: expiry, alias
restrictions, suspension, last use in the listing, and HMAC secret rotation."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI, PermissionDeniedError

from gateway import cli
from gateway.admin import client as api
from registry.keyspace import Keyspace
from tests.fixtures.fake_engine import FakeEngineFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.fixtures.models import TinyModels


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`loragate ...` in-process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def shared(factory: GatewayFactory, engine_url: str, n: int) -> list[GatewayProcess]:
    """n gateways on one Redis database with the same secrets (a fleet)."""
    first = factory(engines=[engine_url])
    same = {"redis_url": first.env["LORAGATE_REDIS_URL"], "admin_token": first.admin_token,
            "key_hmac_secret": first.env["LORAGATE_KEY_HMAC_SECRET"]}  # fmt: skip
    return [first, *(factory(engines=[engine_url], **same) for _ in range(n - 1))]


def test_scoped_operator_runs_its_release_cycle_with_the_cli(
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    tiny_models: TinyModels,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    engine = fake_engine()
    gw_a, gw_b, gw_c = shared(gateway_factory, engine.url, 3)
    boot = ["--url", gw_a.url, "--token", gw_a.admin_token]
    for tenant in ("acme", "other"):
        assert run(capsys, "admin", "tenants-create", tenant, *boot)[0] == 0
    code, out, err = run(capsys, "admin", "principals-create", "acme-ops", "--role", "operator",
                         "--tenant", "acme", *boot)  # fmt: skip
    assert code == 0, err
    token = out.strip()
    assert token.startswith("lga-")
    assert "not shown again" in err
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    # the operator, on the other gateway, with the token from a file and options anywhere
    ops = ["--url", gw_b.url, "--token-file", str(token_file)]
    code, out, _ = run(capsys, "admin", "-o", "json", "whoami", *ops)
    assert code == 0
    assert json.loads(out) == {"name": "acme-ops", "role": "operator", "tenants": ["acme"]}
    adapter_dir = tiny_models.store_root / tiny_models.adapter_relpaths[0]
    code, out, err = run(capsys, "admin", "adapters-push", "acme", "lora", str(adapter_dir), *ops)
    assert (code, out.strip()) == (0, "lora@1"), err
    schema = tmp_path / "params.json"
    schema.write_text('{"temperature": 0}')
    for n in (1, 2):
        code, _, err = run(capsys, "admin", "prompts-register", "acme", "main", "--system",
                           f"v{n}", "--params", f"@{schema}", *ops)  # fmt: skip
        assert code == 0, err
        code, out, err = run(capsys, "admin", "releases-create", "acme", "chat", "--adapter",
                             "lora@1", "--prompt", f"main@{n}", "--json", *ops)  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["release"] == f"chat-r{n}"
    code, out, err = run(capsys, "admin", "canary", "acme", "chat", "chat-r2", "--weight", "0.5",
                         *ops, "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["canary"] == "chat-r2"
    code, out, err = run(capsys, "admin", "rollback", "acme", "chat", "--reason", "tone", *ops,
                         "-o", "json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["canary"] is None
    # retiring, on a third gateway: what an alias still uses is refused, naming it
    on_c = ["--url", gw_c.url, "--token-file", str(token_file)]
    code, out, err = run(capsys, "admin", "releases-retire", "acme", "chat-r2", *on_c)
    assert (code, out.strip()) == (0, "retired chat-r2"), err
    code, out, err = run(capsys, "admin", "prompts-retire", "acme", "main", "2", *on_c)
    assert (code, out.strip()) == (0, "retired main@2"), err
    code, _, err = run(capsys, "admin", "releases-retire", "acme", "chat-r1", *on_c)
    assert code == 2
    assert "409 in_use" in err
    assert "stable" in err
    code, _, err = run(capsys, "admin", "adapters-retire", "acme", "lora", "1", *on_c)
    assert code == 2
    assert "409 in_use" in err
    assert "chat-r1" in err
    code, out, _ = run(capsys, "admin", "releases-list", "acme", "--json", *ops)
    retired = {r["id"]: r["retired_at"] is not None for r in json.loads(out)}
    assert retired == {"chat-r1": False, "chat-r2": True}
    # another tenant is unknown to it, and admin work is not its to do
    code, _, err = run(capsys, "admin", "models-list", "other", *ops)
    assert code == 2
    assert "404 not_found: tenant 'other' not found" in err
    code, _, err = run(capsys, "admin", "keys-create", "acme", *ops)
    assert code == 2
    assert "403 forbidden" in err
    code, out, _ = run(capsys, "admin", "tenants-list", "--json", *ops)
    assert [t["id"] for t in json.loads(out)] == ["acme"]
    # its own audit: every entry it caused carries its name
    code, out, _ = run(capsys, "admin", "audit", "--json", *ops)
    mine = [e for e in json.loads(out) if e["action"] != "create_tenant"]
    assert {e["actor"] for e in mine} == {"acme-ops"}
    assert {e["action"] for e in mine} >= {"register_adapter_version", "register_prompt_version",
                                           "create_release", "canary", "rollback",
                                           "retire_release", "retire_prompt_version"}  # fmt: skip
    assert run(capsys, "admin", "audit", "--verify", *ops)[0] == 0
    # the whole chain holds, then an entry edited by hand breaks it where it was edited
    code, out, err = run(capsys, "admin", "audit", "--verify", *boot)
    assert code == 0, err
    assert "audit chain holds" in out
    stream = Keyspace().audit
    r = redis.Redis.from_url(gw_a.env["LORAGATE_REDIS_URL"], decode_responses=True)
    try:
        entries: list[Any] = r.xrange(stream) or []
        ids = [str(i) for i, _ in entries]
        # a later run anchored on an entry it already holds
        anchor = entries[1][1]["hash"]
        later = ["admin", "audit", "--verify", "--after", ids[1], *boot]
        assert run(capsys, *later, "--anchor", anchor)[0] == 0
        assert run(capsys, *later, "--anchor", "0" * 40)[0] == 1
        last_id, fields = entries[-1]
        r.xdel(stream, last_id)
        forged = str(r.xadd(stream, {**fields, "actor": "someone-else"}))
        code, _, err = run(capsys, "admin", "audit", "--verify", *boot)
        assert code == 1
        assert f"broken at entry {forged}: entry does not match" in err
        r.xdel(stream, ids[3])  # a gap earlier on: now the first broken entry is the next one
        code, _, err = run(capsys, "admin", "audit", "--verify", *boot)
        assert code == 1
        assert f"broken at entry {ids[4]}: previous entry missing" in err
    finally:
        r.close()
    # the export is NDJSON from a position, its retention stated
    exported = gw_a.api.http.get("/audit/export", params={"count": 1})
    assert exported.headers["x-loragate-audit-retention"] == "100000"
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    code, out, _ = run(capsys, "admin", "audit", "--export", "--after", ids[-3], *boot)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [line["id"] for line in lines] == [ids[-2], forged]
    # revocation holds on every gateway at once
    assert run(capsys, "admin", "principals-revoke", "acme-ops", *boot)[0] == 0
    for gw in (gw_a, gw_b, gw_c):
        code, _, err = run(capsys, "admin", "whoami", *ops, "--url", gw.url)
        assert code == 2
        assert "401 invalid_admin_token" in err
    # a suspension written through one gateway reaches the others (registry invalidation)
    key = gw_a.api.send(api.issue_key("acme")).api_key
    assert run(capsys, "admin", "tenants-suspend", "acme", *boot)[0] == 0
    assert chat_status(gw_c, key, until=403) == 403
    assert run(capsys, "admin", "tenants-resume", "acme", *boot)[0] == 0
    assert chat_status(gw_c, key, until=200) == 200


def chat_status(gw: GatewayProcess, key: str, *, until: int, within_s: float = 20.0) -> int:
    """The status of a chat request on `gw`, asked again (bounded) until it is `until`: the
    other gateways learn of a registry write through its invalidation message."""
    deadline = time.monotonic() + within_s
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        while True:
            r = client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            )
            if r.status_code == until or time.monotonic() > deadline:
                if until == 403:
                    assert r.json()["error"]["code"] == "tenant_suspended", r.text
                return r.status_code
            time.sleep(0.05)


def test_cli_bad_input_is_one_line_never_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("loragate ")
    url = ["--url", "http://127.0.0.1:9", "--token", "x"]
    for argv, expected in (
        (["admin", "tenants-limits", "acme", "{not json", *url], "the argument is not JSON"),
        (["admin", "tenants-limits", "acme", f"@{tmp_path}/missing.json", *url], "cannot read"),
        (["admin", "whoami", "--token-file", str(tmp_path / "none")], "cannot read the token"),
        (["admin", "whoami", *url], "cannot reach"),
    ):
        code, out, err = run(capsys, *argv)
        assert code in {2, 3}, (argv, out, err)
        assert expected in err, err
        assert "Traceback" not in err
        assert err.count("\n") == 1, err


def test_key_lifecycle_on_the_hot_path(
    gateway_factory: GatewayFactory,
    fake_engine: FakeEngineFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = fake_engine()
    gw = gateway_factory(engines=[engine.url], key_use_flush_s=0.2)
    gw.seed_tenant("acme", adapter=None, system_prompt="x")
    gw.api.send(api.create_release("acme", "other", adapter=None, prompt=None))
    narrow = gw.api.send(api.issue_key("acme", name="ci", aliases=["chat"]))
    short = gw.api.send(api.issue_key("acme", name="short", expires_in_s=60))
    question: Any = [{"role": "user", "content": "hi"}]

    def ask(key: str, model: str = "chat") -> int:
        client = OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        try:
            client.chat.completions.create(model=model, messages=question)
        except Exception as exc:
            return int(getattr(exc, "status_code", 0))
        finally:
            client.close()
        return 200

    assert ask(narrow.api_key) == 200
    # a key's own limits apply on top of the tenant's (which has none here), to that key only
    metered = gw.api.send(api.issue_key("acme", name="metered", limits={"requests_per_minute": 1}))
    assert ask(metered.api_key) == 200
    assert ask(metered.api_key) == 429
    assert ask(narrow.api_key) == 200
    assert ask(narrow.api_key, "other") == 403  # model_not_allowed
    assert ask(short.api_key, "other") == 200
    gw.api.send(api.suspend_tenant("acme"))
    with (
        OpenAI(base_url=gw.url + "/v1", api_key=short.api_key, max_retries=0) as client,
        pytest.raises(PermissionDeniedError) as refused,
    ):
        client.chat.completions.create(model="chat", messages=question)
    assert refused.value.code == "tenant_suspended"
    gw.api.send(api.resume_tenant("acme"))
    assert ask(short.api_key) == 200
    deadline = time.monotonic() + 30  # each gateway writes last use every key_use_flush_s
    while True:
        listed = {k.name: k for k in gw.api.send(api.list_keys("acme"))}
        if listed["short"].last_used_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    used = listed["short"].last_used_at
    assert used is not None
    assert used % 60 == 0
    assert time.time() - 120 < used <= time.time()
    assert listed["ci"].last_used_at is not None
    assert listed["ci"].aliases == ("chat",)
    assert listed["short"].expires_at is not None
    assert listed["ci"].prefix == narrow.api_key[:7]
    code, out, _ = run(capsys, "admin", "keys-list", "acme", "--url", gw.url, "--token",
                       gw.admin_token)  # fmt: skip
    assert code == 0
    assert "short" in out
    assert narrow.api_key not in out


def test_hmac_secret_rotation_keeps_old_keys_until_retired(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    engine = fake_engine()
    old_secret, new_secret = secrets.token_hex(32), secrets.token_hex(32)
    first = gateway_factory(engines=[engine.url], key_hmac_secret=old_secret)
    db = {"redis_url": first.env["LORAGATE_REDIS_URL"], "admin_token": first.admin_token}
    old = first.seed_tenant("acme", adapter=None, system_prompt="x")
    first.stop()
    rotated = {"key_hmac_secret": old_secret, "key_hmac_secrets": {"s2": new_secret},
               "key_hmac_secret_current": "s2"}  # fmt: skip
    second = gateway_factory(engines=[engine.url], **db, **rotated)
    new = second.api.send(api.issue_key("acme"))
    by_id = {s.id: s for s in second.api.send(api.list_secrets())}
    assert by_id["s2"].current
    assert by_id[""].keys == 1
    assert by_id["s2"].keys == 1

    def works(gw: GatewayProcess, key: str) -> bool:
        with OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
            try:
                client.chat.completions.create(model="chat", messages=[{"role": "user",
                                                                        "content": "hi"}])  # fmt: skip
            except Exception:
                return False
        return True

    assert works(second, old.api_key)
    assert works(second, new.api_key)
    second.stop()
    retired = gateway_factory(engines=[engine.url], **db, **rotated,
                              key_hmac_secrets_retired=[""])  # fmt: skip
    assert works(retired, new.api_key)
    assert not works(retired, old.api_key)
