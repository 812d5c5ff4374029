"""Files foundry writes: atomic writes (readers see the old file or the new one, never a
partial one) and the names it accepts for the directories it creates."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

# Build and model names become directory names: no separators, no leading dot or dash.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SAFE_NAME_RULE = "use letters, digits, '.', '_' or '-' (no slashes, at most 100 characters)"


def is_safe_name(name: str) -> bool:
    """A name usable as one directory name (fullmatch: a trailing newline is no match)."""
    return _SAFE_NAME.fullmatch(name) is not None and not name.endswith(".")


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    *,
    fsync: bool = False,
    mode: int | None = None,
) -> None:
    """Write `data` (str as UTF-8, newlines untranslated) to `path` via a temp file in the same
    directory and os.replace; the parent directory is created if missing.

    Permissions: `mode` if given; else those of the file being replaced; else the usual
    new-file mode (0o666 less the umask). `fsync` flushes the data to disk before the rename.
    The temp file is removed on any failure, including KeyboardInterrupt.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # O_EXCL: never share a temp file with another writer; 0o666 lets the umask apply.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            if mode is None:
                with contextlib.suppress(FileNotFoundError):  # a new file: keep the umask's
                    mode = path.stat().st_mode & 0o7777
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["write_atomic"]
