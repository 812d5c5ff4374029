"""Who a sandboxed command runs as, and the working directory lent to it for the command.

A command must never run as root: uid 0 without a single capability still owns every
root-owned file, so it can write /proc/sys (kernel.core_pattern runs a program as root on
the host), talk to root-only sockets that trust SO_PEERCRED (systemd, D-Bus) and signal
root's processes. So when foundry runs as root, the command runs as the working directory's
owner when that is a regular user, else as nobody (65534). The working directory must then
be writable by that uid: for the command's duration foundry lends it the files (lchown,
never following a link), and afterwards gives each one back to its owner before, by inode,
so a file the command renamed still goes home. A file the command made goes to the owner of
the working directory. The model's processes are all dead when foundry walks the tree (the
containment ends them first), so nothing races the walk.

`.git` and `.foundry` are not lent: they are read-only inside and stay foundry's.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

NOBODY = 65534
NOT_LENT = frozenset({".git", ".foundry"})


def command_uid(workdir: Path) -> tuple[int, int] | None:
    """(uid, gid) a command runs as when foundry is root; None when foundry is not root
    (the command runs as foundry's own user, which is already unprivileged)."""
    if os.getuid() != 0:
        return None
    try:
        info = os.stat(workdir)
    except OSError:
        return (NOBODY, NOBODY)
    if info.st_uid != 0:
        return (info.st_uid, info.st_gid)
    return (NOBODY, NOBODY)


def _entries(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every path under root (root too) with its lstat, never entering a link, skipping the
    directories that are not lent."""
    found: list[tuple[str, os.stat_result]] = []
    with contextlib.suppress(OSError):
        found.append((str(root), os.lstat(root)))
    for current, dirs, files in os.walk(root, followlinks=False):
        if current == str(root):
            dirs[:] = [d for d in dirs if d not in NOT_LENT]
            files = [f for f in files if f not in NOT_LENT]
        for name in (*dirs, *files):
            path = os.path.join(current, name)
            with contextlib.suppress(OSError):
                found.append((path, os.lstat(path)))
    return found


class Loan:
    """One command's loan of a working directory to the uid it runs as."""

    def __init__(self, root: Path, uid: int, gid: int, *, skip: Iterable[str] = ()) -> None:
        self.root = root
        self.skip = frozenset(skip)  # hidden files inside (a ledger): never the command's
        self.uid, self.gid = uid, gid
        self.owners: dict[tuple[int, int], tuple[int, int]] = {}
        info = os.lstat(root)
        self.home_owner = (info.st_uid, info.st_gid)

    def lend(self) -> None:
        for path, info in _entries(self.root):
            if (info.st_uid, info.st_gid) == (self.uid, self.gid) or path in self.skip:
                continue
            self.owners[(info.st_dev, info.st_ino)] = (info.st_uid, info.st_gid)
            with contextlib.suppress(OSError):
                os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def give_back(self) -> None:
        for path, info in _entries(self.root):
            if info.st_uid != self.uid and info.st_gid != self.gid:
                continue
            owner = self.owners.get((info.st_dev, info.st_ino), self.home_owner)
            if owner == (info.st_uid, info.st_gid):
                continue
            with contextlib.suppress(OSError):
                os.chown(path, *owner, follow_symlinks=False)
                # chown clears set-id bits for non-root owners only; never leave a
                # set-user-id file the command made owned by root.
                if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    _clear_set_id(path)


def _clear_set_id(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        os.fchmod(fd, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
    finally:
        os.close(fd)
