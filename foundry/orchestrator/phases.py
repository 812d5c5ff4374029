"""The phases, their order and artifacts, and each phase's first user turn.

What each phase must do is in its section of the static prompt (prompts/<phase>.md)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.errors import UsageError, WorkspaceError
from foundry.fsutil import (
    NotAFile,
    TooLarge,
    format_size,
    kind_beneath,
    list_beneath,
    make_dir_beneath,
    open_beneath,
    read_text_beneath,
    write_beneath,
)
from foundry.prompt.template import PHASES as PHASE_NAMES

ARTIFACT_DIR = ".foundry"
# A phase's report is a model's finish_phase text, test results are capped output: a larger
# artifact was planted, and is refused unread rather than sent with every request.
ARTIFACT_MAX_BYTES = 1024 * 1024
# foundry's own state in .foundry/, never committed: the lock one build holds while it runs,
# and the mark of a working directory foundry itself made (its commit never goes into an
# enclosing repository).
LOCK_FILE = "lock"
MADE_BY_FOUNDRY = "made-by-foundry"
STATE_FILES = (LOCK_FILE, MADE_BY_FOUNDRY)
TEST_COMMAND_TAG = "foundry-test-command"
_TEST_COMMAND_RE = re.compile(rf"<!-- {TEST_COMMAND_TAG}: (.*) -->\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Phase:
    name: str
    artifact: str | None  # the report file the orchestrator writes from finish_phase
    model_driven: bool = True  # deploy is done by the orchestrator alone


# The names and their order belong to the prompt's render contract; this adds what the
# orchestrator needs to know about each.
_ARTIFACTS = {"scout": "scout-report.md", "architect": "architecture.md", "builder": "build-log.md"}
PHASES: tuple[Phase, ...] = tuple(
    Phase(name, _ARTIFACTS.get(name), model_driven=name != "deploy") for name in PHASE_NAMES
)
BY_NAME = {p.name: p for p in PHASES}


def parse_phases(value: str | None) -> tuple[str, ...]:
    """--phases: a comma-separated, ordered subset of the phase names."""
    if value is None:
        return PHASE_NAMES
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise UsageError("--phases is empty", f"give some of: {','.join(PHASE_NAMES)}")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UsageError(
            f"unknown phase(s) in --phases: {', '.join(unknown)}",
            f"the phases are: {','.join(PHASE_NAMES)}",
        )
    if len(set(names)) != len(names):
        raise UsageError("--phases names a phase twice", "name each phase once")
    order = [PHASE_NAMES.index(n) for n in names]
    if order != sorted(order):
        raise UsageError(
            f"--phases out of order: {','.join(names)}",
            f"phases always run in the order {','.join(PHASE_NAMES)}",
        )
    return tuple(names)


def _not_a_dir(workdir: Path, kind: str) -> WorkspaceError:
    return WorkspaceError(
        f"{workdir / ARTIFACT_DIR} is {kind}; foundry keeps its artifacts only in a real "
        "directory there",
        f"move {ARTIFACT_DIR} aside (foundry creates a new one) and run the build again",
    )


def artifact_dir(workdir: Path) -> Path:
    """workdir/.foundry, checked each time it is used: a symlink or a file there (planted by
    a command the model ran, or by the project) is refused, never followed."""
    kind = kind_beneath(workdir, ARTIFACT_DIR)
    if kind not in (None, "dir"):
        raise _not_a_dir(workdir, "a symlink" if kind == "symlink" else "not a directory")
    return workdir / ARTIFACT_DIR


def artifact_path(workdir: Path, filename: str) -> Path:
    """Where an artifact is, for messages; reading and writing go through read_artifact and
    write_artifact, which never follow a link."""
    return artifact_dir(workdir) / filename


def _refused(workdir: Path, exc: NotAFile | TooLarge) -> WorkspaceError:
    if isinstance(exc, TooLarge):
        return WorkspaceError(
            f"{exc.path} in {workdir} is {format_size(exc.size)}, over the "
            f"{format_size(exc.limit)} foundry reads of its own files; a phase never wrote it",
            "remove it (a command the model ran made it) and resume the build",
        )
    return WorkspaceError(
        f"{exc.path} in {workdir} is {exc.kind}; foundry never follows a link (or reads a "
        "special file) among its own files",
        "remove it (a command the model ran made it) and resume the build",
    )


def ensure_artifact_dir(workdir: Path) -> bool:
    """Make workdir/.foundry as a real directory before the model's first turn (the sandbox
    then mounts it read-only); True if made now. A link or a file there is refused."""
    try:
        return make_dir_beneath(workdir, ARTIFACT_DIR)
    except NotAFile as exc:
        raise _not_a_dir(workdir, exc.kind) from None


def read_artifact(workdir: Path, filename: str, limit: int = ARTIFACT_MAX_BYTES) -> str | None:
    """An artifact's text, None when it is missing; a link, a special file or an oversized
    file is refused (WorkspaceError), never followed or loaded."""
    artifact_dir(workdir)
    try:
        return read_text_beneath(workdir, f"{ARTIFACT_DIR}/{filename}", limit)
    except FileNotFoundError:
        return None
    except (NotAFile, TooLarge) as exc:
        raise _refused(workdir, exc) from None


def write_artifact(workdir: Path, filename: str, text: str) -> None:
    """Atomically, in the real .foundry directory: a link planted at the name is replaced."""
    artifact_dir(workdir)
    try:
        write_beneath(workdir, f"{ARTIFACT_DIR}/{filename}", text)
    except NotAFile as exc:
        raise _refused(workdir, exc) from None


def lock_workdir(workdir: Path) -> int:
    """Hold .foundry/lock for the whole build: one build per directory at a time. flock is
    released by the kernel when its holder dies, so a killed build never leaves it locked.
    The descriptor is not inherited by the model's commands (O_CLOEXEC)."""
    ensure_artifact_dir(workdir)
    try:
        fd = open_beneath(workdir, f"{ARTIFACT_DIR}/{LOCK_FILE}", os.O_RDWR | os.O_CREAT, 0o644)
    except (NotAFile, TooLarge) as exc:
        raise _refused(workdir, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise WorkspaceError(
            f"another foundry build{pid} is running in {workdir}",
            "wait for it to end, or build in another directory with --dir",
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock_workdir(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the last descriptor releases the flock


def mark_made_by_foundry(workdir: Path) -> None:
    """Mark a working directory foundry created itself: a later build's commit there goes
    into a repository of its own, never into an enclosing one."""
    ensure_artifact_dir(workdir)
    write_artifact(workdir, MADE_BY_FOUNDRY, "foundry created this directory for a build\n")


def made_by_foundry(workdir: Path) -> bool:
    return kind_beneath(workdir, f"{ARTIFACT_DIR}/{MADE_BY_FOUNDRY}") == "file"


def earlier_build(workdir: Path) -> dict[str, Any] | None:
    """What an earlier build left in workdir/.foundry (its summary's name, id and status,
    as far as known), or None when it holds no build's files."""
    if kind_beneath(workdir, ARTIFACT_DIR) != "dir":
        return None
    if not set(list_beneath(workdir, ARTIFACT_DIR)) - set(STATE_FILES):
        return None
    try:
        text = read_artifact(workdir, "summary.json")
        summary = json.loads(text) if text else {}
    except (WorkspaceError, ValueError):
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    return {key: summary.get(key) for key in ("name", "build_id", "status")}


DETECT_LATER_NOTE = (
    "Test command: not named by the architect; foundry will detect it from the working "
    "directory's files when the test phase starts."
)


def architecture_document(report: str, test_command: str | None) -> str:
    """The architect's report, with the test command in a machine-readable trailer; without
    one, a note that the test phase will detect it (and no trailer, so a later build that
    skips the architect detects it too)."""
    if not test_command:
        return f"{report.rstrip()}\n\n{DETECT_LATER_NOTE}\n"
    trailer = f"<!-- {TEST_COMMAND_TAG}: {json.dumps(test_command)} -->"
    return f"{report.rstrip()}\n\nTest command: `{test_command}`\n\n{trailer}\n"


MISSING_TEST_COMMAND = (
    "the architect phase must give test_command: one shell command that runs the tests "
    "from the working directory and exits non-zero on failure. Call finish_phase again "
    "with it; called again without one, foundry will detect the test command from the "
    "project's files when the test phase starts."
)


def require_test_command_once() -> Callable[[dict[str, Any]], str | None]:
    """Refuse the architect's first finish_phase without test_command (a strong model then
    names one); accept the next, so a weak model does not burn its turns on the refusal
    and the test phase detects the command instead."""
    refused = False

    def check(args: dict[str, Any]) -> str | None:
        nonlocal refused
        if (args.get("test_command") or "").strip() or refused:
            return None
        refused = True
        return MISSING_TEST_COMMAND

    return check


def saved_test_command(workdir: Path) -> str | None:
    """The test command an earlier architect phase recorded, for builds that skip it."""
    text = read_artifact(workdir, "architecture.md")
    if text is None:
        return None
    matches = _TEST_COMMAND_RE.findall(text)
    if not matches:
        return None
    try:
        command = json.loads(matches[-1])
    except json.JSONDecodeError:
        return None
    return command if isinstance(command, str) and command.strip() else None


def first_user_turn(
    dynamic: str, phase: Phase, artifacts: list[tuple[str, str]], extra: str | None = None
) -> str:
    """The first user turn of a phase: the build card, the phase's name, then the earlier
    phases' artifacts. Everything before this turn is the cached prefix, so the phase's goal
    and rules live there (its section of the static prompt) and are not repeated here: every
    token of this turn is sent uncached, or prefilled on a local model, in every phase."""
    parts = [
        dynamic.strip(),
        f"## Current phase: {phase.name}",
    ]
    for filename, text in artifacts:
        parts.append(f"## Artifact .foundry/{filename}\n\n{text.strip()}")
    if extra:
        parts.append(extra.strip())
    return "\n\n".join(parts) + "\n"


def read_artifacts(workdir: Path, before: str) -> list[tuple[str, str]]:
    """Artifacts of the phases that come before `before`, as far as they exist on disk (each
    read without following a link, and bounded: they go into every request of the phase)."""
    found = []
    for phase in PHASES:
        if phase.name == before:
            break
        if phase.artifact and (text := read_artifact(workdir, phase.artifact)) is not None:
            found.append((phase.artifact, text))
    return found
