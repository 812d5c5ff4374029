"""Exact token counts through the registry's counter: the metered backend's count_tokens,
against the local Anthropic test server over real HTTP."""

from __future__ import annotations

import socket

import pytest

from foundry.backends.registry import exact_token_counter
from foundry.config import FoundryConfig
from foundry.errors import FoundryError
from tests.anthropic_server import count_tokens as server_count


def count_tokens_exact(system: str, model: str, config: FoundryConfig) -> int:
    return exact_token_counter(config, model)(system)


def test_exact_count_needs_an_api_key():
    with pytest.raises(FoundryError, match="ANTHROPIC_API_KEY is not set"):
        count_tokens_exact("system text", "claude-sonnet-4-6", FoundryConfig())


def test_exact_count_from_the_server_is_the_system_text_alone(anthropic_env):
    system = "You are a careful build agent. " * 40
    count = count_tokens_exact(system, "claude-sonnet-4-6", FoundryConfig())
    assert count == server_count(system)
    bodies = anthropic_env.count_requests
    assert len(bodies) == 2  # with the system text, and the baseline without it
    assert bodies[0]["system"] == system and "system" not in bodies[1]
    assert all(b["model"] == "claude-sonnet-4-6" for b in bodies)


def test_exact_count_takes_the_base_url_from_the_config(anthropic_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_server.api_key)
    config = FoundryConfig()
    config.anthropic.base_url = anthropic_server.base_url
    assert count_tokens_exact("abcd" * 100, "claude-haiku-4-5", config) == 100


def test_exact_count_with_a_rejected_key(anthropic_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
    with pytest.raises(FoundryError, match="rejected") as caught:
        count_tokens_exact("text", "claude-sonnet-4-6", FoundryConfig())
    assert "sk-wrong" not in str(caught.value)


def test_exact_count_with_an_unreachable_server(monkeypatch):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    config = FoundryConfig()
    config.anthropic.max_retries = 0
    with pytest.raises(FoundryError, match=f"cannot reach http://127.0.0.1:{port}"):
        count_tokens_exact("text", "claude-sonnet-4-6", config)


def test_a_server_without_count_tokens_says_so(anthropic_env):
    from foundry.backends.anthropic.count import ExactCountUnavailable

    anthropic_env.count_tokens_endpoint = False
    with pytest.raises(ExactCountUnavailable, match="has no count_tokens endpoint") as caught:
        count_tokens_exact("text", "claude-sonnet-4-6", FoundryConfig())
    assert "model" not in caught.value.message  # not blamed on --model


def test_an_unknown_model_is_named(anthropic_env):
    anthropic_env.unknown_models = {"claude-sonet-4-6"}
    with pytest.raises(FoundryError, match="model 'claude-sonet-4-6' was not found"):
        count_tokens_exact("text", "claude-sonet-4-6", FoundryConfig())


def test_a_server_error_keeps_the_servers_reason(anthropic_env):
    anthropic_env.count_tokens_status = 500
    config = FoundryConfig()
    config.anthropic.max_retries = 0
    with pytest.raises(FoundryError, match="HTTP 500: tokenizer backend is down"):
        count_tokens_exact("text", "claude-sonnet-4-6", config)
