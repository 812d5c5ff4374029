"""Every process a command starts ends with it, and their number is capped.

A pids cgroup per command (where this user may create one: root on cgroup v1, a delegated
subtree on v2) caps the processes *and threads* of the command's whole tree and lists
them all at the end, `setsid`/double-fork children included, so they can be killed. Where
no cgroup can be made, the command's environment carries a random cookie and the end of
the command kills every process of this user whose environment still holds it (a process
that clears its environment escapes this one; the PID namespace of the sandbox does not
depend on either).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from pathlib import Path

COOKIE_ENV = "FOUNDRY_RUN"
_KILL_ROUNDS = 50
_REMOVE_WAIT_S = 2.0


def _pause(round_: int, longest: float = 0.01) -> float:
    """1 ms, then doubling to `longest`: a killed process is usually gone within a
    millisecond or two (the sandbox's watcher, ending with its namespace), and a fixed 10 ms
    sleep was most of what ending a short command cost."""
    return min(0.001 * 2**round_, longest)


def _own_cgroup_dirs() -> list[Path]:
    """Where this process's pids cgroup lives: the v1 `pids` hierarchy, then v2."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    v1_root = v2_root = None
    for line in mounts:
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        mount_point = fields[0].split()[4]
        fstype, _source, options = ([*fields[1].split(), "", ""])[:3]
        if fstype == "cgroup" and "pids" in options.split(","):
            v1_root = mount_point
        elif fstype == "cgroup2" and v2_root is None:
            v2_root = mount_point
    found: list[Path] = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if v1_root and "pids" in controllers.split(","):
            found.insert(0, Path(v1_root + path.rstrip("/")))
        elif v2_root and controllers == "" and _id == "0":
            found.append(Path(v2_root + path.rstrip("/")))
    return found


def _remove_stale(parent: Path) -> None:
    """Groups of a foundry that died (SIGKILL, a crash, the machine's OOM killer): whatever
    its command left running in there is killed, then the group removed. bwrap's
    --die-with-parent covers most deaths, not all (a death before bwrap armed it)."""
    try:
        names = [p.name for p in parent.iterdir() if p.name.startswith("foundry-")]
    except OSError:
        return
    for name in names:
        pid = name.split("-")[1]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        PidsCgroup(parent / name, -1).remove()


class PidsCgroup:
    """One command's pids cgroup: join it from the child, kill everything in it, remove it."""

    def __init__(self, path: Path, procs_fd: int) -> None:
        self.path = path
        self.procs_fd = procs_fd  # open for writing before the fork: the child only writes

    @classmethod
    def create(cls, max_pids: int | None) -> PidsCgroup | None:
        """A new cgroup below ours with pids.max set, or None when this system will not
        let us make one (not root, no pids controller, v2 without delegation)."""
        for parent in _own_cgroup_dirs():
            _remove_stale(parent)
            path = parent / f"foundry-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                if max_pids is not None:
                    (path / "pids.max").write_text(str(max_pids))
                fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path, fd)
        return None

    def join(self) -> None:
        """Called in the child between fork and exec: everything it starts is counted."""
        os.write(self.procs_fd, str(os.getpid()).encode())

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def kill_all(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / "pids.max").write_text("0")  # nothing new forks while we kill
        for round_ in range(_KILL_ROUNDS):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_pause(round_))

    def remove(self) -> None:
        self.kill_all()
        if self.procs_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.procs_fd)
            self.procs_fd = -1
        deadline = time.monotonic() + _REMOVE_WAIT_S
        round_ = 0
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                # Killed processes leave the group once reaped; an empty group is harmless.
                if time.monotonic() > deadline:
                    return
                time.sleep(_pause(round_, longest=0.02))
                round_ += 1


def processes_with_cookie(cookie: str) -> list[int]:
    """The processes of this user whose environment holds COOKIE_ENV=cookie (Linux /proc)."""
    needle = f"{COOKIE_ENV}={cookie}".encode()
    found = []
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


class Containment:
    """What ends a command's processes: its cgroup where one could be made, else its cookie."""

    def __init__(self, cgroup: PidsCgroup | None) -> None:
        self.cgroup = cgroup
        self.cookie = secrets.token_hex(16)

    @classmethod
    def start(cls, max_pids: int | None, *, use_cgroup: bool = True) -> Containment:
        return cls(PidsCgroup.create(max_pids) if use_cgroup else None)

    @property
    def caps_processes(self) -> bool:
        return self.cgroup is not None

    def in_child(self) -> None:
        if self.cgroup is not None:
            self.cgroup.join()

    def end(self) -> None:
        """Kill whatever the command left running; safe to call more than once."""
        if self.cgroup is not None:
            self.cgroup.remove()
            return
        # A process in the middle of exec shows an empty environment for an instant, so one
        # empty scan proves nothing: done after two in a row.
        empty_scans = 0
        for _ in range(_KILL_ROUNDS):
            pids = processes_with_cookie(self.cookie)
            empty_scans = 0 if pids else empty_scans + 1
            if empty_scans == 2:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
