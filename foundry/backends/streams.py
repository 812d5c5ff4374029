"""What every streaming backend shares: the error for a stream its API would never send,
reading an SDK's stream so that data that is not JSON is that error, not a crash, and
telling a whole JSON reply from a stream.

Some proxies answer a streaming request with the whole reply as one JSON document (an
Anthropic Message, a chat.completion): under a JSON content type (LiteLLM's mock), or under
`text/event-stream` (the LiteLLM proxy relaying an origin's JSON reply). An SDK's SSE
decoder finds no events in such a body, so the attempt looked interrupted and was retried,
paying the origin again for a reply already received and losing its usage.
`whole_json_body` recognises it before the SDK reads the stream; each backend reads the
document as its API's reply.

A stream is judged by its progress, not by a total: `Watchdog` closes a response only when
no part of the reply has come for its limit, however long the reply has been arriving.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# A whole reply of the largest output any model writes is well under 1 MB; past this, the
# body is no reply (and a proxy streaming endless bytes is stopped by the deadline meanwhile).
MAX_WHOLE_BYTES = 32 * 1024 * 1024
SSE_WHITESPACE = b" \t\r\n"


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


def whole_json_body(response: Any) -> bytes | None:
    """The body of a streaming response that is one JSON document rather than events, or
    None for a real event stream. An SSE stream never starts with `{` (its lines start with
    a field name or `:`), so the first bytes that are not blank decide; they are handed
    back to the SDK, which reads the stream through `response.iter_bytes()` (decoded: a
    gzipped body is sniffed as the text it is). Both SDKs look that method up when their
    stream is first iterated, so this runs after the response arrives and before that."""
    if "json" in response.headers.get("content-type", ""):
        return _read_capped(response.iter_bytes(), [])
    chunks = response.iter_bytes()
    seen: list[bytes] = []
    for chunk in chunks:
        seen.append(chunk)
        if chunk.lstrip(SSE_WHITESPACE):
            break
    if b"".join(seen).lstrip(SSE_WHITESPACE).startswith(b"{"):
        return _read_capped(chunks, seen)
    rest = itertools.chain(seen, chunks)
    response.iter_bytes = lambda *args, **kwargs: rest
    return None


def _read_capped(chunks: Any, seen: list[bytes]) -> bytes:
    size = sum(len(c) for c in seen)
    for chunk in chunks:
        seen.append(chunk)
        size += len(chunk)
        if size > MAX_WHOLE_BYTES:
            raise MalformedStream(f"a JSON body of over {MAX_WHOLE_BYTES:,} bytes, no reply")
    return b"".join(seen)


class Watchdog:
    """Calls `close` (which closes the response) once `limit_s` seconds pass without
    `progress()`, the first `already_s` of them spent before it was made; `expired` says
    it did. A thread, not a read timeout: the SDKs swallow keep-alive comments and pings,
    so bytes may keep a socket busy for ever without any part of a reply."""

    def __init__(
        self,
        limit_s: float,
        close: Callable[[], None],
        *,
        already_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self.expired = threading.Event()
        self._close, self._clock = close, clock
        self._due = clock() + limit_s - already_s
        self._stopped = threading.Event()

    def progress(self) -> None:
        """A part of the reply came: the limit starts again (one float store, no lock)."""
        self._due = self._clock() + self.limit_s

    def _watch(self) -> None:
        # Wakes once per limit at most: a reply's chunks only move the due time.
        while not self._stopped.wait(max(self._due - self._clock(), 0.0)):
            if self._clock() >= self._due:
                self.expired.set()
                self._close()
                return

    def __enter__(self) -> Watchdog:
        threading.Thread(target=self._watch, name="stream-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
