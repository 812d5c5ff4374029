"""A running build's progress as Server-Sent Events, as the build records it.

One read-only connection per open page polls `PRAGMA data_version` a few times a second:
it changes only when another connection (a build, in any process) has committed, and it
costs no table read. Only then is the build's state read again (its progress row by
primary key, its totals through `requests(build_id)`), and an event is sent only when that
state differs from the last one sent. A comment line every HEARTBEAT_S keeps proxies and
the browser from timing the stream out; the stream ends with a `done` event once the build
is no longer running (EventSource would reconnect otherwise).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from foundry.dashboard.builds import live_state
from foundry.dashboard.readonly import ReadOnlyLedger

POLL_S = 0.25
HEARTBEAT_S = 15.0
# A page left open for days would hold a connection for days: end the stream after this,
# the browser's EventSource reconnects and the page carries on.
MAX_STREAM_S = 3600.0


def sse(event: str, data: Any) -> bytes:
    """One event; json.dumps escapes newlines, so the data is one `data:` line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _read(
    conn: sqlite3.Connection, build_id: str, last_version: int | None
) -> tuple[int, dict[str, Any] | None]:
    """The data version, and the build's state if the ledger changed since `last_version`."""
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    if version == last_version:
        return version, None
    return version, live_state(conn, build_id)


async def build_events(
    ledger: ReadOnlyLedger,
    build_id: str,
    *,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The event stream of one build: `state` whenever it changes, then `done`."""
    with ledger.connection() as conn:
        last_version: int | None = None
        last_sent: str | None = None
        last_beat = started = clock()
        # An explicit retry: how long the browser waits before it reconnects.
        yield b"retry: 2000\n\n"
        while True:
            version, state = await anyio.to_thread.run_sync(_read, conn, build_id, last_version)
            if state is not None:
                last_version = version
                text = json.dumps(state, sort_keys=True)
                if text != last_sent:
                    last_sent = text
                    yield sse("state", state)
                    last_beat = clock()
                if state["status"] != "running":
                    yield sse("done", {"status": state["status"]})
                    return
            now = clock()
            if now - last_beat >= HEARTBEAT_S:
                yield b": keep-alive\n\n"
                last_beat = now
            if now - started >= MAX_STREAM_S:
                return
            await anyio.sleep(poll_s)
