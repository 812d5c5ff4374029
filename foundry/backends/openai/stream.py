"""One streamed Chat Completions reply, accumulated from its chunks, and its usage.

Chunks are read as plain dicts (the SDK's objects dumped), so what a server adds beyond
OpenAI's schema (llama.cpp's `timings`) is seen too. Anything a Chat Completions stream
never holds (a chunk that is not an object, choices that are not a list, a tool-call delta
without an index, text that is not a string) is a MalformedStream.

A proxy may answer the streaming request with a whole chat.completion instead
(foundry.backends.streams.whole_json_body finds it): `take_whole` reads its message as one
delta, so the reply, its tool calls and its usage are the same as if it had streamed.

Usage: `prompt_tokens` is the whole prompt; `prompt_tokens_details.cached_tokens` the part
the server served from its prefix cache (llama.cpp's `timings.cache_n`, DeepSeek's
`prompt_cache_hit_tokens` where the usage has no such field). A server that reports none
of them leaves the split unknown, never a miss.
"""

from __future__ import annotations

import json
import time
from typing import Any

from foundry.backends.streams import MalformedStream
from foundry.usage import Usage


def as_dict(chunk: Any) -> dict[str, Any]:
    if isinstance(chunk, dict):
        return chunk
    dump = getattr(chunk, "model_dump", None)
    value = dump() if callable(dump) else None
    if not isinstance(value, dict):
        raise MalformedStream(f"a chunk that is not a JSON object ({type(chunk).__name__})")
    return value


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise MalformedStream(f"{where} is not a token count: {value!r}")
    return int(value)


class StreamState:
    """Accumulates one streamed reply: text, tool calls by index, finish reason, usage."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.text_parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "arguments"}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.model: str | None = None
        self.response_id: str | None = None
        self.chunks = 0
        self.outputs = 0  # chunks that carried a part of the reply (role-only ones do not)
        self.whole = False  # the reply came as one chat.completion, not as chunks

    @property
    def started(self) -> bool:
        return self.chunks > 0

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def _output(self) -> None:
        """A part of the reply (text, a tool call, thinking) came: what counts as progress."""
        self.outputs += 1
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms

    def handle(self, chunk: Any) -> str | None:
        """Take one chunk; return the text it adds, for the caller to stream."""
        data = as_dict(chunk)
        self.chunks += 1
        self.response_id = self.response_id or data.get("id")
        self.model = self.model or data.get("model")
        if isinstance(data.get("usage"), dict):  # the last one wins (some send it often)
            self.usage = data["usage"]
        if isinstance(data.get("timings"), dict):
            self.timings = data["timings"]
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedStream("a chunk whose choices are not a list")
        added: list[str] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise MalformedStream("a choice that is not an object")
            if choice.get("index", 0) != 0:
                continue  # foundry asks for one choice
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise MalformedStream("a choice whose delta is not an object")
            content = delta.get("content")
            if content is not None:
                if not isinstance(content, str):
                    raise MalformedStream("a delta whose content is not text")
                if content:
                    self._output()
                    self.text_parts.append(content)
                    added.append(content)
            for call in delta.get("tool_calls") or []:
                self._tool_call_delta(call)
            if delta.get("reasoning") or delta.get("reasoning_content"):
                self._output()  # thinking is output too, though not kept
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return "".join(added) or None

    def take_whole(self, body: bytes) -> str | None:
        """Take a whole chat.completion (what a proxy sent for the stream); return its text.
        Each choice's `message` is read as the one delta that carries all of it."""
        try:
            data = json.loads(body)
        except ValueError as exc:  # (UnicodeDecodeError is one)
            raise MalformedStream(f"a JSON body that is not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise MalformedStream("a JSON body that is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            error = data.get("error")
            if isinstance(error, dict):  # an error relayed with a 200: say what it was
                raise MalformedStream(f"an error for a reply: {str(error.get('message'))[:200]}")
            raise MalformedStream("a JSON body with no choices, not a chat completion")
        self.whole = True
        return self.handle({**data, "choices": [_as_delta(choice) for choice in choices]})

    def _tool_call_delta(self, call: Any) -> None:
        if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
            raise MalformedStream("a tool-call delta without an index")
        self._output()
        entry = self.calls.setdefault(call.get("index", 0), {"id": None, "name": "", "args": []})
        entry["id"] = entry["id"] or call.get("id")
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise MalformedStream("a tool-call delta whose function is not an object")
        if function.get("name"):
            entry["name"] += str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a few servers send the object itself
            arguments = json.dumps(arguments)
        if arguments:
            entry["args"].append(str(arguments))

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def tool_calls(self) -> list[dict[str, Any]]:
        """The calls as {"id", "name", "input"}; arguments that are not a JSON object (a
        model's slip) become an empty input, which the tool then reports as missing."""
        from foundry.local.tool_calls import new_tool_use_id

        calls = []
        for index in sorted(self.calls):
            entry = self.calls[index]
            if not entry["name"]:
                raise MalformedStream(f"tool call {index} arrived without a function name")
            try:
                arguments = json.loads("".join(entry["args"]) or "{}")
            except ValueError:
                arguments = {}
            calls.append(
                {
                    "id": entry["id"] or new_tool_use_id(),
                    "name": entry["name"],
                    "input": arguments if isinstance(arguments, dict) else {},
                }
            )
        return calls


def _as_delta(choice: Any) -> Any:
    """A completion's choice as a chunk's: its message as the delta, each tool call given
    the index a stream numbers it by (a message's calls have none)."""
    if not isinstance(choice, dict) or "message" not in choice:
        return choice  # a chunk's choice already (or not a choice: handle() says so)
    message = choice["message"]
    if not isinstance(message, dict):
        raise MalformedStream("a choice whose message is not an object")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise MalformedStream("a message whose tool_calls are not a list")
    indexed = [{"index": i, **c} if isinstance(c, dict) else c for i, c in enumerate(calls)]
    delta = {**message, "tool_calls": indexed}
    return {key: value for key, value in choice.items() if key != "message"} | {"delta": delta}


def map_usage(usage: dict[str, Any] | None, timings: dict[str, Any] | None) -> Usage | None:
    """The server's usage as foundry's (None when it sent none at all). Cached tokens come
    from prompt_tokens_details.cached_tokens, else llama.cpp's timings.cache_n; without
    either, the prompt's split is unknown (cache_read_unknown_tokens), never a miss. A
    reported cache write (OpenRouter's cache_write_tokens) is a 5-minute write."""
    usage, timings = usage or {}, timings or {}
    prompt = _int(usage.get("prompt_tokens"), "usage.prompt_tokens")
    output = _int(usage.get("completion_tokens"), "usage.completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    if not isinstance(details, dict):
        raise MalformedStream("usage.prompt_tokens_details is not an object")
    cached = _int(details.get("cached_tokens"), "cached_tokens")
    written = _int(details.get("cache_write_tokens"), "cache_write_tokens") or 0
    cache_n = _int(timings.get("cache_n"), "timings.cache_n")
    prompt_n = _int(timings.get("prompt_n"), "timings.prompt_n")
    if cached is None and cache_n is not None:
        cached = cache_n
    if cached is None:  # DeepSeek's own field beside the standard one
        cached = _int(usage.get("prompt_cache_hit_tokens"), "usage.prompt_cache_hit_tokens")
    if prompt is None and prompt_n is not None:
        prompt = prompt_n + (cache_n or 0)
    if output is None:
        output = _int(timings.get("predicted_n"), "timings.predicted_n")
    if prompt is None and output is None:
        return None
    prompt, output = prompt or 0, output or 0
    if cached is None:
        return Usage(input_tokens=prompt, output_tokens=output, cache_read_unknown_tokens=prompt)
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    return Usage(
        input_tokens=prompt - cached - written,
        output_tokens=output,
        cache_read_tokens=cached,
        cache_write_5m_tokens=written,
    )
