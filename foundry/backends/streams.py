"""What every streaming backend shares: the error for a stream its API would never send,
and reading an SDK's stream so that data that is not JSON is that error, not a crash."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


class MalformedStream(Exception):
    """The server sent a stream its API never would (retried like a glitch; its own hint if
    it persists)."""


def decoded(stream: Iterable[Any], what: str) -> Iterator[Any]:
    """The SDK's items (`what`: "an event", "a chunk"); undecodable data is a MalformedStream."""
    iterator = iter(stream)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedStream(f"{what} that is not JSON ({exc.__class__.__name__})") from None
        yield item
