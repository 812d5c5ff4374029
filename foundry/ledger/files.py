"""Opening a ledger file safely: what kind of file it is (read-only checks), and the
connection settings every ledger connection uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from foundry.errors import LedgerError
from foundry.ledger.schema import MIGRATION_NAMES, MIGRATION_SET, MIGRATIONS_TABLE

BUSY_TIMEOUT_MS = 10_000


def classify(conn: sqlite3.Connection, path: Path) -> str:
    """'blank', 'current' or 'pending'; raises LedgerError for anything not ours. Reads only."""
    try:
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        }
        if not tables:
            return "blank"
        applied: list[str] = []
        if MIGRATIONS_TABLE in tables:
            applied = [
                row[0]
                for row in conn.execute(
                    f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY id",
                    [MIGRATION_SET],
                )
            ]
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, exc) from None
    if not applied:
        raise LedgerError(
            f"{path} is a SQLite database but not a foundry ledger "
            f"(it has tables but no foundry migrations); foundry left it untouched",
            "point --db or FOUNDRY_DB at a foundry ledger, or at a path that does not exist yet",
        )
    unknown = [name for name in applied if name not in MIGRATION_NAMES]
    if unknown:
        raise LedgerError(
            f"{path} was written by a newer foundry (schema migration {unknown[0]} is unknown "
            f"to this version); foundry left it untouched",
            "upgrade foundry to read this ledger",
        )
    return "current" if len(applied) == len(MIGRATION_NAMES) else "pending"


def unreadable(path: Path, exc: sqlite3.DatabaseError) -> LedgerError:
    text = str(exc)
    if "not a database" in text:
        what = "is not a SQLite database"
    elif "malformed" in text or "corrupt" in text:
        what = "is a corrupt SQLite database"
    else:
        what = f"cannot be read ({text})"
    return LedgerError(
        f"ledger {path} {what}; foundry left it untouched",
        "move it aside (foundry then starts a new ledger there) or point --db / FOUNDRY_DB "
        "elsewhere",
    )


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def connect(path: Path) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so no implicit transactions.
        conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # A damaged byte in a text column (a bad disk, a hand edit) reads as U+FFFD rather
        # than making every report fail.
        conn.text_factory = _decode_text
    except sqlite3.DatabaseError as exc:
        raise LedgerError(
            f"cannot open the ledger {path}: {exc}", "check the path and its permissions"
        ) from None
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing ledger file (SQLite refuses to create it, and
    refuses every write to it): for a reader that must change nothing, `foundry dashboard`."""
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # autocommit: no read transaction is left open between polls
            check_same_thread=False,
        )
    except sqlite3.DatabaseError as exc:
        raise LedgerError(
            f"cannot open the ledger {path} read-only: {exc}", "check the path and its permissions"
        ) from None
    conn.text_factory = _decode_text
    return conn
