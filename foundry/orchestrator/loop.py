"""The agent loop of one phase: model turn, tool calls, tool results, until the model calls
finish_phase (and the orchestrator accepts it), the phase runs out of turns, or the
conversation outgrows the model's context window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from foundry.backends.base import Block, Message
from foundry.errors import BackendError
from foundry.orchestrator.metered import Conversation, ModelSession
from foundry.orchestrator.workspace import ToolFailure, Workspace, validate_input

NO_TOOL_NUDGE = (
    "You did not call a tool. Continue the phase with the workspace tools, and call "
    "finish_phase when the phase is done."
)
CUT_OFF_NUDGE = (
    "Your reply was cut off at the output limit. Continue with smaller steps (write large "
    "files in parts with edit_file)."
)
LAST_TURN_NOTE = "This is your last turn in this phase: call finish_phase now."
CONTEXT_TOO_LONG = "context_too_long"  # a backend's error class for a prompt past the window

# Checks a finish_phase call for the phase; returns an error message, or None to accept.
FinishCheck = Callable[[dict[str, Any]], str | None]


@dataclass
class FinishCall:
    summary: str
    report: str
    test_command: str | None
    tool_use_id: str


@dataclass
class PhaseRun:
    finish: FinishCall | None
    turns: int  # turns used, the one whose prompt outgrew the context window included
    # Results of the finishing turn, owed to the model if the conversation continues.
    pending_results: list[Block] = field(default_factory=list)
    # Why an unfinished run ended: "turn_limit", or "context_window" when the conversation
    # outgrew the model's context (a fresh conversation fits again).
    stopped: str | None = None


def _detail(name: str, args: Any) -> str:
    if not isinstance(args, dict):
        return ""
    value = args.get("path") or args.get("command") or args.get("summary") or ""
    value = str(value).replace("\n", " ")
    return value if len(value) <= 60 else value[:57] + "..."


def _finish(args: Any, tool_use_id: str, check: FinishCheck | None) -> FinishCall:
    args = validate_input("finish_phase", args)
    if not args["summary"].strip():
        raise ToolFailure("finish_phase: summary is empty")
    if check is not None:
        problem = check(args)
        if problem:
            raise ToolFailure(problem)
    return FinishCall(
        summary=args["summary"].strip().splitlines()[0],
        report=args["report"],
        test_command=(args.get("test_command") or "").strip() or None,
        tool_use_id=tool_use_id,
    )


def run_turns(
    session: ModelSession,
    workspace: Workspace,
    conversation: Conversation,
    phase: str,
    *,
    max_turns: int,
    first_turn: int = 1,
    check_finish: FinishCheck | None = None,
    finish_requires: tuple[str, ...] = (),
) -> PhaseRun:
    """Run model turns until an accepted finish_phase or `max_turns` turns. On the last
    turn a local model must call finish_phase with the `finish_requires` arguments."""
    stats = session.stats(phase)
    last_turn = first_turn + max_turns - 1
    for turn in range(first_turn, last_turn + 1):
        try:
            response = session.send(
                conversation,
                phase,
                turn,
                last_turn=turn == last_turn,
                finish_requires=finish_requires,
            )
        except BackendError as exc:
            # A conversation that cannot even start will not fit next phase either: fail.
            if exc.error_class != CONTEXT_TOO_LONG or len(conversation.messages) <= 1:
                raise
            return PhaseRun(None, turn - first_turn + 1, stopped="context_window")
        stats.turns += 1
        # Backends return tool calls as tool_use blocks (the local backend parses its
        # model's text format itself); text that merely mentions a call is never run.
        content = response.content
        conversation.messages.append(
            Message("assistant", content or [{"type": "text", "text": "(empty)"}])
        )
        results: list[Block] = []
        finish: FinishCall | None = None
        for block in content:
            if block.get("type") != "tool_use":
                continue
            # Every tool_use needs an id its tool_result can answer; a backend may omit it.
            block.setdefault("id", f"toolu_{phase}_{turn}_{len(results)}")
            name, args, use_id = block.get("name", ""), block.get("input"), block["id"]
            stats.last_tool = f"{name} {_detail(name, args)}".strip()
            if name == "finish_phase":
                try:
                    if finish is not None:
                        raise ToolFailure("finish_phase was already called in this turn")
                    finish = _finish(args, use_id, check_finish)
                    outcome_text, is_error = "Phase finished.", False
                except ToolFailure as exc:
                    outcome_text, is_error = f"error: {exc}", True
            elif finish is not None:
                outcome_text, is_error = "error: not run: finish_phase came first", True
            else:
                outcome = workspace.execute(name, args)
                outcome_text, is_error = outcome.content, outcome.is_error
            session.events.tool_called(phase, name, _detail(name, args), is_error)
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": use_id,
                    "content": outcome_text,
                    "is_error": is_error,
                }
            )
        if finish is not None:
            return PhaseRun(finish, turn - first_turn + 1, results)
        follow_up: list[Block] = list(results)
        if not results:
            nudge = CUT_OFF_NUDGE if response.stop_reason == "max_tokens" else NO_TOOL_NUDGE
            follow_up.append({"type": "text", "text": nudge})
        if turn + 1 == last_turn:
            follow_up.append({"type": "text", "text": LAST_TURN_NOTE})
        conversation.messages.append(Message("user", follow_up))
    return PhaseRun(None, max_turns, stopped="turn_limit")
