"""Any OpenAI-compatible Chat Completions server through the official `openai` SDK.

Requests stream with `stream_options.include_usage`, so the last chunk carries the usage,
with the server's cached prompt tokens where it reports them. The SDK's own retries are off:
foundry retries itself (foundry.backends.retry.Attempts) so it can classify each failure,
record every failed attempt, and honour a total time budget.

Whether requests cost money depends on the endpoint, not on this class: a server on
loopback or a private network is local (free; what its cache saves is prefill time) unless
its model has prices under `models` in cache_config.json; a public host is metered at those
prices, or unpriced (NULL cost and a warning) without them. `openai.local` says it outright.

An attempt is judged by its progress, never by a total: a cold prefill on a busy machine
outlasted the 900 s total foundry once allowed. A server off loopback that sends no byte for
`openai.timeout_s` (keep-alive comments count) is a timeout; a loopback server may prefill
in silence while its connection stays open (were it gone, the kernel would close that at
once). On any server, `openai.deadline_s` without a part of the reply is the last resort.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from foundry import console
from foundry.backends.base import (
    AttemptCallback,
    ModelRequest,
    ModelResponse,
    TextCallback,
)
from foundry.backends.openai import endpoint
from foundry.backends.openai.errors import (
    GAVE_UP_HINT,
    HINTS,
    MAX_TOKENS_REFUSED,
    TOOLS_REFUSED,
    classify_error,
    error_text,
    read_timed_out,
)
from foundry.backends.openai.messages import ToolFormat, reply_blocks, request_params
from foundry.backends.openai.stream import StreamState, map_usage
from foundry.backends.retry import AttemptFailed, Attempts, RetryPolicy
from foundry.backends.streams import MalformedStream, Watchdog, decoded, whole_json_body
from foundry.config import FoundryConfig
from foundry.errors import UsageError
from foundry.usage import Usage

log = logging.getLogger(__name__)
# The model a build uses when neither --model nor backend.openai_model names one: check()
# asks the server, which usually serves exactly one.
SERVER_MODEL = "(the server's model)"
RATE_SAMPLE_MIN_TOKENS = 64  # prefill rates from fewer tokens are mostly overhead
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class OpenAIBackend:
    name: ClassVar[str] = "openai"
    local: bool = False  # the registry's word; each instance decides from its endpoint

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
        self.settings = config.openai
        self.base_url = endpoint.resolve_base_url(config, base_url)
        self.model = model
        self.max_tokens = self.settings.max_tokens
        self.tool_format: ToolFormat = "text" if self.settings.tool_format == "text" else "native"
        self._max_tokens_field = "max_tokens"
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._client: Any = None
        self._prefill_rate: float | None = None  # the best measured: what reuse saves
        self._listed_window: int | None = None
        self._warned_no_usage = False
        self._checked = False
        self.local = self._decide_local()
        # Whether a silent server is still at work while its connection is open (tests
        # set it to stand the loopback test server in for one on another machine).
        self.loopback = endpoint.is_loopback_url(self.base_url)

    # -- capabilities ------------------------------------------------------------------------

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        return config.backend.openai_model or SERVER_MODEL

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        import os

        return bool(os.environ.get(endpoint.BASE_URL_ENV, "").strip() or config.openai.base_url)

    @property
    def context_window(self) -> int | None:
        override = self.config.models.get(self.model)
        if override is not None and override.context_window:
            return override.context_window
        return self._listed_window

    @property
    def endpoint(self) -> str | None:
        return endpoint.safe_url(self.base_url)

    def keepalive_request(self, last: ModelRequest) -> ModelRequest | None:
        return None  # these servers evict by memory pressure, not on a clock

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.endpoint!r})"

    def _decide_local(self) -> bool:
        if self.settings.local is not None:
            return self.settings.local
        if not endpoint.is_private_host(self.base_url):
            return False
        from foundry.pricing import PricingTable

        price = PricingTable(self.config).get(self.model)
        return price is None or not price.priced  # a priced model is metered, even nearby

    # -- set-up ------------------------------------------------------------------------------

    def check(self) -> None:
        """The server's port answers; a model is named, or the server serves exactly one."""
        if self._checked:
            return
        endpoint.check_reachable(self.base_url)
        if self.model == SERVER_MODEL:
            self.model = self._only_model()
            self.local = self._decide_local()
        self._checked = True

    def _only_model(self) -> str:
        models = endpoint.list_models(self.base_url)
        where = endpoint.safe_url(self.base_url)
        if len(models) == 1:
            window = models[0].get("max_model_len")  # vLLM says it; others do not
            self._listed_window = window if isinstance(window, int) and window > 0 else None
            return str(models[0]["id"])
        if not models:
            raise UsageError(f"the server at {where} lists no models", "name one with --model")
        names = ", ".join(m["id"] for m in models[:5]) + (", ..." if len(models) > 5 else "")
        raise UsageError(
            f"the server at {where} serves {len(models)} models ({names})",
            "choose one with --model, or set backend.openai_model in cache_config.json",
        )

    def count_tokens(self, system: str) -> int:
        """Exact for this server: `system` through its own /tokenize (text only)."""
        model = "" if self.model == SERVER_MODEL else self.model
        return endpoint.count_tokens(self.base_url, model, system)

    def _get_client(self) -> Any:
        if self._client is None:
            timeout_s = min(self.settings.timeout_s, self.settings.deadline_s)
            self._client = endpoint.make_client(self.base_url, timeout_s=timeout_s)
        return self._client

    def _timeout(self) -> Any:
        """One attempt's socket limits. The read limit is the idle limit: no byte for that
        long. On loopback it is the last resort instead, so a prefill that sends nothing
        before its headers (or between them and its first chunk) is not cut."""
        import httpx2

        limit_s = min(self.settings.timeout_s, self.settings.deadline_s)
        return httpx2.Timeout(limit_s, read=self.settings.deadline_s if self.loopback else limit_s)

    def _scrub(self, text: str) -> str:
        key = endpoint.api_key()
        return text.replace(key, "[redacted]") if key else text

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- requests ----------------------------------------------------------------------------

    def params(self, request: ModelRequest) -> dict[str, Any]:
        """The SDK arguments for a request, as this server gets them now."""
        return request_params(
            request,
            model=self.model,
            tool_format=self.tool_format,
            max_tokens_field=self._max_tokens_field,
        )

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ModelResponse:
        """One request, retried within the policy; `cancel` stops it between chunks."""
        client = self._get_client()
        settings = self.settings
        attempts = Attempts(
            policy=RetryPolicy(settings.max_retries, settings.retry_budget_s, rng=self._rng),
            service=f"OpenAI-compatible ({self.endpoint})",
            hints=HINTS,
            gave_up_hint=GAVE_UP_HINT,
            sleep=self._sleep,
            clock=self._clock,
        )

        def started(response: ModelResponse, started_at: str) -> None:
            response.started_at = started_at

        return attempts.run(
            lambda: self._attempt(client, request, on_text, cancel), on_failed_attempt, started
        )

    def _attempt(
        self,
        client: Any,
        request: ModelRequest,
        on_text: TextCallback | None,
        cancel: threading.Event | None = None,
    ) -> ModelResponse:
        import httpx2
        import openai

        state = StreamState()
        request_id: str | None = None
        expired = threading.Event()
        try:
            params = self.params(request)
            with client.chat.completions.create(**params, timeout=self._timeout()) as stream:
                request_id = stream.response.headers.get("x-request-id")
                with Watchdog(
                    self.settings.deadline_s,
                    stream.response.close,
                    already_s=state.elapsed_ms / 1000,
                ) as watchdog:
                    expired = watchdog.expired
                    # A proxy's whole chat.completion is the reply, usage and all: the SDK
                    # would find no chunks in it, and a retry would be billed again.
                    whole = whole_json_body(stream.response)
                    for chunk in decoded(stream, "a chunk") if whole is None else [whole]:
                        if cancel is not None and cancel.is_set():
                            raise AttemptFailed("cancelled", "the request was cancelled")
                        outputs = state.outputs
                        text = state.handle(chunk) if whole is None else state.take_whole(chunk)
                        if state.outputs > outputs:
                            watchdog.progress()
                        if text and on_text is not None:
                            on_text(text)
            calls = state.tool_calls()
        except (openai.APIError, httpx2.HTTPError, httpx2.StreamError, MalformedStream) as exc:
            silent = read_timed_out(exc)
            # However the cut-off stream looked, it was the last resort (a loopback server's
            # read limit is that too); off loopback, a silent server met the idle limit.
            last_resort = self.loopback or self.settings.deadline_s < self.settings.timeout_s
            if expired.is_set() or silent:
                idle = silent and not last_resort and not expired.is_set()
                raise self._timed_out(state, request_id, idle=idle) from None
            if isinstance(exc, MalformedStream):
                raise AttemptFailed(
                    "malformed_stream",
                    f"the server sent a stream that is not Chat Completions: {exc}",
                    self._usage(state),
                    request_id,
                ) from None
            adapted = self._adapt(exc, request)
            if adapted:
                raise AttemptFailed("bad_request", adapted, retry_now=True) from None
            error_class, retry_after = classify_error(exc, streaming_started=state.started)
            raise AttemptFailed(
                error_class,
                self._scrub(error_text(exc)),
                self._usage(state),
                request_id or getattr(exc, "request_id", None),
                retry_after,
            ) from None
        if expired.is_set():
            raise self._timed_out(state, request_id)
        if state.finish_reason is None:
            raise AttemptFailed(
                "stream_interrupted",
                "the stream ended before the reply did (no finish_reason)",
                self._usage(state),
                request_id,
            )
        content, as_text = reply_blocks(state.text, calls, request)
        if as_text and self.tool_format == "native" and self.settings.tool_format == "auto":
            # The model writes <tool_call> text: it did not see the tools natively (the server
            # dropped them), so from now on it gets the schemas in the system text.
            log.warning("the model answered with text tool calls; using the text tool format")
            self.tool_format = "text"
        calls_made = any(block["type"] == "tool_use" for block in content)
        stop = "tool_use" if calls_made else STOP_REASONS.get(state.finish_reason)
        return ModelResponse(
            content=content,
            stop_reason=stop or state.finish_reason,
            usage=self._usage(state, final=True),
            model=state.model or self.model,
            request_id=request_id or state.response_id,
        )

    def _timed_out(
        self, state: StreamState, request_id: str | None, idle: bool = False
    ) -> AttemptFailed:
        settings = self.settings
        message = (
            f"the server sent nothing for {settings.timeout_s:g} s (openai.timeout_s, the idle "
            "limit for a server that is not on loopback)"
            if idle
            else f"no part of a reply for {settings.deadline_s:g} s though the server kept "
            "the connection open (openai.deadline_s, the last resort)"
        )
        return AttemptFailed("timeout", message, self._usage(state), request_id)

    def _adapt(self, exc: BaseException, request: ModelRequest) -> str | None:
        """Change what is sent when the server refused a feature, once; say what changed."""
        import openai

        if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 422, 500):
            return None
        text = self._scrub(error_text(exc))[:200]
        if (
            request.tools
            and self.tool_format == "native"
            and self.settings.tool_format == "auto"
            and TOOLS_REFUSED.search(text)
        ):
            self.tool_format = "text"
            log.warning("the server refused function calling; using the text tool format")
            return f"the server refused function calling ({text}); retrying in text format"
        if self._max_tokens_field == "max_tokens" and MAX_TOKENS_REFUSED.search(text):
            self._max_tokens_field = "max_completion_tokens"
            return f"the server refused max_tokens ({text}); retrying with max_completion_tokens"
        return None

    def _usage(self, state: StreamState, final: bool = False) -> Usage:
        """What the attempt reported, with its timings, rates and the prefill time saved."""
        try:
            usage = map_usage(state.usage, state.timings)
        except MalformedStream:
            usage = None
        if usage is None:
            if final and not self._warned_no_usage:
                self._warned_no_usage = True
                console.warning(
                    f"the server at {self.endpoint} reports no token usage in its stream "
                    "(stream_options.include_usage), so the ledger records 0 tokens for its "
                    "requests"
                )
            usage = Usage()
        usage.ttft_ms, usage.duration_ms = state.ttft_ms, state.elapsed_ms
        timings = state.timings or {}
        rate = _positive(timings.get("prompt_per_second"))
        prefilled = usage.input_tokens + usage.cache_write_tokens
        ttft_s = (state.ttft_ms or 0) / 1000
        # A whole reply arrives at once: its time to first token is all of it, so neither
        # rate can be estimated (a server's own timings still count).
        estimate = not state.whole
        if rate is None and estimate and not usage.cache_read_unknown_tokens and ttft_s > 0:
            # Time to first token is mostly prefill; a few tokens are mostly overhead.
            rate = prefilled / ttft_s if prefilled >= RATE_SAMPLE_MIN_TOKENS else None
        if rate is not None:
            usage.prefill_tokens_per_s = rate
            self._prefill_rate = max(rate, self._prefill_rate or 0.0)
        usage.generation_tokens_per_s = _positive(timings.get("predicted_per_second"))
        decode_s = (state.elapsed_ms - (state.ttft_ms or 0)) / 1000
        if (
            usage.generation_tokens_per_s is None
            and estimate
            and usage.output_tokens > 1
            and decode_s > 0
        ):
            usage.generation_tokens_per_s = (usage.output_tokens - 1) / decode_s
        if self.local:  # what the server's cache saved, at the best prefill rate measured
            usage.prefill_saved_ms = _saved_ms(usage.cache_read_tokens, self._prefill_rate)
        return usage


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _saved_ms(reused: int, rate: float | None) -> float | None:
    """Prefill time `reused` cached tokens saved at `rate` tokens/s; None while unmeasured."""
    if not reused:
        return 0.0
    return reused / rate * 1000 if rate else None
