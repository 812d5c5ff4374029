"""Claude through the official `anthropic` SDK, with real prompt-cache breakpoints.

The SDK is imported only in here (and only when a request is made), so `foundry --help`
never loads it. The SDK's own retries are off: foundry retries itself so it can classify
each failure, report every failed attempt's usage, and honour a total time budget.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from foundry.backends.anthropic.errors import (
    API_KEY_ENV,
    GAVE_UP_HINT,
    HINTS,
    classify_error,
)
from foundry.backends.anthropic.layout import build_layout, keepalive_request, map_usage
from foundry.backends.anthropic.stream import StreamState
from foundry.backends.base import (
    AttemptCallback,
    ModelRequest,
    ModelResponse,
    TextCallback,
)
from foundry.backends.endpoints import check_reachable, safe_url
from foundry.backends.retry import AttemptFailed, Attempts, RetryPolicy
from foundry.backends.streams import MalformedStream, decoded, whole_json_body
from foundry.config import FoundryConfig
from foundry.errors import BackendError, FoundryError
from foundry.usage import Usage

BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_BASE_URL = "https://api.anthropic.com"


def _stamp(response: ModelResponse, started_at: str) -> None:
    response.started_at = started_at


def _expire(stream: Any, expired: threading.Event) -> None:
    expired.set()
    stream.response.close()


class AnthropicBackend:
    name: ClassVar[str] = "anthropic"
    local: ClassVar[bool] = False

    def __init__(
        self,
        config: FoundryConfig,
        model: str,
        *,
        base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.model = model
        # --base-url, else ANTHROPIC_BASE_URL, else anthropic.base_url, else the API.
        self.base_url = (
            base_url
            or os.environ.get(BASE_URL_ENV)
            or config.anthropic.base_url
            or DEFAULT_BASE_URL
        ).rstrip("/")
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self.max_tokens = config.anthropic.max_tokens
        self._client: Any = None
        self._key: str | None = None

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        return config.backend.anthropic_model

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        return bool(os.environ.get(API_KEY_ENV, "").strip())

    @property
    def context_window(self) -> int | None:
        override = self.config.models.get(self.model)
        return override.context_window if override else None

    @property
    def endpoint(self) -> str | None:
        return self._safe_url()

    def keepalive_request(self, last: ModelRequest) -> ModelRequest | None:
        return keepalive_request(last)

    def __repr__(self) -> str:  # never the key
        return f"AnthropicBackend(model={self.model!r}, base_url={self._safe_url()!r})"

    # --- set-up ------------------------------------------------------------------------
    def _safe_url(self) -> str:
        return safe_url(self.base_url)

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
        """A model the pricing table knows (a typo is named, not sent), the key present and
        the server's port reachable (a TCP connect; no HTTP request)."""
        from foundry.pricing import PricingTable

        PricingTable(self.config).require(self.model)
        self._api_key()
        check_reachable(
            self.base_url,
            service="the Anthropic API",
            hint=f"check the network, or {BASE_URL_ENV} / anthropic.base_url",
            invalid_hint=f"set {BASE_URL_ENV} or anthropic.base_url to an http(s) URL with a "
            "valid port",
            label="Anthropic",
        )

    def _get_client(self) -> Any:
        if self._client is None:
            import anthropic

            key = self._api_key()
            self._client = anthropic.Anthropic(
                api_key=key,
                base_url=self.base_url,
                # The SDK sends only the bearer header; the API and many compatible servers
                # and proxies read x-api-key.
                default_headers={"x-api-key": key},
                max_retries=0,
                timeout=min(self.config.anthropic.timeout_s, self.config.anthropic.deadline_s),
            )
        return self._client

    def count_tokens(self, system: str) -> int:
        from foundry.backends.anthropic.count import count_system_tokens

        if not os.environ.get(API_KEY_ENV, "").strip():
            raise FoundryError(
                f"--exact needs an Anthropic API key: {API_KEY_ENV} is not set",
                f"export {API_KEY_ENV}, or leave out --exact for the offline estimate",
            )
        import anthropic

        # The SDK's own retries: a count is idempotent and nothing here is recorded.
        key = self._api_key()
        client = anthropic.Anthropic(
            api_key=key,
            base_url=self.base_url,
            default_headers={"x-api-key": key},
            timeout=min(self.config.anthropic.timeout_s, 60.0),
            max_retries=self.config.anthropic.max_retries,
        )
        try:
            return count_system_tokens(client, system, self.model, self._safe_url())
        finally:
            client.close()

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
        if request.tool_choice is not None:  # absent: the API's default, and existing bodies
            params["tool_choice"] = request.tool_choice.to_anthropic()
        if request.temperature is not None:  # not a typed argument in SDK 2.12
            params["extra_body"] = {"temperature": request.temperature}
        return params

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,  # accepted; a Claude request runs to its end
    ) -> ModelResponse:
        client = self._get_client()
        params = self.params(request)
        settings = self.config.anthropic
        policy = RetryPolicy(settings.max_retries, settings.retry_budget_s, rng=self._rng)
        attempts = Attempts(policy, "Anthropic", HINTS, GAVE_UP_HINT, self._sleep, self._clock)
        return attempts.run(
            lambda: self._attempt(client, params, request, on_text),
            on_failed_attempt,
            on_success=_stamp,
        )

    def _attempt(
        self,
        client: Any,
        params: dict[str, Any],
        request: ModelRequest,
        on_text: TextCallback | None,
    ) -> ModelResponse:
        import anthropic
        import httpx2

        state = StreamState()
        request_id: str | None = None
        deadline_s = self.config.anthropic.deadline_s
        expired = threading.Event()
        try:
            with client.messages.create(**params, stream=True) as stream:
                request_id = stream.response.headers.get("request-id")
                # The SDK swallows pings, so no event may arrive while a server keeps the
                # socket alive: a timer closes the response at the deadline instead.
                left_s = max(deadline_s - state.elapsed_ms / 1000, 0.0)
                timer = threading.Timer(left_s, _expire, (stream, expired))
                timer.daemon = True
                timer.start()
                try:
                    whole = whole_json_body(stream.response)
                    if whole is not None:  # a proxy's whole Message: used, usage and all
                        return self._whole_message(whole, state, request, request_id, on_text)
                    for event in decoded(stream, "an event"):
                        text = state.handle(event)
                        if text and on_text is not None:
                            on_text(text)
                finally:
                    timer.cancel()
        except (anthropic.APIError, httpx2.HTTPError, httpx2.StreamError, MalformedStream) as exc:
            if expired.is_set():  # whatever the cut-off stream looked like, it was the deadline
                raise self._past_deadline(state, request, request_id) from None
            if isinstance(exc, MalformedStream):
                raise AttemptFailed(
                    "malformed_stream",
                    f"the server sent a stream that is not the Anthropic API's: {exc}",
                    self._usage(state, request),
                    request_id,
                ) from None
            error_class, retry_after = classify_error(
                exc, streaming_started=state.start_usage is not None
            )
            request_id = request_id or getattr(exc, "request_id", None)
            detail = getattr(exc, "api_message", None) or str(exc) or type(exc).__name__
            raise AttemptFailed(
                error_class,
                self._scrub(detail),
                self._usage(state, request),
                request_id,
                retry_after,
            ) from None
        if expired.is_set() and not state.stopped:  # a whole reply just in time still counts
            raise self._past_deadline(state, request, request_id)
        if not state.stopped:
            raise AttemptFailed(
                "stream_interrupted",
                "the stream ended before message_stop",
                self._usage(state, request),
                request_id,
            )
        usage = self._usage(state, request)
        content = [state.blocks[i] for i in sorted(state.blocks)]
        return ModelResponse(
            content=content,
            stop_reason=state.stop_reason,
            usage=usage,
            model=state.model or params["model"],
            request_id=request_id or state.message_id,
        )

    def _whole_message(
        self,
        body: bytes,
        state: StreamState,
        request: ModelRequest,
        request_id: str | None,
        on_text: TextCallback | None,
    ) -> ModelResponse:
        try:
            message = json.loads(body)
            content = [dict(block) for block in message["content"]]
            usage = map_usage(message["usage"], None, request.ttl)
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedStream(f"a JSON body that is not a Message ({exc!r})") from None
        text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
        if text and on_text is not None:
            on_text(text)
        usage.ttft_ms = usage.duration_ms = state.elapsed_ms
        return ModelResponse(
            content=content,
            stop_reason=message.get("stop_reason"),
            usage=usage,
            model=message.get("model") or request.model or self.model,
            request_id=request_id or message.get("id"),
        )

    def _past_deadline(
        self, state: StreamState, request: ModelRequest, request_id: str | None
    ) -> AttemptFailed:
        deadline_s = self.config.anthropic.deadline_s
        return AttemptFailed(
            "timeout",
            f"no complete response within {deadline_s:g} s (anthropic.deadline_s)",
            self._usage(state, request),
            request_id,
        )

    @staticmethod
    def _usage(state: StreamState, request: ModelRequest) -> Usage:
        """What the attempt reported so far, and how long it took (failed ones too)."""
        usage = map_usage(state.start_usage, state.final_usage, request.ttl)
        usage.ttft_ms = state.ttft_ms
        usage.duration_ms = state.elapsed_ms
        return usage
