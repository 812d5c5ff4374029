"""Exact token counts from Anthropic's count_tokens endpoint (network; needs the API key)."""

from __future__ import annotations

from typing import Any

from foundry.errors import FoundryError


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
    except anthropic.NotFoundError:
        raise FoundryError(
            f"count_tokens: model '{model}' was not found (HTTP 404)", "check --model"
        ) from None
    except anthropic.APIStatusError as exc:
        raise FoundryError(
            f"count_tokens failed with HTTP {exc.status_code}", "try again, or leave out --exact"
        ) from None
    except anthropic.APIConnectionError:
        raise FoundryError(
            f"count_tokens: cannot reach {where}",
            "check the network or ANTHROPIC_BASE_URL, or leave out --exact",
        ) from None
    return max(0, int(with_system.input_tokens) - int(baseline.input_tokens))
