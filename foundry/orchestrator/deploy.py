"""Deploy: commit the result to a local git repository (initialised if needed). No push.

Where the commit goes: a repository of the working directory's own (made by `git init` when
there is none), unless the user named an existing directory inside a repository with --dir;
only then does it go into that enclosing repository. git runs outside the sandbox, so deploy
refuses a .git that changed during the build: a .git file ("gitdir: ...") or link sends git,
its hooks and its commit to another repository, and `git init` through a dangling link
makes one wherever the link points.

A .git that is there when a build starts is read-only to the sandboxed commands, but one a
model's command made in an earlier build would be taken for the user's. So deploy records in
.foundry/ the .git it made itself, and in a directory foundry made, any other .git is refused.
And git runs with hooks and fsmonitor off: hooks often run files of the work tree (husky's
core.hooksPath=.husky, pre-commit's local hooks), and those are the model's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from foundry.errors import WorkspaceError
from foundry.fsutil import NotAFile, TooLarge, kind_beneath, read_beneath, write_beneath
from foundry.orchestrator.phases import ARTIFACT_DIR, MADE_BY_FOUNDRY, STATE_FILES, made_by_foundry
from foundry.orchestrator.shell import scrubbed_env

# The .git deploy made (its device and inode), in the .foundry/ the sandbox keeps read-only.
GIT_RECORD = "git-made-by-foundry"
_STATE = [f"{ARTIFACT_DIR}/{name}" for name in (*STATE_FILES, GIT_RECORD)]
DEFAULT_GITIGNORE = "__pycache__/\n*.pyc\n.pytest_cache/\n.foundry/summary.json\n" + "".join(
    f"{path}\n" for path in _STATE
)
AUTHOR_FALLBACK = ("-c", "user.name=foundry", "-c", "user.email=foundry@localhost")
# Above any config file, the repository's own included: no hook, no fsmonitor command runs
# outside the sandbox. The user's global config (their name and email) is still read.
NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# Every path under the working directory but foundry's own state (its lock and marks). Each
# is excluded as a pattern ("lock" as "loc[k]"): git refuses a `git add` whose pathspec names
# an ignored file literally, even to exclude it, and these are ignored in a repo foundry made.
PATHSPEC = ("--", ".", *(f":(exclude){path[:-1]}[{path[-1]}]" for path in _STATE))


@dataclass
class DeployResult:
    commit: str | None
    initialized: bool
    repository: str
    message: str


def _git(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = scrubbed_env() | {"GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(
        ["git", *NO_HOOKS, *args],
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


def git_entry(workdir: Path) -> str | None:
    """What workdir/.git is, as deploy compares it with the start of the build: None (none),
    "dir", "file:<sha256>" (a gitdir file, as in a worktree), "symlink:<target>" or "other"."""
    kind = kind_beneath(workdir, ".git")
    if kind == "file":
        try:
            data = read_beneath(workdir, ".git", 64 * 1024)
        except (OSError, NotAFile, TooLarge):
            return "other"
        return "file:" + hashlib.sha256(data).hexdigest()
    if kind == "symlink":
        try:
            return "symlink:" + os.readlink(workdir / ".git")
        except OSError:
            return "other"
    return kind


def check_git_entry(workdir: Path, at_start: str | None) -> None:
    """Refuse a .git the build's commands made or changed: git would follow it outside."""
    now = git_entry(workdir)
    if now == at_start:
        return
    if at_start is None and now == "dir":
        # Its hooks and filters would run as foundry, outside the sandbox, on `git add`.
        raise WorkspaceError(
            f"a .git directory appeared in {workdir} during the build (a model's command made "
            "it); foundry does not run git in a repository the model set up",
            "remove that .git and resume the build, or commit the result yourself",
        )
    what = {"dir": "a directory", None: "gone"}.get(now) or f"a {str(now).split(':')[0]}"
    raise WorkspaceError(
        f"{workdir}/.git changed during the build (it is now {what}); a .git file or link "
        "points git at another repository, so foundry does not commit through it",
        "put .git back as it was (or remove it) and resume the build, or commit yourself",
    )


def _git_identity(workdir: Path) -> str | None:
    """The device and inode of workdir/.git when it is a real directory, else None."""
    if kind_beneath(workdir, ".git") != "dir":
        return None
    try:
        info = os.lstat(workdir / ".git")
    except OSError:
        return None
    return f"{info.st_dev}:{info.st_ino}"


def _record_own_git(workdir: Path) -> None:
    identity = _git_identity(workdir)
    if identity is not None:
        write_beneath(workdir, f"{ARTIFACT_DIR}/{GIT_RECORD}", identity + "\n")


def made_by_deploy(workdir: Path) -> bool:
    """Whether workdir/.git is the repository foundry's own deploy made there."""
    identity = _git_identity(workdir)
    if identity is None:
        return False
    try:
        recorded = read_beneath(workdir, f"{ARTIFACT_DIR}/{GIT_RECORD}", 256)
    except (OSError, NotAFile, TooLarge):
        return False
    return recorded.decode("ascii", "replace").strip() == identity


def check_own_git(workdir: Path) -> None:
    """In a directory foundry made, the only .git git may run in is the one deploy made:
    any other was made by a model's command (in an earlier build, sandboxed or not), and
    its hooks and config would run outside the sandbox."""
    if kind_beneath(workdir, ".git") is None or not made_by_foundry(workdir):
        return
    if made_by_deploy(workdir):
        return
    workdir = workdir.resolve()
    raise WorkspaceError(
        f"{workdir}/.git was not made by foundry: foundry made {workdir} for a build and "
        "did not make that repository (a model's command may have), so it runs no git there",
        f"look at it, remove it (rm -rf {workdir}/.git) and build again; if it is your own "
        f"repository, delete {workdir}/{ARTIFACT_DIR}/{MADE_BY_FOUNDRY}",
    )


def enclosing_repository(workdir: Path) -> Path | None:
    """The top of the git repository that holds `workdir` (or its nearest existing parent)."""
    probe = workdir
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent
    found = _git(probe, "rev-parse", "--show-toplevel", check=False)
    return Path(found.stdout.strip()).resolve() if found.returncode == 0 else None


def describe_target(workdir: Path, *, own_repo: bool) -> str:
    """Where deploy's commit will go, for the confirmation."""
    workdir = workdir.resolve()
    if kind_beneath(workdir, ".git") == "dir":
        return f"the repository in {workdir}"
    toplevel = None if own_repo else enclosing_repository(workdir)
    if toplevel is None or toplevel == workdir:
        return f"a new repository in {workdir} (git init)"
    return f"the repository at {toplevel} (you named this directory with --dir)"


def deploy(
    workdir: Path, *, name: str, task: str, build_id: str, own_repo: bool = True
) -> DeployResult:
    """Commit everything under `workdir` but foundry's lock and marks. `own_repo`: the commit
    goes into the directory's own repository, made if needed, even inside another one; else
    (a directory the user named) into the repository that holds it, limited to the dir."""
    require_git()
    workdir = workdir.resolve()
    check_own_git(workdir)
    probe = _git(workdir, "rev-parse", "--show-toplevel", check=False)
    toplevel = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    initialized = False
    if toplevel is None or (toplevel != workdir and own_repo):
        _git(workdir, "init", "-q")
        initialized, toplevel = True, workdir
        _record_own_git(workdir)
        if kind_beneath(workdir, ".gitignore") is None:  # a link there is kept, not followed
            write_beneath(workdir, ".gitignore", DEFAULT_GITIGNORE)
    _git(workdir, "add", "-A", *PATHSPEC)
    quiet = ("diff", "--cached", "--quiet", "--no-ext-diff", "--no-textconv")
    if _git(workdir, *quiet, *PATHSPEC, check=False).returncode == 0:
        return DeployResult(None, initialized, str(toplevel), "nothing to commit")
    author: tuple[str, ...] = ()
    for key in ("user.name", "user.email"):
        if _git(workdir, "config", "--get", key, check=False).returncode != 0:
            author = AUTHOR_FALLBACK
    subject, body = commit_message(name, task, build_id)
    _git(workdir, *author, "commit", "-q", "-m", subject, "-m", body, *PATHSPEC)
    sha = _git(workdir, "rev-parse", "HEAD").stdout.strip()
    return DeployResult(sha, initialized, str(toplevel), subject)
