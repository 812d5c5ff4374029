"""The phases, their order and artifacts, and each phase's first user turn.

What each phase must do is in its section of the static prompt (prompts/<phase>.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.errors import UsageError, WorkspaceError
from foundry.prompt.template import PHASES as PHASE_NAMES

ARTIFACT_DIR = ".foundry"
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


def artifact_dir(workdir: Path) -> Path:
    """workdir/.foundry, checked each time it is used: a symlink or a file there (planted by
    a command the model ran, or by the project) is refused, never followed."""
    path = workdir / ARTIFACT_DIR
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symlink" if path.is_symlink() else "not a directory"
        raise WorkspaceError(
            f"{path} is {kind}; foundry keeps its artifacts only in a real directory there",
            f"move {ARTIFACT_DIR} aside (foundry creates a new one) and run the build again",
        )
    return path


def artifact_path(workdir: Path, filename: str) -> Path:
    return artifact_dir(workdir) / filename


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
    path = artifact_path(workdir, "architecture.md")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
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
    """Artifacts of the phases that come before `before`, as far as they exist on disk."""
    found = []
    for phase in PHASES:
        if phase.name == before:
            break
        if phase.artifact:
            path = artifact_path(workdir, phase.artifact)
            if path.is_file():
                found.append((phase.artifact, path.read_text(encoding="utf-8", errors="replace")))
    return found
