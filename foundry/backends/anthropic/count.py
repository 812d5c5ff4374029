"""Exact token counts from Anthropic's count_tokens endpoint (network; needs the API key)."""

from __future__ import annotations

from typing import Any

from foundry.errors import FoundryError


class ExactCountUnavailable(FoundryError):
    """The server cannot count tokens at all (no endpoint): estimating is the honest answer."""


def _names_the_model(exc: Any) -> bool:
    """A 404 about the model (the API's not_found_error says `model: <id>`), not a server
    without the endpoint (a bare 404 page)."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return isinstance(message, str) and "model" in message.lower()


def count_system_tokens(client: Any, system: str, model: str, where: str) -> int:
    """Exact tokens that `system` adds to a request for `model`.

    The endpoint needs at least one message, so this counts a one-character user message
    with and without the system prompt and returns the difference: two requests, and the
    figure is the system text alone (framing tokens included), as it will be cached.
    """
    import anthropic

    messages = [{"role": "user", "content": "."}]
    try:
        with_system = client.messages.count_tokens(model=model, system=system, messages=messages)
        baseline = client.messages.count_tokens(model=model, messages=messages)
    except anthropic.AuthenticationError:
        raise FoundryError(
            "count_tokens: the API key was rejected (HTTP 401)", "check ANTHROPIC_API_KEY"
        ) from None
    except anthropic.NotFoundError as exc:
        if _names_the_model(exc):
            raise FoundryError(
                f"count_tokens: model '{model}' was not found (HTTP 404)", "check --model"
            ) from None
        raise ExactCountUnavailable(
            f"the server at {where} has no count_tokens endpoint (HTTP 404)",
            "leave out --exact for the offline estimate, or point ANTHROPIC_BASE_URL at the API",
        ) from None
    except anthropic.APIStatusError as exc:
        reason = getattr(exc, "api_message", None) or ""
        raise FoundryError(
            f"count_tokens failed with HTTP {exc.status_code}" + (f": {reason}" if reason else ""),
            "try again, or leave out --exact",
        ) from None
    except anthropic.APIConnectionError:
        raise FoundryError(
            f"count_tokens: cannot reach {where}",
            "check the network or ANTHROPIC_BASE_URL, or leave out --exact",
        ) from None
    return max(0, int(with_system.input_tokens) - int(baseline.input_tokens))
