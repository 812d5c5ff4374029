"""The test phase: the orchestrator runs the test command itself, judges by the exit code,
and on failure gives the model the output to fix, up to --max-test-iterations runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundry.backends.base import Message
from foundry.fsutil import list_beneath, unlink_beneath
from foundry.orchestrator.loop import run_turns
from foundry.orchestrator.metered import Conversation, ModelSession
from foundry.orchestrator.phases import (
    ARTIFACT_DIR,
    BY_NAME,
    artifact_dir,
    first_user_turn,
    read_artifacts,
    write_artifact,
)
from foundry.orchestrator.shell import CommandResult, run_command
from foundry.orchestrator.workspace import Workspace


@dataclass
class TestRun:
    iteration: int
    command: str
    exit_code: int | None
    passed: bool
    timed_out: bool
    duration_s: float
    results_file: str


@dataclass
class TestOutcome:
    passed: bool
    runs: list[TestRun] = field(default_factory=list)
    turns: int = 0


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text.rstrip()}\n{ticks}"


def detected_note(command: str) -> str:
    return f"test command detected by foundry: `{command}` (the architect named none)"


def results_markdown(iteration: int, result: CommandResult, *, detected: bool = False) -> str:
    verdict = "passed" if result.passed else "failed"
    exit_text = "none (killed at the timeout)" if result.timed_out else str(result.exit_code)
    origin = f"- Note: {detected_note(result.command)}\n" if detected else ""
    return (
        f"# Test run {iteration}: {verdict}\n\n"
        f"- Command: `{result.command}`\n{origin}- Exit code: {exit_text}\n"
        f"- Duration: {result.duration_s:.1f}s\n\n## Output\n\n{_fence(result.output)}\n"
    )


def failure_text(iteration: int, result: CommandResult) -> str:
    return (
        f"## Test run {iteration} failed\n\nThe orchestrator ran the test command; it did not "
        f"pass. Fix the cause, then call finish_phase.\n\n{_fence(result.describe())}"
    )


def clear_old_results(workdir: Path) -> None:
    """Remove earlier runs' results: the entries themselves, a link never followed."""
    artifact_dir(workdir)
    try:
        names = list_beneath(workdir, ARTIFACT_DIR)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith("test-results-") and name.endswith(".md"):
            unlink_beneath(workdir, f"{ARTIFACT_DIR}/{name}")


def run_test_phase(
    session: ModelSession,
    workspace: Workspace,
    *,
    dynamic: str,
    test_command: str,
    max_iterations: int,
    max_turns: int,
    timeout_s: float,
    output_limit: int,
    detected: bool = False,
) -> TestOutcome:
    """`detected`: foundry found the command in the project's files (the results say so)."""
    workdir = workspace.root
    clear_old_results(workdir)
    outcome = TestOutcome(passed=False)
    conversation: Conversation | None = None
    pending: list[dict] = []
    finish_id: str | None = None
    for iteration in range(1, max_iterations + 1):
        # The test command is the model's choice too: it runs in the same sandbox.
        result = run_command(
            test_command,
            workdir,
            timeout_s=timeout_s,
            output_limit=output_limit,
            on_tick=session.maybe_keepalive,
            sandbox=workspace.sandbox,
            network=workspace.sandbox.network_for("test"),
        )
        filename = f"test-results-{iteration}.md"
        write_artifact(workdir, filename, results_markdown(iteration, result, detected=detected))
        session.events.test_run(iteration, result)
        outcome.runs.append(
            TestRun(
                iteration,
                test_command,
                result.exit_code,
                result.passed,
                result.timed_out,
                round(result.duration_s, 3),
                filename,
            )
        )
        if result.passed:
            outcome.passed = True
            return outcome
        if iteration == max_iterations:
            return outcome
        text = failure_text(iteration, result)
        if conversation is None or finish_id is None:
            # First fix round (or the last one ran out of turns): a fresh conversation.
            phase = BY_NAME["test"]
            first = first_user_turn(dynamic, phase, read_artifacts(workdir, "test"), extra=text)
            conversation = Conversation([Message("user", [{"type": "text", "text": first}])])
        else:
            # The model's finish_phase is answered with the re-run's verdict.
            answered = [
                {**r, "content": f"The orchestrator re-ran the tests.\n\n{text}"}
                if r["tool_use_id"] == finish_id
                else r
                for r in pending
            ]
            conversation.messages.append(Message("user", answered))
        run = run_turns(
            session,
            workspace,
            conversation,
            "test",
            max_turns=max_turns,
            first_turn=outcome.turns + 1,
        )
        outcome.turns += run.turns
        pending = run.pending_results
        finish_id = run.finish.tool_use_id if run.finish else None
        if run.finish is None:
            session.events.note("test: the fix round hit its turn limit; re-running the tests")
    return outcome
