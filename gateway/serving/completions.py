"""POST /v1/completions: raw prompts for tenants, through the same pipeline as chat.

Authentication, alias resolution, the arm, limits, metering, retries, keep-alive and tracing are
the chat route's (`gateway.serving.chat.serve`); only the request, its rendering (the release's
prompt version decides how its system prompt applies, or refuses raw prompts: see
`gateway.serving.completion_render`) and the engine route differ. The output checks (schema,
refusals) judge chat content only and are not applied here.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from gateway.serving.call import Call
from gateway.serving.chat import Prepared, Route, limits_for, resolve, serve
from gateway.serving.completion_render import parse_completion_request, render_completion_body
from gateway.serving.output_checks import OutputGuard
from gateway.state import AppState

PATH = "/v1/completions"
NO_CHECKS = OutputGuard()


def prepare_completion(state: AppState, call: Call, body: object) -> Prepared:
    assert call.tenant is not None
    request = parse_completion_request(body, limits_for(state, call.tenant))
    call.stream = request.stream
    if call.trace is not None:
        call.trace.mark("receive")
    rendering = resolve(state, state.watcher.state, call, request)
    call.headers["x-loragate-release"] = call.release_id
    engine_body = render_completion_body(request, rendering)
    return Prepared(request, engine_body, NO_CHECKS, [{"content": engine_body["prompt"]}])


COMPLETIONS = Route("POST " + PATH, PATH, prepare_completion)


async def handle_completions(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    await serve(state, scope, receive, send, COMPLETIONS)
