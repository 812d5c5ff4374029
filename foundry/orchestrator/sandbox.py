"""The sandbox for the commands a model chose: its run_command calls and the test command.

A Sandbox turns the build's settings (`build.sandbox`, `build.network`, `build.limits`,
`build.env_passthrough`) into what one command runs with: the argv, the environment, the
limits set in the child before exec, and its Containment (containment.py). On Linux with
bubblewrap the command gets new PID, IPC and UTS namespaces (and network, when its phase
has none), a /proc of its own, no capabilities, the file system read-only but for the
working directory, a private /tmp and HOME, the user's secret files hidden, and it dies with
foundry. Without bubblewrap ("off", or "auto" where it is missing) it runs unconfined, but
the environment, the limits and the end of every child still hold. docs/build.md, "The
sandbox", says exactly what is and is not guaranteed.
"""

from __future__ import annotations

import functools
import os
import resource
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

if TYPE_CHECKING:
    from foundry.config import BuildConfig, SandboxLimits

TOOL = "bwrap"
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap, or dnf install bubblewrap)"
# What every command gets from foundry's environment, when set; nothing else passes
# unless the user names it in build.env_passthrough.
BASE_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_COLLATE",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
    "TERM",
    "USER",
    "LOGNAME",
)
# Where toolchains live (not secrets): without them shims on PATH stop working.
TOOLCHAIN_ENV = (
    "PYENV_ROOT",
    "PYENV_VERSION",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "GOROOT",
    "JAVA_HOME",
    "NVM_DIR",
    "NVM_BIN",
    "VOLTA_HOME",
    "ASDF_DIR",
    "ASDF_DATA_DIR",
    "CONDA_PREFIX",
    "VIRTUAL_ENV",
    # CA bundles (file paths) that package installs need behind a TLS-inspecting proxy.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
)
# Set for every command: the model edits files within the second its last run compiled
# them, and mtime-stamped .pyc files would then run the old code.
FIXED_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
# Toolchain managers that find their toolchains under HOME by default: HOME moves into
# the sandbox, so they are pointed at the user's copy (read-only there).
TOOLCHAIN_HOMES = {"PYENV_ROOT": ".pyenv", "RUSTUP_HOME": ".rustup", "ASDF_DATA_DIR": ".asdf"}
# Under the user's home: credentials, keys, tokens and shell histories. Hidden in the
# sandbox (an empty directory, or /dev/null for a file) when they exist.
HIDDEN_HOME_DIRS = (
    ".ssh",
    ".aws",
    ".azure",
    ".config",
    ".gnupg",
    ".docker",
    ".kube",
    ".claude",
    ".password-store",
    ".terraform.d",
    ".local/share/keyrings",
    ".mozilla",
)
HIDDEN_HOME_FILES = (
    ".netrc",
    ".npmrc",
    ".yarnrc",
    ".pypirc",
    ".git-credentials",
    ".claude.json",
    ".pgpass",
    ".my.cnf",
    ".boto",
    ".s3cfg",
    ".vault-token",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".m2/settings.xml",
    ".gradle/gradle.properties",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".Xauthority",
)
# Per-user runtime sockets (ssh/gpg agents, D-Bus) and container engines (root-equivalent).
HIDDEN_SYSTEM_DIRS = ("/run/user",)
HIDDEN_SYSTEM_FILES = (
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
)
# The orchestrator's records stay read-only inside: its artifacts, and git (deploy runs git
# outside the sandbox, so hooks or config written there would run unconfined).
READ_ONLY_INSIDE = (".foundry", ".git")
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


def runtime_dirs_under_tmp() -> list[str]:
    """The interpreter's prefixes and the PATH directories that live under /tmp (a CI
    checkout with its venv, a throwaway venv): the private /tmp would hide them, and the
    test command with them. They are shown again read-only."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    candidates.update(os.environ.get("PATH", "").split(os.pathsep))
    found = set()
    for candidate in candidates:
        real = os.path.realpath(candidate) if candidate else ""
        if real.startswith("/tmp/") and os.path.isdir(real):
            found.add(real)
    # A directory inside another one is already shown by it.
    return sorted(d for d in found if not any(d.startswith(o + "/") for o in found))


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


def _namespace_flags(*, network: bool) -> list[str]:
    flags = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
    flags += ["--unshare-uts", "--hostname", "foundry-sandbox", "--cap-drop", "ALL"]
    return flags if network else [*flags, "--unshare-net"]


def _existing(paths: Iterable[Path], *, dirs: bool) -> list[str]:
    """The real paths of those that exist (as a directory, or as a non-directory)."""
    found: list[str] = []
    for path in paths:
        try:
            if path.is_dir() != dirs or not (path.exists() or path.is_symlink()):
                continue
        except OSError:
            continue
        real = os.path.realpath(path)
        if real != "/" and real not in found:
            found.append(real)
    return found


def command_env(
    home: str, tmp: str, passthrough: Iterable[str], source: dict[str, str] | None = None
) -> dict[str, str]:
    """The allow-list environment: BASE_ENV, toolchain locations and what the user named;
    HOME and TMPDIR point into the sandbox."""
    source = dict(os.environ) if source is None else source
    names = (*BASE_ENV, *TOOLCHAIN_ENV, *passthrough)
    env = {name: source[name] for name in names if name in source}
    user_home = Path(source.get("HOME") or Path.home())
    for name, relative in TOOLCHAIN_HOMES.items():
        if name not in env and (user_home / relative).is_dir():
            env[name] = str(user_home / relative)
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.update(FIXED_ENV)
    env["HOME"] = home
    env["TMPDIR"] = tmp
    return env


def _set_limits(limits: SandboxLimits, processes: int | None) -> None:
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


def _user_task_count() -> int:
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


@dataclass
class Launch:
    """One command, ready for Popen; `containment.end()` after it, always."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    containment: Containment
    confined: bool


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
        return _existing([*dirs, *extra], dirs=True), _existing([*files, *extra], dirs=False)

    def bwrap_argv(self, command: str, *, network: bool, home: str) -> list[str]:
        assert self.found.tool is not None
        workdir = str(self.workdir)
        argv = [self.found.tool, *_namespace_flags(network=network)]
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        if self.settings.limits.file_size_mb and _supports_size(self.found.tool):
            # The private /tmp lives in memory: no larger than the largest file allowed.
            argv += ["--size", str(self.settings.limits.file_size_mb * 1024 * 1024)]
        argv += ["--tmpfs", "/tmp"]
        for directory in runtime_dirs_under_tmp():  # a venv or checkout made under /tmp
            argv += ["--ro-bind", directory, directory]
        # A later mount covers an earlier one: what is hidden goes after the working
        # directory's bind (a ledger inside it, --dir . --db ./foundry.db, stays hidden),
        # except a hidden directory that holds the working directory, which goes before.
        hidden_dirs, hidden_files = self.hidden_paths()
        around = [d for d in hidden_dirs if self.workdir.is_relative_to(d)]
        for directory in around:
            argv += ["--tmpfs", directory]
        argv += ["--bind", home, home, "--bind", workdir, workdir]
        for name in READ_ONLY_INSIDE:
            inside = self.workdir / name
            if inside.is_dir() and not inside.is_symlink():
                argv += ["--ro-bind", str(inside), str(inside)]
        for directory in hidden_dirs:
            if directory not in around:
                argv += ["--tmpfs", directory]
        for file in hidden_files:
            argv += ["--ro-bind", "/dev/null", file]
        return [*argv, "--chdir", workdir, "--", "/bin/sh", "-c", command]

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
            nproc = _user_task_count() + processes
        if self.confined:
            argv = self.bwrap_argv(command, network=network, home=home)
        else:
            argv = ["/bin/sh", "-c", command]
            env[COOKIE_ENV] = containment.cookie

        def preexec() -> None:
            containment.in_child()
            _set_limits(limits, nproc)

        return Launch(argv, env, preexec, containment, self.confined)

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
