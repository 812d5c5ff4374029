"""Files foundry writes: atomic writes (readers see the old file or the new one, never a
partial one), the names it accepts for the directories it creates, and the files it reads
and writes on its own account in a directory a model works in (the *_beneath functions):
there every path component is opened without following a symlink, only regular files are
read or replaced, and reads are bounded."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath

# Build and model names become directory names: no separators, no leading dot or dash.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SAFE_NAME_RULE = "use letters, digits, '.', '_' or '-' (no slashes, at most 100 characters)"


def is_safe_name(name: str) -> bool:
    """A name usable as one directory name (fullmatch: a trailing newline is no match)."""
    return _SAFE_NAME.fullmatch(name) is not None and not name.endswith(".")


def _fill(fd: int, payload: bytes, mode: int | None, *, fsync: bool = False) -> None:
    """Give a new temp file its mode and contents, then close it (always)."""
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


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
        if mode is None:
            with contextlib.suppress(FileNotFoundError):  # a new file: keep the umask's
                mode = path.stat().st_mode & 0o7777
        _fill(fd, payload, mode, fsync=fsync)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class NotAFile(OSError):
    """What stands at a path is not what foundry reads or writes there: a symlink, a
    directory, a FIFO or a device instead of a regular file (or a directory on the way)."""

    def __init__(self, path: str, kind: str, wanted: str = "a regular file") -> None:
        super().__init__(f"{path} is {kind}, not {wanted}")
        self.path, self.kind = path, kind


class TooLarge(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{path} is {format_size(size)}, over the {format_size(limit)} limit")
        self.path, self.size, self.limit = path, size, limit


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"


def _parts(relative: str | os.PathLike[str]) -> tuple[str, ...]:
    parts = PurePosixPath(os.fspath(relative)).parts
    if not parts or parts[0] == "/" or any(p in ("..", ".") for p in parts):
        raise ValueError(f"not a plain relative path: {relative!r}")
    return parts


def _refused(dir_fd: int, name: str, shown: str, wanted: str, exc: OSError) -> OSError:
    """The clearer error for an open that failed on a link or the wrong kind of file."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return exc
    if _kind(mode) == wanted:  # the right kind, refused for another reason (EACCES...)
        return exc
    return NotAFile(shown, _kind(mode), wanted)


def _open_dir(root: str | os.PathLike[str], parts: tuple[str, ...], *, create: bool) -> int:
    """A descriptor of root/parts..., each component a real directory (made when `create`)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts, start=1):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:  # ELOOP for a link, ENOTDIR for a file
                shown = "/".join(parts[:depth])
                raise _refused(fd, part, shown, "a directory", exc) from None
            # Swap first: a Ctrl-C between the two must not leave `fd` naming a closed one.
            fd, outer = inner, fd
            os.close(outer)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], flags: int, mode: int = 0o666
) -> int:
    """os.open of root/relative with no symlink followed on the way or at the end, and only a
    regular file accepted (O_NONBLOCK: a planted FIFO cannot hang the open). FileNotFoundError
    when it is missing (and O_CREAT not given); NotAFile for anything but a regular file."""
    parts = _parts(relative)
    parent = _open_dir(root, parts[:-1], create=False)
    shown = "/".join(parts)
    try:
        try:
            flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, mode, dir_fd=parent)
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP for a link, EISDIR, ENXIO for a FIFO without a reader
            raise _refused(parent, parts[-1], shown, "a regular file", exc) from None
    finally:
        os.close(parent)
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise NotAFile(shown, _kind(kind))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_beneath(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], limit: int
) -> bytes:
    """The bytes of the regular file root/relative, refused (TooLarge) past `limit`, checked
    before reading and while reading (the file may grow)."""
    shown = os.fspath(relative)
    fd = open_beneath(root, relative, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise TooLarge(shown, size, limit)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(shown, len(data), limit)
    return data


def read_text_beneath(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], limit: int
) -> str:
    return read_beneath(root, relative, limit).decode("utf-8", errors="replace")


def kind_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> str | None:
    """What stands at root/relative, never looked at through a link: "file", "dir", "symlink",
    "other", or None when nothing does (or a directory on the way is missing or a link)."""
    parts = _parts(relative)
    try:
        parent = _open_dir(root, parts[:-1], create=False)
    except (FileNotFoundError, NotAFile):
        return None
    try:
        mode = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    finally:
        os.close(parent)
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "other"


def make_dir_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> bool:
    """Make root/relative (and what is missing on the way) as real directories; True if the
    last one was made now. NotAFile when a link or a file stands anywhere on the way."""
    parts = _parts(relative)
    parent = _open_dir(root, parts[:-1], create=True)
    try:
        try:
            os.mkdir(parts[-1], 0o777, dir_fd=parent)
            made = True
        except FileExistsError:
            made = False
        os.close(_open_dir(root, parts, create=False))  # a real directory, not a link
    finally:
        os.close(parent)
    return made


def list_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> list[str]:
    fd = _open_dir(root, _parts(relative), create=False)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def unlink_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> None:
    """Remove the entry itself (a link is removed, never its target); missing is fine."""
    parts = _parts(relative)
    parent = _open_dir(root, parts[:-1], create=False)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)


def write_beneath(
    root: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    data: str | bytes,
    *,
    mode: int | None = None,
) -> None:
    """write_atomic for a file foundry owns inside a directory a model works in: missing
    directories on the way are made, none is followed through a link, and the temp file and
    the rename stay in that real directory. What stands at the name is replaced as an entry
    (a link there is replaced, never written through); a directory there is refused."""
    parts = _parts(relative)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    parent = _open_dir(root, parts[:-1], create=True)
    name, shown = parts[-1], "/".join(parts)
    tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        if mode is None:
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
                if stat.S_ISDIR(old):
                    raise NotAFile(shown, "a directory")
                mode = stat.S_IMODE(old) if stat.S_ISREG(old) else None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o666, dir_fd=parent)
        try:
            _fill(fd, payload, mode)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    finally:
        os.close(parent)


__all__ = [
    "NotAFile",
    "TooLarge",
    "format_size",
    "kind_beneath",
    "list_beneath",
    "make_dir_beneath",
    "open_beneath",
    "read_beneath",
    "read_text_beneath",
    "unlink_beneath",
    "write_atomic",
    "write_beneath",
]
