"""The sandbox for the commands a model chose: its run_command calls and the test command.

A Sandbox turns the build's settings (`build.sandbox`, `build.network`, `build.limits`,
`build.env_passthrough`) into what one command runs with: the argv, the environment, the
limits set in the child before exec, and its Containment (containment.py). On Linux with
bubblewrap the command gets new PID, IPC and UTS namespaces (and network, when its phase
has none), a /proc of its own with the kernel's settings read-only, no capabilities, a
seccomp filter, never uid 0 (ownership.py), the file system read-only but for the working
directory, a private /tmp, /dev/shm and HOME, the user's secret files hidden, and a lifeline
that ends it with foundry. Without bubblewrap ("off", or "auto" where it is missing) it runs
unconfined, but the environment, the limits and the end of every child still hold.
docs/sandbox.md says exactly what is and is not guaranteed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foundry.errors import FoundryError
from foundry.orchestrator.containment import COOKIE_ENV, Containment, PidsCgroup
from foundry.orchestrator.ownership import Loan, command_uid
from foundry.orchestrator.sandbox_env import command_env
from foundry.orchestrator.sandbox_paths import (
    HIDDEN_HOME_DIRS,
    HIDDEN_HOME_FILES,
    HIDDEN_SYSTEM_DIRS,
    HIDDEN_SYSTEM_FILES,
    PROC_MASKED,
    PROC_READ_ONLY,
    READ_ONLY_INSIDE,
    existing,
    runtime_dirs,
    runtime_dirs_under,
    unreachable_ancestors,
)
from foundry.orchestrator.sandbox_process import (
    LIFELINE,
    SETPRIV,
    SETPRIV_CAPS,
    drop_root,
    seccomp_pipe,
    set_limits,
    user_task_count,
)

if TYPE_CHECKING:
    from foundry.config import BuildConfig

TOOL = "bwrap"
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap, or dnf install bubblewrap)"
# bwrap's own two processes (the monitor and the namespace's init) count against the
# process limit; the user's number is for the command's own.
BWRAP_PROCESSES = 2


class SandboxUnavailable(FoundryError):
    """build.sandbox is "require" and the sandbox cannot run here."""


@dataclass(frozen=True)
class Availability:
    tool: str | None  # the bwrap path, when it works here
    reason: str | None = None  # why not, in a few words

    @property
    def ok(self) -> bool:
        return self.tool is not None


@functools.cache
def _probe(tool: str) -> str | None:
    """None when bwrap can create every namespace foundry asks for, else its complaint."""
    argv = [tool, *_namespace_flags(network=False), "--ro-bind", "/", "/"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{tool} did not run ({exc})"
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()[-1]
    return f"{tool} cannot create namespaces here ({last})"


@functools.cache
def _supports_size(tool: str) -> bool:
    """bwrap 0.7+ can cap a tmpfs (--size); older ones refuse the option."""
    try:
        proc = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in proc.stdout + proc.stderr


def process_limit_possible() -> bool:
    """Whether build.limits.processes can hold here: RLIMIT_NPROC for a regular user, a pids
    cgroup for root (the kernel exempts root from RLIMIT_NPROC)."""
    if os.getuid() != 0:
        return True
    probe = PidsCgroup.create(1)
    if probe is None:
        return False
    probe.remove()
    return True


def availability() -> Availability:
    """Whether the sandbox can run on this machine, and if not, why (probed once)."""
    if sys.platform != "linux":
        return Availability(None, f"no sandbox on {sys.platform} yet (Linux bubblewrap only)")
    tool = shutil.which(TOOL)
    if tool is None:
        return Availability(None, f"{TOOL} is not installed")
    if os.getuid() == 0 and shutil.which(SETPRIV) is None:
        return Availability(None, f"{SETPRIV} (util-linux) is missing; it drops root inside")
    problem = _probe(tool)
    return Availability(None, problem) if problem else Availability(tool)


def require_available(mode: str) -> Availability:
    """The sandbox's availability; SandboxUnavailable when build.sandbox is "require"."""
    found = availability()
    if mode == "require" and not found.ok:
        raise SandboxUnavailable(
            f'build.sandbox is "require" but {found.reason}',
            f'{INSTALL_HINT}, or set build.sandbox to "auto" to run commands unconfined',
        )
    return found


def _namespace_flags(*, network: bool, drop_root: bool = False) -> list[str]:
    flags = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
    flags += ["--unshare-uts", "--hostname", "foundry-sandbox", "--cap-drop", "ALL"]
    if drop_root:  # only what setpriv needs to leave root, and it drops them with root
        flags += [arg for cap in SETPRIV_CAPS for arg in ("--cap-add", cap)]
    return flags if network else [*flags, "--unshare-net"]


def _parents_inside(path: str, mounts: list[str], made: set[str]) -> list[str]:
    """`--dir` for each missing parent of `path` inside the deepest of `mounts` (an empty
    tmpfs) that holds it, 0755: bwrap would make them 0700, which a command running as
    another uid could not pass through."""
    holders = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
    if not holders:
        return []
    holder = max(holders, key=len)
    args: list[str] = []
    parts = Path(path).relative_to(holder).parts
    for depth in range(1, len(parts)):
        parent = os.path.join(holder, *parts[:depth])
        if parent not in made:
            made.add(parent)
            args += ["--perms", "0755", "--dir", parent]
    return args


@dataclass
class Launch:
    """One command, ready for Popen; `end()` after it, always."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    containment: Containment
    confined: bool
    pass_fds: tuple[int, ...] = ()
    loan: Loan | None = None
    lifeline: int | None = None  # foundry's end of the sandbox's lifeline pipe

    def started(self) -> None:
        """After Popen: the child has its copies of the descriptors."""
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()

    def end(self) -> None:
        """Kill what the command left running, then give the working directory back (no
        process of the command is left to race the walk). Safe to call more than once."""
        self.started()
        self.containment.end()
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
        if self.loan is not None:
            self.loan.give_back()
            self.loan = None


class Sandbox:
    """One build's sandbox: its settings, its private HOME (kept for the build's commands,
    removed by close()), and the Launch of each command."""

    def __init__(
        self,
        workdir: Path,
        settings: BuildConfig,
        *,
        hidden: Iterable[Path] = (),
        found: Availability | None = None,
    ) -> None:
        self.workdir = Path(os.path.realpath(workdir))
        self.settings = settings
        self.hidden = tuple(hidden)
        if settings.sandbox == "off":
            found = Availability(None, 'build.sandbox is "off"')
        self.found = found if found is not None else require_available(settings.sandbox)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._hidden: tuple[list[str], list[str]] | None = None
        # Who the command runs as when foundry is root (None: as foundry's own user).
        self.run_as = command_uid(self.workdir) if self.found.ok else None

    @property
    def confined(self) -> bool:
        return self.found.ok

    def notice(self) -> str | None:
        """The one line a build shows at its start when a guarantee does not hold here:
        commands run unconfined, or the process limit cannot be enforced."""
        no_limit = self.settings.limits.processes is not None and not process_limit_possible()
        if self.confined:
            if not no_limit:
                return None
            return (
                "build.limits.processes cannot be enforced here: root is exempt from "
                "RLIMIT_NPROC and no pids cgroup can be created — run foundry as a regular "
                "user, or where /sys/fs/cgroup is writable"
            )
        if self.settings.sandbox == "off":
            fix = 'set build.sandbox to "auto" to confine them'
        else:
            fix = f'{INSTALL_HINT}, or set build.sandbox to "require" to refuse to build without it'
        limits = "; no process limit either (root, no pids cgroup)" if no_limit else ""
        return (
            f"no command sandbox: {self.found.reason}; the model's commands can read and "
            "write whatever your user can (the environment allow-list and the limits still "
            f"apply{limits}) — {fix}"
        )

    def network_for(self, phase: str | None) -> bool:
        return self.settings.network_for(phase)

    def _home(self) -> tuple[str, str]:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="foundry-sandbox-")
            for name in ("home", "tmp"):
                os.mkdir(os.path.join(self._scratch.name, name), 0o700)
                if self.run_as is not None:  # the command's own HOME is its to write
                    os.chown(os.path.join(self._scratch.name, name), *self.run_as)
        scratch = os.path.realpath(self._scratch.name)
        return os.path.join(scratch, "home"), os.path.join(scratch, "tmp")

    def hidden_paths(self) -> tuple[list[str], list[str]]:
        """(directories, files) the command must not see."""
        home = Path.home()
        dirs = [home / name for name in HIDDEN_HOME_DIRS]
        dirs += [Path(p) for p in HIDDEN_SYSTEM_DIRS]
        files = [home / name for name in HIDDEN_HOME_FILES]
        files += [Path(p) for p in HIDDEN_SYSTEM_FILES]
        extra = list(self.hidden)
        return existing([*dirs, *extra], dirs=True), existing([*files, *extra], dirs=False)

    def _private_mounts(self, uid: tuple[int, int] | None, home: str) -> list[str]:
        """Directories hidden whole behind an empty tmpfs, outermost first: /tmp always,
        and where the command runs as another uid, the outermost directory on the host's
        file system it could not pass through on the way to the working directory, its HOME
        or a toolchain (root's 0700 home)."""
        covered = {"/tmp"}
        if uid is not None:
            for path in (str(self.workdir), home, *runtime_dirs()):
                covered.update(unreachable_ancestors(path, *uid)[:1])
        # One inside another is already hidden by it (its binds get their parents made).
        kept = [c for c in covered if not any(c.startswith(o + "/") for o in covered)]
        return sorted(kept, key=lambda path: (path.count("/"), path))

    def bwrap_argv(
        self,
        command: str,
        *,
        network: bool,
        home: str,
        seccomp_fd: int | None = None,
        lifeline_fd: int | None = None,
    ) -> list[str]:
        assert self.found.tool is not None
        workdir = str(self.workdir)
        uid = self.run_as
        argv = [self.found.tool, *_namespace_flags(network=network, drop_root=uid is not None)]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for path in PROC_READ_ONLY:
            if os.path.exists(path):
                argv += ["--ro-bind", path, path]
        for path in PROC_MASKED:
            if os.path.isdir(path):
                argv += ["--tmpfs", path]
            elif os.path.exists(path):
                argv += ["--ro-bind", "/dev/null", path]
        size: list[str] = []
        if self.settings.limits.file_size_mb and _supports_size(self.found.tool):
            # The private /tmp and /dev/shm live in memory: no larger than the largest file.
            size = ["--size", str(self.settings.limits.file_size_mb * 1024 * 1024)]
        argv += ["--perms", "1777", *size, "--tmpfs", "/dev/shm"]
        private = self._private_mounts(uid, home)
        for covered in private:
            perms = ["--perms", "1777", *size] if covered == "/tmp" else ["--perms", "0755"]
            argv += [*perms, "--tmpfs", covered]
        shown = {d for covered in private for d in runtime_dirs_under(covered)}
        made = set(private)
        for directory in sorted(shown):  # a venv or a toolchain in there, read-only
            argv += [*_parents_inside(directory, private, made), "--ro-bind", directory, directory]
        # A later mount covers an earlier one: what is hidden goes after the working
        # directory's bind (a ledger inside it, --dir . --db ./foundry.db, stays hidden),
        # except a hidden directory that holds the working directory, which goes before.
        hidden_dirs, hidden_files = self._hidden if self._hidden else self.hidden_paths()
        around = [d for d in hidden_dirs if self.workdir.is_relative_to(d)]
        for directory in around:
            argv += ["--tmpfs", directory]
        for path in (home, workdir):
            argv += [*_parents_inside(path, [*private, *around], made), "--bind", path, path]
        for name in READ_ONLY_INSIDE:
            inside = self.workdir / name
            if inside.is_dir() and not inside.is_symlink():
                argv += ["--ro-bind", str(inside), str(inside)]
        for directory in hidden_dirs:
            if directory not in around:
                argv += ["--tmpfs", directory]
        for file in hidden_files:
            argv += ["--ro-bind", "/dev/null", file]
        shell = ["/bin/sh", "-c", command]
        if lifeline_fd is not None:
            shell = ["/bin/sh", "-c", LIFELINE.format(fd=lifeline_fd), "sh", command]
        if uid is not None:
            # Root inside is still root to the kernel; the command runs as uid, with no
            # capability left to regain and no set-id binary to gain one from.
            shell = [*drop_root(*uid), *shell]
        return [*argv, "--chdir", workdir, "--", *shell]

    def launch(self, command: str, *, network: bool) -> Launch:
        home, tmp = self._home()
        limits = self.settings.limits
        env = command_env(home, "/tmp" if self.confined else tmp, self.settings.env_passthrough)
        processes = limits.processes
        containment = Containment.start(
            processes + BWRAP_PROCESSES if processes and self.confined else processes
        )
        nproc = None
        if processes and os.getuid() != 0 and not containment.caps_processes:
            nproc = user_task_count() + processes
        seccomp_fd = lifeline_fd = lifeline = None
        loan = None
        if self.confined:
            self._hidden = self.hidden_paths()  # once per command: a ledger's WAL may appear
            seccomp_fd = seccomp_pipe()
            lifeline_fd, lifeline = os.pipe()
            # The watcher opens it by path, as the command's uid: readable, never writable.
            os.fchmod(lifeline_fd, 0o444)
            argv = self.bwrap_argv(
                command, network=network, home=home, seccomp_fd=seccomp_fd, lifeline_fd=lifeline_fd
            )
            if self.run_as is not None:
                loan = Loan(self.workdir, *self.run_as, skip=self._hidden[1])
                loan.lend()
        else:
            argv = ["/bin/sh", "-c", command]
            env[COOKIE_ENV] = containment.cookie

        def preexec() -> None:
            containment.in_child()
            set_limits(limits, nproc)

        fds = tuple(fd for fd in (seccomp_fd, lifeline_fd) if fd is not None)
        return Launch(argv, env, preexec, containment, self.confined, fds, loan, lifeline)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def unconfined(workdir: Path) -> Sandbox:
    """A Sandbox with the default settings and no bubblewrap (tests and tools without a
    build: the environment, the limits and the end of every child still hold)."""
    from foundry.config import BuildConfig

    return Sandbox(workdir, BuildConfig(sandbox="off"))


def foundry_paths(ledger: Path | None = None) -> list[Path]:
    """foundry's own data (FOUNDRY_HOME: models, caches, the default ledger) and the
    build's ledger with its WAL files: hidden from the model's commands."""
    from foundry.config import foundry_home

    paths = [foundry_home()]
    if ledger is not None:
        paths += [Path(f"{ledger}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    return paths
