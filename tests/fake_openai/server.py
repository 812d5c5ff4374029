"""A local OpenAI-compatible Chat Completions server on 127.0.0.1 that the real `openai` SDK
talks to, shaped on what vLLM, llama.cpp and mlx_lm.server do.

* A prefix cache: the prompt is rendered like a chat template (system, tools, turns) and
  cut into 4-byte tokens; a request reads the longest token prefix it shares with an
  earlier prompt, in whole 16-token blocks (vLLM's automatic prefix caching does blocks).
* Usage as each kind of server reports it: `cached_tokens` (vLLM, SGLang, mlx_lm.server),
  nothing (`report_cache=None`: Ollama), or llama.cpp's `timings` (`report_cache="timings"`).
* Function calling, or a llama.cpp-style refusal of `tools` (`supports_tools=False`).
* GET /v1/models, POST /tokenize (vLLM's shape; `has_tokenize=False` turns it off).
* Faults (enqueue_fault): rate_limit (429 + retry-after), server_error (500), overloaded
  (503), slow (headers late), prefill (silence for `for_s` before the first byte, after the
  headers or, `before_headers=True`, before them: a cold prefill that sends nothing),
  stream_cut, sse_error (an error object mid-stream), garbled (a chunk that is not JSON),
  no_finish (a clean end without finish_reason), context (400, vLLM's context-length
  message), error (any status), pings (keep-alive comments before the reply, as
  mlx_lm.server sends while it prefills), json_for_stream / json_as_sse (a whole
  chat.completion for the streaming request, as proxies send one: whole.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fake_openai.whole import WHOLE_FAULTS, completion, send_whole

BLOCK = 16
TEXT_CHUNK = 8  # characters per content delta, so clients see several
FAULTS = {
    "rate_limit",
    "server_error",
    "overloaded",
    "slow",
    "prefill",
    "stream_cut",
    "sse_error",
    "garbled",
    "no_finish",
    "context",
    "error",
    "pings",
    *WHOLE_FAULTS,
}
CHOICE_MODES = ("none", "auto", "required")
CONTEXT_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
    "(4000 in the messages, 96 in the completion). Please reduce the length of the messages."
)


def tokens_of(text: str) -> list[str]:
    data = text.encode()
    return [data[i : i + 4].hex() for i in range(0, len(data), 4)]


def render(body: dict[str, Any]) -> str:
    """The prompt as a chat template would lay it out: system turn (with the tools), then
    each message. Only the order and the bytes matter to the cache."""
    parts = []
    messages = body.get("messages") or []
    for i, message in enumerate(messages):
        part = f"<|{message.get('role')}|>{message.get('content') or ''}"
        if message.get("tool_calls"):
            part += json.dumps(message["tool_calls"])
        if message.get("tool_call_id"):
            part += f"[{message['tool_call_id']}]"
        parts.append(part)
        if i == 0 and body.get("tools"):
            parts.append("<|tools|>" + json.dumps(body["tools"]))
    return "".join(parts) + "<|assistant|>"


class FakeOpenAI:
    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("fake-model",),
        api_key: str | None = None,
        report_cache: str | None = "cached_tokens",
        supports_tools: bool = True,
        has_tokenize: bool = True,
        include_usage: bool = True,
    ) -> None:
        self.models = models
        self.api_key = api_key  # None: no key needed, like most local servers
        self.report_cache = report_cache
        self.supports_tools = supports_tools
        self.has_tokenize = has_tokenize
        self.include_usage = include_usage
        self.requests: list[dict[str, Any]] = []  # chat bodies, in order
        self.headers: list[dict[str, str]] = []
        self.usages: list[dict[str, Any]] = []  # usage (and timings) sent back, in order
        self._prompts: list[list[str]] = []
        self._replies: deque[dict[str, Any]] = deque()
        self._faults: deque[tuple[str, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None

    # --- the test-facing API ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def enqueue(self, text: str = "", tool_calls: list[tuple[str, dict]] | None = None) -> None:
        """The next reply: text, and tool calls as (name, arguments)."""
        with self._lock:
            self._replies.append({"text": text, "tool_calls": tool_calls or []})

    def enqueue_fault(self, kind: str, **options: Any) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; use one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.append((kind, options))

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        return len(tokens_of(render(body)))

    def start(self) -> FakeOpenAI:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------
    def _fault(self) -> tuple[str, dict[str, Any]]:
        with self._lock:
            return self._faults.popleft() if self._faults else ("", {})

    def _reply(self) -> dict[str, Any]:
        with self._lock:
            return self._replies.popleft() if self._replies else {"text": "OK", "tool_calls": []}

    def _cache(self, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, cached tokens); the prompt joins the cache."""
        tokens = tokens_of(render(body))
        with self._lock:
            best = 0
            for earlier in self._prompts:
                same = next(
                    (i for i, (a, b) in enumerate(zip(earlier, tokens, strict=False)) if a != b),
                    min(len(earlier), len(tokens)),
                )
                best = max(best, same)
            self._prompts.append(tokens)
        # Whole blocks only, and never the last token (a server always computes one).
        return len(tokens), min(best // BLOCK * BLOCK, max(len(tokens) - 1, 0))

    def usage(self, prompt: int, cached: int, output: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }
        if self.report_cache == "cached_tokens":
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def reported(
        self, body: dict[str, Any], prompt: int, cached: int, output: int, whole: bool
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(usage, timings) as the reply carries them, recorded in `usages`. A stream has
        usage only when asked (include_usage); a whole completion always has it."""
        usage: dict[str, Any] | None = self.usage(prompt, cached, output)
        asked = whole or body.get("stream_options", {}).get("include_usage")
        if not (asked and self.include_usage):
            usage = None
        timings = None
        if self.report_cache == "timings":  # llama.cpp: timings on the last chunk
            timings = {
                "cache_n": cached,
                "prompt_n": prompt - cached,
                "prompt_per_second": 500.0,
                "predicted_n": output,
                "predicted_per_second": 50.0,
            }
            (usage or {}).pop("prompt_tokens_details", None)
        self.usages.append({**(usage or {}), "timings": timings})
        return usage, timings


def _tool_choice_problem(body: dict[str, Any]) -> str | None:
    """OpenAI's (and vLLM's) checks of tool_choice and parallel_tool_calls: a mode or a named
    function among the tools, and neither without tools."""
    names = [t.get("function", {}).get("name") for t in body.get("tools") or []]
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in body and not names:
            return f"Invalid value for '{field}': only allowed when 'tools' are specified."
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        return f"Invalid type for 'parallel_tool_calls': expected a boolean, got {parallel!r}."
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, str):
        if choice in CHOICE_MODES:
            return None
        modes = ", ".join(repr(m) for m in CHOICE_MODES)
        return f"Invalid value for 'tool_choice': {choice!r}. Supported values are: {modes}."
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or choice.get("type") != "function":
        return "Invalid 'tool_choice': a mode, or {'type': 'function', 'function': {'name': ...}}."
    if function.get("name") not in names:
        return f"Invalid 'tool_choice': function {function.get('name')!r} is not in 'tools'."
    return None


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_fake = fake

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req-fake-{next(self.server_fake._ids)}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        error = {"message": message, "type": "invalid_request_error", "code": code}
        self._json(status, {"error": error}, {k.replace("_", "-"): v for k, v in headers.items()})

    def _authorized(self) -> bool:
        fake = self.server_fake
        self.server_fake.headers.append({k.lower(): v for k, v in self.headers.items()})
        if fake.api_key is None:
            return True
        if self.headers.get("authorization", "") == f"Bearer {fake.api_key}":
            return True
        self._error(401, "Incorrect API key provided", "invalid_api_key")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"Not found: {self.path}")
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.server_fake.models]
        return self._json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server_fake
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        if not self._authorized():
            return None
        body = json.loads(raw or b"null")
        if self.path == "/tokenize" and fake.has_tokenize:
            count = len(tokens_of(body.get("prompt", "")))
            return self._json(200, {"count": count, "max_model_len": 2048, "tokens": [0] * count})
        if self.path != "/v1/chat/completions":
            return self._error(404, f"Not found: {self.path}")
        fake.requests.append(body)
        if body.get("model") not in fake.models:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        if body.get("tools") and not fake.supports_tools:
            return self._error(500, "tools param requires --jinja flag")  # llama.cpp's words
        problem = _tool_choice_problem(body)
        if problem:
            return self._error(400, problem)
        kind, options = fake._fault()
        if kind in ("rate_limit", "server_error", "overloaded", "error", "context"):
            status = {"rate_limit": 429, "server_error": 500, "overloaded": 503}.get(kind, 400)
            status = int(options.get("status", status))
            message = CONTEXT_MESSAGE if kind == "context" else options.get("message", kind)
            code = options.get("code")
            if "retry_after" in options or kind == "rate_limit":
                return self._error(
                    status, message, code, retry_after=str(options.get("retry_after", 1))
                )
            return self._error(status, message, code)
        if kind == "slow":
            time.sleep(float(options.get("delay_s", 2.0)))
        if kind == "prefill" and options.get("before_headers"):
            time.sleep(float(options.get("for_s", 2.0)))
        self._stream(body, kind, options)
        return None

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: Any) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _cut(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _stream(self, body: dict[str, Any], kind: str, options: dict[str, Any]) -> None:
        fake = self.server_fake
        prompt, cached = fake._cache(body)
        reply = fake._reply()
        text, calls = reply["text"], reply["tool_calls"]
        output = max(1, len(tokens_of(text + json.dumps(calls))))
        head: dict[str, Any] = {
            "id": f"chatcmpl-{next(fake._ids)}",
            "object": "chat.completion.chunk",
        }
        head |= {"created": 0, "model": body["model"]}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        if kind in WHOLE_FAULTS:
            usage, timings = fake.reported(body, prompt, cached, output, whole=True)
            whole_calls = [
                {
                    "id": f"call_{next(fake._ids)}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
                for name, arguments in calls
            ]
            reply_body = completion(head, text, whole_calls, usage, timings)
            send_whole(self, kind, reply_body, options, f"req-fake-{next(fake._ids)}")
            return None
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-request-id", f"req-fake-{next(fake._ids)}")
        self.end_headers()
        self.wfile.flush()
        if kind == "prefill" and not options.get("before_headers"):
            time.sleep(float(options.get("for_s", 2.0)))
        if kind == "pings":
            for _ in range(int(float(options.get("for_s", 2.0)) / 0.05)):
                self._chunk(b": keepalive 1/2\n\n")
                time.sleep(0.05)
        self._event(chunk({"role": "assistant", "content": ""}))
        pieces = [text[i : i + TEXT_CHUNK] for i in range(0, len(text), TEXT_CHUNK)]
        if kind == "garbled":
            self._chunk(b'data: {"id": "x", "choices": [{"delta": {"cont\n\n')
        for number, piece in enumerate(pieces):
            if kind == "stream_cut" and number == int(options.get("after", 1)):
                return self._cut()
            if kind == "slow":
                time.sleep(float(options.get("chunk_delay_s", 0.0)))
            self._event(chunk({"content": piece}))
        if kind == "sse_error":
            self._event({"error": {"message": "internal error", "code": options.get("code")}})
            self._chunk(b"")
            return None
        for index, (name, arguments) in enumerate(calls):
            call_id = f"call_{next(fake._ids)}"
            start = {"index": index, "id": call_id, "type": "function"}
            self._event(chunk({"tool_calls": [{**start, "function": {"name": name}}]}))
            encoded = json.dumps(arguments)
            for i in range(0, len(encoded), 10):
                part = {"index": index, "function": {"arguments": encoded[i : i + 10]}}
                self._event(chunk({"tool_calls": [part]}))
        if kind != "no_finish":
            self._event(chunk({}, "tool_calls" if calls else "stop"))
        usage, timings = fake.reported(body, prompt, cached, output, whole=False)
        final: dict[str, Any] = {**head, "choices": []}
        if usage is not None:
            final["usage"] = usage
        if timings is not None:
            final["timings"] = timings
        if len(final) > len(head) + 1:
            self._event(final)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        return None
