"""What a running build is doing now: one `build_progress` row per build, overwritten as it
goes. The build writes it (orchestrator/progress.py); `foundry dashboard` and `foundry mcp`
read it, with the build's request rows for its tokens and spend."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from foundry.timestamps import utc_now

# The row's columns a writer may set. build_id and updated_at are the ledger's own, and so is
# `requests`: the build's request rows so far (every attempt, keep-alives included), counted
# at each write so it always agrees with the rows a reader sums for tokens and spend.
PROGRESS_FIELDS = (
    "phase",
    "turn",
    "last_tool",
    "last_tool_detail",
    "last_tool_error",
    "test_iteration",
    "tests_passed",
    "prefill_done",
    "prefill_total",
    "message",
)
# A tool's detail (a command line, a path) and a message are cut to this many characters:
# the row is read several times a second by a page, and a model's command can be long.
DETAIL_LIMIT = 300


class ProgressRecords:
    """The live-progress half of the Ledger (it provides conn and _write)."""

    conn: sqlite3.Connection
    _write: Callable[[Callable[[], Any]], Any]

    def record_progress(self, build_id: str, **fields: Any) -> None:
        """Set these fields of the build's progress row (made on first use); the rest stay."""
        unknown = set(fields) - set(PROGRESS_FIELDS)
        if unknown:
            raise ValueError(f"not progress fields: {sorted(unknown)}")
        values = {
            name: value[:DETAIL_LIMIT] if isinstance(value, str) else value
            for name, value in fields.items()
        }
        values["updated_at"] = utc_now()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in [*values, "requests"])

        def body() -> None:
            self.conn.execute(
                f"INSERT INTO build_progress (build_id, requests, {columns})"
                f" VALUES (?, (SELECT COUNT(*) FROM requests WHERE build_id = ?), {marks})"
                f" ON CONFLICT (build_id) DO UPDATE SET {updates}",
                [build_id, build_id, *values.values()],
            )

        self._write(body)

    def progress(self, build_id: str) -> dict[str, Any] | None:
        return read_progress(self.conn, build_id)


def read_progress(conn: sqlite3.Connection, build_id: str) -> dict[str, Any] | None:
    """The build's progress row as a dict, or None (not started, or from before 0005)."""
    cursor = conn.execute("SELECT * FROM build_progress WHERE build_id = ?", [build_id])
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([column[0] for column in cursor.description], row, strict=True))
