"""The costs view: `foundry costs`' report, computed by the same function
(`foundry.ledger.costs.report_from`) on the dashboard's read-only connection; a test holds
the page's numbers equal to `foundry costs --json`'s. No figure is derived here.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

from foundry.config import FoundryConfig
from foundry.errors import UsageError
from foundry.ledger import report as q
from foundry.ledger.costs import CostsOptions, report_from
from foundry.ledger.periods import resolve_zone, today


def costs_view(
    conn: sqlite3.Connection, path: Path, config: FoundryConfig, options: CostsOptions
) -> dict[str, Any]:
    """The dict `foundry costs --json` prints for these options, from `conn`."""
    if options.by not in q.VIEWS:
        raise UsageError(f"by {options.by!r} is not a view", f"use one of: {', '.join(q.VIEWS)}")
    return report_from(conn, path, config, options)


def backends_view(
    conn: sqlite3.Connection, path: Path, config: FoundryConfig, options: CostsOptions
) -> dict[str, Any]:
    """One totals row per backend: each is the `totals` of `foundry costs --backend B`
    with the same days, so the backend table needs no arithmetic of its own."""
    recorded = [r[0] for r in conn.execute("SELECT DISTINCT backend FROM request_rollup")]
    wanted = [options.backend] if options.backend else sorted(recorded)
    rows = []
    for backend in wanted:
        view = costs_view(
            conn,
            path,
            config,
            CostsOptions(
                by="model",
                since=options.since,
                until=options.until,
                tz=options.tz,
                build=options.build,
                model=options.model,
                backend=backend,
                db=options.db,
            ),
        )
        local = bool(view["rows"]) and all(row["kind"] == "local" for row in view["rows"])
        rows.append({**view["totals"], "key": backend, "label": backend, "local": local})
    return {"rows": rows, "time_zone": resolve_zone(options.tz).name}


class CostsCache:
    """Recent reports, so a page reloaded (or left open, refreshing) does not redo a
    report over a million requests when nothing was recorded since.

    A report depends on the requests (a table foundry only ever appends to: no request row
    is updated or deleted, so its largest id says whether anything was recorded), on the
    day in the report's zone (relative days such as `29d`, and the budgets' today and
    month), and on the options. `--by build` rows also carry each build's name and status,
    which change without a new request, so that view is never cached.
    """

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    def get(
        self,
        conn: sqlite3.Connection,
        kind: str,
        options: CostsOptions,
        compute: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        if options.by == "build" or options.build:
            return compute()
        last = conn.execute("SELECT MAX(id) FROM requests").fetchone()[0]
        key = (kind, astuple(options), last, today(resolve_zone(options.tz)))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
            # One computation per key at a time: a page asking while the warm-up (or
            # another tab) computes the same report waits for it instead of doubling it.
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = threading.Event()
        if not owner:
            pending.wait(timeout=300)
            with self._lock:
                found = self._entries.get(key)
            return found if found is not None else compute()
        try:
            value = compute()
            with self._lock:
                self._entries[key] = value
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.set()


# What the overview and the costs view ask for first: computed when the dashboard starts,
# so the first page load finds them ready (each costs a second or two on a big ledger).
WARM_UP = (
    ("costs", CostsOptions(by="day", since="29d")),
    ("costs", CostsOptions(by="model", since="29d")),
    # by="day" as the page's request has it (the key holds every option; backends_view
    # itself groups by model).
    ("backends", CostsOptions(by="day", since="29d")),
)


def warm_up(
    cache: CostsCache, connect: Callable[[], Any], path: Path, config: FoundryConfig
) -> None:
    """Fill the cache with WARM_UP's reports (run in a background thread)."""
    views = {"costs": costs_view, "backends": backends_view}
    for kind, preset in WARM_UP:
        options = CostsOptions(**{**vars(preset), "db": path})
        with connect() as conn:
            compute = functools.partial(views[kind], conn, path, config, options)
            cache.get(conn, kind, options, compute)
