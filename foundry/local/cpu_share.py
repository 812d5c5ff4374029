"""The machine's cores shared fairly among the llama.cpp processes foundry runs on it.

llama.cpp's threads meet at a barrier after every operation. Two processes that each run a
thread per core on the same cores make every barrier wait for a thread the scheduler has
parked: measured here (2 cores, SmolLM2-135M, 1,500-token prefill and 64 decoded tokens),
two such processes at once took 31.6 s to prefill and 218 s to decode, against 6.5 s and
0.8 s alone. Two things fix it:

* **No spinning.** ggml's default thread pool polls (level 50) while it waits for work; a
  pool made with poll 0 sleeps instead, so a waiting process gives its core away. Alone it
  is as fast (6.3 s, 0.8 s); two at once with 2 threads each: 26.6 s and 3.6 s.
* **A share of the cores.** Each llama.cpp process of foundry's registers itself (a file
  named by its pid, holding the process's start time so a reused pid does not count), and
  before each request takes cores / live processes threads. Two at once with 1 thread
  each: 13.7-14.5 s and 1.3-1.4 s, 2.1-2.3x one alone.

The registry is the user's, not a FOUNDRY_HOME's: two builds with different homes share the
same cores (measured: with a registry per home, a build beside another decoded at 1-2
tokens/s). It lives in $XDG_RUNTIME_DIR/foundry/llamacpp, else /tmp/foundry-UID/llamacpp,
made 0700 and used only if it is a real directory of this user's that no one else can write
(else $FOUNDRY_HOME/run/llamacpp); FOUNDRY_CPU_SHARE_DIR names another.
A process that set `llamacpp.threads` keeps its number; it still counts for the others.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from foundry.config import foundry_home
from foundry.fsutil import write_atomic

_open_in_this_process = 0  # models loaded in this process share its one entry


def registry_dir() -> Path:
    named = os.environ.get("FOUNDRY_CPU_SHARE_DIR")
    if named:
        return Path(named)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        Path(runtime) / "foundry"
        if runtime
        else Path(tempfile.gettempdir()) / (f"foundry-{os.getuid()}")
    )
    return (base if _private_dir(base) else foundry_home() / "run") / "llamacpp"


def _private_dir(path: Path) -> bool:
    """`path` made (0700) or found as a directory of this user's, not a link, that no one
    else can write: in /tmp anyone could have made it first, to count as us or to starve us."""
    with contextlib.suppress(FileExistsError, OSError):
        path.mkdir(mode=0o700, parents=False)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid it names one process, never a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    return stat[stat.rindex(")") + 2 :].split()[19]


class CpuShare:
    """This process's place among foundry's llama.cpp processes on this machine."""

    def __init__(self, cores: int, directory: Path | None = None) -> None:
        self.cores = max(1, cores)
        self.directory = directory or registry_dir()
        self.entry = self.directory / str(os.getpid())
        stamp = _start_time(os.getpid())
        self.registered = False
        if stamp is None:  # no /proc (macOS): every process takes all the cores, as before
            return
        global _open_in_this_process
        with contextlib.suppress(OSError):
            write_atomic(self.entry, stamp)
            self.registered = True
            _open_in_this_process += 1

    def live(self) -> int:
        """foundry's llama.cpp processes running now, this one included; stale entries (a
        process that died without closing) are removed on the way."""
        count = 1
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return count
        for entry in entries:
            if not entry.name.isdigit() or entry == self.entry:
                continue
            try:
                alive = _start_time(int(entry.name)) == entry.read_text().strip()
            except OSError:
                alive = False
            if alive:
                count += 1
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return count

    def threads(self) -> int:
        """The threads this process should use for its next request."""
        if not self.registered:
            return self.cores
        return max(1, self.cores // self.live())

    def close(self) -> None:
        global _open_in_this_process
        if not self.registered:
            return
        self.registered = False
        _open_in_this_process -= 1
        if _open_in_this_process == 0:
            with contextlib.suppress(OSError):
                self.entry.unlink()
