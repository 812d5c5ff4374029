"""Starting builds for an MCP client: every request is checked in this process by the CLI's
own plan (foundry.orchestrator.plan), so a bad one fails at once with the CLI's words, and
then runs as a child process of the real CLI (`python -m foundry build ... --yes`). The
child enforces everything the CLI enforces (the sandbox, --max-cost, the trust rules on
configs and directories, the workdir lock); this module never runs a phase itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.config import foundry_home
from foundry.errors import FoundryError, UsageError
from foundry.mcp.models import Confirmation

if TYPE_CHECKING:
    from foundry.mcp.settings import ServerSettings
    from foundry.orchestrator.plan import PreparedBuild

LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class BuildRequest:
    """The `build` tool's inputs, as the client gave them (None: the CLI's default)."""

    name: str
    task: str
    dir: str | None = None
    backend: str | None = None
    model: str | None = None
    phases: list[str] | None = None
    max_cost: float | None = None
    max_turns: int | None = None
    max_test_iterations: int | None = None
    estimate: bool = False


@dataclass(frozen=True)
class ResumeRequest:
    build: str
    max_cost: float | None = None
    max_turns: int | None = None
    max_test_iterations: int | None = None


@dataclass
class Child:
    """One `foundry build`/`foundry resume` process this server started."""

    build_id: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return not self.ended.is_set()

    def tail(self, lines: int = 12) -> list[str]:
        """The log's last lines: the CLI's own `error:` line when it failed to start."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(max(0, self.log.stat().st_size - LOG_TAIL_BYTES))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]


class Launcher:
    """The builds this server started, and how to start, resume and cancel them."""

    def __init__(self, settings: ServerSettings, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.log_dir = log_dir or foundry_home() / "mcp-logs"
        self._children: dict[str, Child] = {}
        self._lock = threading.Lock()

    # ---- requests ------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> tuple[str, Confirmation | None, dict[str, Any]]:
        """Check the request as `foundry build` would, then start it (unless an estimate).
        Returns the new id, the confirmation and the projection."""
        from foundry.orchestrator.plan import BuildOptions, prepare_build

        build_id = uuid.uuid4().hex
        # Resolved here, so the check and the child (same cwd) mean the same directory.
        workdir = Path(os.path.abspath(Path(request.dir).expanduser())) if request.dir else None
        options = BuildOptions(
            name=request.name,
            task=request.task,
            dir=workdir,
            backend=request.backend,
            model=request.model,
            phases=",".join(request.phases) if request.phases is not None else None,
            max_cost=request.max_cost,
            max_turns=request.max_turns,
            max_test_iterations=request.max_test_iterations,
            estimate=request.estimate,
            config=self.settings.config,
            db=self.settings.db,
            build_id=build_id,
        )
        prepared = prepare_build(options)
        if request.estimate:
            prepared.backend.close()
            return build_id, None, prepared.projection
        confirmation = self._checked(prepared)
        argv = ["build", "--yes", "--build-id", build_id]
        argv += _flag("--dir", workdir)
        argv += _flag("--backend", request.backend)
        argv += _flag("--model", request.model)
        argv += _flag("--phases", options.phases)
        argv += self._limits(request.max_cost, request.max_turns, request.max_test_iterations)
        # `--` ends the options: a task that starts with a dash is still the task.
        self._spawn(build_id, request.name, [*argv, "--", request.name, request.task])
        return build_id, confirmation, prepared.projection

    def resume(self, request: ResumeRequest) -> tuple[str, str, Confirmation]:
        """Check as `foundry resume` would (its own resolution of names and id prefixes, its
        refusal of a finished or running build), then resume it in a child process.
        Returns its id, name and the confirmation."""
        from foundry.orchestrator.plan import ResumeOptions, prepare_resume

        prepared = prepare_resume(
            ResumeOptions(
                build=request.build,
                max_cost=request.max_cost,
                max_turns=request.max_turns,
                max_test_iterations=request.max_test_iterations,
                config=self.settings.config,
                db=self.settings.db,
            )
        )
        assert prepared.resume is not None  # prepare_resume always says which build
        build_id = prepared.resume.id
        child = self.child(build_id)
        if child is not None and child.running:
            prepared.backend.close()
            raise UsageError(
                f"build {prepared.plan.name} ({build_id[:12]}) is still stopping (pid "
                f"{child.proc.pid})",
                "wait for build_status to say it ended, then resume it",
            )
        confirmation = self._checked(prepared)
        argv = ["resume", "--yes"]
        argv += self._limits(request.max_cost, request.max_turns, request.max_test_iterations)
        self._spawn(build_id, prepared.plan.name, [*argv, "--", build_id])
        return build_id, prepared.plan.name, confirmation

    def cancel(self, build_id: str, wait_s: float) -> tuple[bool, bool]:
        """SIGINT to the build's process group, as Ctrl-C in its terminal: the build ends
        `interrupted`, keeps what it recorded and can be resumed. Returns (signalled,
        stopped within wait_s). Only a build this server started: another process's build
        is not ours to stop."""
        child = self.child(build_id)
        if child is None:
            raise UsageError(
                f"build {build_id[:12]} was not started by this foundry mcp server, so it "
                "cannot cancel it",
                "stop it where it runs (Ctrl-C in its terminal, or `kill -INT PID` with the "
                "pid on its ledger row)",
            )
        if not child.running:
            return False, True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGINT)
        return True, child.ended.wait(wait_s)

    def child(self, build_id: str) -> Child | None:
        with self._lock:
            return self._children.get(build_id)

    def match(self, asked: str) -> str | None:
        """A build of ours by its id or a unique id prefix (8+ characters, as `resume`
        takes): a build whose child has not written its ledger row yet is found too."""
        with self._lock:
            if asked in self._children:
                return asked
            if len(asked) < 8:
                return None
            found = [bid for bid in self._children if bid.startswith(asked)]
        return found[0] if len(found) == 1 else None

    def interrupt_all(self, wait_s: float) -> None:
        """At shutdown: nobody could cancel a build left running once this server is gone,
        so each is interrupted (resumable) rather than left to spend unattended. They end
        on their own; waiting only lets a quick one be reaped here."""
        with self._lock:
            running = [c for c in self._children.values() if c.running]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        for child in running:
            child.ended.wait(max(0.0, deadline - time.monotonic()))

    # ---- internals -----------------------------------------------------------------------

    def _checked(self, prepared: PreparedBuild) -> Confirmation:
        """What the CLI checks after the plan and before it asks: the directory's lock (a
        directory another build holds is refused now, not in the child's log), and a
        metered backend's own check (its key, its server's port). A local engine's check
        may pull a model for minutes, so the child does that and says so in its log."""
        from foundry.orchestrator.plan import HeldWorkdir

        try:
            held = HeldWorkdir.take(prepared.plan.workdir)
            if held is not None:
                held.release()  # the child takes it again; it refuses a second build itself
            if not prepared.backend.local:  # the backend says what it is; no name list
                prepared.backend.check()
            return confirmation(prepared)
        finally:
            prepared.backend.close()

    def _limits(
        self, max_cost: float | None, max_turns: int | None, max_test_iterations: int | None
    ) -> list[str]:
        argv = _flag("--max-cost", None if max_cost is None else repr(max_cost))
        argv += _flag("--max-turns", max_turns)
        argv += _flag("--max-test-iterations", max_test_iterations)
        argv += _flag("--config", self.settings.config)
        return argv + _flag("--db", self.settings.db)

    def _spawn(self, build_id: str, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{build_id}.log"
        with log.open("ab") as out:  # a resume appends to its build's log
            out.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} foundry {argv[0]}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "foundry", *argv],
                stdin=subprocess.DEVNULL,  # never a terminal: the CLI does not ask
                stdout=out,  # never the server's stdout, which is the protocol
                stderr=subprocess.STDOUT,
                # Its own process group, so cancel's SIGINT reaches the build and its
                # commands, as Ctrl-C reaches a terminal's foreground group, and nothing else.
                start_new_session=True,
            )
        child = Child(build_id, name, proc, log)
        with self._lock:
            self._children[build_id] = child
        # Reaped at once: an unreaped child is a zombie that still answers kill(pid, 0), and
        # the ledger would never see a killed build's process as gone (abandoned).
        threading.Thread(target=_reap, args=(child,), daemon=True).start()
        return child


def _reap(child: Child) -> None:
    child.exit_code = child.proc.wait()
    child.ended.set()


def _flag(name: str, value: object) -> list[str]:
    return [] if value is None else [name, str(value)]


def confirmation(prepared: PreparedBuild) -> Confirmation:
    """The facts `foundry build` confirms on a terminal, from the same function
    (foundry.orchestrator.confirmation), with its headline as the text."""
    from dataclasses import asdict

    from foundry.orchestrator.confirmation import build_facts

    facts = build_facts(prepared)
    text = facts.headline()
    if facts.deploy_target:
        text += f"; deploy commits to {facts.deploy_target}"
    fields = {k: v for k, v in asdict(facts).items() if k != "name"}
    return Confirmation(**fields, text=text)


def error_text(exc: FoundryError) -> str:
    """A FoundryError as the CLI's one red line says it (message — hint), without `error:`."""
    from foundry.console import one_line

    return one_line(str(exc))
