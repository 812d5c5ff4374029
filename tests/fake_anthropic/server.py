"""A local Anthropic Messages API on 127.0.0.1 that the real `anthropic` SDK talks to.

Scripted replies (FIFO, then `.responder`, then a default "OK"), documented cache
semantics (cache.py), SSE streaming (sse.py) and fault injection. Requests with
max_tokens < 4 (keep-alives) are answered "OK" without taking a scripted reply, so a
keep-alive never steals the reply a test scripted for the next real turn.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fake_anthropic import sse
from tests.fake_anthropic.cache import (
    DEFAULT_MIN_CACHE_TOKENS,
    PromptCache,
    RequestInvalid,
    count_tokens,
    flatten,
)
from tests.fake_anthropic.validate import validate

Reply = tuple[list[dict[str, Any]], str]
Responder = Callable[[dict[str, Any]], Reply]

ERROR_FAULTS = {
    "rate_limit": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your rate limit",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
}
# What a proxy or an "Anthropic-compatible" server has been seen to send mid-stream; the
# real API never does. Each is sent after message_start, then the stream ends cleanly.
GARBLED_EVENTS = {
    "bad_json": b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n',
    "unknown_index": sse.event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 7, "delta": {"type": "text_delta", "text": "x"}},
    ),
    "missing_text": sse.event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}},
    ),
}
STREAM_FAULTS = ("stream_cut", "sse_error", "garbled", "pings")
# json_for_stream: a whole JSON Message answers a streaming request, as LiteLLM's mock does;
# json_as_sse: the same body labelled text/event-stream, as the LiteLLM 1.74 proxy relays
# it (options: gzip, chunk=N bytes per chunk, lead=whitespace before the JSON).
FAULT_KINDS = {
    *ERROR_FAULTS,
    "error",
    *STREAM_FAULTS,
    "slow",
    "drop",
    "json_for_stream",
    "json_as_sse",
}


class FakeClock:
    """The cache's clock; tests move it with advance() instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class FakeAnthropic:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key or f"sk-ant-fake-{secrets.token_hex(8)}"
        self.clock = FakeClock()
        self.responder: Responder | None = None
        self.requests: list[dict[str, Any]] = []  # /v1/messages bodies, in order
        self.count_requests: list[dict[str, Any]] = []  # /v1/messages/count_tokens bodies
        self.headers: list[dict[str, str]] = []  # headers of every request, in order
        self.responses_usage: list[dict[str, Any]] = []  # usage sent back, in order
        self.min_cache_tokens: dict[str, int] = {}  # per-model overrides of the pricing table
        # Off: count_tokens answers a bare 404, as a proxy or "compatible" server without it.
        self.count_tokens_endpoint = True
        # Set: count_tokens answers this HTTP status with a reason, as a server in trouble.
        self.count_tokens_status: int | None = None
        self.unknown_models: set[str] = set()  # answered 404 not_found_error, as the API does
        self.cache = PromptCache(self.clock, self._minimum_for)
        self._replies: deque[Reply] = deque()
        self._faults: deque[tuple[str, dict[str, Any]]] = deque()
        # Asked for a fault when none is queued (a bench's random faults); None: no fault.
        self.fault_source: Callable[[], tuple[str, dict[str, Any]] | None] | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None

    # --- the test-facing API ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_API_KEY": self.api_key, "ANTHROPIC_BASE_URL": self.base_url}

    def enqueue(self, content: list[dict[str, Any]], stop_reason: str = "end_turn") -> None:
        with self._lock:
            self._replies.append((content, stop_reason))

    def enqueue_fault(self, kind: str, **options: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._faults.append((kind, options))

    @staticmethod
    def count_tokens(text: str) -> int:
        return count_tokens(text)

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """Total input tokens of a request body by the documented rule."""
        return sum(block.tokens for block in flatten(body))

    def pending_replies(self) -> int:
        return len(self._replies)

    def start(self) -> FakeAnthropic:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------
    def _minimum_for(self, model: str) -> int:
        if model in self.min_cache_tokens:
            return self.min_cache_tokens[model]
        from foundry.pricing import PricingTable

        price = PricingTable().get(model)
        if price is None or price.min_cache_tokens is None:
            return DEFAULT_MIN_CACHE_TOKENS
        return price.min_cache_tokens

    def _next_fault(self) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            return self.fault_source() if self.fault_source is not None else None

    def _reply_for(self, body: dict[str, Any], consume: bool) -> Reply:
        if int(body.get("max_tokens", 0)) < 4:
            return [{"type": "text", "text": "OK"}], "end_turn"
        with self._lock:
            if self._replies:
                return self._replies.popleft() if consume else self._replies[0]
        if self.responder is not None:
            return self.responder(body)
        return [{"type": "text", "text": "OK"}], "end_turn"

    def _fill_ids(self, content: list[dict[str, Any]]) -> list[dict[str, Any]]:
        filled = []
        for block in content:
            block = dict(block)
            if block.get("type") == "tool_use" and not block.get("id"):
                block["id"] = f"toolu_fake{next(self._ids):06d}"
            filled.append(block)
        return filled


def _make_handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_fake = fake

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeAnthropic

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def handle(self) -> None:
        # A client that gave up (a timeout test) leaves nothing to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    # --- plumbing ----------------------------------------------------------------------
    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_fake{next(self.server_fake._ids):06d}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json_as_sse(self, message: dict[str, Any], options: dict[str, Any]) -> None:
        data = (options.get("lead", "") + json.dumps(message)).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("request-id", f"req_fake{next(self.server_fake._ids):06d}")
        if options.get("gzip"):
            data = gzip.compress(data)
            self.send_header("content-encoding", "gzip")
        size = int(options.get("chunk", 0))
        if not size:
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), size):
            self._chunk(data[start : start + size])
        self._chunk(b"")

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, sse.error_body(error_type, message), headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Drop the connection with no clean end: the client sees a broken transfer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- requests ----------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        fake = self.server_fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake.headers.append({k.lower(): v for k, v in self.headers.items()})
        path = self.path.split("?")[0]
        if path.endswith("count_tokens") and not fake.count_tokens_endpoint:
            return self._plain(404, "404 page not found")
        if path.endswith("count_tokens") and fake.count_tokens_status:
            return self._error(fake.count_tokens_status, "api_error", "tokenizer backend is down")
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self._error(404, "not_found_error", f"Not found: {path}")
        bearer = self.headers.get("authorization", "")
        key = self.headers.get("x-api-key") or (
            bearer[7:] if bearer.lower().startswith("bearer ") else ""
        )
        if key != fake.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not self.headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            return self._error(400, "invalid_request_error", "request body is not valid JSON")
        problem = validate(body, counting=path.endswith("count_tokens"))
        if problem:
            return self._error(400, "invalid_request_error", problem)
        if body["model"] in fake.unknown_models:
            return self._error(404, "not_found_error", f"model: {body['model']}")
        if path.endswith("count_tokens"):
            fake.count_requests.append(body)
            return self._send_json(200, {"input_tokens": fake.prompt_tokens(body)})
        fake.requests.append(body)
        self._messages(body, key)

    def _messages(self, body: dict[str, Any], key: str) -> None:
        fake = self.server_fake
        fault = fake._next_fault()
        kind, options = fault if fault else ("", {})
        if kind in ERROR_FAULTS or kind == "error":
            status, error_type, message = ERROR_FAULTS.get(kind, (500, "api_error", "error"))
            status = int(options.get("status", status))
            error_type = options.get("error_type", error_type)
            headers = {}
            if kind == "rate_limit" or "retry_after" in options:
                headers["retry-after"] = str(options.get("retry_after", 1))
            return self._error(status, error_type, options.get("message", message), headers)
        if kind == "drop" or (kind in STREAM_FAULTS and not body.get("stream")):
            return self._cut()
        try:
            plan = fake.cache.plan(body, workspace=key)  # looked up at arrival
        except RequestInvalid as exc:
            return self._error(400, "invalid_request_error", str(exc))
        if kind == "slow":
            time.sleep(float(options.get("delay_s", 2.0)))
        content, stop_reason = fake._reply_for(body, consume=kind not in STREAM_FAULTS)
        content = fake._fill_ids(content)
        usage = dict(plan.usage, output_tokens=sse.output_tokens(content))
        message_id = f"msg_fake{next(fake._ids):06d}"
        message = sse.message_json(message_id, body["model"], content, stop_reason, usage)
        fake.cache.commit(plan)  # the response starts now: its writes become readable
        fake.responses_usage.append(usage)
        if not body.get("stream") or kind == "json_for_stream":
            return self._send_json(200, message)
        if kind == "json_as_sse":
            return self._json_as_sse(message, options)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake{next(fake._ids):06d}")
        self.end_headers()
        for data in sse.start_events(message):
            self._chunk(data)
        if kind == "stream_cut":
            for data in itertools.islice(
                sse.body_events(message), int(options.get("after_events", 2))
            ):
                self._chunk(data)
            return self._cut()
        if kind == "sse_error":
            error_type = options.get("error_type", "overloaded_error")
            payload = sse.error_body(error_type, options.get("message", "Overloaded"))
            self._chunk(sse.event("error", payload))
            self._chunk(b"")
            self.close_connection = True
            return None
        if kind == "pings":  # alive but never answering: a ping every every_s for for_s
            every, until = float(options.get("every_s", 0.1)), float(options.get("for_s", 5.0))
            stop_at = time.monotonic() + until
            with contextlib.suppress(OSError):  # the client gives up and hangs up first
                while time.monotonic() < stop_at:
                    self._chunk(sse.event("ping", {"type": "ping"}))
                    time.sleep(every)
            return self._cut()
        if kind == "garbled":
            body_events = list(sse.body_events(message))
            self._chunk(body_events[0])  # content_block_start of block 0
            self._chunk(GARBLED_EVENTS[options.get("variant", "bad_json")])
            for data in itertools.chain(body_events[1:], sse.end_events(message)):
                self._chunk(data)
            self._chunk(b"")
            return None
        pause = float(options.get("chunk_delay_s", 0.0)) if kind == "slow" else 0.0
        for data in itertools.chain(sse.body_events(message), sse.end_events(message)):
            if pause:
                time.sleep(pause)
            self._chunk(data)
        self._chunk(b"")  # the zero-length chunk ends the body
        return None
