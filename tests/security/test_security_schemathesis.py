"""S2: schemathesis against the gateway's own OpenAPI document (tenant and admin operations).

A real gateway subprocess (`loragate serve`) on real Redis, in front of the scripted fake engine
(the chat route needs an engine; what the engine answers is not under test here). Schemathesis
loads `/openapi.json` and runs every phase with valid credentials for both bearer schemes:

- examples, coverage and fuzzing, per operation (`schema.parametrize()`, one subtest each);
- stateful: scenarios along the links schemathesis infers between operations (create a tenant,
  then read it, patch it, issue a key, ...).

Every response must pass `not_a_server_error`, `status_code_conformance`,
`content_type_conformance`, `response_schema_conformance`, `response_headers_conformance` and
`ignored_auth` (a 2xx sent with credentials is replayed without them and with wrong ones: both must
be 401/403). A negative control proves `ignored_auth` is live with this auth setup. Mutating admin
routes write into the test gateway's own throwaway Redis database.

    FIGURE S2: 35 operations, N cases (examples+coverage+fuzzing) + M stateful steps, admin cases
    under every role (bootstrap, named admin/operator/viewer, a scoped operator, OIDC per role,
    one identity per case in turn), 0 failures
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.core.failures import FailureGroup

from adapters.tinymodel import TINY_SERVED_NAME
from gateway.admin import client as api
from gateway.admin.schemas import PromptVersionCreate, ReleaseCreate, TenantCreate, unstorable
from gateway.errors import ApiError
from gateway.serving.render import Limits, parse_chat_request
from registry.models import Budget, Thresholds
from tests.fixtures.fake_engine import FakeEngine
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.oidc import oidc_setup, oidc_token

# Per operation and phase; small enough for `make test` (well under 2 minutes on a shared 2-core
# box). The slow variant raises both.
MAX_EXAMPLES = 12
STATEFUL_SCENARIOS = 15
MAX_EXAMPLES_SLOW = 150
STATEFUL_SCENARIOS_SLOW = 150
STATEFUL_MAX_SUITES = 20
SEED = 20261121
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
)
OPERATIONS = 38  # 4 tenant + 34 admin
# Admin cases take their bearer in turn from these identities (one per case, the same number of
# cases as with one token): every role, a scoped operator and OIDC tokens each see every admin
# operation, and their 403s and scoped 404s must be documented like everything else.
ROLES = ("bootstrap", "admin2", "operator", "viewer", "operator-acme", "oidc-admin",
         "oidc-operator", "oidc-viewer")  # fmt: skip


class Tally:
    """Responses seen, per operation and status (hypothesis may call from other threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.streams = 0  # 200 text/event-stream answers validated event by event
        self.scenarios = 0  # stateful scenarios completed

    def add(self, label: str, status: int, content_type: str = "") -> None:
        with self._lock:
            self.statuses[(label, status)] += 1
            if status == 200 and content_type.startswith("text/event-stream"):
                self.streams += 1

    @property
    def operations(self) -> set[str]:
        return {label for label, _ in self.statuses}

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


# -- the stack ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s2_engine() -> Iterator[FakeEngine]:
    fake = FakeEngine(TINY_SERVED_NAME)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def s2_oidc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    key, _, settings = oidc_setup(tmp_path_factory.mktemp("s2-oidc"))
    return key, settings


@pytest.fixture(scope="module")
def s2_gateway(
    module_gateway_factory: GatewayFactory, s2_engine: FakeEngine, s2_oidc: tuple[Any, Any]
) -> GatewayProcess:
    gw = module_gateway_factory(engines=[s2_engine.url], **s2_oidc[1])
    gw.wait_ready()
    return gw


@pytest.fixture(scope="module")
def s2_identities(
    s2_gateway: GatewayProcess, s2_tenant: SeededTenant, s2_oidc: tuple[Any, Any]
) -> dict[str, str]:
    """A bearer token per entry of ROLES."""
    tokens = {"bootstrap": s2_gateway.admin_token}
    for name, role, tenants in (("admin2", "admin", None), ("operator", "operator", None),
                                ("viewer", "viewer", None),
                                ("operator-acme", "operator", [s2_tenant.id])):  # fmt: skip
        tokens[name] = s2_gateway.api.send(api.create_principal(name, role, tenants=tenants)).token
    for role in ("admin", "operator", "viewer"):
        tokens[f"oidc-{role}"] = oidc_token(s2_oidc[0], f"s2-{role}", role, exp=time.time() + 3600)
    assert set(tokens) == set(ROLES)
    return tokens


def _rotate_admin_bearers(schema: Any, tokens: dict[str, str], tenant_key: str) -> None:
    """Admin operations' cases take their bearer from each identity in turn; tenant operations
    keep the tenant key (a registered provider replaces the configured auth for every case)."""
    turn = itertools.count()
    lock = threading.Lock()

    class Rotating:
        def get(self, case: Any, ctx: Any) -> str:
            if not case.operation.path.startswith("/admin/"):
                return tenant_key
            with lock:
                return tokens[ROLES[next(turn) % len(ROLES)]]

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    schema.auth(refresh_interval=None)(Rotating)


@pytest.fixture(scope="module")
def s2_tenant(s2_gateway: GatewayProcess) -> SeededTenant:
    # "chat" is the alias the chat operation's documented example names, so the examples phase
    # reaches the engine (200, JSON and SSE) instead of stopping at 404.
    return s2_gateway.seed_tenant(
        "acme", adapter="tiny/tiny-lora-1", system_prompt="You are terse.", alias="chat"
    )


def _config(gw: GatewayProcess, tenant: SeededTenant, max_examples: int) -> Any:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": max_examples, "mode": "all"},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "auth": {
                "openapi": {
                    "TenantKey": {"bearer": tenant.api_key},
                    "AdminToken": {"bearer": gw.admin_token},
                }
            },
            "request-timeout": 30,
        }
    )


def _load(gw: GatewayProcess, tenant: SeededTenant, max_examples: int) -> Any:
    return schemathesis.openapi.from_url(
        gw.url + "/openapi.json", config=_config(gw, tenant, max_examples), timeout=30
    )


@pytest.fixture(scope="module")
def tally() -> Tally:
    return Tally()


@pytest.fixture
def api_schema(
    s2_gateway: GatewayProcess, s2_tenant: SeededTenant, s2_identities: dict[str, str]
) -> Any:
    loaded = _load(s2_gateway, s2_tenant, MAX_EXAMPLES)
    _rotate_admin_bearers(loaded, s2_identities, s2_tenant.api_key)
    return loaded


@pytest.fixture
def api_schema_slow(s2_gateway: GatewayProcess, s2_tenant: SeededTenant) -> Any:
    return _load(s2_gateway, s2_tenant, MAX_EXAMPLES_SLOW)


schema = schemathesis.pytest.from_fixture("api_schema")
schema_slow = schemathesis.pytest.from_fixture("api_schema_slow")


# -- examples, coverage, fuzzing ------------------------------------------------------------------


@pytest.mark.timeout(240)
@schema.parametrize()
def test_schemathesis_operations(case: Any, tally: Tally) -> None:
    response = case.call()
    content_type = (response.headers.get("content-type") or [""])[0]  # name -> list of values
    tally.add(case.operation.label, response.status_code, content_type)
    case.validate_response(response)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@schema_slow.parametrize()
def test_schemathesis_operations_long(case: Any) -> None:
    case.call_and_validate()


# -- stateful -------------------------------------------------------------------------------------


def _run_stateful(api: Any, tally: Tally, scenarios: int) -> tuple[list[str], int, int]:
    """Run `scenarios` scenarios in suites, as schemathesis' own runner does. The server's state
    moves on, so hypothesis cannot replay a scenario: failures are collected instead of raised
    (a replay to shrink one would end in FlakyStrategyDefinition and hide it), and a suite whose
    generation diverges from its own record (`Flaky`) ends and the next starts on a new seed."""
    failures: list[str] = []
    completed = 0

    class Machine(api.as_state_machine()):  # type: ignore[misc]
        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            tally.add("stateful " + case.operation.label, response.status_code)

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, *args, **kwargs)
            except FailureGroup as exc:
                failures.append(f"{case.operation.label} -> {response.status_code}: {exc}")

        def teardown(self) -> None:
            nonlocal completed
            completed += 1
            super().teardown()

    suites = 0
    while completed < scenarios and suites < STATEFUL_MAX_SUITES:
        suites += 1
        settings = hypothesis.settings(
            max_examples=scenarios - completed,
            stateful_step_count=10,
            deadline=None,
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        with contextlib.suppress(hypothesis.errors.Flaky):
            hypothesis.seed(SEED + suites)(Machine).run(settings=settings)
    return failures, completed, suites


@pytest.mark.timeout(240)
def test_schemathesis_stateful(api_schema: Any, tally: Tally) -> None:
    failures, completed, suites = _run_stateful(api_schema, tally, STATEFUL_SCENARIOS)
    assert not failures, "\n\n".join(failures[:5])
    assert completed >= STATEFUL_SCENARIOS, (completed, suites)
    tally.scenarios = completed


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_schemathesis_stateful_long(api_schema_slow: Any) -> None:
    tally = Tally()
    failures, completed, suites = _run_stateful(api_schema_slow, tally, STATEFUL_SCENARIOS_SLOW)
    assert not failures, "\n\n".join(failures[:5])
    assert completed >= STATEFUL_SCENARIOS_SLOW, (completed, suites)
    print(
        f"FIGURE S2-long stateful: {completed} scenarios in {suites} suites, {tally.total} steps "
        f"over {len(tally.operations)} operations, 0 failures"
    )


def test_schemathesis_figure(tally: Tally) -> None:
    """Runs after the two above (file order): every operation was exercised, 2xx included."""
    stateless = {op for op in tally.operations if not op.startswith("stateful ")}
    stateful = tally.operations - stateless
    assert len(stateless) == OPERATIONS, sorted(stateless)
    ok = {op for (op, status) in tally.statuses if 200 <= status < 300}
    for must in ("POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
                 "GET /v1/models/{model}", "POST /admin/v1/tenants"):  # fmt: skip
        assert must in ok, f"{must} never answered 2xx: {sorted(ok)}"
    assert tally.streams > 0, "no streamed chat completion was validated"
    # the identities rotate: some were refused by role (403), and that was documented
    forbidden = sum(n for (op, status), n in tally.statuses.items() if status == 403)
    assert forbidden > 0, "no admin case was refused by role: the identities did not rotate"
    steps = sum(n for (op, _), n in tally.statuses.items() if op.startswith("stateful "))
    print(
        f"FIGURE S2: {len(stateless)} operations, {tally.total - steps} cases "
        f"(examples+coverage+fuzzing; {len(ok)} operations answered 2xx, {tally.streams} SSE "
        f"streams) + {steps} stateful steps in {tally.scenarios} scenarios over "
        f"{len(stateful)} operations, admin cases under {len(ROLES)} identities in turn "
        f"({forbidden} refused by role); 0 server errors, 0 schema violations, "
        f"0 ignored-auth findings (seed {SEED})"
    )


# -- the checks are live --------------------------------------------------------------------------


def test_ignored_auth_is_live(s2_gateway: GatewayProcess, s2_tenant: SeededTenant) -> None:
    """Negative control: an operation documented as needing the tenant key but open to anyone
    (`/healthz`) must be reported by `ignored_auth` with the very auth setup the run uses."""
    raw = httpx.get(s2_gateway.url + "/openapi.json", timeout=30).json()
    doc = copy.deepcopy(raw)
    doc["paths"] = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "security": [{"TenantKey": []}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {}}}},
            }
        }
    }
    config = _config(s2_gateway, s2_tenant, 1)
    api = schemathesis.openapi.from_dict(doc, config=config)
    case = api["/healthz"]["GET"].Case()
    bearer = {"authorization": f"Bearer {s2_tenant.api_key}"}  # a hand-made case has no auth
    with pytest.raises(FailureGroup) as raised:
        case.call_and_validate(base_url=s2_gateway.url, headers=bearer)
    assert "API accepts requests without authentication" in str(raised.value)


def test_sse_events_are_validated(s2_gateway: GatewayProcess, s2_tenant: SeededTenant) -> None:
    """Negative control: with the chunk schema made wrong, a real stream must fail event by event
    (so the run's SSE passes mean something)."""
    doc = httpx.get(s2_gateway.url + "/openapi.json", timeout=30).json()
    doc["components"]["schemas"]["ChatCompletionChunk"]["properties"]["object"] = {"const": "x"}
    api = schemathesis.openapi.from_dict(doc, config=_config(s2_gateway, s2_tenant, 1))
    body: dict[str, Any] = {
        "model": s2_tenant.alias,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    case = api["/v1/chat/completions"]["POST"].Case(body=body, media_type="application/json")
    bearer = {"authorization": f"Bearer {s2_tenant.api_key}"}  # a hand-made case has no auth
    response = case.call(base_url=s2_gateway.url, headers=bearer)
    assert response.status_code == 200
    with pytest.raises(FailureGroup) as raised:
        case.validate_response(response)
    assert "SSE event" in str(raised.value)


# -- what the run found, pinned as focused tests --------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": {}},
        },
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": []},
        },
        {"model": "m", "messages": [{"role": {}, "content": "x"}]},
        {"model": "m", "messages": [{"role": ["user"], "content": "x"}]},
    ],
)
def test_unhashable_values_are_400_not_500(body: dict[str, Any]) -> None:
    """`{"type": {}}` and `{"role": {}}` are unhashable: a set lookup of them must not raise."""
    with pytest.raises(ApiError) as raised:
        parse_chat_request(body, Limits())
    assert raised.value.status == 400
    assert raised.value.param in {"response_format", "messages[0].role"}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (PromptVersionCreate, {"system_prompt": "x", "params": {"a": -(2**107)}}),
        (PromptVersionCreate, {"system_prompt": "\udaa4"}),
        (PromptVersionCreate, {"system_prompt": "x", "params": {"\udaa4": 1}}),
        (ReleaseCreate, {"adapter": None, "prompt": None, "thresholds": {"max_p95_ratio": 1e400}}),
        (ReleaseCreate, {"adapter": None, "prompt": None, "params": {"t": float("nan")}}),
        (TenantCreate, {"id": "a", "limits": {"budget": {"amount": float("inf")}}}),
        (TenantCreate, {"id": "a", "display_name": "\ud800"}),
    ],
)
def test_unstorable_admin_bodies_are_refused(model: Any, body: dict[str, Any]) -> None:
    """A 65+-bit integer or a lone surrogate (both accepted by the stdlib JSON parser FastAPI
    uses) cannot be encoded by orjson in the registry write; NaN/inf would be stored as null and
    the record could not be read back. All are refused before anything is written."""
    with pytest.raises(ValueError, match=r"must|valid string|finite"):
        model.model_validate(body)


def test_storable_values_pass() -> None:
    assert unstorable({"a": [1, 2.5, -(2**63), 2**64 - 1, "é", None, True, {"b": "ü"}]}) is None


@pytest.mark.timeout(120)
async def test_unstorable_bodies_over_http(inprocess_gateway: Any) -> None:
    """422 with the envelope, nothing written, the snapshot still loads; an unknown admin field
    whose name is a lone surrogate is a 422 too (the envelope echoes it escaped)."""
    gw = await inprocess_gateway()
    await gw.admin("POST", "/tenants", {"id": "acme"}, expect=201)
    bad_release = b'{"adapter": null, "prompt": null, "thresholds": {"max_p95_ratio": 1e400}}'
    bad_prompt = b'{"system_prompt": "x", "params": {"n": 123456789012345678901234567890}}'
    odd_field = b'{"id": "beta", "\\udaa4": 1}'
    for path, raw in [
        ("/tenants/acme/models/chat/releases", bad_release),
        ("/tenants/acme/prompts/main/versions", bad_prompt),
        ("/tenants", odd_field),
    ]:
        response = await gw.client.post(
            "/admin/v1" + path,
            content=raw,
            headers={**gw.bearer(gw.admin_token), "content-type": "application/json"},
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    assert await gw.admin("GET", "/tenants/acme/models") == []
    await gw.admin("POST", "/tenants", {"id": "later"}, expect=201)
    await gw.sync()
    assert "later" in gw.state.watcher.state.tenants


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_registry_records_refuse_non_finite_numbers(value: float) -> None:
    """Defence in depth under the admin edge: a record the registry could not read back."""
    with pytest.raises(ValueError, match="finite"):
        Thresholds(max_p95_ratio=value)
    with pytest.raises(ValueError, match="finite"):
        Budget(amount=value)
