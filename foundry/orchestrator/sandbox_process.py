"""What a sandboxed command's process gets besides bubblewrap's argv: how it leaves root,
its seccomp filter's descriptor, its lifeline, and the limits set in the child before exec."""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from foundry.orchestrator import seccomp

if TYPE_CHECKING:
    from foundry.config import SandboxLimits

SETPRIV = "setpriv"  # util-linux: how a command started by root leaves root
# Only what setpriv needs to leave root; it drops them with root.
SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


def drop_root(uid: int, gid: int) -> list[str]:
    return [
        SETPRIV,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]


def seccomp_pipe() -> int | None:
    """A pipe holding the compiled filter for bwrap's --seccomp (read once, by bwrap)."""
    code = seccomp.program()
    if code is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, code)  # a few hundred bytes: well inside the pipe's buffer
    finally:
        os.close(write_end)
    return read_end


# bwrap arms --die-with-parent in each of its two processes only after its setup, and never
# checks whether the parent is already gone: a foundry killed in that window (or bwrap's
# outer process dying in its init's window) left the sandbox's init and the command running,
# reparented to the host's init. So the command also holds a lifeline: a pipe whose only
# write end is foundry's. A watcher inside reads it; end of file (foundry is gone, however it
# died) kills every process of the command, and the sandbox's init exits with its child.
LIFELINE = '(read line </proc/self/fd/{fd}; kill -9 -1) >/dev/null 2>&1 & exec /bin/sh -c "$1"'


def set_limits(limits: SandboxLimits, processes: int | None) -> None:
    """Called in the child before exec. RLIMIT_NPROC is ignored for root by the kernel."""
    mib = 1024 * 1024
    wanted = [
        (resource.RLIMIT_AS, limits.memory_mb and limits.memory_mb * mib),
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_FSIZE, limits.file_size_mb and limits.file_size_mb * mib),
        (resource.RLIMIT_NPROC, processes),
    ]
    for kind, value in wanted:
        if not value:
            continue
        try:
            _soft, hard = resource.getrlimit(kind)
            capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (capped, capped))
        except (ValueError, OSError):  # a limit this system does not have: the rest hold
            continue


def user_task_count() -> int:
    """Processes and threads of this user now: RLIMIT_NPROC counts them all, not only ours."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return count
