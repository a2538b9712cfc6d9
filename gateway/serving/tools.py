"""Tool calling in a tenant request: definitions, choice, history, and the release's policy (pure).

    fields = check_tools(body)                       # tools, tool_choice, parallel_tool_calls
    check_tool_history(messages)                     # assistant tool_calls <-> tool messages
    apply_tool_policy(fields, policy)                # the prompt version may restrict or forbid

Everything here answers bad input with `invalid_request` (or `tools_forbidden`) naming the field,
before the engine sees it; what passes is forwarded unchanged, so vLLM applies its own parser
(`auto`) or structured outputs (`required`, a named function).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError

MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CHOICES = frozenset({"none", "auto", "required"})


@dataclass(frozen=True)
class ToolPolicy:
    """From the release's prompt version: `forbid` refuses any tool use; `allowed` (when set)
    names the only functions a request may define."""

    use: str = "allow"  # "allow" | "forbid"
    allowed: tuple[str, ...] | None = None


def _bad(message: str, param: str) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def _check_function(tool: object, param: str) -> str:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _bad("Each tool must be an object with `type: function`.", param)
    if set(tool) - {"type", "function"}:
        raise _bad("A tool has only `type` and `function`.", param)
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _bad("`function` must be an object.", param + ".function")
    for key in function:
        if key not in {"name", "description", "parameters", "strict"}:
            raise _bad(f"Unrecognized function field `{key}`.", f"{param}.function.{key}")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise _bad(
            "`function.name` must be 1-64 letters, digits, `_` or `-`.", param + ".function.name"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad("`function.description` must be a string.", param + ".function.description")
    parameters = function.get("parameters")
    if parameters is not None and (
        not isinstance(parameters, dict) or parameters.get("type", "object") != "object"
    ):
        raise _bad(
            "`function.parameters` must be a JSON Schema object.", param + ".function.parameters"
        )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad("`function.strict` must be a boolean.", param + ".function.strict")
    return name


def check_tools(body: dict[str, Any]) -> dict[str, Any]:
    """Validate `tools`, `tool_choice`, `parallel_tool_calls`; return those to pass on."""
    out: dict[str, Any] = {}
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise _bad(f"`tools` must be an array of at most {MAX_TOOLS} tools.", "tools")
        for i, tool in enumerate(tools):
            name = _check_function(tool, f"tools[{i}]")
            if name in names:
                raise _bad(f"Tool names must be unique: `{name}` repeats.", f"tools[{i}]")
            names.append(name)
        if tools:
            out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str):
            if choice not in CHOICES:
                raise _bad(
                    "`tool_choice` must be none, auto, required or a function.", "tool_choice"
                )
        elif isinstance(choice, dict):
            function = choice.get("function")
            chosen = function.get("name") if isinstance(function, dict) else None
            if (
                choice.get("type") != "function"
                or set(choice) != {"type", "function"}
                or not isinstance(function, dict)
                or set(function) != {"name"}
                or not isinstance(chosen, str)
            ):
                raise _bad(
                    "A named `tool_choice` is {type: function, function: {name}}.", "tool_choice"
                )
            if chosen not in names:
                raise _bad(
                    f"`tool_choice` names `{chosen}`, which is not in `tools`.", "tool_choice"
                )
        else:
            raise _bad("`tool_choice` must be a string or an object.", "tool_choice")
        if choice != "none" and not names:
            raise _bad("`tool_choice` needs `tools`.", "tool_choice")
        out["tool_choice"] = choice
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")
        out["parallel_tool_calls"] = parallel
    return out


def check_tool_calls(value: object, param: str) -> list[str]:
    """An assistant message's `tool_calls`; returns their ids."""
    if not isinstance(value, list) or not value or len(value) > MAX_TOOL_CALLS:
        raise _bad(f"`tool_calls` must be a non-empty array of at most {MAX_TOOL_CALLS}.", param)
    ids: list[str] = []
    for j, call in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise _bad("Each tool call is an object with `type: function`.", where)
        if set(call) - {"id", "type", "function"}:
            raise _bad("A tool call has only `id`, `type` and `function`.", where)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= 256:
            raise _bad("A tool call needs a string `id`.", where + ".id")
        function = call.get("function")
        if (
            not isinstance(function, dict)
            or set(function) - {"name", "arguments"}
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _bad("`function` needs string `name` and `arguments`.", where + ".function")
        ids.append(call_id)
    return ids


def check_tool_history(messages: list[dict[str, Any]]) -> None:
    """A tool message must answer a call made by an earlier assistant message."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        role = message["role"]
        if "tool_calls" in message and message["tool_calls"] is not None:
            if role != "assistant":
                raise _bad(
                    "Only assistant messages carry `tool_calls`.", f"messages[{i}].tool_calls"
                )
            calls.update(check_tool_calls(message["tool_calls"], f"messages[{i}].tool_calls"))
        call_id = message.get("tool_call_id")
        if role == "tool":
            if not isinstance(call_id, str):
                raise _bad("A tool message needs `tool_call_id`.", f"messages[{i}].tool_call_id")
            if call_id not in calls:
                raise _bad(
                    "`tool_call_id` matches no earlier assistant tool call.",
                    f"messages[{i}].tool_call_id",
                )
        elif call_id is not None:
            raise _bad("Only tool messages carry `tool_call_id`.", f"messages[{i}].tool_call_id")


def apply_tool_policy(fields: dict[str, Any], policy: ToolPolicy) -> None:
    """Refuse what the release does not allow (`tools_forbidden`, 400)."""
    tools = fields.get("tools")
    if not tools:
        return
    if policy.use == "forbid":
        raise ApiError(
            "tools_forbidden", "This model does not accept tools (its release forbids them).",
            param="tools",
        )  # fmt: skip
    if policy.allowed is not None:
        for i, tool in enumerate(tools):
            if tool["function"]["name"] not in policy.allowed:
                raise ApiError(
                    "tools_forbidden",
                    f"The tool `{tool['function']['name']}` is not allowed for this model.",
                    param=f"tools[{i}]",
                )


def has_tool_calls(choice: object) -> bool:
    """Whether a completion choice (or a stream delta's choice) carries tool calls."""
    if not isinstance(choice, dict):
        return False
    message = choice.get("message") or choice.get("delta")
    return isinstance(message, dict) and bool(message.get("tool_calls"))
