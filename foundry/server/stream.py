"""The Messages API's SSE sequence, built from a local model's text as it is generated:

  message_start (usage) → [ping] → content_block_start / content_block_delta (text_delta,
  input_json_delta) / content_block_stop ... → message_delta (stop_reason, cumulative usage)
  → message_stop

A tool call arrives as text (`<tool_call>{...}</tool_call>`, or the model's native tags):
text that may open one is held back, and the calls the backend parsed at the end become
tool_use blocks. So the streamed text blocks are exactly the text of the final Message.

While a long prefill runs, the stream carries message_start (sent at admission, with the
real usage) and then only pings. A client's idle watchdog may not count pings: Claude
Code's does not (its SDK drops `ping`, SSE comments and unknown event names before the
watchdog sees them), and the events it does count would all be untrue here: a content
block is part of the reply, and Claude Code adds every message_delta's usage to the
session's cost. So nothing is invented to look busy; docs/serve.md ("Claude Code's first
request") has what to do instead: warm the prefix ahead, or raise the client's timeout.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from foundry.server.protocol import usage_json
from foundry.usage import Usage

log = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def ping() -> bytes:
    return sse("ping", {"type": "ping"})


def error_event(error_type: str, message: str) -> bytes:
    return sse("error", {"type": "error", "error": {"type": error_type, "message": message}})


def message_start(message_id: str, model: str, usage: Usage) -> bytes:
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_json(usage),
    }
    return sse("message_start", {"type": "message_start", "message": message})


def message_end(stop_reason: str | None, stop_sequence: str | None, usage: Usage) -> list[bytes]:
    """message_delta's usage is cumulative and has no 5m/1h split, as the API sends it."""
    delta_usage = {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }
    delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
    return [
        sse("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}),
        sse("message_stop", {"type": "message_stop"}),
    ]


def _tag_prefix_at_end(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ContentStream:
    """Turns text deltas into content block events, holding back what may be a tool call."""

    def __init__(self, tool_tag: str) -> None:
        self.tag = tool_tag
        self.pending = ""  # received, not yet sent
        self.sent = ""  # the text block's text so far
        self.in_call = False  # a tool-call tag has opened: the rest waits for the end
        self.index = 0  # the next block's index
        self.text_open = False
        self.deltas: list[str] = []  # text deltas as sent, for the response cache

    def text(self, delta: str) -> list[bytes]:
        if self.in_call:
            return []
        self.pending += delta
        if not self.sent:
            self.pending = self.pending.lstrip()  # the final text is stripped
        cut = self.pending.find(self.tag)
        if cut >= 0:
            self.in_call = True
            ready, self.pending = self.pending[:cut], ""
        else:
            hold = _tag_prefix_at_end(self.pending, self.tag)
            ready = self.pending[: len(self.pending) - hold]
            self.pending = self.pending[len(ready) :]
        kept = ready.rstrip()  # trailing whitespace waits: the text may end here
        self.pending = ready[len(kept) :] + self.pending
        return self._send_text(kept)

    def _send_text(self, text: str) -> list[bytes]:
        if not text:
            return []
        events = []
        if not self.text_open:
            self.text_open = True
            events.append(
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": self.index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        self.sent += text
        self.deltas.append(text)
        delta = {"type": "text_delta", "text": text}
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta},
            )
        )
        return events

    def finish(self, content: list[dict[str, Any]]) -> tuple[list[bytes], list[dict[str, Any]]]:
        """The events that close the content, given the final blocks the backend parsed;
        returns them with the content as the client received it."""
        final_text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
        events: list[bytes] = []
        if final_text.startswith(self.sent):
            events += self._send_text(final_text[len(self.sent) :])
        else:  # cannot happen with the backend's parsers; the streamed text stands
            log.warning("streamed text differs from the parsed reply; keeping what was sent")
        received: list[dict[str, Any]] = []
        if self.text_open:
            events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            received.append({"type": "text", "text": self.sent})
            self.index += 1
        for block in content:
            if block.get("type") != "tool_use":
                continue
            events += tool_use_events(self.index, block)
            received.append(block)
            self.index += 1
        return events, received


def tool_use_events(index: int, block: dict[str, Any]) -> list[bytes]:
    head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
    partial = json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False)
    return [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": head},
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": partial},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def replay_events(content: list[dict[str, Any]], text_deltas: list[str]) -> list[bytes]:
    """The content events of a recorded reply, streamed as it was first streamed."""
    events: list[bytes] = []
    for index, block in enumerate(content):
        if block.get("type") == "text":
            pieces = text_deltas if "".join(text_deltas) == block["text"] else [block["text"]]
            events.append(
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece}
                events.append(
                    sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        elif block.get("type") == "tool_use":
            events += tool_use_events(index, block)
    return events
