"""What the sandbox shows a command, by path: the user's secrets it hides, the procfs files it
makes read-only or masks, the orchestrator's directories it keeps read-only, and the
toolchain directories it shows again where a private mount would hide them."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

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
# procfs inside the sandbox is a fresh mount, and bubblewrap leaves /proc/sys writable when
# foundry runs as root (it protects it only when access(W_OK) succeeds, and procfs answers
# EACCES). What can change the kernel is read-only; what describes it to an attacker is
# masked, as container runtimes do.
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq")
PROC_MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/sys/firmware",
)
# Toolchains under HOME that a command needs where HOME is hidden whole (root's 0700 home,
# when the command runs as another uid): shown again read-only.
TOOLCHAIN_DIRS_IN_HOME = (
    ".pyenv",
    ".rustup",
    ".cargo/bin",
    ".nvm",
    ".asdf",
    ".volta",
    ".local/bin",
    ".local/lib",
    ".bun",
    ".deno",
    "go",
)


def existing(paths: Iterable[Path], *, dirs: bool) -> list[str]:
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


def runtime_dirs() -> list[str]:
    """The interpreter's prefixes (the real one behind a venv's link too), the PATH
    directories and the toolchains under HOME: what the test command may need."""
    return list(_runtime_dirs(os.environ.get("PATH", ""), str(Path.home())))


@functools.lru_cache(maxsize=8)
def _runtime_dirs(path_variable: str, home_dir: str) -> tuple[str, ...]:
    """Per PATH and HOME: every command of a build asks, and the answer costs ~1 ms."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    candidates.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    candidates.update(path_variable.split(os.pathsep))
    home = Path(home_dir)
    candidates.update(str(home / name) for name in TOOLCHAIN_DIRS_IN_HOME)
    found = set()
    for candidate in candidates:
        real = os.path.realpath(candidate) if candidate else ""
        if real.startswith("/") and real != "/" and os.path.isdir(real):
            found.add(real)
    # A directory inside another one is already shown by it.
    return tuple(sorted(d for d in found if not any(d.startswith(o + "/") for o in found)))


def runtime_dirs_under(covered: str) -> list[str]:
    """The runtime directories a private mount at `covered` would hide."""
    return [d for d in runtime_dirs() if d.startswith(covered.rstrip("/") + "/")]


def runtime_dirs_under_tmp() -> list[str]:
    """A CI checkout with its venv under /tmp: the private /tmp would hide it."""
    return runtime_dirs_under("/tmp")


def can_enter(path: str, uid: int, gid: int) -> bool:
    """Whether `uid` (with only `gid`) may pass through the directory `path`."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def unreachable_ancestors(path: str, uid: int, gid: int) -> list[str]:
    """The directories above `path` that `uid` cannot pass through (root's home, pytest's
    0700 base), outermost first."""
    parts = Path(path).parts
    found = []
    for depth in range(2, len(parts)):
        ancestor = os.path.join(*parts[:depth])
        if not can_enter(ancestor, uid, gid):
            found.append(ancestor)
    return found
