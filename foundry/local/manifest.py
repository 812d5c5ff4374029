"""The prefix-cache manifest (one JSON file of entries, changed under a lock, written
atomically) and the one way a key or a file name of the cache dir becomes a path.

A key is a name, never a path: a manifest is only data on disk, so a key such as
`../../x` or `/etc/x` must not steer a prune or a clear to a file outside the dir. A key
that is not a name is skipped by every read and dropped (and reported) by prune and clear.
Files are unlinked, never followed: a link planted in the dir is removed itself, and a
payload that is a link is never read.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foundry.errors import CacheStoreError
from foundry.fsutil import read_beneath, write_atomic
from foundry.timestamps import parse_utc, utc_now

log = logging.getLogger(__name__)
# cache_key makes 40 hex digits; letters, digits, '_' and '-' keep any other key one file name
# (no '/', '.', NUL or leading '-'), short enough that "<key>.safetensors.corrupt" fits.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
PAYLOAD = ".safetensors"
# Far above a real manifest (a few KB an entry); past it the file is damage, not read whole.
MANIFEST_LIMIT = 64 * 1024 * 1024
STALE_TEMP_S = 3600.0
TEMP_GRACE_S = 60.0
UNKNOWN_GRACE_S = 60.0


def is_key(key: object) -> bool:
    """Whether `key` is a cache key: one file name (fullmatch: a trailing newline is none)."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def key_path(directory: Path, key: str, suffix: str = PAYLOAD) -> Path:
    """`directory/<key><suffix>`: the only way from a key to a path, so none can escape."""
    if not is_key(key):
        raise CacheStoreError(
            f"prefix-cache key {_shown(key)} is not a name",
            "run `foundry cache prune` to drop such manifest entries",
        )
    return directory / f"{key}{suffix}"


def _shown(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def regular_size(path: Path) -> int | None:
    """The size of `path` when it is a regular file itself; None for a link (never
    followed: it may point at any file), a directory, anything else, or nothing."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def remove_file(path: Path) -> bool:
    """Unlink a file or a link (never its target). A directory is left alone: an unlink of
    one fails, and nothing here removes trees."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("prefix cache: left %s in place (%s)", path, exc.strerror)
        return False
    return True


@contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, created if missing. A link there is refused, not
    followed: following it would create or lock a file outside the cache dir."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise CacheStoreError(
            f"cannot open the prefix-cache lock file {path}: {exc.strerror}",
            "remove it (a link there is never followed); foundry creates a new one",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clean_temps(directory: Path) -> list[str]:
    """Remove temp files of saves that died: older than an hour, or past a minute with a
    writer pid that is gone."""
    removed = []
    for temp in directory.glob(".tmp-*"):
        try:
            pid = int(temp.name.split("-")[2])
            age = time.time() - os.lstat(temp).st_mtime
        except (ValueError, IndexError, OSError):
            pid, age = -1, STALE_TEMP_S + 1
        # A pid from another host or container looks dead here: its file is left alone
        # while it is still being written (a save renames it within moments of the write).
        if (age > STALE_TEMP_S or (age > TEMP_GRACE_S and not _pid_alive(pid))) and remove_file(
            temp
        ):
            removed.append(temp.name)
    return removed


def unknown_files(directory: Path, known: set[str]) -> list[Path]:
    """Payload files (or links) named as a key would name them that the manifest does not
    know. Other names are not foundry's to remove; a file a concurrent save has just renamed
    into place may not be in the manifest yet, so the young are spared."""
    found = []
    for path in directory.glob(f"*{PAYLOAD}"):
        key = path.name[: -len(PAYLOAD)]
        if not is_key(key) or key in known:
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        is_file = stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)
        if is_file and time.time() - info.st_mtime > UNKNOWN_GRACE_S:
            found.append(path)
    return found


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        """Read-modify-write under an exclusive lock; the yielded dict is written back.
        Entries whose key is not a name are not in it; they are written back as they were,
        so that prune or clear drops and reports them (once), not whichever write came first."""
        with locked_file(self.lock_path):
            entries, skipped = self._read_all()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                self._write({**skipped, **entries})

    def _read_all(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """The entries, and those skipped because their key is not a name."""
        try:
            data = json.loads(self._read_text())
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("entries is not an object")
        except FileNotFoundError:
            return {}, {}
        # RecursionError: a deeply nested document, which json cannot parse.
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("prefix-cache manifest %s unreadable (%s); starting afresh", self.path, exc)
            return {}, {}
        skipped = {k: v for k, v in entries.items() if not is_key(k)}
        valid = {k: v for k, v in entries.items() if is_key(k) and _well_typed(k, v, self.path)}
        return valid, skipped

    def _read_text(self) -> str:
        # Not a link (it could name any file), not a FIFO or device (a read could block or
        # never end), and bounded: a damaged manifest is read around, never trusted.
        return read_beneath(self.path.parent, self.path.name, MANIFEST_LIMIT).decode("utf-8")

    def _dropped(self, keys: list[str]) -> str:
        shown = ", ".join(_shown(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"prefix-cache manifest {self.path}: dropped {len(keys)} keys not names ({shown})"

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        write_atomic(self.path, json.dumps({"version": 1, "entries": entries}, indent=1))

    def entries(self) -> dict[str, dict[str, Any]]:
        return self._read_all()[0]

    def drop_invalid(self) -> list[str]:
        """Remove the entries whose key is not a name (their records only: such a key never
        names a file) and return those keys, so a prune or clear reports them once."""
        if not self._read_all()[1]:
            return []  # the common case takes no lock (and creates no lock file)
        with locked_file(self.lock_path):
            entries, skipped = self._read_all()
            if skipped:
                log.warning("%s", self._dropped(list(skipped)))
                self._write(entries)
        return list(skipped)

    def add(self, key: str, fields: dict[str, Any]) -> None:
        self.add_many({key: fields})

    def add_many(self, added: dict[str, dict[str, Any]]) -> None:
        now = utc_now()
        with self._locked() as entries:
            for key, fields in added.items():
                entries[key] = {**fields, "created_at": now, "last_used_at": now, "hits": 0}

    def touch(self, key: str, fields: dict[str, Any]) -> None:
        self.touch_many({key: fields})

    def touch_many(self, used: dict[str, dict[str, Any]]) -> None:
        """Count a hit on each; re-adds an entry a lost manifest forgot, so prune keeps its
        file."""
        now = utc_now()
        with self._locked() as entries:
            for key, fields in used.items():
                entry = entries.setdefault(key, {**fields, "created_at": now, "hits": 0})
                entry["last_used_at"] = now
                entry["hits"] = int(entry.get("hits", 0)) + 1

    def remove(self, keys: list[str]) -> None:
        if not keys:
            return
        with self._locked() as entries:
            for key in keys:
                entries.pop(key, None)
