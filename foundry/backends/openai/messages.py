"""foundry's requests as Chat Completions requests, and replies back as content blocks.

Byte-identical prefixes are what every one of these servers caches (vLLM's automatic prefix
caching, SGLang's RadixAttention, llama.cpp's slot cache, mlx_lm.server's LRU), so a request
is laid out as: the system message (the static text; in text tool format the tool schemas
too), the tools (sorted by name, schema keys sorted), then the conversation, appended turn
by turn and never reordered.

Tool calls go both ways in one of two formats:
  native: OpenAI function calling (assistant `tool_calls`, role "tool" results), with the
          request's tool choice as `tool_choice` / `parallel_tool_calls`;
  text:   foundry's <tool_call>{json}</tool_call> format (foundry.local.tool_calls), for
          servers or models without function calling.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from foundry.backends.base import Block, Message, ModelRequest, ToolChoice, ToolSpec
from foundry.local.tool_calls import (
    TAG_OPEN,
    new_tool_use_id,
    parse_tool_calls,
    render_tool_section,
    to_chat_messages,
)

ToolFormat = Literal["native", "text"]
ERROR_PREFIX = "Error: "  # role "tool" has no is_error flag; the text says it instead
CHOICE_MODES = {"auto": "auto", "any": "required", "none": "none"}  # Anthropic's → OpenAI's


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def function_tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": _sorted_keys(tool.input_schema),
        },
    }


def tool_choice_params(choice: ToolChoice | None, has_tools: bool) -> dict[str, Any]:
    """`tool_choice` and `parallel_tool_calls` for function calling; {} leaves the server's
    default. OpenAI refuses either without `tools`; there "auto" and "none" change nothing,
    so they are left out, while a forced choice is sent for the server to refuse rather than
    dropped without a word."""
    if choice is None or (not has_tools and choice.type not in ("any", "tool")):
        return {}
    params: dict[str, Any] = {
        "tool_choice": {"type": "function", "function": {"name": choice.name}}
        if choice.type == "tool"
        else CHOICE_MODES[choice.type]
    }
    if not choice.parallel and choice.type != "none":
        params["parallel_tool_calls"] = False
    return params


def system_text(request: ModelRequest, tool_format: ToolFormat) -> str:
    """The static system text; in text format with the tool schemas after it, and a note on
    the <tool_call> format unless the prompt teaches it already (the packaged one does)."""
    if tool_format == "native" or not request.tools:
        return request.system
    tools = sorted(request.tools, key=lambda t: t.name)
    section = render_tool_section(tools, explain_format=TAG_OPEN not in request.system)
    return request.system.rstrip() + "\n\n" + section


def _result_text(block: Block) -> str:
    content = block.get("content", "")
    if isinstance(content, list):  # Anthropic allows a list of text blocks here too
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = str(content)
    return ERROR_PREFIX + text if block.get("is_error") else text


def native_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic-style turns -> Chat Completions messages with function calling. A user
    turn's tool results become role "tool" messages first (they must follow the assistant
    message that called), then its text, if any, as a user message."""
    chat: list[dict[str, Any]] = []
    for message in messages:
        texts = [b.get("text", "") for b in message.content if b.get("type") == "text"]
        text = "\n".join(t for t in texts if t)
        if message.role == "assistant":
            calls = [
                {
                    "id": b.get("id") or new_tool_use_id(),
                    "type": "function",
                    "function": {
                        "name": b["name"],
                        "arguments": json.dumps(b.get("input", {}), ensure_ascii=False),
                    },
                }
                for b in message.content
                if b.get("type") == "tool_use"
            ]
            if not calls and not text:
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            chat.append(entry)
            continue
        for block in message.content:
            if block.get("type") == "tool_result":
                chat.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id", ""),
                        "content": _result_text(block),
                    }
                )
        if text:
            chat.append({"role": "user", "content": text})
    return chat


def request_params(
    request: ModelRequest,
    *,
    model: str,
    tool_format: ToolFormat,
    max_tokens_field: str = "max_tokens",
) -> dict[str, Any]:
    """The SDK arguments for one streamed request (never sharing dicts with `request`)."""
    system = system_text(request, tool_format)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if tool_format == "native":
        messages += native_messages(request.messages)
    else:
        messages += to_chat_messages(request.messages, native=False)
    params: dict[str, Any] = {
        "model": model,
        "messages": messages,
        max_tokens_field: request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tool_format == "native" and request.tools:
        params["tools"] = [function_tool(t) for t in sorted(request.tools, key=lambda t: t.name)]
    if tool_format == "native":  # the text format describes tools in the prompt: no choice
        params |= tool_choice_params(request.tool_choice, bool(request.tools))
    if request.temperature is not None:
        params["temperature"] = request.temperature
    return params


def reply_blocks(
    text: str, calls: list[dict[str, Any]], request: ModelRequest
) -> tuple[list[Block], bool]:
    """The reply as content blocks, and whether its tool calls came as text. Native calls
    are used as they came; a reply without them is searched for <tool_call> tags, which a
    model taught the text format writes whichever format the request used."""
    written_as_text = False
    if not calls and TAG_OPEN in text:
        known = {t.name for t in request.tools} if request.tools else None
        parsed = parse_tool_calls(text, known)
        if parsed.calls:
            text, written_as_text = parsed.text, True
            calls = [{"id": new_tool_use_id(), **call} for call in parsed.calls]
    blocks: list[Block] = [{"type": "text", "text": text}] if text else []
    blocks += [
        {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["input"]} for c in calls
    ]
    return blocks, written_as_text
