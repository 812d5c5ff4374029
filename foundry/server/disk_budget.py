"""What one client of `foundry serve` may write to the prefix store per hour.

Every new prompt prefix a served request brings is saved to the disk store (tens of MB a
file for a real model), so a client that keeps sending new prefixes would churn the whole
store (4 GiB by default), evicting everyone's saved prefixes and wearing the disk. Each
client (the holder of --api-key, or, without one, every loopback client together) may save
a quarter of the store's size (`prefix_cache.max_bytes`) an hour, so no client turns the
whole store over in less than four hours; past it, a new prefix is still computed and kept
in memory, only not saved, until the client's hour is over. The log says so once an hour.

State: per client, the start of its current hour, the bytes saved in it and whether it has
been refused (so the warning is logged once). The running request's client is set on the
model's worker thread, where the backend saves (`acting_for`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
WINDOW_S = 3600.0
STORE_SHARE = 4  # a client's hourly budget is the store's size over this
BUDGET_RULE = "a quarter of prefix_cache.max_bytes an hour"


def client_disk_budget(store_max_bytes: int) -> int:
    """The bytes one client may save to a store of this size per hour."""
    return store_max_bytes // STORE_SHARE


@dataclass
class _Window:
    started: float
    written: int = 0
    refused: bool = False


class DiskBudget:
    def __init__(
        self,
        bytes_per_window: int,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = bytes_per_window
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Window] = {}
        self._acting = threading.local()
        self.saved = 0  # saves allowed since the start, and their bytes
        self.saved_bytes = 0
        self.skipped = 0  # saves refused since the start

    @contextmanager
    def acting_for(self, client: str) -> Iterator[None]:
        """Charge the saves made on this thread meanwhile to `client`."""
        self._acting.client = client
        try:
            yield
        finally:
            self._acting.client = None

    def _window(self, client: str) -> _Window:
        now = self.clock()
        window = self._clients.get(client)
        if window is None or now - window.started >= self.window_s:
            window = self._clients[client] = _Window(now)
        return window

    def over(self, client: str) -> bool:
        """Whether `client` has been refused a save this hour (its next ones are refused)."""
        with self._lock:
            return self._window(client).refused

    def allow(self, size: int) -> bool:
        """Whether the acting client may save `size` more bytes now; the first refusal in
        its hour is logged."""
        client = getattr(self._acting, "client", None)
        if client is None:  # not a served request (nothing here saves otherwise)
            return True
        with self._lock:
            window = self._window(client)
            if not window.refused and window.written + size <= self.limit:
                return True
            self.skipped += 1
            if window.refused:
                return False
            window.refused = True
            left_min = max(window.started + self.window_s - self.clock(), 0) / 60
        log.warning(
            "%s: %.0f MB saved to the prefix store this hour, and the next prefix (%.0f MB) "
            "is over its disk budget of %.0f MB an hour (%s); new prefixes are served from "
            "memory and not saved for the next %.0f min",
            client,
            window.written / 1e6,
            size / 1e6,
            self.limit / 1e6,
            BUDGET_RULE,
            left_min,
        )
        return False

    def charge(self, size: int) -> None:
        client = getattr(self._acting, "client", None)
        with self._lock:
            if size:
                self.saved += 1
                self.saved_bytes += size
            if client is not None:
                self._window(client).written += size

    def stats(self) -> dict[str, Any]:
        with self._lock:
            over = sum(1 for c in list(self._clients) if self._window(c).refused)
            return {
                "budget_bytes_per_client_hour": self.limit,
                "saved": self.saved,
                "saved_bytes": self.saved_bytes,
                "skipped": self.skipped,
                "clients_over_budget": over,
            }


class BudgetedStore:
    """The backend's prefix store, as served requests use it: each save is charged to the
    acting client, and one past its budget is skipped (0 bytes written, which the backends
    take as "not saved": the prefix stays in memory). Everything else is the store's own."""

    def __init__(self, store: Any, budget: DiskBudget) -> None:
        self._store = store
        self._budget = budget

    def save(
        self,
        identity: Any,
        tokens: list[int],
        cache: Any,
        prefill_ms: float | None = None,
        **options: Any,
    ) -> int:
        if not self._budget.allow(int(self._store.codec.nbytes(cache))):
            return 0
        size = int(self._store.save(identity, tokens, cache, prefill_ms=prefill_ms, **options))
        self._budget.charge(size)
        return size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
