"""The build's live progress on the ledger (its `build_progress` row), for `foundry dashboard`
and `foundry mcp`: the phase, the turn, the last tool, the test runs, a cold prefill's
progress. Writes are throttled (a tool burst or a prefill's chunks make many events); the
latest state is never lost, only coalesced: every request's start and end is written at once
with whatever was pending, so a reader is never more than one turn's events behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foundry.orchestrator.events import Events

if TYPE_CHECKING:
    from foundry.backends.base import PrefillProgress
    from foundry.orchestrator.metered import ModelSession
    from foundry.orchestrator.shell import CommandResult
    from foundry.usage import Usage

# At most one coalesced write this often: a page polling the row sees it within this.
MIN_INTERVAL_S = 0.25


class LedgerProgress(Events):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.session: ModelSession | None = None
        self.pending: dict[str, Any] = {}
        self.last_write = float("-inf")

    def attach(self, session: ModelSession) -> None:
        self.session = session
        self._set(now=True, message="started")

    def _set(self, *, now: bool = False, **fields: Any) -> None:
        self.pending.update(fields)
        if now or self.clock() - self.last_write >= MIN_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.session is None or not self.pending:
            return
        fields, self.pending = self.pending, {}
        self.last_write = self.clock()
        self.session.ledger.record_progress(self.session.build_id, **fields)

    def phase_started(self, phase: str) -> None:
        self._set(now=True, phase=phase, turn=None, prefill_done=None, prefill_total=None)

    def phase_finished(self, phase: str, status: str) -> None:
        self._set(now=True, message=f"{phase} {status}")

    def request_started(self, phase: str, turn: int) -> None:
        # Forced: the model may think for minutes, and the tools before it must show.
        self._set(now=True, phase=phase, turn=turn)

    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None:
        # The cold prefill (if any) is over; its figures would only mislead from here on.
        # Forced: the ledger counts the request just recorded into the row.
        self._set(now=True, prefill_done=None, prefill_total=None)

    def prefill_progress(self, progress: PrefillProgress) -> None:
        self._set(prefill_done=progress.done, prefill_total=progress.total)

    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        self._set(last_tool=name, last_tool_detail=detail, last_tool_error=int(is_error))

    def test_run(self, iteration: int, result: CommandResult) -> None:
        self._set(now=True, test_iteration=iteration, tests_passed=int(result.passed))

    def note(self, message: str) -> None:
        self._set(message=message)

    def warning(self, message: str) -> None:
        self._set(message=f"warning: {message}")

    def close(self) -> None:
        self.flush()
