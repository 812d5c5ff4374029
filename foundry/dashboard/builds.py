"""The builds list and a build's page, as JSON-ready dicts. Read-only SQL only.

Sized for a ledger of 100,000 builds and a million requests: the list is one page of the
`builds(started_at)` index (or `builds(name)` / `builds(status)` when filtered) and its
spend is summed only for that page's builds through `requests(build_id)`; nothing reads
every build. A build's totals
are the ledger's own `build_totals` (every attempt's requests, through the same index).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from foundry.errors import UsageError
from foundry.ledger.builds import BUILD_STATUSES, BuildRecords, phase_names
from foundry.ledger.progress import read_progress

PER_PAGE = 50
MAX_PER_PAGE = 200
TASK_PREVIEW = 200  # characters of the task the list shows; the build's page has it whole
LIST_COLUMNS = "id, name, task, status, backend, model, started_at, finished_at, attempts"
# What a build's page shows of its row: not its pid or host (the process's identity is no
# use to a reader, and the row's settings may name a base URL).
DETAIL_COLUMNS = (
    "id, name, task, backend, model, workdir, started_at, finished_at, status, error,"
    " phases, phases_done, attempts, summary_json"
)


class _Totals(BuildRecords):
    """BuildRecords.build_totals on a read-only connection: the same SQL as the summary's
    figures, so the page never re-derives them."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _page_args(page: int, per_page: int) -> tuple[int, int]:
    if page < 1:
        raise UsageError(f"page {page} is not a page", "pages start at 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise UsageError(f"per_page {per_page} is out of range", f"use 1 to {MAX_PER_PAGE}")
    return page, per_page


def list_builds(
    conn: sqlite3.Connection,
    *,
    page: int = 1,
    per_page: int = PER_PAGE,
    status: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One page of builds, newest first. `name` matches names starting with it (a range
    on the name index, never a scan); `status` is one of BUILD_STATUSES."""
    page, per_page = _page_args(page, per_page)
    clauses: list[str] = []
    params: list[Any] = []
    if status:
        if status not in BUILD_STATUSES:
            raise UsageError(
                f"status {status!r} is not a build status",
                f"use one of: {', '.join(sorted(BUILD_STATUSES))}",
            )
        clauses.append("status = ?")
        params.append(status)
    if name:
        # A prefix as a range: `name >= 'todo' AND name < 'todo' || U+10FFFF` uses the
        # index, where LIKE (case-insensitive by default) would read every row.
        clauses.append("name >= ? AND name < ?")
        params += [name, name + "\U0010ffff"]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    total = conn.execute(f"SELECT COUNT(*) FROM builds{where}", params).fetchone()[0]
    # Two steps: the page's rowids from the started_at index alone, or from the
    # (status, started_at) one (a covering index scan either way, so a deep OFFSET skips
    # index entries rather than rows with their summaries),
    # then those rows. rowid breaks ties in started_at, as the index itself orders them.
    rowids = [
        r[0]
        for r in conn.execute(
            f"SELECT rowid FROM builds{where} ORDER BY started_at DESC, rowid DESC"
            " LIMIT ? OFFSET ?",
            [*params, per_page, (page - 1) * per_page],
        )
    ]
    rows = _rows_by_rowid(conn, rowids)
    spend = _spend(conn, [row["id"] for row in rows])
    for row in rows:
        task = row["task"] or ""
        row["task"] = task[:TASK_PREVIEW] + ("…" if len(task) > TASK_PREVIEW else "")
        row.update(spend.get(row["id"], {"requests": 0, "cost_usd": 0.0, "unpriced_requests": 0}))
    return {
        "builds": rows,
        "total": total,
        "page": page,
        "per_page": per_page,
        "pages": max(1, -(-total // per_page)),
        "filters": {"status": status, "name": name},
        "statuses": sorted(BUILD_STATUSES),
    }


def _rows_by_rowid(conn: sqlite3.Connection, rowids: list[int]) -> list[dict[str, Any]]:
    if not rowids:
        return []
    cursor = conn.execute(
        f"SELECT rowid, {LIST_COLUMNS} FROM builds WHERE rowid IN ({', '.join('?' * len(rowids))})",
        rowids,
    )
    names = [c[0] for c in cursor.description]
    found = {values[0]: dict(zip(names[1:], values[1:], strict=True)) for values in cursor}
    return [found[rowid] for rowid in rowids if rowid in found]


def _spend(conn: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Requests and spend of these builds only (one index probe each)."""
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT build_id, COUNT(*), TOTAL(cost_usd), COUNT(*) - COUNT(cost_usd) FROM requests"
        f" WHERE build_id IN ({', '.join('?' * len(ids))}) GROUP BY build_id",
        ids,
    ).fetchall()
    return {
        row[0]: {"requests": row[1], "cost_usd": round(row[2], 6), "unpriced_requests": row[3]}
        for row in rows
    }


def running_builds(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """Builds whose status is running, newest first, with their live progress."""
    cursor = conn.execute(
        # `+started_at`: sort the few running builds found through the status index, rather
        # than walk every build in started_at order looking for them (0.2 s at 100k builds).
        f"SELECT {LIST_COLUMNS} FROM builds WHERE status = 'running'"
        " ORDER BY +started_at DESC LIMIT ?",
        [limit],
    )
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    spend = _spend(conn, [row["id"] for row in rows])
    for row in rows:
        row.update(spend.get(row["id"], {"requests": 0, "cost_usd": 0.0, "unpriced_requests": 0}))
        row["progress"] = read_progress(conn, row["id"])
    return rows


def find_build_id(conn: sqlite3.Connection, build_id: str) -> str | None:
    row = conn.execute("SELECT id FROM builds WHERE id = ?", [build_id]).fetchone()
    return row[0] if row else None


def build_detail(conn: sqlite3.Connection, build_id: str) -> dict[str, Any] | None:
    """A build's page: its row, attempts, summary (phases, files, tests, cost) once it has
    finished, its ledger totals, and its live progress row."""
    cursor = conn.execute(f"SELECT {DETAIL_COLUMNS} FROM builds WHERE id = ?", [build_id])
    values = cursor.fetchone()
    if values is None:
        return None
    build = dict(zip([c[0] for c in cursor.description], values, strict=True))
    summary_text = build.pop("summary_json")
    try:
        summary = json.loads(summary_text) if summary_text else None
    except ValueError:
        summary = None  # a damaged summary is shown as none, not a 500
    for key in ("phases", "phases_done"):
        build[key] = list(phase_names(build[key]))
    cursor = conn.execute(
        "SELECT attempt, started_at, finished_at, status, error FROM build_attempts"
        " WHERE build_id = ? ORDER BY attempt",
        [build_id],
    )
    names = [c[0] for c in cursor.description]
    attempts = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {
        "build": build,
        "attempts": attempts,
        "summary": summary if isinstance(summary, dict) else None,
        **live_state(conn, build_id),
    }


def live_state(conn: sqlite3.Connection, build_id: str) -> dict[str, Any]:
    """What changes while a build runs: its status, progress row and ledger totals."""
    row = conn.execute(
        "SELECT status, finished_at, phases_done FROM builds WHERE id = ?", [build_id]
    ).fetchone()
    if row is None:
        return {"status": None, "finished_at": None, "progress": None, "totals": None}
    return {
        "status": row[0],
        "finished_at": row[1],
        "phases_done": list(phase_names(row[2])),
        "progress": read_progress(conn, build_id),
        "totals": _Totals(conn).build_totals(build_id),
    }
