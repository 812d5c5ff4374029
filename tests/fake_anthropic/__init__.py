"""A faithful local stand-in for the Anthropic Messages API (see server.py and cache.py)."""

from tests.fake_anthropic.cache import count_tokens
from tests.fake_anthropic.server import FakeAnthropic, FakeClock

__all__ = ["FakeAnthropic", "FakeClock", "count_tokens"]
