"""Tool calls for local models: the fallback <tool_call>{json}</tool_call> format, and chat turns.

Models whose chat template knows tools get them natively (tools=..., role "tool"); every
other model gets the tool schemas in the system turn, is taught the fallback format by the
orchestrator prompt (or by a short note here when a custom prompt lacks it), and answers with
  <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>
one JSON object per tag, several tags allowed in one reply.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from foundry.backends.base import Block, Message, ToolSpec

TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
_DECODER = json.JSONDecoder()
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)

# Only for a system prompt that does not teach the format itself (the packaged one does).
FALLBACK_FORMAT = (
    f'Call a tool by writing {TAG_OPEN}{{"name": "<tool>", "arguments": {{...}}}}{TAG_CLOSE} '
    "(valid JSON, one call per tag, several tags allowed); each result comes back in a "
    '<tool_result name="..."> tag in the next user turn.'
)


@dataclass
class ParsedReply:
    text: str  # the reply with well-formed calls removed
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "input"}
    errors: list[str] = field(default_factory=list)  # one line per malformed call


def new_tool_use_id() -> str:
    return f"toolu_local_{uuid.uuid4().hex[:20]}"


def render_tool_section(tools: list[ToolSpec], *, explain_format: bool = False) -> str:
    """The tool schemas appended to the static system text, compactly and byte-identically
    for the same tools (sorted keys, fixed separators), so the saved prefix keeps hitting."""
    if not tools:
        return ""
    lines = ["## Tool schemas (name: description, then the arguments' JSON Schema)"]
    for tool in tools:
        schema = json.dumps(
            tool.input_schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        lines += [f"{tool.name}: {' '.join(tool.description.split())}", schema]
    if explain_format:
        lines += ["", FALLBACK_FORMAT]
    return "\n".join(lines)


def tools_for_template(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """The OpenAI-style function list that HF chat templates expect."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema,
            },
        }
        for t in tools
    ]


def _parse_one(raw: str, known: set[str] | None) -> tuple[dict[str, Any] | None, str | None]:
    body = raw.strip()
    if fenced := _FENCE_RE.match(body):
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None, 'expected an object like {"name": "<tool>", "arguments": {...}}'
    arguments = value.get("arguments", value.get("input", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None, f"the arguments of '{value['name']}' are a string, not a JSON object"
    if not isinstance(arguments, dict):
        return None, f"the arguments of '{value['name']}' must be a JSON object"
    if known is not None and value["name"] not in known:
        names = ", ".join(sorted(known))
        return None, f"unknown tool '{value['name']}' (available: {names})"
    return {"name": value["name"], "input": arguments}, None


def _call_span(text: str, body_start: int) -> tuple[str, int] | None:
    """The body of the call whose tag opens just before `body_start`, and where its closing
    tag ends; None when it has none. A body that is one JSON object ends where the object
    does, so a closing tag inside one of its strings (a file about tool calls, or a model
    that forgot a quote) does not cut it short."""
    start = body_start + len(text[body_start:]) - len(text[body_start:].lstrip())
    if text.startswith("{", start):
        try:
            _, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            after = end + len(text[end:]) - len(text[end:].lstrip())
            if text.startswith(TAG_CLOSE, after):
                return text[body_start:end], after + len(TAG_CLOSE)
    close = text.find(TAG_CLOSE, body_start)
    if close < 0:
        return None
    return text[body_start:close], close + len(TAG_CLOSE)


def parse_tool_calls(text: str, known_tools: set[str] | None = None) -> ParsedReply:
    """Pull well-formed calls out of a reply; malformed ones stay in the text and are listed."""
    reply = ParsedReply(text="")
    kept: list[str] = []
    position = 0
    while (start := text.find(TAG_OPEN, position)) >= 0:
        span = _call_span(text, start + len(TAG_OPEN))
        if span is None:
            break  # an unclosed tag: below
        body, end = span
        kept.append(text[position:start])
        call, error = _parse_one(body, known_tools)
        if call is not None:
            reply.calls.append(call)
        else:
            reply.errors.append(error or "malformed tool call")
            kept.append(text[start:end])
        position = end
    rest = text[position:]
    if TAG_OPEN in rest:  # an unclosed tag: the reply was cut off or the model forgot to close
        head, _, body = rest.partition(TAG_OPEN)
        call, error = _parse_one(body, known_tools)
        if call is not None:
            kept.append(head)
            reply.calls.append(call)
            rest = ""
        else:
            reply.errors.append(f"unclosed {TAG_OPEN} tag: {error}")
    kept.append(rest)
    reply.text = "".join(kept).strip()
    return reply


def repair_prompt(errors: list[str]) -> str:
    """What the model is told when its tool calls could not be parsed."""
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        f"Your last reply contained tool calls that could not be parsed:\n{listed}\n"
        f"Write each call again as {TAG_OPEN}"
        '{"name": "<tool>", "arguments": {...}}'
        f"{TAG_CLOSE} with valid JSON."
    )


def _tool_names(messages: list[Message]) -> dict[str, str]:
    return {
        b["id"]: b["name"]
        for m in messages
        for b in m.content
        if b.get("type") == "tool_use" and "id" in b
    }


def _result_text(block: Block) -> str:
    content = block.get("content", "")
    if isinstance(content, list):  # Anthropic allows a list of text blocks here too
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def to_chat_messages(messages: list[Message], *, native: bool) -> list[dict[str, Any]]:
    """Anthropic-style turns -> chat-template messages (fallback tags, or native tool roles)."""
    names = _tool_names(messages)
    chat: list[dict[str, Any]] = []
    for message in messages:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message.content:
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "tool_use":
                calls.append(block)
            elif kind == "tool_result":
                name = names.get(block.get("tool_use_id", ""), "unknown")
                if native:
                    chat.append(
                        {
                            "role": "tool",
                            "tool_call_id": block.get("tool_use_id"),
                            "name": name,
                            "content": _result_text(block),
                        }
                    )
                    continue
                status = ' status="error"' if block.get("is_error") else ""
                texts.append(
                    f'<tool_result name="{name}"{status}>\n{_result_text(block)}\n</tool_result>'
                )
        if calls and not native:
            texts += [
                TAG_OPEN
                + json.dumps({"name": c["name"], "arguments": c.get("input", {})})
                + TAG_CLOSE
                for c in calls
            ]
        if not texts and not calls:
            continue
        entry: dict[str, Any] = {"role": message.role, "content": "\n".join(t for t in texts if t)}
        if calls and native:
            entry["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c.get("input", {})},
                }
                for c in calls
            ]
        chat.append(entry)
    return chat
