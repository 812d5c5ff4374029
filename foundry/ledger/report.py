"""The queries behind `foundry costs`: one aggregate per view, done entirely in SQL.

Reports read `request_rollup` (sums per UTC quarter hour, kept exact by triggers), so a
million requests cost a few thousand rows to read. A period is a [start, end) UTC interval
between local midnights computed with tzdata; if one ever falls off a quarter hour (a
historic zone offset), the same query runs on the raw `requests` rows instead.
Rows are grouped by the view's key and by whether the request ran on a local model (its
pricing_version is 'local'), because local rows report tokens reused and prefill time saved
rather than dollars.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from foundry.ledger.periods import Zone, bucket_days, day_start
from foundry.ledger.schema import ROLLUP_COLUMNS
from foundry.timestamps import format_utc

VIEWS = ("day", "week", "month", "build", "model", "phase")
PERIOD_VIEWS = ("day", "week", "month")
_ROLLUP = "request_rollup r"
_ROLLUP_FORMAT = "%Y-%m-%dT%H:%M"
# The raw rows shaped like rollup rows; SQLite flattens this, so started_at's index serves.
_RAW = (
    "(SELECT started_at AS bucket, backend, model, COALESCE(phase, '') AS phase,"
    " COALESCE(build_id, '') AS build_id, COALESCE(pricing_version = 'local', 0) AS local,"
    " 1 AS requests, input_tokens, output_tokens,"
    " COALESCE(cache_read_tokens, 0) AS cache_read_tokens, cache_write_5m_tokens,"
    " cache_write_1h_tokens,"
    " COALESCE(cost_usd, 0) AS cost_usd, COALESCE(uncached_cost_usd, 0) AS uncached_cost_usd,"
    " cost_usd IS NULL AS unpriced_requests, COALESCE(prefill_saved_ms, 0) AS prefill_saved_ms,"
    " cache_read_tokens IS NULL AS unknown_cache_requests,"
    " CASE WHEN cache_read_tokens IS NULL THEN input_tokens ELSE 0 END"
    " AS unknown_cache_input_tokens"
    " FROM requests) r"
)
_SUMS = "SUM(r.requests), " + ", ".join(
    f"TOTAL(r.{c})" if c in ("cost_usd", "uncached_cost_usd", "prefill_saved_ms") else f"SUM(r.{c})"
    for c in ROLLUP_COLUMNS
)
_LOCAL = "r.local"
# The local requests' time, from the raw rows: the rollup has no duration column (adding
# one is a migration), so this sum costs a scan of the requests. Only local rows need it
# (their time saved is set beside it), and only reports holding some pay for it.
_DURATIONS = (
    "(SELECT started_at AS bucket, backend, model, COALESCE(phase, '') AS phase,"
    " COALESCE(build_id, '') AS build_id, 1 AS local, duration_ms"
    " FROM requests WHERE pricing_version = 'local') r",
    "raw",
)


@dataclass
class Filters:
    since: datetime | None = None  # inclusive, UTC
    until: datetime | None = None  # exclusive, UTC
    build: str | None = None  # a build's name or id
    models: list[str] | None = None
    backend: str | None = None

    def clauses(self, fmt: str) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since:
            clauses.append("r.bucket >= ?")
            params.append(_stamp(self.since, fmt))
        if self.until:
            clauses.append("r.bucket < ?")
            params.append(_stamp(self.until, fmt))
        if self.build:
            clauses.append("r.build_id IN (SELECT id FROM builds WHERE name = ? OR id = ?)")
            params += [self.build, self.build]
        if self.models is not None:
            clauses.append(f"r.model IN ({', '.join('?' * len(self.models)) or 'NULL'})")
            params += self.models
        if self.backend:
            clauses.append("r.backend = ?")
            params.append(self.backend)
        return clauses, params


@dataclass
class ReportRow:
    key: str | None
    local: bool
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cost_usd: float
    uncached_cost_usd: float
    unpriced_requests: int
    prefill_saved_ms: float
    # Requests whose server did not say what it cached (cache_read_tokens NULL), and their
    # input: hit rates leave them out rather than count them as misses.
    unknown_cache_requests: int = 0
    unknown_cache_input_tokens: int = 0
    # Local rows: summed duration_ms, the time the requests took (a NULL adds nothing);
    # None for API rows, whose caching saves money rather than a measured time.
    duration_ms: float | None = None
    build: dict[str, Any] = field(default_factory=dict)


def _stamp(moment: datetime, fmt: str) -> str:
    return format_utc(moment) if fmt == "raw" else moment.astimezone(UTC).strftime(fmt)


def _on_quarter_hour(moment: datetime) -> bool:
    moment = moment.astimezone(UTC)
    return moment.minute % 15 == 0 and moment.second == 0 and moment.microsecond == 0


def _source(moments: list[datetime]) -> tuple[str, str]:
    if all(_on_quarter_hour(m) for m in moments):
        return _ROLLUP, _ROLLUP_FORMAT
    return _RAW, "raw"


def has_requests(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM requests)").fetchone()[0])


def time_span(conn: sqlite3.Connection) -> tuple[datetime, datetime] | None:
    """The first and last quarter hour holding a request."""
    low, high = conn.execute("SELECT MIN(bucket), MAX(bucket) FROM request_rollup").fetchone()
    if low is None:
        return None
    return (
        datetime.fromisoformat(low).replace(tzinfo=UTC),
        datetime.fromisoformat(high).replace(tzinfo=UTC),
    )


def distinct_models(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT DISTINCT model FROM request_rollup")]


def aggregate(conn: sqlite3.Connection, by: str, zone: Zone, filters: Filters) -> list[ReportRow]:
    """One row per (key, local?) for the view `by`, in the view's natural order."""
    if by not in VIEWS:
        raise ValueError(f"unknown view {by!r}")
    rows = [ReportRow(row[0], bool(row[1]), *row[2:]) for row in _grouped(conn, by, zone, filters)]
    if any(row.local for row in rows):
        times = {key: ms for key, _, ms in _grouped(conn, by, zone, filters, durations=True)}
        for row in rows:
            row.duration_ms = times.get(row.key, 0.0) if row.local else None
    if by == "build":
        _attach_builds(conn, rows)
        rows.sort(key=lambda r: (r.build.get("started_at") or "", r.key or "", r.local))
    elif by in PERIOD_VIEWS:
        rows.sort(key=lambda r: (r.key or "", r.local))
    else:
        rows.sort(key=lambda r: (r.local, -r.cost_usd, r.key is None, r.key or ""))
    return rows


def _grouped(
    conn: sqlite3.Connection, by: str, zone: Zone, filters: Filters, *, durations: bool = False
) -> list[Any]:
    """The view's groups: (key, local, sums...), or with `durations` (key, 1, the local
    requests' summed duration_ms), which only the raw rows hold."""
    bounds = [m for m in (filters.since, filters.until) if m is not None]
    sums = "TOTAL(r.duration_ms)" if durations else _SUMS
    if by in PERIOD_VIEWS:
        periods = _periods(conn, by, zone, filters)
        if not periods:
            return []
        source, fmt = (
            _DURATIONS if durations else _source(bounds + [m for p in periods for m in p[1:]])
        )
        conn.execute("DROP TABLE IF EXISTS temp.report_periods")
        conn.execute(
            "CREATE TEMP TABLE report_periods (key TEXT PRIMARY KEY, lo TEXT UNIQUE, hi TEXT)"
        )
        conn.executemany(
            "INSERT INTO temp.report_periods VALUES (?, ?, ?)",
            [(key, _stamp(lo, fmt), _stamp(hi, fmt)) for key, lo, hi in periods],
        )
        clauses, params = filters.clauses(fmt)
        where = "".join(f" AND {c}" for c in clauses)
        if durations:
            # Each local request finds its period by one probe of `lo`: as a range join,
            # SQLite scanned the local requests once per period (4 s for 730 days).
            join = (
                f"{source} JOIN temp.report_periods p ON p.lo = (SELECT MAX(lo)"
                " FROM temp.report_periods WHERE lo <= r.bucket) AND r.bucket < p.hi"
            )
        else:
            join = f"temp.report_periods p JOIN {source} ON r.bucket >= p.lo AND r.bucket < p.hi"
        sql = f"SELECT p.key, {_LOCAL} AS local, {sums} FROM {join}{where} GROUP BY p.key, local"
    else:
        source, fmt = _DURATIONS if durations else _source(bounds)
        clauses, params = filters.clauses(fmt)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        column = {"build": "build_id", "model": "model", "phase": "phase"}[by]
        sql = (
            f"SELECT NULLIF(r.{column}, '') AS key, {_LOCAL} AS local, {sums}"
            f" FROM {source}{where} GROUP BY key, local"
        )
    return conn.execute(sql, params).fetchall()


def _periods(
    conn: sqlite3.Connection, by: str, zone: Zone, filters: Filters
) -> list[tuple[str, datetime, datetime]]:
    span = time_span(conn)
    if span is None:
        return []
    low = max([span[0]] + ([filters.since] if filters.since else []))
    high = min([span[1]] + ([filters.until] if filters.until else []))
    if low > high:
        return []
    first, last = low.astimezone(zone.tz).date(), high.astimezone(zone.tz).date()
    return [
        (key, day_start(start, zone), day_start(end, zone))
        for key, start, end in bucket_days(by, first, last)
    ]


def _attach_builds(conn: sqlite3.Connection, rows: list[ReportRow]) -> None:
    ids = [row.key for row in rows if row.key is not None]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cursor = conn.execute(
            "SELECT id, name, status, started_at, finished_at, backend, model FROM builds"
            f" WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        names = [c[0] for c in cursor.description]
        for values in cursor:
            found[values[0]] = dict(zip(names, values, strict=True))
    for row in rows:
        row.build = found.get(row.key or "", {})


def spend_between(conn: sqlite3.Connection, start: datetime, end: datetime) -> tuple[float, int]:
    """Money spent in [start, end) and the number of requests whose cost is unknown."""
    source, fmt = _source([start, end])
    row = conn.execute(
        f"SELECT TOTAL(r.cost_usd), TOTAL(r.unpriced_requests) FROM {source}"
        " WHERE r.bucket >= ? AND r.bucket < ?",
        [_stamp(start, fmt), _stamp(end, fmt)],
    ).fetchone()
    return row[0], int(row[1])
