"""A running build's page is fed by Server-Sent Events: what the build writes to its progress
row (from another connection, as a build in another process does) arrives as an event; the
stream ends with `done` when the build finishes."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from foundry.ledger import Ledger
from foundry.usage import Usage
from tests.test_dashboard_support import fill_ledger, running_dashboard


class EventReader:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        self.conn.request("GET", parts.path, headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()

    def next_event(self) -> tuple[str, Any]:
        """The next event (comments and `retry:` skipped), within the socket's timeout."""
        name, data = None, None
        while True:
            line = self.response.readline().decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and name is not None:
                return name, data

    def close(self) -> None:
        self.conn.close()


def test_progress_written_by_the_build_streams_to_the_page(tmp_path: Path) -> None:
    filled = fill_ledger(tmp_path / "ledger.db")
    with running_dashboard(filled.path) as server:
        reader = EventReader(f"{server.url}/api/builds/{filled.running}/events")
        assert reader.response.status == 200
        assert reader.response.getheader("content-type").startswith("text/event-stream")
        name, state = reader.next_event()
        assert name == "state"
        assert state["status"] == "running" and state["progress"]["phase"] == "builder"
        assert state["totals"]["requests"] == 1
        with Ledger.open(filled.path) as ledger:
            started = time.monotonic()
            ledger.record_progress(filled.running, phase="test", turn=1, last_tool="run_command",
                                   last_tool_detail="pytest -q", test_iteration=1)  # fmt: skip
            name, state = reader.next_event()
            latency = time.monotonic() - started
            assert name == "state"
            progress = state["progress"]
            assert (progress["phase"], progress["last_tool_detail"]) == ("test", "pytest -q")
            assert latency < 3.0, latency  # polled every 0.25 s
            # A request recorded by the build: its tokens and spend follow.
            ledger.record_request(
                build_id=filled.running, phase="test", turn=1, backend="anthropic",
                model="claude-haiku-4-5", usage=Usage(input_tokens=10, output_tokens=5),
                started_at="2026-12-01T00:00:00.000Z",
            )  # fmt: skip
            name, state = reader.next_event()
            assert state["totals"]["requests"] == 2 and state["totals"]["output_tokens"] == 105
            ledger.finish_build(filled.running, status="completed")
        name, state = reader.next_event()
        assert (name, state["status"]) == ("state", "completed")
        assert reader.next_event() == ("done", {"status": "completed"})
        reader.close()


def test_a_finished_or_unknown_build_streams_no_more(tmp_path: Path) -> None:
    filled = fill_ledger(tmp_path / "ledger.db")
    with running_dashboard(filled.path) as server:
        reader = EventReader(f"{server.url}/api/builds/{filled.finished}/events")
        assert reader.next_event()[0] == "state"
        assert reader.next_event() == ("done", {"status": "completed"})
        reader.close()
        reader = EventReader(f"{server.url}/api/builds/{'f' * 32}/events")
        assert reader.response.status == 404
        reader.close()
