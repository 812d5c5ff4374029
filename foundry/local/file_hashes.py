"""sha256 of model files for a prefix identity, memoised by size and mtime in a JSON file so
a multi-gigabyte weights file is hashed once, not on every load."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foundry.fsutil import write_atomic


class FileHashes:
    def __init__(self, memo: dict[str, Any]) -> None:
        self.memo = memo

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        cached = self.memo.get(str(path))
        if cached and cached.get("stamp") == stamp:
            return str(cached["sha256"])
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                digest.update(chunk)
        self.memo[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
        return digest.hexdigest()


@contextmanager
def file_hashes(memo_file: Path | None) -> Iterator[FileHashes]:
    """Hash files, reading the memo before and writing it back after (None: no memo)."""
    memo: dict[str, Any] = {}
    if memo_file is not None:
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text("utf-8"))
    yield FileHashes(memo)
    if memo_file is not None:
        with contextlib.suppress(OSError):  # only a speed-up
            write_atomic(memo_file, json.dumps(memo))
