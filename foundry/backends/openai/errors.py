"""OpenAI-compatible failures → foundry's error classes (the Claude backend's vocabulary),
and what to tell the user about each. Servers differ in how they say the same thing, so the
status code decides first and the error's code and wording refine it."""

from __future__ import annotations

import re
from typing import Any

from foundry.backends.retry import retry_after_seconds

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"

# vLLM: "This model's maximum context length is 2048 tokens"; OpenAI: code
# context_length_exceeded; llama.cpp: "the request exceeds the available context size";
# SGLang: "... is longer than the model's context length"; LM Studio: "... context overflow".
_TOO_LONG = re.compile(
    r"context[ _](length|window|size|overflow)|maximum context|too long|too many tokens|n_ctx",
    re.IGNORECASE,
)
# What servers say when they do not do function calling: vLLM without
# --enable-auto-tool-choice, llama.cpp without --jinja, Ollama for a model without tools.
TOOLS_REFUSED = re.compile(
    r"tool[ _-]?(choice|call|calling|parser|use)|\btools?\b.*(not supported|unsupported|--jinja)"
    r"|does not support tools|--enable-auto-tool-choice",
    re.IGNORECASE,
)
# OpenAI's newer models refuse max_tokens and want max_completion_tokens.
MAX_TOKENS_REFUSED = re.compile(r"max_completion_tokens", re.IGNORECASE)

HINTS = {
    "authentication": (
        f"the server rejected the key: set {API_KEY_ENV} (a local server started without an "
        "API key needs none)"
    ),
    "permission": (
        "this key may not use the model, or the account has no credit left: check the key, "
        "the model id and the account"
    ),
    "not_found": (
        "the server has no such model or endpoint: check --model (`foundry models list "
        "--base-url URL` lists them) and that the base URL ends where the API starts "
        "(usually .../v1)"
    ),
    "context_too_long": (
        "the conversation outgrew the model's context window: give the server a longer "
        "context (vLLM --max-model-len, llama.cpp -c, Ollama num_ctx) or use fewer turns "
        "per phase (--max-turns)"
    ),
    "bad_request": (
        "the server refused the request: its log says why; if it cannot do function "
        'calling, set openai.tool_format to "text" in cache_config.json'
    ),
    "malformed_stream": (
        "the server's stream is not the Chat Completions format: check that the base URL "
        "points at its OpenAI-compatible API (usually .../v1)"
    ),
    "connection": (f"is the server running? check --base-url, {BASE_URL_ENV} or openai.base_url"),
    "timeout": (
        "a server that is slow to start a reply (a long prefill on a busy machine) needs a "
        "longer openai.timeout_s (no byte for that long, off loopback) or openai.deadline_s "
        "(no part of a reply for that long) in cache_config.json"
    ),
}
GAVE_UP_HINT = (
    "retries exhausted; try again later, or raise openai.max_retries / openai.retry_budget_s "
    "in cache_config.json"
)


def error_text(exc: Any) -> str:
    """The server's own words: the error body's message, else the exception's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message
    return str(getattr(exc, "message", "") or exc) or type(exc).__name__


def _error_code(exc: Any) -> str:
    code = getattr(exc, "code", None)
    body = getattr(exc, "body", None)
    if not code and isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code") or inner.get("type")
    return str(code or "")


def classify_status(status: int | None, code: str, text: str) -> str:
    """The error class for an HTTP status (None: an error sent inside the stream)."""
    if code == "context_length_exceeded" or (
        status in (None, 400, 413, 422, 500) and _TOO_LONG.search(text)
    ):
        return "context_too_long"
    if status is None:  # mid-stream: only the body says what happened
        if "rate" in code or "429" in code:
            return "rate_limited"
        if "overload" in code or "503" in code or "unavailable" in code:
            return "overloaded"
        return "server_error"
    by_status = {401: "authentication", 403: "permission", 404: "not_found", 408: "timeout"}
    if status in by_status:
        return by_status[status]
    if status == 413:
        return "context_too_long"
    if status == 429:
        # Out of credit is not a rate limit: waiting does not help, so it is not retried.
        return "permission" if code == "insufficient_quota" else "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status >= 500 or status == 409:
        return "server_error"
    return "bad_request"


def read_timed_out(exc: BaseException) -> bool:
    """A read limit ran out: raw mid-stream, wrapped in APITimeoutError before the headers."""
    import httpx2

    return isinstance(exc, httpx2.ReadTimeout) or isinstance(exc.__cause__, httpx2.ReadTimeout)


def classify_error(exc: BaseException, streaming_started: bool = False) -> tuple[str, float | None]:
    """(error_class, retry-after seconds) for an SDK or transport exception."""
    import httpx2
    import openai

    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return "timeout", None
    if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError | httpx2.StreamError):
        return ("stream_interrupted" if streaming_started else "connection"), None
    if isinstance(exc, openai.APIResponseValidationError):
        return "malformed_stream", None
    if isinstance(exc, openai.APIStatusError):
        error_class = classify_status(exc.status_code, _error_code(exc), error_text(exc))
        return error_class, retry_after_seconds(exc.response.headers)
    if isinstance(exc, openai.APIError):  # an error object sent inside the stream
        return classify_status(None, _error_code(exc), error_text(exc)), None
    return "server_error", None
