"""foundry.prompt.tokens: the offline estimate (its documented per-piece costs) and the exact count
through Anthropic's count_tokens endpoint (against the local test server)."""

from __future__ import annotations

import socket

import pytest

from foundry.config import FoundryConfig
from foundry.errors import FoundryError
from foundry.prompt.tokens import (
    ESTIMATE_ERROR,
    ESTIMATE_METHOD,
    count_tokens_exact,
    estimate_tokens,
)
from tests.anthropic_server import count_tokens as server_count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello", 1),  # a word of up to 5 letters: one token
        ("hello world", 2),  # " world" carries its space
        ("internationalization", 3),  # 20 letters: 1 + 15/10 -> ceil(2.5)
        ("FOUNDRY_HOME", 5),  # caps 7/3 + "_" 1 + caps 4/3 -> ceil(4.67)
        ("12345", 3),  # digits: one token per two, rounded up
        ("a && b", 3),  # "a", " &&" (punctuation takes its space), " b"
        ("x\n\n    y", 4),  # "x", two newlines 1.2 (indent merged), "y" -> ceil(3.2)
        ("日本語", 3),  # three non-ASCII characters at 0.7 -> ceil(2.1)
        # def, " f", "(", "x", "):", newline 0.6, "return", " x" -> ceil(7.6)
        ("def f(x):\n    return x", 8),
    ],
)
def test_estimate_follows_its_documented_costs(text: str, expected: int):
    assert estimate_tokens(text) == expected


def test_estimate_is_labelled_as_an_estimate():
    assert "estimate" in ESTIMATE_METHOD
    assert "±" in ESTIMATE_METHOD


# Counts of Claude's published tokenizer (the tokenizer.json of anthropic SDK <= 0.38) for
# these texts, measured once when the estimator was fitted; the estimate must stay close.
REFERENCE = [
    ("def add(a: int, b: int) -> int:\n    return a + b\n\n" * 20, 419),
    (
        "The orchestrator renders the prompt once, splits it at the boundary marker, and "
        "sends the static part as a cached system prompt with every request. " * 20,
        581,
    ),
    (
        '{"name": "write_file", "arguments": {"path": "src/app.py", "content": "print(1)\\n"}}\n'
        * 20,
        640,
    ),
    ("cd build && python3 -m pytest -x -q tests/test_cli.py 2>&1 | tail -n 20\n" * 20, 560),
]


@pytest.mark.parametrize(("text", "reference"), REFERENCE)
def test_estimate_is_close_to_the_reference_tokenizer(text: str, reference: int):
    assert abs(estimate_tokens(text) / reference - 1) <= ESTIMATE_ERROR


def test_estimate_grows_with_text():
    assert estimate_tokens("word " * 100) > estimate_tokens("word " * 50) > 0


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
