"""pytest plugin: the `anthropic_server` fixture, a local Anthropic API for one test.

Registered in tests/conftest.py with `pytest_plugins = ["tests.anthropic_server"]`.
The server lives in tests/fake_anthropic/ (cache semantics, SSE, faults).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_anthropic import FakeAnthropic, FakeClock, count_tokens

__all__ = ["FakeAnthropic", "FakeClock", "anthropic_server", "anthropic_env", "count_tokens"]


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropic]:
    """A running FakeAnthropic on 127.0.0.1 (random port), stopped after the test."""
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def anthropic_env(
    anthropic_server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> FakeAnthropic:
    """The same server, with ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL pointing at it."""
    for name, value in anthropic_server.env().items():
        monkeypatch.setenv(name, value)
    return anthropic_server
