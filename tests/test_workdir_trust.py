"""What foundry itself reads and writes in the working directory, attacked by a scripted model
behind the local Anthropic server through the real CLI: foundry's own hands never follow a
link the model made, never load a planted file of any size, never write or commit outside
the build, and never build twice in one directory at once. Everything stays under tmp_path."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from foundry.commands import build as build_command
from tests.orchestrator_helpers import write_template

REPO_ROOT = Path(__file__).resolve().parent.parent
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def use(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}


def finish(summary: str = "done", report: str = "# Report\n", **extra: Any) -> dict[str, Any]:
    return use("finish_phase", summary=summary, report=report, **extra)


def build(cli, tmp_path: Path, *extra: str, name: str = "hello", input: str | None = None):
    template = tmp_path / "test_prompt.txt"
    if not template.exists():
        write_template(tmp_path)
    return cli(
        "build", name, "Create hello.py", "--backend", "anthropic", "--template", str(template),
        "--db", str(tmp_path / "ledger.db"), *extra, input=input,
    )  # fmt: skip


def unconfined(tmp_path: Path) -> str:
    """A config without the command sandbox: the model's commands can then write anywhere in
    the working directory, .foundry/ too, and only foundry's own care is left."""
    path = tmp_path / "unconfined.json"
    path.write_text(json.dumps({"build": {"sandbox": "off"}}))
    return str(path)


def error_line(stderr: str) -> str:
    """The one red line a refused or failed build ends with."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def sent(server: Any) -> str:
    return json.dumps(server.requests)


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def repository(path: Path) -> Path:
    """A repository with one commit, for a build to be tempted into."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    (path / "mine.txt").write_text("the user's own work\n")
    git(path, "add", "mine.txt")
    git(path, "commit", "-q", "-m", "mine")
    return path


# -- finding 2: the artifact reader -----------------------------------------------------------


@pytest.mark.parametrize("sandbox", ["on", "off"])
def test_an_artifact_linked_to_a_secret_never_reaches_the_model(
    cli, tmp_path, anthropic_env, sandbox
) -> None:
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text(f"-----BEGIN OPENSSH PRIVATE KEY----- {os.urandom(8).hex()}\n")
    plant = f"mkdir -p .foundry; ln -s {shlex.quote(str(secret))} .foundry/architecture.md"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("scouted", "# Scout\n")], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    extra = ["--config", unconfined(tmp_path)] if sandbox == "off" else []
    result = build(cli, tmp_path, "--phases", "scout,builder", "--yes", *extra)
    assert secret.read_text().split()[-1] not in sent(anthropic_env)
    assert "OPENSSH" not in sent(anthropic_env)
    if sandbox == "on":
        # foundry made .foundry/ before the model's first turn: read-only in the sandbox.
        assert result.exit_code == 0, result.stderr
        assert not Path("hello/.foundry/architecture.md").is_symlink()
    else:
        assert result.exit_code == 1
        assert ".foundry/architecture.md in" in error_line(result.stderr)
        assert "is a symlink; foundry never follows a link" in result.stderr


def test_a_huge_planted_artifact_is_refused_unread(cli, tmp_path, anthropic_env) -> None:
    plant = "mkdir -p .foundry; yes foundry | head -c 12000000 > .foundry/architecture.md"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("scouted", "# Scout\n")], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    config = ["--config", unconfined(tmp_path)]
    result = build(cli, tmp_path, "--phases", "scout,builder", "--yes", *config)
    assert Path("hello/.foundry/architecture.md").stat().st_size == 12_000_000
    assert max(len(json.dumps(body)) for body in anthropic_env.requests) < 100_000
    assert result.exit_code == 1
    assert "is 11.4 MiB, over the 1.0 MiB" in error_line(result.stderr)


# -- finding 4: writes outside the working directory -------------------------------------------


def test_a_dangling_gitignore_link_does_not_create_its_target(cli, tmp_path, anthropic_env) -> None:
    target = tmp_path / "etc" / "nologin"
    target.parent.mkdir()
    plant = f"ln -s {shlex.quote(str(target))} .gitignore; echo 'x = 1' > hello.py"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    result = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert result.exit_code == 0, result.stderr
    assert Path("hello/.gitignore").is_symlink()  # the model's file, committed as a link
    assert "hello.py" in git(Path("hello"), "show", "--name-only", "--format=", "HEAD")


def test_a_dangling_git_link_does_not_put_a_repository_outside(
    cli, tmp_path, anthropic_env
) -> None:
    target = tmp_path / "elsewhere" / "repo"
    target.parent.mkdir()
    plant = f"ln -s {shlex.quote(str(target))} .git; echo 'x = 1' > hello.py"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    result = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
    assert list(target.parent.iterdir()) == []
    assert result.exit_code == 1 and "/.git changed during the build" in error_line(result.stderr)


def test_a_gitdir_file_pointing_at_another_repository_is_refused(
    cli, tmp_path, anthropic_env
) -> None:
    # The user builds in a git worktree (.git is a file there); the model rewrites that file
    # to send deploy's commit into another repository.
    main, victim = repository(tmp_path / "main"), repository(tmp_path / "victim")
    git(main, "worktree", "add", "-q", str(Path("hello").resolve()))
    victim_head = git(victim, "rev-parse", "HEAD")
    main_head = git(main, "rev-parse", "HEAD")
    plant = f"echo 'gitdir: {victim / '.git'}' > .git; echo 'x = 1' > hello.py"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    config = ["--config", unconfined(tmp_path)]  # bubblewrap may keep .git read-only
    result = build(cli, tmp_path, "--phases", "builder,deploy", "--yes", "--dir", "hello", *config)
    assert git(victim, "rev-parse", "HEAD") == victim_head
    assert git(victim, "status", "--porcelain") == ""
    assert git(main, "rev-parse", "HEAD") == main_head
    assert result.exit_code == 1 and "/.git changed during the build" in error_line(result.stderr)


# -- finding 5: no surprise commits, one build per directory -------------------------------


def test_a_rebuild_of_a_directory_foundry_made_gets_its_own_repository(
    cli, tmp_path, anthropic_env
) -> None:
    # The README's quick start, run from inside a checkout: ./hello is made by foundry; the
    # first build stops before deploy, so the second finds an "existing" project there.
    checkout = repository(Path.cwd())
    head = git(checkout, "rev-parse", "HEAD")
    anthropic_env.enqueue([use("write_file", path="hello.py", content="x = 1\n")], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    first = build(cli, tmp_path, "--phases", "builder", "--yes")
    assert first.exit_code == 0, first.stderr
    anthropic_env.enqueue([use("write_file", path="hello.py", content="x = 2\n")], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    second = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
    assert second.exit_code == 0, second.stderr
    assert git(checkout, "rev-parse", "HEAD") == head
    assert Path("hello/.git").is_dir()
    assert git(Path("hello"), "rev-parse", "--show-toplevel") == str(Path("hello").resolve())
    assert "hello.py" in git(Path("hello"), "show", "--stat", "HEAD")


def test_the_confirmation_says_where_the_commit_goes_and_what_the_directory_holds(
    cli, tmp_path, anthropic_env, monkeypatch
) -> None:
    checkout = repository(Path.cwd())
    anthropic_env.enqueue([finish("scouted", "# Scout\n")], "tool_use")
    assert build(cli, tmp_path, "--phases", "scout", "--yes").exit_code == 0
    monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
    again = build(cli, tmp_path, "--phases", "scout,deploy", input="n\n")
    assert again.exit_code == 1 and "aborted" in again.stderr
    said = " ".join(again.stderr.split())
    assert "already holds build hello" in said
    assert f"a new repository in {Path('hello').resolve()}" in said
    # A directory the user names with --dir: the commit goes into the user's repository.
    Path("mine").mkdir()
    Path("mine/app.py").write_text("print(1)\n")
    named = build(cli, tmp_path, "--phases", "scout,deploy", "--dir", "mine", input="n\n")
    said = " ".join(named.stderr.split())
    assert f"the repository at {checkout}" in said and "--dir" in said


def test_a_second_build_in_the_same_directory_is_refused_while_the_first_runs(
    cli, tmp_path, anthropic_env
) -> None:
    workdir = Path("hello").resolve()
    second: list[subprocess.CompletedProcess[str] | None] = []

    def start_another(body: dict) -> tuple[list[dict], str]:
        if not second:  # the first build's first request: start a second build meanwhile
            second.append(None)
            second[0] = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "foundry",
                    "build",
                    "again",
                    "Another task",
                    "--dir",
                    str(workdir),
                    "--backend",
                    "anthropic",
                    "--phases",
                    "scout",
                    "--template",
                    str(tmp_path / "test_prompt.txt"),
                    "--db",
                    str(tmp_path / "second.db"),
                    "--yes",
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip
        return [finish("scouted", "# Scout\n")], "tool_use"

    anthropic_env.responder = start_another
    first = build(cli, tmp_path, "--phases", "scout", "--yes")
    assert first.exit_code == 0, first.stderr
    refused = second[0]
    assert refused is not None and refused.returncode == 1, refused.stderr
    said = error_line(refused.stderr)
    assert "another foundry build (pid" in said and str(workdir) in said
    assert len(anthropic_env.requests) == 1  # the second build never reached the model


def test_a_dead_holder_does_not_keep_the_directory_locked(cli, tmp_path, anthropic_env) -> None:
    Path("hello/.foundry").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time; fd = os.open('hello/.foundry/lock', "
         "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    held = build(cli, tmp_path, "--phases", "scout", "--yes")
    assert held.exit_code == 1 and "another foundry build" in held.stderr
    holder.kill()
    holder.wait()
    anthropic_env.enqueue([finish("scouted", "# Scout\n")], "tool_use")
    after = build(cli, tmp_path, "--phases", "scout", "--yes")
    assert after.exit_code == 0, after.stderr


def test_resume_with_a_name_that_fits_several_builds_lists_them(cli, tmp_path) -> None:
    from foundry.errors import BackendError
    from tests.orchestrator_helpers import ledger_rows, run_build

    for _ in range(2):
        result, _, db = run_build(tmp_path, [BackendError("no")], phases=("scout",))
        assert result.status == "failed"
    ids = [row["id"] for row in ledger_rows(db, "builds")]
    listed = cli("resume", "hello", "--db", str(db), "--yes")
    assert listed.exit_code == 2
    said = error_line(listed.stderr)
    assert "2 builds named hello can be resumed" in said
    assert all(build_id[:12] in said for build_id in ids)
    # Either one resumes by the prefix the list shows.
    chosen = cli("resume", ids[0][:12], "--db", str(db), "--yes", "--max-turns", "1")
    assert "can be resumed" not in chosen.stderr


# -- a .git deploy did not make: hooks and config that would run outside the sandbox ---------


def poisoned_git(marker: Path) -> str:
    """A model's command: a repository of its own with a pre-commit hook and a core.fsmonitor
    script, each writing `marker` (outside the sandbox, only foundry's own git could)."""
    script = f"#!/bin/sh\necho ran >> {shlex.quote(str(marker))}\n"
    return (
        f"git init -q . && printf %s {shlex.quote(script)} > .git/hooks/pre-commit"
        f" && printf %s {shlex.quote(script)} > .git/fsmonitor.sh"
        " && chmod +x .git/hooks/pre-commit .git/fsmonitor.sh"
        ' && git config core.fsmonitor "$PWD/.git/fsmonitor.sh"'
        " && echo 'x = 1' > hello.py"
    )


def test_a_git_a_model_made_in_a_failed_build_is_refused_by_the_next_build(
    cli, tmp_path, anthropic_env
) -> None:
    marker = tmp_path / "ran-outside"
    anthropic_env.enqueue([use("run_command", command=poisoned_git(marker))], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    first = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
    assert first.exit_code == 1 and "appeared in" in error_line(first.stderr)
    assert Path("hello/.git/hooks/pre-commit").is_file()  # the model's repository is there
    # Run as root, the sandbox's commands ran as nobody, and git would refuse a .git of
    # another owner by luck (safe.directory); a user's own commands leave it theirs.
    for path in [Path("hello/.git"), *Path("hello/.git").rglob("*")]:
        os.chown(path, os.getuid(), os.getgid(), follow_symlinks=False)
    # A new build (not a resume) into the same directory: .git is there from the start.
    anthropic_env.enqueue([use("write_file", path="hello.py", content="x = 2\n")], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    second = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
    assert not marker.exists()
    assert second.exit_code == 1, second.stderr
    said = error_line(second.stderr)
    assert f"{Path('hello').resolve()}/.git was not made by foundry" in said
    assert "remove it" in said
    assert len(anthropic_env.requests) == 2  # refused before the model was asked again


def test_a_repository_foundry_s_deploy_made_takes_a_second_commit(
    cli, tmp_path, anthropic_env
) -> None:
    for content in ("x = 1\n", "x = 2\n"):
        anthropic_env.enqueue([use("write_file", path="hello.py", content=content)], "tool_use")
        anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
        result = build(cli, tmp_path, "--phases", "builder,deploy", "--yes")
        assert result.exit_code == 0, result.stderr
    log = git(Path("hello"), "log", "--format=%s")
    assert len(log.splitlines()) == 2
    # foundry's record of the repository it made is its own state, never committed.
    assert ".foundry/" not in git(Path("hello"), "show", "--name-only", "--format=", "HEAD")


def test_deploy_runs_no_hook_of_the_user_s_repository_on_the_model_s_files(
    cli, tmp_path, anthropic_env
) -> None:
    # husky's way: the repository's hooks live in the work tree (core.hooksPath=.husky), where
    # the model writes; deploy's commit would run the model's hook outside the sandbox.
    marker = tmp_path / "ran-outside"
    mine = repository(tmp_path / "mine")
    (mine / ".husky").mkdir()
    (mine / ".husky" / "pre-commit").write_text("#!/bin/sh\ntrue\n")
    (mine / ".husky" / "pre-commit").chmod(0o755)
    git(mine, "config", "core.hooksPath", ".husky")
    hook = f"#!/bin/sh\necho ran >> {shlex.quote(str(marker))}\n"
    plant = f"printf %s {shlex.quote(hook)} > .husky/pre-commit; echo 'x = 1' > hello.py"
    anthropic_env.enqueue([use("run_command", command=plant)], "tool_use")
    anthropic_env.enqueue([finish("built", "# Build log\n")], "tool_use")
    result = build(cli, tmp_path, "--phases", "builder,deploy", "--yes", "--dir", str(mine))
    assert not marker.exists()
    assert result.exit_code == 0, result.stderr
    assert "hello.py" in git(mine, "show", "--name-only", "--format=", "HEAD")


def test_a_held_directory_is_refused_before_the_confirmation(
    cli, tmp_path, anthropic_env, monkeypatch
) -> None:
    Path("hello/.foundry").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time; fd = os.open('hello/.foundry/lock', "
         "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
        held = build(cli, tmp_path, "--phases", "scout", input="y\n")
    finally:
        holder.kill()
        holder.wait()
    assert held.exit_code == 1
    assert "Start the build?" not in held.stderr  # never asked, then refused
    said = error_line(held.stderr)
    assert f"another foundry build (pid {holder.pid}) is running in" in said
    assert anthropic_env.requests == []
    # Once it is free, the confirmed build runs, holding the lock from the question on.
    anthropic_env.enqueue([finish("scouted", "# Scout\n")], "tool_use")
    after = build(cli, tmp_path, "--phases", "scout", input="y\n")
    assert after.exit_code == 0, after.stderr
    assert "Start the build?" in after.stderr


def test_an_aborted_confirmation_leaves_no_foundry_directory_behind(
    cli, tmp_path, anthropic_env, monkeypatch
) -> None:
    Path("mine").mkdir()
    Path("mine/app.py").write_text("print(1)\n")
    monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
    aborted = build(cli, tmp_path, "--phases", "scout", "--dir", "mine", input="n\n")
    assert aborted.exit_code == 1 and "aborted" in aborted.stderr
    assert sorted(p.name for p in Path("mine").iterdir()) == ["app.py"]
