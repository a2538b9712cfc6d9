"""The one client of the admin API (`/admin/v1`): the `loragate admin` CLI, the demo, the load
tests and the test fixtures all drive a gateway through it.

Each admin route is one typed function that describes the call (`AdminCall[T]`: method, path,
body, and how to read the answer into the route's `*Public` model from gateway.admin.schemas);
a client sends it, synchronously (`AdminClient`) or on an event loop (`AsyncAdminClient`):

    with AdminClient("http://127.0.0.1:8000", token) as admin:
        admin.send(create_tenant("acme", display_name="Acme"))
        key = admin.send(issue_key("acme"))                      # KeyPublic
        alias = admin.send(get_model("acme", "support"))         # AliasPublic
        admin.send(canary("acme", "support", "support-r2", 0.1, alias.revision))

An answer of 4xx/5xx raises `AdminError` with the API's error envelope (status, code, message and
the whole body); a gateway that cannot be reached raises `AdminUnreachable`. Every call is bounded
(`DEFAULT_TIMEOUT`: release creation loads the adapter on an engine, an evaluation runs its cases).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from gateway.admin.schemas import (
    AdapterPushPublic,
    AdapterVersionListedPublic,
    AdapterVersionPublic,
    AliasPublic,
    AuditEntryPublic,
    CallerPublic,
    CanaryStatusPublic,
    EvalReportPublic,
    KeyInfoPublic,
    KeyPublic,
    PrincipalCreatedPublic,
    PrincipalPublic,
    PromptVersionListedPublic,
    PromptVersionPublic,
    ReleaseListedPublic,
    ReleasePublic,
    SecretPublic,
    TenantDetailPublic,
    TenantPublic,
)

PREFIX = "/admin/v1"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
M = TypeVar("M", bound=BaseModel)


class AdminError(Exception):
    """The admin API answered 4xx/5xx: its error envelope, and the whole body (`error.cases` of
    a failed evaluation, for example)."""

    def __init__(self, status: int, code: str, message: str, body: Any) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class AdminUnreachable(Exception):
    """No answer from the gateway (connection refused, timeout); `reason` names the failure."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class AdminCall(Generic[T]):
    """One admin request and how to read its answer (`read(None)` for a 204)."""

    method: str
    path: str  # below /admin/v1
    read: Callable[[Any], T]
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # A raw body instead of JSON (an adapter upload streams a tar), with its own headers.
    content: Iterable[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ndjson: bool = False  # the answer is one JSON value per line (read as a list)


def _model(model: type[M]) -> Callable[[Any], M]:
    return model.model_validate


def _models(model: type[M]) -> Callable[[Any], list[M]]:
    return TypeAdapter(list[model]).validate_python  # type: ignore[valid-type]


def _nothing(data: Any) -> None:
    return None


def _given(**fields: Any) -> dict[str, Any]:
    """The fields the caller set: the server's defaults apply to the others."""
    return {k: v for k, v in fields.items() if v is not None}


# -- the routes -----------------------------------------------------------------------------------


def create_tenant(
    tenant: str,
    *,
    display_name: str | None = None,
    plan: str | None = None,
    limits: Mapping[str, Any] | None = None,
    weight: float | None = None,
    priority: str | None = None,
) -> AdminCall[TenantPublic]:
    body = _given(
        id=tenant, display_name=display_name, plan=plan, limits=limits, weight=weight,
        priority=priority,
    )  # fmt: skip
    return AdminCall("POST", "/tenants", _model(TenantPublic), body)


def list_tenants() -> AdminCall[list[TenantPublic]]:
    return AdminCall("GET", "/tenants", _models(TenantPublic))


def get_tenant(tenant: str) -> AdminCall[TenantDetailPublic]:
    return AdminCall("GET", f"/tenants/{tenant}", _model(TenantDetailPublic))


def update_tenant(
    tenant: str,
    *,
    limits: Mapping[str, Any] | None = None,
    display_name: str | None = None,
    plan: str | None = None,
    weight: float | None = None,
    priority: str | None = None,
) -> AdminCall[TenantPublic]:
    body = _given(
        limits=limits, display_name=display_name, plan=plan, weight=weight, priority=priority
    )
    return AdminCall("PATCH", f"/tenants/{tenant}", _model(TenantPublic), body)


def issue_key(
    tenant: str,
    *,
    name: str | None = None,
    expires_in_s: int | None = None,
    aliases: list[str] | None = None,
    limits: Mapping[str, Any] | None = None,
) -> AdminCall[KeyPublic]:
    body = _given(name=name, expires_in_s=expires_in_s, aliases=aliases, limits=limits)
    return AdminCall("POST", f"/tenants/{tenant}/keys", _model(KeyPublic), body or None)


def list_keys(tenant: str) -> AdminCall[list[KeyInfoPublic]]:
    return AdminCall("GET", f"/tenants/{tenant}/keys", _models(KeyInfoPublic))


def suspend_tenant(tenant: str) -> AdminCall[TenantPublic]:
    return AdminCall("POST", f"/tenants/{tenant}/suspend", _model(TenantPublic))


def resume_tenant(tenant: str) -> AdminCall[TenantPublic]:
    return AdminCall("POST", f"/tenants/{tenant}/resume", _model(TenantPublic))


def whoami() -> AdminCall[CallerPublic]:
    return AdminCall("GET", "/whoami", _model(CallerPublic))


def create_principal(
    name: str,
    role: str,
    *,
    tenants: list[str] | None = None,
    expires_in_s: int | None = None,
) -> AdminCall[PrincipalCreatedPublic]:
    body = {"name": name, "role": role} | _given(tenants=tenants, expires_in_s=expires_in_s)
    return AdminCall("POST", "/principals", _model(PrincipalCreatedPublic), body)


def list_principals() -> AdminCall[list[PrincipalPublic]]:
    return AdminCall("GET", "/principals", _models(PrincipalPublic))


def revoke_principal(name: str) -> AdminCall[PrincipalPublic]:
    return AdminCall("DELETE", f"/principals/{name}", _model(PrincipalPublic))


def list_secrets() -> AdminCall[list[SecretPublic]]:
    return AdminCall("GET", "/secrets", _models(SecretPublic))


def revoke_key(tenant: str, key_id: str) -> AdminCall[None]:
    return AdminCall("DELETE", f"/tenants/{tenant}/keys/{key_id}", _nothing)


def register_adapter(
    tenant: str, name: str, path: str, *, metadata: Mapping[str, Any] | None = None
) -> AdminCall[AdapterVersionPublic]:
    body = _given(path=path, metadata=metadata)
    route = f"/tenants/{tenant}/adapters/{name}/versions"
    return AdminCall("POST", route, _model(AdapterVersionPublic), body)


def register_prompt(
    tenant: str,
    name: str,
    system_prompt: str,
    *,
    params: Mapping[str, Any] | None = None,
    response_schema: Mapping[str, Any] | None = None,
    refusal_patterns: list[str] | None = None,
) -> AdminCall[PromptVersionPublic]:
    body = _given(
        system_prompt=system_prompt,
        params=params,
        response_schema=response_schema,
        refusal_patterns=refusal_patterns,
    )
    route = f"/tenants/{tenant}/prompts/{name}/versions"
    return AdminCall("POST", route, _model(PromptVersionPublic), body)


def create_release(
    tenant: str,
    alias: str,
    *,
    adapter: str | None,
    prompt: str | None,
    params: Mapping[str, Any] | None = None,
    eval: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    schema_violation: Literal["pass", "reject"] | None = None,
) -> AdminCall[ReleasePublic]:
    body = {"adapter": adapter, "prompt": prompt}
    body |= _given(
        params=params, eval=eval, thresholds=thresholds, schema_violation=schema_violation
    )
    route = f"/tenants/{tenant}/models/{alias}/releases"
    return AdminCall("POST", route, _model(ReleasePublic), body)


def list_models(tenant: str) -> AdminCall[list[AliasPublic]]:
    return AdminCall("GET", f"/tenants/{tenant}/models", _models(AliasPublic))


def get_model(tenant: str, alias: str) -> AdminCall[AliasPublic]:
    return AdminCall("GET", f"/tenants/{tenant}/models/{alias}", _model(AliasPublic))


def canary_status(tenant: str, alias: str) -> AdminCall[CanaryStatusPublic]:
    path = f"/tenants/{tenant}/models/{alias}/canary"
    return AdminCall("GET", path, _model(CanaryStatusPublic))


def _alias_action(
    tenant: str, alias: str, action: str, body: dict[str, Any]
) -> AdminCall[AliasPublic]:
    method = "PUT" if action == "flags" else "POST"
    route = f"/tenants/{tenant}/models/{alias}/{action}"
    return AdminCall(method, route, _model(AliasPublic), body)


def canary(
    tenant: str,
    alias: str,
    release: str,
    weight: float,
    expected_revision: int,
    *,
    reason: str | None = None,
) -> AdminCall[AliasPublic]:
    """Start a canary, or change the weight of the one in progress."""
    body = _given(
        release=release, weight=weight, expected_revision=expected_revision, reason=reason
    )
    return _alias_action(tenant, alias, "canary", body)


def promote(
    tenant: str,
    alias: str,
    expected_revision: int,
    *,
    reason: str | None = None,
    skip_eval: bool | None = None,
) -> AdminCall[AliasPublic]:
    body = _given(expected_revision=expected_revision, reason=reason, skip_eval=skip_eval)
    return _alias_action(tenant, alias, "promote", body)


def rollback(
    tenant: str, alias: str, reason: str, *, expected_revision: int | None = None
) -> AdminCall[AliasPublic]:
    body = _given(reason=reason, expected_revision=expected_revision)
    return _alias_action(tenant, alias, "rollback", body)


def set_flags(
    tenant: str,
    alias: str,
    *,
    kill_switch: bool | None = None,
    auto_rollback: bool | None = None,
    priority: str | None = None,
    expected_revision: int | None = None,
    reason: str | None = None,
) -> AdminCall[AliasPublic]:
    flags = _given(kill_switch=kill_switch, auto_rollback=auto_rollback, priority=priority)
    body = flags | _given(expected_revision=expected_revision, reason=reason)
    return _alias_action(tenant, alias, "flags", body)


def evaluate(tenant: str, alias: str, release: str | None = None) -> AdminCall[EvalReportPublic]:
    """Run a release's evaluation set now (default: the canary, else the stable release)."""
    route = f"/tenants/{tenant}/models/{alias}/eval"
    return AdminCall("POST", route, _model(EvalReportPublic), _given(release=release))


def audit(tenant: str | None = None, count: int | None = None) -> AdminCall[list[AuditEntryPublic]]:
    params = _given(tenant=tenant, count=count)
    return AdminCall("GET", "/audit", _models(AuditEntryPublic), params=params)


def _ndjson(data: Any) -> list[dict[str, Any]]:
    return data if isinstance(data, list) else []


def audit_export(
    after: str | None = None, count: int | None = None, tenant: str | None = None
) -> AdminCall[list[dict[str, Any]]]:
    """Audit entries after a stream id, oldest first: [{"id", "fields": [[name, value], ...]}]."""
    params = _given(after=after, count=count, tenant=tenant)
    return AdminCall("GET", "/audit/export", _ndjson, params=params, ndjson=True)


def upload_adapter(
    tenant: str, name: str, tar: Iterable[bytes], *, size: int, digest: str
) -> AdminCall[AdapterPushPublic]:
    """Push an adapter as an uncompressed tar (adapters.push.pack) with the digest of its files;
    the answer is the version record with `ref` and the `skipped` trainer files."""
    headers = {
        "content-type": "application/x-tar",
        "content-length": str(size),
        "x-loragate-digest": digest,
    }
    path = f"/tenants/{tenant}/adapters/{name}/uploads"
    return AdminCall("POST", path, _model(AdapterPushPublic), content=tar, headers=headers)


def list_adapter_versions(tenant: str) -> AdminCall[list[AdapterVersionListedPublic]]:
    return AdminCall("GET", f"/tenants/{tenant}/adapters", _models(AdapterVersionListedPublic))


def list_prompt_versions(tenant: str) -> AdminCall[list[PromptVersionListedPublic]]:
    return AdminCall("GET", f"/tenants/{tenant}/prompts", _models(PromptVersionListedPublic))


def list_releases(tenant: str) -> AdminCall[list[ReleaseListedPublic]]:
    return AdminCall("GET", f"/tenants/{tenant}/releases", _models(ReleaseListedPublic))


def retire_adapter_version(tenant: str, name: str, version: int) -> AdminCall[AdapterVersionPublic]:
    """Retire `name@version` (409 in_use while a release that is not retired names it)."""
    path = f"/tenants/{tenant}/adapters/{name}/versions/{version}/retire"
    return AdminCall("POST", path, _model(AdapterVersionPublic))


def retire_prompt_version(tenant: str, name: str, version: int) -> AdminCall[PromptVersionPublic]:
    path = f"/tenants/{tenant}/prompts/{name}/versions/{version}/retire"
    return AdminCall("POST", path, _model(PromptVersionPublic))


def retire_release(tenant: str, release: str) -> AdminCall[ReleasePublic]:
    """Retire a release (409 in_use while its alias has it as stable, canary or last good)."""
    return AdminCall("POST", f"/tenants/{tenant}/releases/{release}/retire", _model(ReleasePublic))


# -- the clients ----------------------------------------------------------------------------------


def error_of(response: httpx.Response) -> AdminError:
    """The API's error envelope as an exception (a body that is not one still gives the status)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or "http_error")
    message = str(error.get("message") or f"HTTP {response.status_code}")
    return AdminError(response.status_code, code, message, body)


def answer(response: httpx.Response, *, ndjson: bool = False) -> Any:
    """The JSON of a 2xx answer (None for an empty one; a list for NDJSON); AdminError otherwise,
    also for a 2xx whose body is not JSON (a proxy's HTML page, say)."""
    if response.status_code >= 400:
        raise error_of(response)
    try:
        if ndjson:
            return [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return response.json() if response.content else None
    except ValueError:
        kind = response.headers.get("content-type", "unknown content type")
        raise AdminError(
            response.status_code, "invalid_response", f"the answer is not JSON ({kind})", None
        ) from None


def _read(call: AdminCall[T], data: Any) -> T:
    """The answer as the route's model; an answer of another shape is an AdminError."""
    try:
        return call.read(data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise AdminError(200, "invalid_response", f"unexpected answer: {exc}", data) from None


@contextlib.contextmanager
def _reaching(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError as exc:
        raise AdminUnreachable(url, type(exc).__name__) from None


class _Connection(Generic[H]):
    """The URL, the bearer header and the bounded timeouts both clients open their httpx client
    with; `transport` is httpx's (an ASGI app served in-process, in tests)."""

    _open: Callable[..., H]

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: Any = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"}
        self.http: H = type(self)._open(
            base_url=self.url + PREFIX, headers=headers, timeout=timeout, transport=transport
        )


class AdminClient(_Connection[httpx.Client]):
    """Blocking admin client; `http` is the underlying httpx client (base URL `.../admin/v1`)."""

    _open = httpx.Client

    def send(self, call: AdminCall[T]) -> T:
        with _reaching(self.url):
            if call.content is None:
                response = self.http.request(
                    call.method, call.path, json=call.body, params=call.params
                )
            else:
                response = self.http.request(
                    call.method, call.path, content=call.content, headers=call.headers
                )
        return _read(call, answer(response, ndjson=call.ndjson))

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Any admin route by path (JSON in, JSON out); AdminError on 4xx/5xx."""
        with _reaching(self.url):
            return answer(self.http.request(method, path, json=body, params=params))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _async_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An upload body for httpx's async client, which streams only async iterables."""
    for chunk in chunks:
        yield chunk


class AsyncAdminClient(_Connection[httpx.AsyncClient]):
    """The same on an event loop (for an app served in-process through `transport`)."""

    _open = httpx.AsyncClient

    async def send(self, call: AdminCall[T]) -> T:
        with _reaching(self.url):
            if call.content is None:
                response = await self.http.request(
                    call.method, call.path, json=call.body, params=call.params
                )
            else:
                response = await self.http.request(
                    call.method, call.path, content=_async_chunks(call.content),
                    headers=call.headers,
                )  # fmt: skip
        return _read(call, answer(response, ndjson=call.ndjson))

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        with _reaching(self.url):
            return answer(await self.http.request(method, path, json=body, params=params))

    async def aclose(self) -> None:
        await self.http.aclose()
