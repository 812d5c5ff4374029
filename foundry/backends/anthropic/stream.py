"""One streamed Anthropic response, accumulated from the SDK's raw events.

Anything the real API would never send (data that is not JSON, a delta for a block never
started, a missing field) is a MalformedStream: retried like a glitch, with its own hint if
it persists, never a traceback.

Some proxies answer a streaming request with a whole JSON Message instead, under a JSON
content type (LiteLLM's mock) or under `text/event-stream` (the LiteLLM 1.74 proxy relaying
an origin's JSON reply). The SDK's SSE decoder finds no events in such a body, so it is
recognised first (foundry.backends.streams.whole_json_body, shared with the openai
backend), and read as the Message it is: retrying it would pay the origin again for a reply
already received.
"""

from __future__ import annotations

import json
import time
from typing import Any

from foundry.backends.streams import MalformedStream


def _field(obj: Any, name: str, where: str, kind: type = object) -> Any:
    """A field the API always sends; missing or of the wrong type, the stream is not the API's."""
    value = getattr(obj, name, None)
    if value is None or not isinstance(value, kind):
        raise MalformedStream(f"{where} event without a valid {name!r}")
    return value


class StreamState:
    """Accumulates one streamed response from the SDK's raw events."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.json_parts: dict[int, list[str]] = {}
        self.start_usage: dict[str, Any] | None = None
        self.final_usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.message_id: str | None = None
        self.stop_reason: str | None = None
        self.stopped = False

    def _first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.t0) * 1000

    def handle(self, event: Any) -> str | None:
        """Take one event; return the text it adds, for the caller to stream. An event the
        real API would never send (a proxy's, a "compatible" server's) is MalformedStream."""
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = _field(event, "message", kind)
            self.start_usage = _field(message, "usage", kind).model_dump()
            self.model, self.message_id = (
                getattr(message, "model", None),
                getattr(message, "id", None),
            )
        elif kind == "content_block_start":
            block, index = _field(event, "content_block", kind), _field(event, "index", kind, int)
            if block.type == "text":
                self.blocks[index] = {"type": "text", "text": block.text or ""}
            elif block.type == "tool_use":
                self.blocks[index] = {
                    "type": "tool_use",
                    "id": block.id,
                    "name": block.name,
                    "input": {},
                }
                self.json_parts[index] = []
            else:
                self.blocks[index] = block.model_dump(exclude_none=True)
        elif kind == "content_block_delta":
            self._first_token()
            index, delta = _field(event, "index", kind), _field(event, "delta", kind)
            if delta.type == "text_delta":
                block = self.blocks.get(index)
                if block is None or block.get("type") != "text":
                    raise MalformedStream(f"a text delta for block {index!r}, no text block")
                text = _field(delta, "text", "a text delta", str)
                block["text"] += text
                return text
            if delta.type == "input_json_delta":
                if index not in self.json_parts:
                    raise MalformedStream(f"a tool input delta for block {index!r}, no tool")
                self.json_parts[index].append(_field(delta, "partial_json", "a delta", str))
        elif kind == "content_block_stop" and getattr(event, "index", None) in self.json_parts:
            raw = "".join(self.json_parts.pop(event.index))
            try:
                self.blocks[event.index]["input"] = json.loads(raw) if raw else {}
            except ValueError:
                raise MalformedStream("a tool_use input arrived as invalid JSON") from None
        elif kind == "message_delta":
            self.stop_reason = getattr(_field(event, "delta", kind), "stop_reason", None)
            self.final_usage = _field(event, "usage", kind).model_dump()
        elif kind == "message_stop":
            self.stopped = True
        return None

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000
