"""A whole chat.completion for a streaming request, as proxies send one.

json_for_stream: the completion under `application/json` (a proxy that ignores `stream`);
json_as_sse: the same body under `text/event-stream`, as the LiteLLM proxy relays an
origin's JSON reply. Options: gzip, chunk=N bytes per HTTP chunk, lead=whitespace before
the JSON. The SSE decoder finds no events in such a body: a client that does not look at
it first sees a stream that ended before it began.
"""

from __future__ import annotations

import gzip
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

WHOLE_FAULTS = {"json_for_stream", "json_as_sse"}


def completion(
    head: dict[str, Any],
    text: str,
    calls: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    timings: dict[str, Any] | None,
) -> dict[str, Any]:
    """The non-streaming reply: one choice with the whole message, the usage beside it."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
    body: dict[str, Any] = {**head, "object": "chat.completion", "choices": [choice]}
    if usage is not None:
        body["usage"] = usage
    if timings is not None:
        body["timings"] = timings
    return body


def send_whole(
    handler: BaseHTTPRequestHandler,
    kind: str,
    body: dict[str, Any],
    options: dict[str, Any],
    request_id: str,
) -> None:
    data = (options.get("lead", "") + json.dumps(body)).encode()
    handler.send_response(200)
    content_type = "application/json" if kind == "json_for_stream" else "text/event-stream"
    handler.send_header("content-type", f"{content_type}; charset=utf-8")
    handler.send_header("x-request-id", request_id)
    if options.get("gzip"):
        data = gzip.compress(data)
        handler.send_header("content-encoding", "gzip")
    size = int(options.get("chunk", 0))
    if not size:
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    for start in range(0, len(data), size):
        part = data[start : start + size]
        handler.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
