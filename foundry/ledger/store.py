"""The ledger file: opening it safely, migrating it, and recording builds and requests.

Several builds may run at once in separate processes, so every write is one short
`BEGIN IMMEDIATE` transaction (it takes the write lock up front, which WAL readers never
block), SQLite's busy timeout waits for the lock, and a retry loop with jitter covers the
rest. A file that is not our ledger is inspected read-only and never written to.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from foundry.backends.registry import is_local
from foundry.errors import LedgerError, LedgerFull
from foundry.ledger.builds import BUILD_STATUSES, BuildRecords
from foundry.ledger.files import classify, connect, unreadable
from foundry.ledger.progress import ProgressRecords
from foundry.ledger.schema import REQUEST_COLUMNS
from foundry.timestamps import format_utc, normalize_timestamp, utc_now

if TYPE_CHECKING:
    from foundry.pricing import Cost, PricingTable
    from foundry.usage import Usage

# Total time a write keeps retrying past the busy timeout before giving up with an error.
WRITE_DEADLINE_S = 120.0
_T = TypeVar("_T")
log = logging.getLogger(__name__)
# Models already warned about in this process: one warning per model, not one per request.
_warned_models: set[str] = set()


@dataclass(frozen=True)
class RecordedRequest:
    id: int
    cost: Cost

    @property
    def warning(self) -> str | None:
        return self.cost.warning


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Ledger(BuildRecords, ProgressRecords):
    """One connection to the ledger file. Safe to share between threads of one process."""

    def __init__(self, path: Path, conn: sqlite3.Connection, pricing: PricingTable | None):
        self.path = path
        self.conn = conn
        self._pricing = pricing
        self._lock = threading.RLock()

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, pricing: PricingTable | None = None) -> Ledger:
        """Open (creating parent directories and the file if needed) and migrate."""
        path = Path(path)
        if path.is_dir():
            raise LedgerError(f"ledger path {path} is a directory", "give the path of a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger's directory {path.parent}: {exc.strerror}",
                "check the path and its permissions",
            ) from None
        ledger = cls(path, connect(path), pricing)
        try:
            ledger._prepare(classify(ledger.conn, path))
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open_existing(cls, path: Path, pricing: PricingTable | None = None) -> Ledger | None:
        """For readers: None when there is no ledger yet (missing file, or a file with no
        tables), and nothing is created; a foundry ledger is migrated if it is older."""
        path = Path(path)
        if not path.exists():
            return None
        if path.is_dir():
            raise LedgerError(f"ledger path {path} is a directory", "give the path of a file")
        conn = connect(path)
        try:
            state = classify(conn, path)
        except BaseException:
            conn.close()
            raise
        if state == "blank":
            conn.close()
            return None
        ledger = cls(path, conn, pricing)
        try:
            ledger._prepare(state)
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _prepare(self, state: str) -> None:
        # WAL lets reports read while builds write; it is persistent, so this is set once.
        mode = self._retrying(lambda: self.conn.execute("PRAGMA journal_mode").fetchone()[0])
        if mode != "wal":
            self._retrying(lambda: self.conn.execute("PRAGMA journal_mode = WAL").fetchone())
        if state != "current":
            self._write(self._migrate)
        try:
            self.close_abandoned()
        except (LedgerError, sqlite3.Error) as exc:  # a read-only ledger is still reported on
            log.info("abandoned builds not closed: %s", exc)

    def _migrate(self) -> None:
        # Runs inside BEGIN IMMEDIATE: a process that raced us here re-checks under the lock
        # and finds nothing pending, so a blank ledger is created exactly once.
        if classify(self.conn, self.path) == "current":
            return
        from sqlite_utils import Database

        from foundry.ledger.schema import build_migrations

        build_migrations().apply(Database(self.conn, execute_plugins=False))

    # ---- writing -------------------------------------------------------------------------

    def _retrying(self, action: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + WRITE_DEADLINE_S
        delay = 0.01
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise LedgerFull(
                        f"the disk holding the ledger {self.path} is full",
                        "free some space; an unfinished build can then be resumed "
                        "(`foundry resume NAME`)",
                    ) from None
                if _is_busy(exc) and time.monotonic() > deadline:
                    raise LedgerError(
                        f"cannot write to the ledger {self.path}: {exc}",
                        "another process holds it locked; retry when it has finished",
                    ) from None
                if not _is_busy(exc):
                    raise LedgerError(
                        f"cannot write to the ledger {self.path}: {exc}",
                        "check the file and its directory (permissions, free space)",
                    ) from None
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as exc:
                raise unreadable(self.path, exc) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def _write(self, body: Callable[[], _T]) -> _T:
        """Run `body` in one BEGIN IMMEDIATE transaction, retrying while the file is busy."""

        def attempt() -> _T:
            # A Ctrl-C or SIGTERM (a KeyboardInterrupt, raised between any two bytecodes)
            # can land after BEGIN returned and before the try below: that transaction holds
            # nothing written and must not make the next write fail (the build's final
            # status among them).
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                result = body()
                self.conn.execute("COMMIT")
                return result
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

        with self._lock:
            return self._retrying(attempt)

    def record_request(
        self,
        *,
        build_id: str | None,
        phase: str | None,
        turn: int | None,
        backend: str,
        model: str,
        usage: Usage,
        started_at: str,
        status: str = "ok",
        error_class: str | None = None,
        stop_reason: str | None = None,
        provider_request_id: str | None = None,
        purpose: str = "turn",
        local: bool | None = None,
    ) -> RecordedRequest:
        """Store one model request with its cost, computed now and never rewritten."""
        # `local`: the backend instance's own word (an OpenAI-compatible server on loopback
        # is local, a hosted one is not); None falls back to the registry's entry.
        cost = self.pricing.cost(usage, model, local=is_local(backend) if local is None else local)
        if cost.warning and model not in _warned_models:
            _warned_models.add(model)
            from foundry import console

            console.warning(cost.warning)
        row = [
            build_id,
            phase,
            turn,
            purpose,
            backend,
            model,
            normalize_timestamp(started_at),
            usage.duration_ms,
            usage.ttft_ms,
            usage.input_tokens,
            usage.output_tokens,
            # NULL when the server did not say what it cached: unknown, not a miss.
            None if usage.cache_read_unknown_tokens else usage.cache_read_tokens,
            usage.cache_write_5m_tokens,
            usage.cache_write_1h_tokens,
            cost.cost_usd,
            cost.uncached_cost_usd,
            cost.pricing_version,
            cost.warning,
            status,
            error_class,
            stop_reason,
            provider_request_id,
            usage.prefill_saved_ms,
            usage.prefill_tokens_per_s,
            usage.generation_tokens_per_s,
            usage.peak_memory_mb,
        ]

        def body() -> int:
            cursor = self.conn.execute(
                f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})",
                row,
            )
            return int(cursor.lastrowid or 0)

        try:
            request_id = self._write(body)
        except sqlite3.IntegrityError:
            raise LedgerError(
                f"cannot record a request for build {build_id}: no such build in {self.path}",
                "start the build with Ledger.start_build first",
            ) from None
        return RecordedRequest(request_id, cost)

    @property
    def pricing(self) -> PricingTable:
        if self._pricing is None:
            from foundry.pricing import PricingTable

            self._pricing = PricingTable()
        return self._pricing

    # ---- reading -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BUILD_STATUSES",
    "REQUEST_COLUMNS",
    "Ledger",
    "RecordedRequest",
    "format_utc",
    "utc_now",
]
