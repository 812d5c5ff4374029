"""Issue 22: `foundry serve` says why a reply ended as the Messages API does. A reply runs to
the client's max_tokens, bounded only by the model's window (stop_reason
model_context_window_exceeded there); `max_tokens` means a limit someone set was reached;
the loop guard's stop is an end_turn. Through the real anthropic SDK and the real server."""

from __future__ import annotations

import pytest

from tests.serve_helpers import SYSTEM, serving, system_blocks

pytestmark = pytest.mark.mlx
MESSAGES = [{"role": "user", "content": "Build a todo app"}]


def _ask(served, max_tokens: int, **extra):
    client = served.client()
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-6", system=system_blocks(), messages=MESSAGES
    ).input_tokens
    reply = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=max_tokens,
        system=system_blocks(),
        messages=MESSAGES,
        timeout=300,  # the SDK asks for one (or a stream) with a max_tokens this high
        **extra,
    )
    return counted, reply


def test_the_clients_max_tokens_is_max_tokens(server, script) -> None:
    script.endless = True
    _, reply = _ask(server, 6)
    assert (reply.stop_reason, reply.usage.output_tokens) == ("max_tokens", 6)


def test_a_long_reply_runs_past_the_engines_build_cap_to_the_window(
    tiny_model_dir, tmp_path, script
) -> None:
    """Claude Code asks for 64,000 tokens: the engine's max_tokens (a build setting, here
    16) does not cut the reply; the window does, and says so."""
    script.endless = True
    with serving(tiny_model_dir, tmp_path, mlx={"max_tokens": 16}) as served:
        prompt, reply = _ask(served, 64_000)
        window = served.backend.context_window
        assert reply.stop_reason == "model_context_window_exceeded"
        assert reply.usage.output_tokens == window - prompt
        (row,) = served.ledger_rows()
        assert row["stop_reason"] == "model_context_window_exceeded"
        # Streamed, the same: message_delta carries the stop reason.
        with served.client().messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=64_000,
            system=system_blocks(),
            messages=[{"role": "user", "content": "Another one"}],
        ) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "model_context_window_exceeded"


def test_the_operators_cap_is_an_explicit_option(tiny_model_dir, tmp_path, script) -> None:
    script.endless = True
    with serving(tiny_model_dir, tmp_path, serve={"max_output_tokens": 5}) as served:
        _, reply = _ask(served, 64_000)
        assert (reply.stop_reason, reply.usage.output_tokens) == ("max_tokens", 5)
        _, lower = _ask(served, 3)  # the client's own lower limit still wins
        assert (lower.stop_reason, lower.usage.output_tokens) == ("max_tokens", 3)


def test_a_reply_stopped_by_the_loop_guard_ends_its_turn(server, monkeypatch) -> None:
    """The real decode loop with its loop guard firing at 12 tokens: the client gets what was
    said and end_turn, not a truncation it would ask to continue."""
    import foundry.local.engine as engine

    monkeypatch.setattr(engine, "looping", lambda reply: len(reply) >= 12)
    _, reply = _ask(server, 64_000)
    assert reply.stop_reason == "end_turn"
    assert 0 < reply.usage.output_tokens <= 12


def test_a_build_still_hears_max_tokens_at_its_own_cap(tiny_model_dir, tmp_path) -> None:
    """A build's requests carry the engine's max_tokens as their own: at it, max_tokens."""
    from foundry.backends.base import Message, ModelRequest
    from foundry.backends.mlx import MLXBackend
    from foundry.config import FoundryConfig

    config = FoundryConfig.model_validate(
        {"prefix_cache": {"dir": str(tmp_path / "store")}, "mlx": {"max_tokens": 4}}
    )
    backend = MLXBackend(config, str(tiny_model_dir))
    request = ModelRequest(
        model=str(tiny_model_dir),
        system=SYSTEM,
        messages=[Message("user", [{"type": "text", "text": "Build a todo app"}])],
        tools=[],
        max_tokens=backend.max_tokens,
    )
    response = backend.complete(request)
    assert response.usage.output_tokens <= 4
    if response.usage.output_tokens == 4:  # (the tiny model may end sooner)
        assert response.stop_reason == "max_tokens"
