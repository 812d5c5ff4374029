"""What a build reports while it runs: the events the driver, the loop and the metered
session emit. The base class ignores everything (tests); orchestrator/display.py draws them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundry.backends.base import PrefillProgress
    from foundry.orchestrator.metered import ModelSession
    from foundry.orchestrator.shell import CommandResult
    from foundry.usage import Usage

log = logging.getLogger(__name__)


class Events:
    """What the build reports while it runs. The base class ignores everything (tests)."""

    def attach(self, session: ModelSession) -> None: ...
    def phase_started(self, phase: str) -> None: ...
    def phase_finished(self, phase: str, status: str) -> None: ...
    def request_started(self, phase: str, turn: int) -> None: ...
    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None: ...
    def text_delta(self, text: str) -> None: ...
    def prefill_progress(self, progress: PrefillProgress) -> None: ...
    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None: ...
    def test_run(self, iteration: int, result: CommandResult) -> None: ...
    def note(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def build_finished(self, status: str, error: str | None) -> None: ...
    def close(self) -> None: ...


class Fanout(Events):
    """Tells every event to each sink in turn: the display first, then the recorders (the
    ledger's live progress, traces). A recorder that fails is logged and dropped, so
    watching a build can never end it; the display's own errors propagate as before."""

    def __init__(self, display: Events, *recorders: Events) -> None:
        self.display = display
        self.recorders = list(recorders)

    def _tell(self, name: str, *args: Any) -> None:
        getattr(self.display, name)(*args)
        for recorder in list(self.recorders):
            try:
                getattr(recorder, name)(*args)
            except Exception:
                log.warning(
                    "%s stopped recording: it failed on %s",
                    type(recorder).__name__,
                    name,
                    exc_info=True,
                )
                self.recorders.remove(recorder)

    def attach(self, session: ModelSession) -> None:
        self._tell("attach", session)

    def phase_started(self, phase: str) -> None:
        self._tell("phase_started", phase)

    def phase_finished(self, phase: str, status: str) -> None:
        self._tell("phase_finished", phase, status)

    def request_started(self, phase: str, turn: int) -> None:
        self._tell("request_started", phase, turn)

    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None:
        self._tell("request_done", phase, turn, usage, session)

    def text_delta(self, text: str) -> None:
        self._tell("text_delta", text)

    def prefill_progress(self, progress: PrefillProgress) -> None:
        self._tell("prefill_progress", progress)

    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        self._tell("tool_called", phase, name, detail, is_error)

    def test_run(self, iteration: int, result: CommandResult) -> None:
        self._tell("test_run", iteration, result)

    def note(self, message: str) -> None:
        self._tell("note", message)

    def warning(self, message: str) -> None:
        self._tell("warning", message)

    def build_finished(self, status: str, error: str | None) -> None:
        self._tell("build_finished", status, error)

    def close(self) -> None:
        self._tell("close")
