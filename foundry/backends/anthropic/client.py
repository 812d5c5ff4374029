"""Claude through the official `anthropic` SDK, with real prompt-cache breakpoints.

The SDK is imported only in here (and only when a request is made), so `foundry --help`
never loads it. The SDK's own retries are off: foundry retries itself so it can classify
each failure, report every failed attempt's usage, and honour a total time budget.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from foundry.backends.anthropic.errors import (
    API_KEY_ENV,
    GAVE_UP_HINT,
    HINTS,
    classify_error,
)
from foundry.backends.anthropic.layout import build_layout, keepalive_request, map_usage
from foundry.backends.base import (
    AttemptCallback,
    FailedAttempt,
    ModelRequest,
    ModelResponse,
    TextCallback,
    Usage,
)
from foundry.backends.retry import RETRYABLE, RetryPolicy
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from foundry.timestamps import utc_now

__all__ = ["AnthropicBackend", "keepalive_request", "map_usage", "classify_error"]

BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_BASE_URL = "https://api.anthropic.com"
CONNECT_CHECK_TIMEOUT_S = 5.0


class _AttemptFailed(Exception):
    def __init__(
        self,
        error_class: str,
        message: str,
        usage: Usage,
        request_id: str | None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.usage = usage
        self.request_id = request_id
        self.retry_after = retry_after


class _MalformedStream(Exception):
    """The server sent a stream the real API never would (retried; its own hint if it stays)."""


def _field(obj: Any, name: str, where: str, kind: type = object) -> Any:
    """A field the API always sends; missing or of the wrong type, the stream is not the API's."""
    value = getattr(obj, name, None)
    if value is None or not isinstance(value, kind):
        raise _MalformedStream(f"{where} event without a valid {name!r}")
    return value


def _events(stream: Any) -> Any:
    """The SDK's events; data that is not JSON is a malformed stream, not a crash."""
    iterator = iter(stream)
    while True:
        try:
            event = next(iterator)
        except StopIteration:
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _MalformedStream(
                f"an event that is not JSON ({exc.__class__.__name__})"
            ) from None
        yield event


class _Stream:
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
        real API would never send (a proxy's, a "compatible" server's) is _MalformedStream."""
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
                    raise _MalformedStream(f"a text delta for block {index!r}, no text block")
                text = _field(delta, "text", "a text delta", str)
                block["text"] += text
                return text
            if delta.type == "input_json_delta":
                if index not in self.json_parts:
                    raise _MalformedStream(f"a tool input delta for block {index!r}, no tool")
                self.json_parts[index].append(_field(delta, "partial_json", "a delta", str))
        elif kind == "content_block_stop" and getattr(event, "index", None) in self.json_parts:
            raw = "".join(self.json_parts.pop(event.index))
            try:
                self.blocks[event.index]["input"] = json.loads(raw) if raw else {}
            except ValueError:
                raise _MalformedStream("a tool_use input arrived as invalid JSON") from None
        elif kind == "message_delta":
            self.stop_reason = getattr(_field(event, "delta", kind), "stop_reason", None)
            self.final_usage = _field(event, "usage", kind).model_dump()
        elif kind == "message_stop":
            self.stopped = True
        return None

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000


class AnthropicBackend:
    name = "anthropic"

    def __init__(
        self,
        config: FoundryConfig,
        model: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.model = model
        self.base_url = (
            os.environ.get(BASE_URL_ENV) or config.anthropic.base_url or DEFAULT_BASE_URL
        ).rstrip("/")
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._client: Any = None
        self._key: str | None = None

    def __repr__(self) -> str:  # never the key
        return f"AnthropicBackend(model={self.model!r}, base_url={self._safe_url()!r})"

    # --- set-up ------------------------------------------------------------------------
    def _safe_url(self) -> str:
        """The base URL without credentials or query (a key could hide there)."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2] or '?'}{parts.path}"

    def _endpoint(self) -> tuple[str, int]:
        """(host, port) of the base URL, or a BackendError naming what is wrong with it."""
        parts = urlsplit(self.base_url)
        try:
            if parts.scheme in ("http", "https") and parts.hostname:
                return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # urllib's "Port out of range" / "could not be cast"
            pass
        raise BackendError(
            f"invalid Anthropic base URL {self._safe_url()!r}",
            f"set {BASE_URL_ENV} or anthropic.base_url to an http(s) URL with a valid port",
            error_class="connection",
        )

    def _api_key(self) -> str:
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise BackendError(
                f"{API_KEY_ENV} is not set; the anthropic backend needs an API key",
                f"export {API_KEY_ENV}=... (or use --backend mlx for a local model)",
                error_class="authentication",
            )
        self._key = key
        return key

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def check(self) -> None:
        """Key present and the server's port reachable (a TCP connect; no HTTP request)."""
        self._api_key()
        endpoint = self._endpoint()
        try:
            socket.create_connection(endpoint, timeout=CONNECT_CHECK_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:  # ValueError: an un-encodable host name
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BackendError(
                f"cannot reach the Anthropic API at {self._safe_url()} ({reason})",
                f"check the network, or {BASE_URL_ENV} / anthropic.base_url",
                error_class="connection",
            ) from None

    def _get_client(self) -> Any:
        if self._client is None:
            import anthropic

            self._client = anthropic.Anthropic(
                api_key=self._api_key(),
                base_url=self.base_url,
                max_retries=0,
                timeout=self.config.anthropic.timeout_s,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- requests ----------------------------------------------------------------------
    def params(self, request: ModelRequest) -> dict[str, Any]:
        """The SDK arguments for a request (never sharing dicts with the caller's request)."""
        layout = build_layout(request)
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "max_tokens": request.max_tokens,
            "messages": layout.messages,
        }
        if layout.tools:
            params["tools"] = layout.tools
        if layout.system:
            params["system"] = layout.system
        if request.temperature is not None:  # not a typed argument in SDK 2.12
            params["extra_body"] = {"temperature": request.temperature}
        return params

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
    ) -> ModelResponse:
        client = self._get_client()
        params = self.params(request)
        settings = self.config.anthropic
        policy = RetryPolicy(settings.max_retries, settings.retry_budget_s, rng=self._rng)
        first = self._clock()
        retries = 0
        while True:
            started_at = utc_now()
            try:
                response = self._attempt(client, params, request, on_text)
                response.started_at = started_at
                return response
            except _AttemptFailed as failure:
                delay = policy.next_delay(
                    error_class=failure.error_class,
                    retries_done=retries,
                    elapsed_s=self._clock() - first,
                    retry_after_s=failure.retry_after,
                )
                if on_failed_attempt is not None:
                    on_failed_attempt(
                        FailedAttempt(
                            error_class=failure.error_class,
                            message=failure.message,
                            usage=failure.usage,
                            request_id=failure.request_id,
                            started_at=started_at,
                            will_retry=delay is not None,
                        )
                    )
                if delay is None:
                    retryable = failure.error_class in RETRYABLE
                    attempts = f" after {retries + 1} attempts" if retries else ""
                    what = f"Anthropic request failed ({failure.error_class}){attempts}"
                    raise BackendError(
                        f"{what}: {failure.message}",
                        HINTS.get(failure.error_class) or (GAVE_UP_HINT if retryable else None),
                        error_class=failure.error_class,
                        retryable=retryable,
                    ) from None
                self._sleep(delay)
                retries += 1

    def _attempt(
        self,
        client: Any,
        params: dict[str, Any],
        request: ModelRequest,
        on_text: TextCallback | None,
    ) -> ModelResponse:
        import anthropic
        import httpx2

        state = _Stream()
        request_id: str | None = None
        try:
            with client.messages.create(**params, stream=True) as stream:
                request_id = stream.response.headers.get("request-id")
                for event in _events(stream):
                    text = state.handle(event)
                    if text and on_text is not None:
                        on_text(text)
        except (anthropic.APIError, httpx2.HTTPError, httpx2.StreamError) as exc:
            error_class, retry_after = classify_error(
                exc, streaming_started=state.start_usage is not None
            )
            request_id = request_id or getattr(exc, "request_id", None)
            detail = getattr(exc, "api_message", None) or str(exc) or type(exc).__name__
            raise _AttemptFailed(
                error_class,
                self._scrub(detail),
                self._usage(state, request),
                request_id,
                retry_after,
            ) from None
        except _MalformedStream as exc:
            raise _AttemptFailed(
                "malformed_stream",
                f"the server sent a stream that is not the Anthropic API's: {exc}",
                self._usage(state, request),
                request_id,
            ) from None
        if not state.stopped:
            raise _AttemptFailed(
                "stream_interrupted",
                "the stream ended before message_stop",
                self._usage(state, request),
                request_id,
            )
        usage = self._usage(state, request)
        usage.duration_ms = state.elapsed_ms
        content = [state.blocks[i] for i in sorted(state.blocks)]
        return ModelResponse(
            content=content,
            stop_reason=state.stop_reason,
            usage=usage,
            model=state.model or params["model"],
            request_id=request_id or state.message_id,
        )

    @staticmethod
    def _usage(state: _Stream, request: ModelRequest) -> Usage:
        usage = map_usage(state.start_usage, state.final_usage, request.ttl)
        usage.ttft_ms = state.ttft_ms
        return usage
