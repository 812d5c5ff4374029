"""Where foundry puts Anthropic `cache_control` breakpoints. Pure functions, no SDK.

Layout: tools (sorted by name, schema keys sorted, so the bytes never move) → one system
block with the static text → the messages (the first user turn carries the dynamic part).

Breakpoints (at most 4; the API rejects more):
1. the system block: tools + static instructions, shared by every request of every build;
2. the last block of the newest message: the moving breakpoint that caches the
   conversation as it grows (the next request's lookback finds this write);
3. when the newest turn added 20 or more blocks since the previous turn's moving
   breakpoint, an extra breakpoint on that previous position: the API looks back only 20
   blocks from a breakpoint, so without it the previous write would be out of sight.
The static breakpoint carries the request's TTL. Conversation breakpoints always use 5m:
turns come seconds apart, and a 1h write costs 2x the input price against 1.25x for 5m.
So with a 1h TTL the order is 1h (system) before 5m (messages), which is the order the API
requires (`check_breakpoints` verifies it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from foundry.backends.base import Message, ModelRequest, ToolSpec
from foundry.usage import Usage

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
KEEPALIVE_TEXT = "(cache keep-alive; reply with one word)"


@dataclass
class RequestLayout:
    tools: list[dict[str, Any]]
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    breakpoints: list[str]  # where the breakpoints are, e.g. "system[0]", "messages[3].content[1]"


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def tool_param(tool: ToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": _sorted_keys(tool.input_schema),
    }


def cache_control(ttl: str) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": ttl}


def _message_param(message: Message) -> dict[str, Any]:
    content = message.content
    if isinstance(content, str):  # tolerate plain strings from callers
        content = [{"type": "text", "text": content}]
    # Deep copy: breakpoints are added to these dicts, never to the caller's.
    blocks = [{k: v for k, v in b.items() if k != "cache_control"} for b in copy.deepcopy(content)]
    return {"role": message.role, "content": blocks}


def _previous_turn_end(messages: list[dict[str, Any]]) -> int | None:
    """Index of the user message the previous request ended with (its moving breakpoint)."""
    last_assistant = max(
        (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None
    )
    if last_assistant is None:
        return None
    for i in range(last_assistant - 1, -1, -1):
        if messages[i]["role"] == "user" and messages[i]["content"]:
            return i
    return None


def _is_keepalive_stub(request: ModelRequest, messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]["content"] if messages else []
    return (
        request.purpose == "keepalive"
        and len(messages) == 1
        and len(last) == 1
        and last[0].get("text") == KEEPALIVE_TEXT
    )


def build_layout(request: ModelRequest) -> RequestLayout:
    """The request's tools, system and messages as API params, with breakpoints placed."""
    tools = [tool_param(t) for t in sorted(request.tools, key=lambda t: t.name)]
    system = [{"type": "text", "text": request.system}] if request.system else []
    messages = [_message_param(m) for m in request.messages]
    layout = RequestLayout(tools, system, messages, [])
    if request.ttl is None:
        return layout
    static_marker = cache_control(request.ttl)
    conversation_marker = cache_control("5m")

    def mark(block: dict[str, Any], where: str, marker: dict[str, str]) -> None:
        block["cache_control"] = dict(marker)
        layout.breakpoints.append(where)

    if system:
        mark(system[-1], f"system[{len(system) - 1}]", static_marker)
    elif tools:
        mark(tools[-1], f"tools[{len(tools) - 1}]", static_marker)
    if not messages or not messages[-1]["content"] or _is_keepalive_stub(request, messages):
        return layout
    previous = _previous_turn_end(messages)
    if previous is not None:
        # Blocks from just after the previous breakpoint up to and including the new one.
        added = sum(len(m["content"]) for m in messages[previous + 1 :])
        if added >= LOOKBACK_BLOCKS:
            prev_blocks = messages[previous]["content"]
            where = f"messages[{previous}].content[{len(prev_blocks) - 1}]"
            mark(prev_blocks[-1], where, conversation_marker)
    last = messages[-1]["content"]
    mark(last[-1], f"messages[{len(messages) - 1}].content[{len(last) - 1}]", conversation_marker)
    check_breakpoints(tools, system, messages)
    return layout


def check_breakpoints(
    tools: list[dict[str, Any]], system: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> None:
    """Raise ValueError when the API would reject the breakpoints (count, TTL order)."""
    ttls = [b["cache_control"].get("ttl", "5m") for b in tools + system if "cache_control" in b]
    for message in messages:
        ttls += [
            b["cache_control"].get("ttl", "5m") for b in message["content"] if "cache_control" in b
        ]
    if len(ttls) > MAX_BREAKPOINTS:
        raise ValueError(f"{len(ttls)} cache breakpoints; the API allows {MAX_BREAKPOINTS}")
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        raise ValueError("a 1h cache breakpoint comes after a 5m one; the API rejects that")


def keepalive_request(request: ModelRequest) -> ModelRequest:
    """A minimal request that refreshes the cache entries the last turn wrote.

    It re-sends the same tools, system and the conversation up to the last user turn (the
    prefix the last request's moving breakpoint wrote), with max_tokens=1: both the static
    entry and the conversation entry are hit, so both TTLs restart for 0.1x of their
    tokens. With no user turn to re-send it falls back to a one-line stub (static only).
    """
    messages = list(request.messages)
    while messages and messages[-1].role == "assistant":
        messages.pop()
    if not messages:
        messages = [Message("user", [{"type": "text", "text": KEEPALIVE_TEXT}])]
    return replace(
        request,
        messages=[Message(m.role, copy.deepcopy(m.content)) for m in messages],
        max_tokens=1,
        purpose="keepalive",
    )


def map_usage(start: dict[str, Any] | None, final: dict[str, Any] | None, ttl: str | None) -> Usage:
    """API usage → foundry Usage. `start` is message_start's usage (the only place with the
    5m/1h split); `final` is message_delta's cumulative usage, which wins where it has a value.
    Writes the API reports without a split are attributed to the request's TTL."""
    start, final = start or {}, final or {}

    def pick(key: str) -> int:
        value = final.get(key)
        return int(value if value is not None else start.get(key) or 0)

    created = pick("cache_creation_input_tokens")
    split = start.get("cache_creation") or final.get("cache_creation") or {}
    one_hour = min(int(split.get("ephemeral_1h_input_tokens") or 0), created)
    five_min = min(int(split.get("ephemeral_5m_input_tokens") or 0), created - one_hour)
    unsplit = created - one_hour - five_min
    if ttl == "1h":
        one_hour += unsplit
    else:
        five_min += unsplit
    return Usage(
        input_tokens=pick("input_tokens"),
        output_tokens=pick("output_tokens"),
        cache_read_tokens=pick("cache_read_input_tokens"),
        cache_write_5m_tokens=five_min,
        cache_write_1h_tokens=one_hour,
    )
