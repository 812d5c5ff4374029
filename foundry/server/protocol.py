"""The Anthropic Messages API on the wire: a request body checked and turned into a foundry
request, and the Message JSON, usage and error shapes that go back.

Fields foundry cannot honour are accepted and ignored (IGNORED_FIELDS; docs/serve.md lists
them). `tool_choice` is checked as the API checks it and travels on the request, for the
backend to constrain the model's calls. Content a text model cannot read (images,
documents) is refused with a 400 that names the block. Message block dicts keep their
`cache_control`, which is where the local backend reads the client's cache breakpoints from.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from foundry.backends.base import Message, ToolChoice, ToolSpec
from foundry.local.chat import ClientRequest
from foundry.server.schemas import MAX_SCHEMA_DEPTH, nesting_depth, output_schema
from foundry.usage import Usage

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Accepted, then ignored: they shape Claude's own behaviour, not a local model's.
IGNORED_FIELDS = frozenset(
    {
        "thinking",
        "metadata",
        "context_management",
        "output_config",
        "service_tier",
        "top_k",
        "top_p",
        "container",
        "mcp_servers",
        "betas",
        "diagnostics",
        "inference_geo",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
KNOWN_FIELDS = IGNORED_FIELDS | {
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "stream",
    "temperature",
    "stop_sequences",
    "cache_control",
}
# Assistant blocks a client sends back from Claude's own replies; a local model made none.
DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
UNREADABLE_BLOCKS = frozenset({"image", "document", "search_result", "container_upload"})
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
SYSTEM_SEPARATOR = "\n\n"
# Claude Code's first system block is billing metadata with a hash of each request in it
# ("cc_version=2.1.197.ffc"): as prompt text it would make every request's prefix differ
# after a few tokens, so it is dropped, as it is not part of the prompt.
BILLING_HEADER = "x-anthropic-billing-header:"


class ApiError(Exception):
    """An error the client gets in Anthropic's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "api_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    # A message that quotes a client's lone surrogate could not be encoded as the reply.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def invalid(message: str) -> ApiError:
    return ApiError(400, message)


@dataclass
class ParsedRequest:
    """A checked request: what to run, how to answer, and what identifies its output."""

    request: ClientRequest
    model_id: str  # as the client sent it; echoed back in the Message
    stream: bool
    ignored: list[str] = field(default_factory=list)
    # The reply is a pure function of these when sampling is greedy (the L2 key's input).
    output_identity: dict[str, Any] = field(default_factory=dict)

    def response_key(self, default_temperature: float) -> str | None:
        """The response-cache key, or None when the reply is sampled (temperature > 0)."""
        temperature = self.request.temperature
        if temperature is None:
            temperature = default_temperature
        if temperature > 0:
            return None
        canonical = json.dumps(self.output_identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _need(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise invalid(f"{where}: {what}")
    return value


def _text_blocks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    _need(value, list, where, "must be a string or a list of text blocks")
    blocks = []
    for index, block in enumerate(value):
        at = f"{where}.{index}"
        _need(block, dict, at, "must be an object")
        if block.get("type") != "text":
            raise invalid(f"{at}: a {block.get('type')!r} block is not supported here")
        _need(block.get("text"), str, f"{at}.text", "must be a string")
        blocks.append(block)
    return blocks


def _block(block: Any, where: str) -> dict[str, Any] | None:
    """One message content block, checked; None for a block that is dropped."""
    _need(block, dict, where, "must be an object")
    kind = block.get("type")
    if kind == "text":
        _need(block.get("text"), str, f"{where}.text", "must be a string")
    elif kind == "tool_use":
        _need(block.get("id"), str, f"{where}.id", "must be a string")
        _need(block.get("name"), str, f"{where}.name", "must be a string")
        _need(block.get("input"), dict, f"{where}.input", "must be an object")
    elif kind == "tool_result":
        _need(block.get("tool_use_id"), str, f"{where}.tool_use_id", "must be a string")
        content = block.get("content", "")
        if not isinstance(content, str):
            for index, part in enumerate(_need(content, list, f"{where}.content", "bad")):
                at = f"{where}.content.{index}"
                if isinstance(part, dict) and part.get("type") in UNREADABLE_BLOCKS:
                    raise invalid(
                        f"{at}: {part.get('type')} blocks are not supported by this "
                        "local text model; send text only"
                    )
                _text_blocks([part], f"{where}.content")
    elif kind in DROPPED_BLOCKS:
        return None
    elif kind in UNREADABLE_BLOCKS:
        raise invalid(
            f"{where}: {kind} blocks are not supported by this local text model; send text only"
        )
    else:
        raise invalid(f"{where}: unknown content block type {kind!r}")
    return block


def _messages(value: Any) -> list[Message]:
    _need(value, list, "messages", "must be a list")
    if not value:
        raise invalid("messages: at least one message is required")
    messages = []
    for index, raw in enumerate(value):
        where = f"messages.{index}"
        _need(raw, dict, where, "must be an object")
        role = raw.get("role")
        if role not in ("user", "assistant", "system"):
            raise invalid(f"{where}.role: must be 'user', 'assistant' or 'system', not {role!r}")
        content = raw.get("content")
        if isinstance(content, str):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": content}]
        else:
            _need(content, list, f"{where}.content", "must be a string or a list of blocks")
            checked = (_block(b, f"{where}.content.{i}") for i, b in enumerate(content))
            blocks = [b for b in checked if b is not None]
        # A system message inside the conversation (Claude Code sends one) becomes a user
        # turn: many chat templates refuse a system turn that is not the first.
        messages.append(Message("assistant" if role == "assistant" else "user", blocks))
    return messages


def _tools(value: Any) -> tuple[list[ToolSpec], list[dict[str, Any]]]:
    if value is None:
        return [], []
    _need(value, list, "tools", "must be a list")
    specs, kept = [], []
    for index, tool in enumerate(value):
        where = f"tools.{index}"
        _need(tool, dict, where, "must be an object")
        if "input_schema" not in tool and tool.get("type") not in (None, "custom"):
            continue  # a server tool (web search, code execution...): Claude's own, ignored
        _need(tool.get("name"), str, f"{where}.name", "must be a string")
        schema = _need(tool.get("input_schema"), dict, f"{where}.input_schema", "must be an object")
        depth = nesting_depth(schema)
        if depth > MAX_SCHEMA_DEPTH:
            raise invalid(
                f"{where}.input_schema: nested {depth} levels deep, over the "
                f"{MAX_SCHEMA_DEPTH} this server accepts"
            )
        description = tool.get("description") or ""
        _need(description, str, f"{where}.description", "must be a string")
        specs.append(ToolSpec(tool["name"], description, schema))
        kept.append({"name": tool["name"], "description": description, "input_schema": schema})
    return specs, kept


def _tool_choice(value: Any, tools: list[ToolSpec]) -> ToolChoice | None:
    """The API's tool_choice, checked against the request's own tools; None when absent."""
    if value is None:
        return None
    _need(value, dict, "tool_choice", 'must be an object, e.g. {"type": "auto"}')
    kind = value.get("type")
    if kind not in TOOL_CHOICE_TYPES:
        allowed = ", ".join(repr(t) for t in TOOL_CHOICE_TYPES)
        raise invalid(f"tool_choice.type: must be one of {allowed}, not {kind!r}")
    single = value.get("disable_parallel_tool_use", False)
    _need(single, bool, "tool_choice.disable_parallel_tool_use", "must be true or false")
    names = [t.name for t in tools]
    if kind in ("any", "tool") and not names:
        raise invalid(
            f"tool_choice: type {kind!r} requires tools, and this request has none the model "
            "can call; send `tools`, or use type 'auto' or 'none'"
        )
    name = None
    if kind == "tool":
        what = f"is required with type 'tool': the tool to call, one of {', '.join(names)}"
        name = _need(value.get("name"), str, "tool_choice.name", what)
        if name not in names:
            raise invalid(
                f"tool_choice.name: {name!r} is not one of this request's tools; "
                f"use one of {', '.join(names)}"
            )
    return ToolChoice(kind, name, parallel=not single)


def _strip_cache_control(value: Any) -> Any:
    """A copy without cache_control anywhere: it never changes what a model answers."""
    if isinstance(value, dict):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


def parse_request(
    body: Any, served_model: str, default_max_tokens: int | None = None
) -> ParsedRequest:
    """A Messages API body → a ParsedRequest, or an ApiError(400) naming what is wrong."""
    _need(body, dict, "body", "the request body must be a JSON object")
    model_id = _need(body.get("model"), str, "model", "is required (a string)")
    max_tokens = body.get("max_tokens", default_max_tokens)
    _need(max_tokens, int, "max_tokens", "is required (a positive integer)")
    if max_tokens < 1:
        raise invalid("max_tokens: must be at least 1")
    messages = _messages(body.get("messages"))
    system_blocks = [
        b
        for b in _text_blocks(body.get("system") or [], "system")
        if not b["text"].startswith(BILLING_HEADER)
    ]
    tools, tool_identity = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    temperature = body.get("temperature")
    if temperature is not None:
        _need(temperature, (int, float), "temperature", "must be a number")
        if not 0 <= temperature <= 1:
            raise invalid("temperature: must be between 0 and 1")
        temperature = float(temperature)
    stops = body.get("stop_sequences") or []
    _need(stops, list, "stop_sequences", "must be a list of strings")
    for index, stop in enumerate(stops):
        _need(stop, str, f"stop_sequences.{index}", "must be a string")
        if not stop:  # it would match before every token: the whole reply held back
            raise invalid(f"stop_sequences.{index}: must not be empty")
    stream = body.get("stream", False)
    _need(stream, bool, "stream", "must be true or false")
    try:
        schema = output_schema(body)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    top_level = body.get("cache_control")
    if top_level is not None:
        _need(top_level, dict, "cache_control", "must be an object")
        # Automatic caching: the breakpoint goes on the last block of the last message.
        last = messages[-1]
        if last.content:
            last.content[-1] = {**last.content[-1], "cache_control": top_level}

    texts = [b["text"] for b in system_blocks]
    system = SYSTEM_SEPARATOR.join(texts)
    breakpoints, offset = [], 0
    for index, block in enumerate(system_blocks):
        offset += len(block["text"]) + (len(SYSTEM_SEPARATOR) if index else 0)
        if block.get("cache_control"):
            breakpoints.append(offset)
    request = ClientRequest(
        model=served_model,
        system=system,
        tools=tools,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        tool_choice=tool_choice,
        system_breakpoints=tuple(breakpoints),
        stop_sequences=tuple(stops),
        output_schema=schema,
    )
    identity = {
        "model": served_model,
        "system": system,
        "tools": tool_identity,
        "tool_choice": tool_choice.to_anthropic() if tool_choice else None,
        "messages": _strip_cache_control([m.to_dict() for m in messages]),
        "max_tokens": max_tokens,
        "stop_sequences": stops,
        "temperature": temperature,
        "top_k": body.get("top_k"),
        "top_p": body.get("top_p"),
        "output_schema": schema,
    }
    ignored = sorted(k for k in body if k in IGNORED_FIELDS or k not in KNOWN_FIELDS)
    return ParsedRequest(request, model_id, stream, ignored, identity)


def new_message_id() -> str:
    return f"msg_local_{uuid.uuid4().hex[:24]}"


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "output_tokens": usage.output_tokens,
        "service_tier": "standard",
    }


def message_json(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    stop_sequence: str | None,
    usage: Usage,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_json(usage),
    }


def models_json(served: str, created_at: str) -> dict[str, Any]:
    entry = {"type": "model", "id": served, "display_name": served, "created_at": created_at}
    return {"data": [entry], "has_more": False, "first_id": served, "last_id": served}
