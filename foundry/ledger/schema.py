"""The ledger's schema as sqlite-utils migrations. The schema is a public interface (users open
the file with sqlite-utils or Datasette): a released migration is never edited, only followed
by a new one, and its name is appended to MIGRATION_NAMES."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database, Migrations

# The migration set's name in sqlite-utils' `_sqlite_migrations` table: how we tell our own
# ledger from any other SQLite file.
MIGRATION_SET = "foundry"
MIGRATIONS_TABLE = "_sqlite_migrations"
# Known to this version, in order. Kept here (not only on the Migrations object) so opening an
# up-to-date ledger never imports sqlite_utils, which pulls in numpy (~0.3 s of start-up).
MIGRATION_NAMES: tuple[str, ...] = ("0001_initial",)

# The requests columns a recording writes, in INSERT order (the table is created below).
REQUEST_COLUMNS = (
    "build_id",
    "phase",
    "turn",
    "purpose",
    "backend",
    "model",
    "started_at",
    "duration_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_usd",
    "uncached_cost_usd",
    "pricing_version",
    "cost_warning",
    "status",
    "error_class",
    "stop_reason",
    "provider_request_id",
    "prefill_saved_ms",
    "prefill_tokens_per_s",
    "generation_tokens_per_s",
    "peak_memory_mb",
)

ROLLUP_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_usd",
    "uncached_cost_usd",
    "unpriced_requests",
    "prefill_saved_ms",
)
_ROLLUP_KEY = "bucket, backend, model, phase, build_id"


def _rollup_trigger(name: str, event: str, rows: list[tuple[str, str]]) -> str:
    """A trigger adding (+) or removing (-) a request row's figures to/from its rollup row."""
    statements = []
    for ref, sign in rows:
        key = (
            f"substr({ref}.started_at, 1, 14)"
            f" || printf('%02d', CAST(substr({ref}.started_at, 15, 2) AS INTEGER) / 15 * 15),"
            f" {ref}.backend, {ref}.model, COALESCE({ref}.phase, ''), COALESCE({ref}.build_id, '')"
        )
        values = {
            "cost_usd": f"COALESCE({ref}.cost_usd, 0)",
            "uncached_cost_usd": f"COALESCE({ref}.uncached_cost_usd, 0)",
            "unpriced_requests": f"{ref}.cost_usd IS NULL",
            "prefill_saved_ms": f"COALESCE({ref}.prefill_saved_ms, 0)",
        }
        sums = [values.get(column, f"{ref}.{column}") for column in ROLLUP_SUMS]
        statements.append(
            f"INSERT INTO request_rollup ({_ROLLUP_KEY}, requests, {', '.join(ROLLUP_SUMS)})"
            f" VALUES ({key}, {sign}1, {', '.join(f'{sign}({v})' for v in sums)})"
            f" ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET requests = requests + excluded.requests, "
            + ", ".join(f"{c} = {c} + excluded.{c}" for c in ROLLUP_SUMS)
            + ";"
        )
        if sign == "-":
            statements.append(
                f"DELETE FROM request_rollup WHERE requests = 0 AND ({_ROLLUP_KEY}) = ({key});"
            )
    return f"CREATE TRIGGER {name} AFTER {event} ON requests BEGIN {' '.join(statements)} END"


_INITIAL = [
    """
    CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        task TEXT,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        workdir TEXT,
        template_sha256 TEXT,
        static_sha256 TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        summary_json TEXT,
        error TEXT
    )
    """,
    "CREATE INDEX idx_builds_name ON builds(name)",
    "CREATE INDEX idx_builds_started_at ON builds(started_at)",
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        build_id TEXT REFERENCES builds(id),
        phase TEXT,
        turn INTEGER,
        purpose TEXT NOT NULL DEFAULT 'turn',
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        started_at TEXT NOT NULL,
        duration_ms REAL,
        ttft_ms REAL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL,
        uncached_cost_usd REAL,
        pricing_version TEXT,
        cost_warning TEXT,
        status TEXT NOT NULL DEFAULT 'ok',
        error_class TEXT,
        stop_reason TEXT,
        provider_request_id TEXT,
        prefill_saved_ms REAL,
        prefill_tokens_per_s REAL,
        generation_tokens_per_s REAL,
        peak_memory_mb REAL
    )
    """,
    "CREATE INDEX idx_requests_started_at ON requests(started_at)",
    "CREATE INDEX idx_requests_build_id ON requests(build_id)",
    # Derived: sums per UTC quarter hour x backend x model x phase x build, kept exact by
    # the triggers below. Reports read this instead of a million request rows; every
    # current time zone's day starts on a quarter hour, so local days and months are exact.
    """
    CREATE TABLE request_rollup (
        bucket TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        phase TEXT NOT NULL,
        build_id TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_5m_tokens INTEGER NOT NULL,
        cache_write_1h_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        uncached_cost_usd REAL NOT NULL,
        unpriced_requests INTEGER NOT NULL,
        prefill_saved_ms REAL NOT NULL,
        PRIMARY KEY (bucket, backend, model, phase, build_id)
    ) WITHOUT ROWID
    """,
    _rollup_trigger("requests_rollup_insert", "INSERT", [("NEW", "+")]),
    _rollup_trigger("requests_rollup_delete", "DELETE", [("OLD", "-")]),
    _rollup_trigger("requests_rollup_update", "UPDATE", [("OLD", "-"), ("NEW", "+")]),
]


def build_migrations() -> Migrations:
    """The Migrations object; imported lazily because sqlite_utils is slow to import."""
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)

    @migrations(name="0001_initial")
    def initial(db: Database) -> None:
        for statement in _INITIAL:
            db.execute(statement)

    return migrations
