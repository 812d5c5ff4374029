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
MIGRATION_NAMES: tuple[str, ...] = (
    "0001_initial",
    "0002_unknown_cache_reads_local_rollup",
    "0003_build_attempts",
    "0004_build_settings",
    "0005_build_progress",
)

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


# ---- 0002: a cache read may be unknown (NULL), and the rollup knows which rows were local ----
# Some OpenAI-compatible servers do not say how much of a prompt they served from their cache:
# such a request's cache_read_tokens is NULL (its prompt is all in input_tokens), never a
# silent 0. SQLite cannot drop a NOT NULL in place, so the table is rebuilt, columns unchanged.
# Whether a row ran on a local model (free: it saves time, not money) is its pricing_version
# 'local', so a backend whose locality depends on its endpoint needs no name list.
ROLLUP_COLUMNS = (*ROLLUP_SUMS, "unknown_cache_requests", "unknown_cache_input_tokens")
_ROLLUP_KEY_0002 = f"{_ROLLUP_KEY}, local"
_ROLLUP_INSERT_COLUMNS = f"{_ROLLUP_KEY_0002}, requests, {', '.join(ROLLUP_COLUMNS)}"


def _rollup_values(ref: str) -> tuple[list[str], list[str]]:
    """The rollup key and the figures one `requests` row (NEW, OLD or the table) adds."""
    key = [
        f"substr({ref}.started_at, 1, 14)"
        f" || printf('%02d', CAST(substr({ref}.started_at, 15, 2) AS INTEGER) / 15 * 15)",
        f"{ref}.backend",
        f"{ref}.model",
        f"COALESCE({ref}.phase, '')",
        f"COALESCE({ref}.build_id, '')",
        f"COALESCE({ref}.pricing_version = 'local', 0)",
    ]
    values = {
        "cache_read_tokens": f"COALESCE({ref}.cache_read_tokens, 0)",
        "cost_usd": f"COALESCE({ref}.cost_usd, 0)",
        "uncached_cost_usd": f"COALESCE({ref}.uncached_cost_usd, 0)",
        "unpriced_requests": f"{ref}.cost_usd IS NULL",
        "prefill_saved_ms": f"COALESCE({ref}.prefill_saved_ms, 0)",
        "unknown_cache_requests": f"{ref}.cache_read_tokens IS NULL",
        "unknown_cache_input_tokens": (
            f"CASE WHEN {ref}.cache_read_tokens IS NULL THEN {ref}.input_tokens ELSE 0 END"
        ),
    }
    return key, [values.get(column, f"{ref}.{column}") for column in ROLLUP_COLUMNS]


def _rollup_trigger_0002(name: str, event: str, rows: list[tuple[str, str]]) -> str:
    statements = []
    for ref, sign in rows:
        key, sums = _rollup_values(ref)
        statements.append(
            f"INSERT INTO request_rollup ({_ROLLUP_INSERT_COLUMNS})"
            f" VALUES ({', '.join(key)}, {sign}1, {', '.join(f'{sign}({v})' for v in sums)})"
            f" ON CONFLICT ({_ROLLUP_KEY_0002}) DO UPDATE SET requests = requests + "
            "excluded.requests, "
            + ", ".join(f"{c} = {c} + excluded.{c}" for c in ROLLUP_COLUMNS)
            + ";"
        )
        if sign == "-":
            statements.append(
                f"DELETE FROM request_rollup WHERE requests = 0"
                f" AND ({_ROLLUP_KEY_0002}) = ({', '.join(key)});"
            )
    return f"CREATE TRIGGER {name} AFTER {event} ON requests BEGIN {' '.join(statements)} END"


# A build can be resumed: its row gathers every attempt (one process each), and knows which
# phases finished, even when its process was killed before writing a summary. pid and host
# let the next foundry run on the ledger tell a live build from an abandoned one.
_MIGRATION_0003 = [
    "ALTER TABLE builds ADD COLUMN phases TEXT",  # the requested phases, comma-separated
    "ALTER TABLE builds ADD COLUMN phases_done TEXT",  # those finished so far, comma-separated
    "ALTER TABLE builds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE builds ADD COLUMN pid INTEGER",
    "ALTER TABLE builds ADD COLUMN host TEXT",
    """
    CREATE TABLE build_attempts (
        build_id TEXT NOT NULL REFERENCES builds(id),
        attempt INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        error TEXT,
        pid INTEGER,
        host TEXT,
        PRIMARY KEY (build_id, attempt)
    )
    """,
    # Every build so far was one attempt.
    "INSERT INTO build_attempts (build_id, attempt, started_at, finished_at, status, error)"
    " SELECT id, 1, started_at, finished_at, status, error FROM builds",
    "CREATE INDEX idx_builds_status ON builds(status)",
]
_MIGRATION_0004 = [
    # The process's start time (clock ticks since boot): a live pid that started at another
    # time is another process (pid reuse).
    "ALTER TABLE builds ADD COLUMN pid_start INTEGER",
    # What a resume needs back, as JSON: mode, limits, base URL, template, TTL, and whether
    # .git existed when the build began (a .git the model made is never committed into).
    "ALTER TABLE builds ADD COLUMN settings TEXT",
]

# What a running build is doing now, one row per build, overwritten as it goes (a few times a
# second at most): what `foundry dashboard` and `foundry mcp` show live. Tokens and spend are
# not here: they are the build's request rows, summed.
_MIGRATION_0005 = [
    """
    CREATE TABLE build_progress (
        build_id TEXT PRIMARY KEY REFERENCES builds(id),
        phase TEXT,
        turn INTEGER,
        requests INTEGER NOT NULL DEFAULT 0,
        last_tool TEXT,
        last_tool_detail TEXT,
        last_tool_error INTEGER,
        test_iteration INTEGER,
        tests_passed INTEGER,
        prefill_done INTEGER,
        prefill_total INTEGER,
        message TEXT,
        updated_at TEXT NOT NULL
    )
    """,
    # The dashboard's and `foundry mcp`'s lists filter by status, newest first: one range.
    "CREATE INDEX idx_builds_status_started_at ON builds(status, started_at)",
]


def _migration_0002() -> list[str]:
    table_key, table_sums = _rollup_values("requests")
    return [
        "DROP TRIGGER requests_rollup_insert",
        "DROP TRIGGER requests_rollup_delete",
        "DROP TRIGGER requests_rollup_update",
        _INITIAL[3]
        .replace("CREATE TABLE requests (", "CREATE TABLE requests_0002 (")
        .replace(
            "cache_read_tokens INTEGER NOT NULL DEFAULT 0",
            "cache_read_tokens INTEGER DEFAULT 0",  # NULL: the server did not say
        ),
        "INSERT INTO requests_0002 SELECT * FROM requests",
        "DROP TABLE requests",
        "ALTER TABLE requests_0002 RENAME TO requests",
        "CREATE INDEX idx_requests_started_at ON requests(started_at)",
        "CREATE INDEX idx_requests_build_id ON requests(build_id)",
        "DROP TABLE request_rollup",
        """
        CREATE TABLE request_rollup (
            bucket TEXT NOT NULL,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            phase TEXT NOT NULL,
            build_id TEXT NOT NULL,
            local INTEGER NOT NULL,
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
            unknown_cache_requests INTEGER NOT NULL,
            unknown_cache_input_tokens INTEGER NOT NULL,
            PRIMARY KEY (bucket, backend, model, phase, build_id, local)
        ) WITHOUT ROWID
        """,
        f"INSERT INTO request_rollup ({_ROLLUP_INSERT_COLUMNS})"
        f" SELECT {', '.join(table_key)}, COUNT(*), {', '.join(f'SUM({v})' for v in table_sums)}"
        f" FROM requests GROUP BY {', '.join(str(i) for i in range(1, len(table_key) + 1))}",
        _rollup_trigger_0002("requests_rollup_insert", "INSERT", [("NEW", "+")]),
        _rollup_trigger_0002("requests_rollup_delete", "DELETE", [("OLD", "-")]),
        _rollup_trigger_0002("requests_rollup_update", "UPDATE", [("OLD", "-"), ("NEW", "+")]),
    ]


def build_migrations() -> Migrations:
    """The Migrations object; imported lazily because sqlite_utils is slow to import."""
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)

    @migrations(name="0001_initial")
    def initial(db: Database) -> None:
        for statement in _INITIAL:
            db.execute(statement)

    @migrations(name="0002_unknown_cache_reads_local_rollup")
    def unknown_cache_reads_local_rollup(db: Database) -> None:
        for statement in _migration_0002():
            db.execute(statement)

    @migrations(name="0003_build_attempts")
    def build_attempts(db: Database) -> None:
        for statement in _MIGRATION_0003:
            db.execute(statement)

    @migrations(name="0004_build_settings")
    def build_settings(db: Database) -> None:
        for statement in _MIGRATION_0004:
            db.execute(statement)

    @migrations(name="0005_build_progress")
    def build_progress(db: Database) -> None:
        for statement in _MIGRATION_0005:
            db.execute(statement)

    return migrations
