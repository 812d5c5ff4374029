"""Deploy: commit the result to a local git repository (initialised if needed). No push."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from foundry.errors import WorkspaceError
from foundry.orchestrator.shell import scrubbed_env

DEFAULT_GITIGNORE = "__pycache__/\n*.pyc\n.pytest_cache/\n.foundry/summary.json\n"
AUTHOR_FALLBACK = ("-c", "user.name=foundry", "-c", "user.email=foundry@localhost")


@dataclass
class DeployResult:
    commit: str | None
    initialized: bool
    repository: str
    message: str


def _git(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = scrubbed_env() | {"GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(
        ["git", *args],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise WorkspaceError(f"git {args[0]} failed in {workdir}: {last}", "see `git status` there")
    return proc


def require_git() -> None:
    if shutil.which("git") is None:
        raise WorkspaceError(
            "git is not installed; the deploy phase needs it",
            "install git, or leave deploy out of --phases",
        )


def commit_message(name: str, task: str, build_id: str) -> tuple[str, str]:
    first = task.strip().splitlines()[0] if task.strip() else ""
    subject = f"foundry build {name}: {first}"
    if len(subject) > 72:
        subject = subject[:69] + "..."
    return subject, f"Task: {task.strip()}\n\nfoundry build id: {build_id}"


def deploy(workdir: Path, *, name: str, task: str, build_id: str, mode: str) -> DeployResult:
    """Commit everything under `workdir`. A new project gets its own repository even inside
    another one; an existing project inside a repository commits there, limited to its dir."""
    require_git()
    workdir = workdir.resolve()
    probe = _git(workdir, "rev-parse", "--show-toplevel", check=False)
    toplevel = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    initialized = False
    if toplevel is None or (toplevel != workdir and mode == "new"):
        _git(workdir, "init", "-q")
        initialized, toplevel = True, workdir
        gitignore = workdir / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text(DEFAULT_GITIGNORE, encoding="utf-8")
    _git(workdir, "add", "-A", "--", ".")
    if _git(workdir, "diff", "--cached", "--quiet", "--", ".", check=False).returncode == 0:
        return DeployResult(None, initialized, str(toplevel), "nothing to commit")
    author: tuple[str, ...] = ()
    for key in ("user.name", "user.email"):
        if _git(workdir, "config", "--get", key, check=False).returncode != 0:
            author = AUTHOR_FALLBACK
    subject, body = commit_message(name, task, build_id)
    _git(workdir, *author, "commit", "-q", "-m", subject, "-m", body, "--", ".")
    sha = _git(workdir, "rev-parse", "HEAD").stdout.strip()
    return DeployResult(sha, initialized, str(toplevel), subject)
