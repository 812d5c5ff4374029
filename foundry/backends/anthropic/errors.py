"""Anthropic failures → foundry's error classes, and what to tell the user about each."""

from __future__ import annotations

from foundry.backends.retry import retry_after_seconds

API_KEY_ENV = "ANTHROPIC_API_KEY"

# Mid-stream `error` events carry an error type instead of an HTTP status.
_ERROR_TYPES = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limited",
    "api_error": "server_error",
    "timeout_error": "timeout",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "not_found_error": "not_found",
    "invalid_request_error": "bad_request",
    "request_too_large": "context_too_long",
}
HINTS = {
    "authentication": f"the server rejected the key: check {API_KEY_ENV}",
    "permission": "this key has no access to the model or feature; check the model id and key",
    "not_found": "check the model id and the base URL (anthropic.base_url / ANTHROPIC_BASE_URL)",
    "bad_request": "the API rejected the request; run with FOUNDRY_DEBUG=1 for details",
    "context_too_long": "the conversation exceeds the model's context window; use a shorter "
    "task or a model with a larger window",
    "malformed_stream": "the server at the base URL (anthropic.base_url / ANTHROPIC_BASE_URL) "
    "or a proxy in between does not speak the Anthropic streaming format; check it",
}
GAVE_UP_HINT = (
    "retries exhausted; try again later, or raise anthropic.max_retries / "
    "anthropic.retry_budget_s in cache_config.json"
)


def classify_error(exc: BaseException, streaming_started: bool = False) -> tuple[str, float | None]:
    """(error_class, retry-after seconds) for an SDK or transport exception."""
    import anthropic
    import httpx2

    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return "timeout", None
    if isinstance(exc, anthropic.APIConnectionError | httpx2.HTTPError | httpx2.StreamError):
        return ("stream_interrupted" if streaming_started else "connection"), None
    if not isinstance(exc, anthropic.APIStatusError):
        return "server_error", None
    status, error_type = exc.status_code, exc.type or ""
    text = (exc.api_message or "").lower()
    too_long = "too long" in text or "context window" in text or "context length" in text
    if status == 200:  # an `error` event in the middle of a stream
        error_class = _ERROR_TYPES.get(error_type, "stream_interrupted")
        return ("context_too_long" if too_long else error_class), None
    retry_after = retry_after_seconds(exc.response.headers)
    by_status = {401: "authentication", 403: "permission", 404: "not_found", 408: "timeout"}
    if status in by_status:
        return by_status[status], None
    if status == 413 or (status in (400, 422) and too_long):
        return "context_too_long", None
    if status == 429:
        return "rate_limited", retry_after
    if status == 529 or error_type == "overloaded_error":
        return "overloaded", retry_after
    if status >= 500 or status == 409:
        return "server_error", retry_after
    return "bad_request", None
