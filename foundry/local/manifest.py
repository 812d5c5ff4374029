"""The prefix-cache manifest: one JSON file of entries, changed under a lock, written atomically."""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foundry.fsutil import write_atomic
from foundry.timestamps import parse_utc, utc_now

log = logging.getLogger(__name__)


def last_used_epoch(value: str | None, now: float) -> float:
    """An entry's last_used_at as epoch seconds; accepts our "...Z" form and any ISO-8601."""
    try:
        return parse_utc(value).timestamp() if value else now
    except ValueError:
        # Unknown age is not old age: evicting on a parse failure would drop a live entry.
        return now


# What an entry's fields must be; a hand-edited or damaged manifest is read around, never
# trusted into a traceback (the entry is dropped, and its file recomputed when next needed).
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "identity_digest": str,
    "identity": dict,
    "tokens_digest": str,
    "n_tokens": int,
    "size_bytes": int,
    "hits": int,
    "created_at": str,
    "last_used_at": str,
}


def _well_typed(key: Any, entry: Any, path: Path) -> bool:
    wrong = (
        ["the entry"]
        if not isinstance(entry, dict)
        else [
            name
            for name, kind in FIELD_TYPES.items()
            if name in entry
            and (not isinstance(entry[name], kind) or isinstance(entry[name], bool))
        ]
    )
    if wrong:
        log.warning("prefix-cache manifest %s: entry %r ignored (%s)", path, key, ", ".join(wrong))
    return not wrong


class Manifest:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "manifest.json"
        self.lock_path = directory / "manifest.lock"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read-modify-write under an exclusive lock; the yielded dict is written back."""
        with open(self.lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                entries = self._read()
                before = json.dumps(entries, sort_keys=True)
                yield entries
                if json.dumps(entries, sort_keys=True) != before:
                    self._write(entries)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("entries is not an object")
            return {k: v for k, v in entries.items() if _well_typed(k, v, self.path)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("prefix-cache manifest %s unreadable (%s); starting afresh", self.path, exc)
            return {}

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        write_atomic(self.path, json.dumps({"version": 1, "entries": entries}, indent=1))

    def entries(self) -> dict[str, dict[str, Any]]:
        return self._read()

    def add(self, key: str, fields: dict[str, Any]) -> None:
        now = utc_now()
        with self._locked() as entries:
            entries[key] = {**fields, "created_at": now, "last_used_at": now, "hits": 0}

    def touch(self, key: str, fields: dict[str, Any]) -> None:
        """Count a hit; re-adds an entry a lost manifest forgot, so prune keeps its file."""
        with self._locked() as entries:
            entry = entries.setdefault(key, {**fields, "created_at": utc_now(), "hits": 0})
            entry["last_used_at"] = utc_now()
            entry["hits"] = int(entry.get("hits", 0)) + 1

    def remove(self, keys: list[str]) -> None:
        if not keys:
            return
        with self._locked() as entries:
            for key in keys:
                entries.pop(key, None)
