"""foundry.prompt.tokens: the offline estimate and its documented per-piece costs."""

from __future__ import annotations

import pytest

from foundry.prompt.tokens import (
    ESTIMATE_ERROR,
    ESTIMATE_METHOD,
    estimate_tokens,
)


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
