"""The ledger, opened read-only. The dashboard never migrates, repairs or writes the file
(not even close_abandoned, which a Ledger.open runs): a page someone leaves open must not
change what builds and `foundry costs` see. So the file is opened with SQLite's `mode=ro`
URI (SQLite then refuses any write to the file; only a connection's own TEMP tables, which
the costs queries use, can be made), and checked with the ledger's own read-only classify().

A new connection per request: opening one costs well under a millisecond, and the costs
queries create a temp table per connection, which must not be shared by two requests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foundry.errors import LedgerError
from foundry.ledger.files import classify, connect_readonly, unreadable


class ReadOnlyLedger:
    """The ledger file the dashboard reads; check() once at start-up, connection() per use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def check(self) -> None:
        """LedgerError unless the file is a current foundry ledger. Reads only."""
        if not self.path.exists():
            raise LedgerError(
                f"no ledger at {self.path}",
                "run `foundry build` first (it creates the ledger), or point --db / FOUNDRY_DB "
                "at an existing one",
            )
        if self.path.is_dir():
            raise LedgerError(f"ledger path {self.path} is a directory", "give the path of a file")
        with self.connection() as conn:
            try:
                state = classify(conn, self.path)
            except sqlite3.DatabaseError as exc:
                raise unreadable(self.path, exc) from None
        if state == "blank":
            raise LedgerError(
                f"{self.path} is an empty SQLite file, not a foundry ledger yet",
                "run `foundry build` first, or point --db at an existing ledger",
            )
        if state == "pending":
            # Migrating is a write; the dashboard leaves that to the tools that record.
            raise LedgerError(
                f"the ledger {self.path} was written by an older foundry and needs migrating",
                "run `foundry costs --db PATH` once (it migrates the ledger), then start the "
                "dashboard again",
            )

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = connect_readonly(self.path)
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
                raise LedgerError(
                    f"the ledger {self.path} stayed locked", "retry in a moment"
                ) from None
            if isinstance(exc, sqlite3.OperationalError):
                raise
            raise unreadable(self.path, exc) from None
        finally:
            conn.close()
