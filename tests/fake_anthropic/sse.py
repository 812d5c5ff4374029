"""The Messages API's response shapes: the JSON message and its SSE event stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.fake_anthropic.cache import block_tokens, compact_json

TEXT_CHUNK = 24  # characters per text_delta, so clients see several deltas


def output_tokens(content: list[dict[str, Any]]) -> int:
    return max(1, sum(block_tokens(block) for block in content))


def message_json(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def start_events(message: dict[str, Any]) -> Iterator[bytes]:
    """message_start carries the full input usage (with the 5m/1h split), output so far 1."""
    start = dict(message, content=[], stop_reason=None)
    start["usage"] = dict(message["usage"], output_tokens=1)
    yield event("message_start", {"type": "message_start", "message": start})
    yield event("ping", {"type": "ping"})


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def body_events(message: dict[str, Any]) -> Iterator[bytes]:
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _chunks(block["text"], TEXT_CHUNK):
                yield event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        elif block["type"] == "tool_use":
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": head},
            )
            raw = compact_json(block.get("input", {}))
            half = len(raw) // 2
            for piece in (raw[:half], raw[half:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
        else:
            start = {"type": "content_block_start", "index": index, "content_block": block}
            yield event("content_block_start", start)
        yield event("content_block_stop", {"type": "content_block_stop", "index": index})


def end_events(message: dict[str, Any]) -> Iterator[bytes]:
    """message_delta usage is cumulative and has no 5m/1h split, as the API sends it."""
    usage = message["usage"]
    delta_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield event("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage})
    yield event("message_stop", {"type": "message_stop"})


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
