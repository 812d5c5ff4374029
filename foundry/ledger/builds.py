"""Builds on the ledger: start, phases done, finish, resume, and builds whose process is gone.

A build row gathers every attempt at it (one process each, listed in `build_attempts`), so a
resumed build is one build in `foundry costs --by build`. It records which phases finished
as they finish, so even a build killed before writing its summary can be resumed, and the
pid and host of its current process, so the next foundry run on the ledger can tell a live
build from an abandoned one and close it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from foundry.errors import LedgerError
from foundry.timestamps import utc_now

_T = TypeVar("_T")

# What a build's row may say. "abandoned" is never a run's own ending: another foundry run
# sets it when the build's process is gone.
BUILD_STATUSES = frozenset(
    {
        "running",
        "completed",
        "incomplete",
        "tests_failed",
        "failed",
        "interrupted",
        "budget_exceeded",
        "abandoned",
    }
)
RESUMABLE = frozenset(BUILD_STATUSES - {"running", "completed"})
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class BuildRecord:
    id: str
    name: str
    task: str
    backend: str
    model: str
    workdir: str
    status: str
    phases: tuple[str, ...]
    phases_done: tuple[str, ...]
    attempts: int
    settings: dict[str, Any]  # what the first attempt ran with (mode, limits, base URL...)
    started_at: str = ""


def _settings(value: str | None) -> dict[str, Any]:
    try:
        settings = json.loads(value or "{}")
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def phase_names(value: str | None) -> tuple[str, ...]:
    """A builds row's `phases` or `phases_done` (comma-separated) as names."""
    return tuple(part for part in (value or "").split(",") if part)


def recorded_workdir(db: Path, directory: Path) -> Path | None:
    """The working directory of a build recorded on the ledger at `db` that `directory` is or
    is inside; None when there is none, or no ledger to read. Read-only: this never creates
    or migrates a ledger (a command may not have chosen one yet)."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            rows = conn.execute(
                "SELECT DISTINCT workdir FROM builds WHERE workdir IS NOT NULL"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # no builds table yet, or not a ledger: nothing recorded
        return None
    around = {directory, *directory.parents}
    for (workdir,) in rows:
        # Recorded as the user spelled it (abspath); `directory` may be its real path.
        for path in (Path(workdir), Path(os.path.realpath(workdir))):
            if path in around:
                return path
    return None


def process_is_gone(pid: int | None, host: str | None, pid_start: int | None) -> bool:
    """Whether the process that ran a build is gone. Only a process on this host can be
    checked; a live pid whose start time differs from the one recorded is another process
    (pid reuse). Start times are the kernel's, immune to wall-clock steps."""
    if pid is None or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    now = process_start_ticks(pid)
    return pid_start is not None and now is not None and now != pid_start


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux /proc); None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class BuildRecords:
    """The builds half of the Ledger (it provides conn, path and _write)."""

    conn: sqlite3.Connection
    path: Path
    _write: Callable[[Callable[[], Any]], Any]

    def start_build(
        self,
        *,
        name: str,
        task: str,
        backend: str,
        model: str,
        workdir: str,
        template_sha256: str,
        static_sha256: str,
        phases: tuple[str, ...] = (),
        settings: dict[str, Any] | None = None,
        build_id: str | None = None,
    ) -> str:
        """Record a new build; its id is `build_id` (checked: 32 hex digits, not yet on the
        ledger) or a new random one."""
        if build_id is None:
            build_id = uuid.uuid4().hex
        elif len(build_id) != 32 or not set(build_id) <= _HEX:  # as plan.is_build_id
            raise LedgerError(
                f"build id {build_id!r} is not 32 lowercase hex digits",
                "leave it out and the ledger makes one",
            )
        elif self.conn.execute("SELECT 1 FROM builds WHERE id = ?", [build_id]).fetchone():
            raise LedgerError(
                f"build id {build_id} is already on the ledger",
                "choose a new id, or continue that build with `foundry resume`",
            )
        now, pid, host = utc_now(), os.getpid(), socket.gethostname()
        row: list[str | int | None] = [build_id, name, task, backend, model, str(workdir)]
        row += [template_sha256, static_sha256, now, ",".join(phases), pid, host]
        row += [process_start_ticks(pid), json.dumps(settings or {})]

        def body() -> None:
            self.conn.execute(
                "INSERT INTO builds (id, name, task, backend, model, workdir, template_sha256,"
                " static_sha256, started_at, status, phases, phases_done, attempts, pid, host,"
                " pid_start, settings)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, '', 1, ?, ?, ?, ?)",
                row,
            )
            self._insert_attempt(build_id, 1, now, pid, host)

        self._write(body)
        return build_id

    def _insert_attempt(self, build_id: str, attempt: int, now: str, pid: int, host: str) -> None:
        self.conn.execute(
            "INSERT INTO build_attempts (build_id, attempt, started_at, status, pid, host)"
            " VALUES (?, ?, ?, 'running', ?, ?)",
            [build_id, attempt, now, pid, host],
        )

    def phase_done(self, build_id: str, phase: str) -> None:
        """Record that `phase` finished: a resumed build will not run it again."""

        def body() -> None:
            row = self.conn.execute(
                "SELECT phases_done FROM builds WHERE id = ?", [build_id]
            ).fetchone()
            done = phase_names(row[0] if row else None)
            if phase not in done:
                self.conn.execute(
                    "UPDATE builds SET phases_done = ? WHERE id = ?",
                    [",".join((*done, phase)), build_id],
                )

        self._write(body)

    def finish_build(
        self,
        build_id: str,
        *,
        status: str,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if status not in BUILD_STATUSES - {"running", "abandoned"}:
            raise ValueError(f"unknown build status {status!r}")
        summary_json = None if summary is None else json.dumps(summary, default=str)
        now = utc_now()

        def body() -> int:
            changed = self.conn.execute(
                "UPDATE builds SET finished_at = ?, status = ?, summary_json = ?, error = ?"
                " WHERE id = ?",
                [now, status, summary_json, error, build_id],
            ).rowcount
            self.conn.execute(
                "UPDATE build_attempts SET finished_at = ?, status = ?, error = ?"
                " WHERE build_id = ? AND attempt = (SELECT attempts FROM builds WHERE id = ?)",
                [now, status, error, build_id, build_id],
            )
            return int(changed)

        if self._write(body) != 1:
            raise LedgerError(f"no build with id {build_id} in {self.path}")

    def find_build(self, name_or_id: str) -> BuildRecord | None:
        """The build with this id, else the latest build with this name."""
        found = self.find_builds(name_or_id)
        return found[0] if found else None

    def find_builds(self, name_or_id: str) -> list[BuildRecord]:
        """The build with this id (or this unique id prefix of 8+ characters, as listed), else
        every build with this name, latest first."""
        columns = (
            "SELECT id, name, task, backend, model, workdir, status, phases, phases_done,"
            " attempts, settings, started_at FROM builds"
        )
        rows = self.conn.execute(f"{columns} WHERE id = ?", [name_or_id]).fetchall()
        if not rows and len(name_or_id) >= 8 and all(c in _HEX for c in name_or_id):
            # A range of the primary key, not a scan: hex digits sort before 'g'.
            rows = self.conn.execute(
                f"{columns} WHERE id >= ? AND id < ? LIMIT 2", [name_or_id, name_or_id + "g"]
            ).fetchall()
            rows = rows if len(rows) == 1 else []
        if not rows:
            rows = self.conn.execute(
                f"{columns} WHERE name = ? ORDER BY started_at DESC, rowid DESC", [name_or_id]
            ).fetchall()
        return [
            BuildRecord(
                id=row[0],
                name=row[1],
                task=row[2],
                backend=row[3],
                model=row[4],
                workdir=row[5],
                status=row[6],
                phases=phase_names(row[7]),
                phases_done=phase_names(row[8]),
                attempts=int(row[9]),
                settings=_settings(row[10]),
                started_at=row[11] or "",
            )
            for row in rows
        ]

    def reopen_build(self, build_id: str) -> int:
        """Start the next attempt at a resumable build; returns its number."""
        now, pid, host = utc_now(), os.getpid(), socket.gethostname()

        def body() -> int:
            row = self.conn.execute(
                "SELECT status, attempts FROM builds WHERE id = ?", [build_id]
            ).fetchone()
            if row is None:
                raise LedgerError(f"no build with id {build_id} in {self.path}")
            if row[0] not in RESUMABLE:
                raise LedgerError(f"build {build_id} is {row[0]}; only an unfinished one resumes")
            attempt = int(row[1]) + 1
            self.conn.execute(
                "UPDATE builds SET status = 'running', finished_at = NULL, error = NULL,"
                " attempts = ?, pid = ?, host = ?, pid_start = ? WHERE id = ?",
                [attempt, pid, host, process_start_ticks(pid), build_id],
            )
            self._insert_attempt(build_id, attempt, now, pid, host)
            return attempt

        result: int = self._write(body)
        return result

    def close_abandoned(self) -> int:
        """Mark running builds whose process is gone as abandoned (what they spent stays on
        the ledger); returns how many. Builds of another host are left as they are."""
        rows = self.conn.execute(
            "SELECT id, pid, host, pid_start FROM builds WHERE status = 'running'"
        ).fetchall()
        gone = [row[0] for row in rows if process_is_gone(row[1], row[2], row[3])]
        if not gone:
            return 0
        now = utc_now()

        def body() -> None:
            for build_id, pid, host, _ in (r for r in rows if r[0] in gone):
                error = f"its process (pid {pid} on {host}) ended without finishing the build"
                # Only if nobody resumed it meanwhile: the same process is still on the row.
                self.conn.execute(
                    "UPDATE builds SET status = 'abandoned', finished_at = ?, error = ?"
                    " WHERE id = ? AND status = 'running' AND pid = ? AND host = ?",
                    [now, error, build_id, pid, host],
                )
                self.conn.execute(
                    "UPDATE build_attempts SET status = 'abandoned', finished_at = ?, error = ?"
                    " WHERE build_id = ? AND finished_at IS NULL",
                    [now, error, build_id],
                )

        self._write(body)
        return len(gone)

    def build_totals(self, build_id: str) -> dict[str, Any]:
        """Every attempt's requests, tokens and costs: a resumed build is one build."""
        row = self.conn.execute(
            "SELECT COUNT(*), TOTAL(input_tokens), TOTAL(output_tokens), TOTAL(cache_read_tokens),"
            " TOTAL(cache_write_5m_tokens), TOTAL(cache_write_1h_tokens), TOTAL(cost_usd),"
            " TOTAL(uncached_cost_usd), COUNT(*) - COUNT(cost_usd), TOTAL(prefill_saved_ms),"
            " COUNT(*) - COUNT(cache_read_tokens),"
            " TOTAL(CASE WHEN cache_read_tokens IS NULL THEN input_tokens ELSE 0 END)"
            " FROM requests WHERE build_id = ?",
            [build_id],
        ).fetchone()
        return {
            "requests": row[0],
            "input_tokens": int(row[1]),
            "output_tokens": int(row[2]),
            "cache_read_tokens": int(row[3]),
            "cache_write_5m_tokens": int(row[4]),
            "cache_write_1h_tokens": int(row[5]),
            "cost_usd": row[6],
            "uncached_cost_usd": row[7],
            # Requests whose model had no price: their cost is NULL, not counted above.
            "unpriced_requests": row[8],
            "prefill_saved_ms": row[9],
            # Requests whose server did not say what it cached, and their input tokens.
            "unknown_cache_requests": row[10],
            "cache_read_unknown_tokens": int(row[11]),
        }

    def build(self, build_id: str) -> dict[str, Any] | None:
        cursor = self.conn.execute("SELECT * FROM builds WHERE id = ?", [build_id])
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))
