"""The build driver: runs the requested phases in order, records everything on the ledger,
and ends every build (even a failed or interrupted one) with a status and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.backends.base import Message
from foundry.errors import BudgetExceeded, FoundryError, LedgerError
from foundry.orchestrator.deploy import check_git_entry, deploy, git_entry
from foundry.orchestrator.events import Events
from foundry.orchestrator.loop import run_turns
from foundry.orchestrator.metered import Conversation, ModelSession, PhaseStats
from foundry.orchestrator.phases import (
    BY_NAME,
    DETECT_LATER_NOTE,
    architecture_document,
    first_user_turn,
    lock_workdir,
    read_artifacts,
    require_test_command_once,
    saved_test_command,
    unlock_workdir,
    write_artifact,
)
from foundry.orchestrator.sandbox import Sandbox, foundry_paths
from foundry.orchestrator.summary import (
    ledger_fields,
    phase_fields,
    snapshot,
    unrecorded_fields,
    write_summary,
)
from foundry.orchestrator.test_detect import DETECT_LATER, NO_TEST_COMMAND, detect_test_command
from foundry.orchestrator.testing import (
    TestOutcome,
    clear_old_results,
    detected_note,
    run_test_phase,
)
from foundry.orchestrator.tools import tool_specs
from foundry.orchestrator.workspace import Workspace

if TYPE_CHECKING:
    from foundry.backends.base import Backend, Ttl
    from foundry.config import FoundryConfig
    from foundry.ledger import Ledger
    from foundry.ledger.builds import BuildRecord
    from foundry.orchestrator.plan import HeldWorkdir
    from foundry.pricing import PricingTable
    from foundry.prompt.split import SplitPrompt

EXIT_CODES = {
    "completed": 0,
    "failed": 1,
    "tests_failed": 3,
    "budget_exceeded": 4,
    "incomplete": 5,
    "interrupted": 130,
}


@dataclass
class BuildPlan:
    name: str
    task: str
    workdir: Path
    mode: str
    phases: tuple[str, ...]
    max_test_iterations: int
    max_turns: int
    max_cost: float | None
    ttl: Ttl | None
    max_tokens: int
    base_url: str | None = None  # --base-url, kept for a resume
    template: str | None = None  # --template, kept for a resume
    # Deploy commits into the directory's own repository (made if needed), never into an
    # enclosing one; False only for an existing directory the user named with --dir.
    own_repo: bool = True
    build_id: str | None = None  # chosen by the caller (foundry mcp); None: the ledger's


@dataclass
class BuildResult:
    build_id: str
    status: str
    summary: dict[str, Any]
    phases: dict[str, PhaseStats]
    total: PhaseStats
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class _State:
    completed: list[str] = field(default_factory=list)
    phase_summaries: dict[str, str] = field(default_factory=dict)
    test_command: str | None = None
    tests: TestOutcome | None = None
    test_failure: str | None = None  # why the test phase failed, when it is not the tests
    commit: str | None = None


class BuildRun:
    def __init__(
        self,
        plan: BuildPlan,
        *,
        config: FoundryConfig,
        backend: Backend,
        ledger: Ledger,
        pricing: PricingTable,
        prompt: SplitPrompt,
        events: Events,
        clock: Any = time.monotonic,
        resume: BuildRecord | None = None,
        held: HeldWorkdir | None = None,
    ) -> None:
        self.plan = plan
        self.held = held  # the directory's lock, taken before the confirmation
        self.resume = resume  # an earlier attempt at this build: its finished phases stay done
        self.git_at_start: str | None = "dir"  # what .git was when the build began (run())
        self.config = config
        self.backend = backend
        self.ledger = ledger
        self.prompt = prompt
        self.events = events
        self.pricing = pricing
        self.clock = clock
        self.state = _State(test_command=saved_test_command(plan.workdir))
        # A backend whose cache never expires answers the first keep-alive with None.
        self.keepalive_after_s = (
            config.caching.keepalive_after_s if config.caching.keepalive else None
        )

    def _model_phase(self, session: ModelSession, workspace: Workspace, name: str) -> None:
        phase = BY_NAME[name]
        stats = session.stats(name)
        text = first_user_turn(self.prompt.dynamic, phase, read_artifacts(self.plan.workdir, name))
        conversation = Conversation([Message("user", [{"type": "text", "text": text}])])
        run = run_turns(
            session,
            workspace,
            conversation,
            name,
            max_turns=self.plan.max_turns,
            check_finish=require_test_command_once() if name == "architect" else None,
            finish_requires=("test_command",) if name == "architect" else (),
        )
        assert phase.artifact is not None
        workdir = self.plan.workdir
        if run.finish is None:
            # Out of context ends a phase like out of turns; the next phase starts afresh.
            stats.status = "turn_limit"
            if run.stopped == "context_window":
                limit = f"the model's context window at turn {run.turns}"
                hint = "use a model with a longer context window, or a shorter prompt"
            else:
                limit = f"its limit of {self.plan.max_turns} turns"
                hint = "raise --max-turns, or try a stronger model"
            note = f"The {name} phase hit {limit} unfinished."
            self.events.warning(f"{note} ({hint})")
            if name != "architect":
                write_artifact(workdir, phase.artifact, f"# {name}\n\n_{note}_\n")
            elif not self.state.test_command:
                # No design to hand on, but later phases (and a resumed build) learn why
                # the test command will be detected.
                text = f"# {name}\n\n_{note}_\n\n{DETECT_LATER_NOTE}\n"
                write_artifact(workdir, phase.artifact, text)
                self.events.note(f"architect: {DETECT_LATER}")
            return
        stats.status = "finished"
        self.state.completed.append(name)
        self.state.phase_summaries[name] = run.finish.summary
        report = run.finish.report
        if name == "architect":
            # A command this architect named wins; then one an earlier build's architect
            # recorded; detection at test time is the last resort.
            if run.finish.test_command:
                self.state.test_command = run.finish.test_command
            elif self.state.test_command:
                self.events.note(
                    "architect: no test command named; keeping the one an earlier build "
                    f"recorded: {self.state.test_command}"
                )
            else:
                self.events.note(f"architect: {DETECT_LATER}")
            report = architecture_document(report, self.state.test_command)
        write_artifact(workdir, phase.artifact, report if report.endswith("\n") else report + "\n")
        self.events.note(f"{name}: {run.finish.summary}")

    def _test_phase(self, session: ModelSession, workspace: Workspace) -> bool:
        command, detected = self.state.test_command, False
        if not command:
            command = detect_test_command(self.plan.workdir)
            if command is None:
                # Ends like a failing suite: tests_failed, nothing deployed.
                clear_old_results(self.plan.workdir)
                self.state.tests = TestOutcome(passed=False)
                self.state.test_failure = NO_TEST_COMMAND
                session.stats("test").status = "failed"
                self.events.warning(f"test: {NO_TEST_COMMAND}")
                return False
            detected = True
            self.state.test_command = command
            self.events.note(f"test: {detected_note(command)}")
        outcome = run_test_phase(
            session,
            workspace,
            dynamic=self.prompt.dynamic,
            test_command=command,
            max_iterations=self.plan.max_test_iterations,
            max_turns=self.plan.max_turns,
            timeout_s=self.config.build.command_timeout_s,
            output_limit=self.config.build.output_limit_chars,
            detected=detected,
        )
        self.state.tests = outcome
        session.stats("test").status = "passed" if outcome.passed else "failed"
        if outcome.passed:
            self.state.completed.append("test")
        return outcome.passed

    def _deploy_phase(self, session: ModelSession, build_id: str) -> None:
        check_git_entry(self.plan.workdir, self.git_at_start)
        result = deploy(
            self.plan.workdir,
            name=self.plan.name,
            task=self.plan.task,
            build_id=build_id,
            own_repo=self.plan.own_repo,
        )
        self.state.commit = result.commit
        session.stats("deploy").status = "committed" if result.commit else "nothing_to_commit"
        self.state.completed.append("deploy")
        self.events.note(f"deploy: {result.commit or 'nothing to commit'} in {result.repository}")

    def run(self) -> BuildResult:
        """Run the build holding the directory's lock: one build per directory at a time, and
        .foundry/ is foundry's own real directory before the model's first turn."""
        if self.held is not None:  # the caller took it, and releases it
            return self._run()
        lock = lock_workdir(self.plan.workdir)
        try:
            return self._run()
        finally:
            unlock_workdir(lock)

    def _run(self) -> BuildResult:
        plan = self.plan
        started_at_mono = self.clock()
        from foundry.ledger import utc_now

        started_at = utc_now()
        # Before the ledger row: build.sandbox "require" without a sandbox ends here.
        sandbox = Sandbox(plan.workdir, self.config.build, hidden=foundry_paths(self.ledger.path))
        before = snapshot(plan.workdir)
        # What .git was when the build began; a resumed build keeps the first answer (a row
        # from before git_entry was recorded: a directory, or none).
        self.git_at_start = git_entry(plan.workdir)
        if self.resume is not None:
            first = self.resume.settings
            had_git = "dir" if first.get("had_git", True) else None
            self.git_at_start = first.get("git_entry", had_git)
        spent_before = 0.0
        if self.resume is not None:
            build_id = self.resume.id
            self.ledger.reopen_build(build_id)
            self.state.completed += [p for p in plan.phases if p in self.resume.phases_done]
            spent_before = self.ledger.build_totals(build_id)["cost_usd"] or 0.0
        else:
            build_id = self.ledger.start_build(
                build_id=plan.build_id,
                name=plan.name,
                task=plan.task,
                backend=self.backend.name,
                model=self.backend.model,
                workdir=str(plan.workdir),
                template_sha256=self.prompt.template_sha256,
                static_sha256=self.prompt.static_sha256,
                phases=plan.phases,
                settings={
                    "mode": plan.mode,
                    "max_cost": plan.max_cost,
                    "max_turns": plan.max_turns,
                    "max_test_iterations": plan.max_test_iterations,
                    "ttl": plan.ttl,
                    "base_url": plan.base_url,
                    "template": plan.template,
                    "had_git": self.git_at_start is not None,
                    "git_entry": self.git_at_start,
                    "own_repo": plan.own_repo,
                },
            )
        session = ModelSession(
            backend=self.backend,
            ledger=self.ledger,
            build_id=build_id,
            pricing=self.pricing,
            system=self.prompt.static,
            tools=tool_specs(),
            max_tokens=plan.max_tokens,
            ttl=plan.ttl,
            events=self.events,
            max_cost=plan.max_cost,
            keepalive_after_s=self.keepalive_after_s,
            spent_before=spent_before,
        )
        self.events.attach(session)
        if notice := sandbox.notice():
            self.events.warning(notice)
        workspace = Workspace(
            plan.workdir,
            command_timeout_s=self.config.build.command_timeout_s,
            output_limit=self.config.build.output_limit_chars,
            on_tick=session.maybe_keepalive,
            sandbox=sandbox,
        )
        for name in plan.phases:
            done_before = name in self.state.completed
            session.stats(name).status = "done_earlier" if done_before else "not_run"
        status, error = "completed", None
        unexpected: BaseException | None = None
        try:
            for name in plan.phases:
                if name in self.state.completed:  # an earlier attempt finished it
                    continue
                session.current_phase = workspace.phase = name
                session.stats(name).status = "running"
                self.events.phase_started(name)
                if name == "test":
                    passed = self._test_phase(session, workspace)
                elif name == "deploy":
                    self._deploy_phase(session, build_id)
                else:
                    self._model_phase(session, workspace, name)
                self.events.phase_finished(name, session.stats(name).status)
                if name in self.state.completed:
                    self.ledger.phase_done(build_id, name)
                if name == "test" and not passed:
                    status = "tests_failed"
                    error = self.state.test_failure or (
                        f"the tests still failed after {plan.max_test_iterations} run(s)"
                    )
                    break
            unfinished = [n for n in plan.phases if n not in self.state.completed]
            if status == "completed" and unfinished:
                # Every phase ran, but not every one finished: not what "completed" promises.
                status = "incomplete"
                error = "not every requested phase finished: " + ", ".join(
                    f"{n} ({session.stats(n).status})" for n in unfinished
                )
        except BudgetExceeded as exc:
            status, error = "budget_exceeded", str(exc)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM raised as errors.Terminated
            status, error = "interrupted", str(exc) or "interrupted by the user (Ctrl-C)"
        except FoundryError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # a bug: record it, then let it surface
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            unexpected = exc
        if session.current_phase and session.stats(session.current_phase).status == "running":
            session.stats(session.current_phase).status = (
                status if status != "completed" else "error"
            )
        try:
            summary: dict[str, Any] | None = self._summary(
                build_id, status, error, started_at, started_at_mono, before, session
            )
        except (OSError, ValueError, FoundryError) as exc:
            # The ledger still gets the final status, whatever happened to the directory.
            summary, error = None, f"{error or status}; summary.json not written: {exc}"
            status = "failed" if status == "completed" else status
        sandbox.close()
        try:
            self.ledger.finish_build(build_id, status=status, summary=summary, error=error)
        except LedgerError as exc:  # a full disk: the row stays running until the pid is gone
            self.events.warning(
                f"the end of the build could not be recorded: {exc}; the next foundry run marks "
                "it abandoned, and it can be resumed"
            )
        self.events.build_finished(status, error)
        if unexpected is not None:
            raise unexpected
        return BuildResult(build_id, status, summary or {}, session.phases, session.total, error)

    def _summary(
        self,
        build_id: str,
        status: str,
        error: str | None,
        started_at: str,
        started_mono: float,
        before: dict[str, tuple[int, int]],
        session: ModelSession,
    ) -> dict[str, Any]:
        from foundry.ledger import utc_now

        plan, state = self.plan, self.state
        after = snapshot(plan.workdir)
        totals = self.ledger.build_totals(build_id)
        tests = state.tests
        data = {
            "build_id": build_id,
            "name": plan.name,
            "task": plan.task,
            "mode": plan.mode,
            "workdir": str(plan.workdir),
            "backend": self.backend.name,
            "model": self.backend.model,
            "status": status,
            "error": error,
            "started_at": started_at,
            "finished_at": utc_now(),
            "duration_s": round(max(self.clock() - started_mono, 0.0), 3),
            "phases_requested": list(plan.phases),
            "phases_completed": state.completed,
            "phases": [
                phase_fields(name, stats, state.phase_summaries.get(name))
                for name, stats in session.phases.items()
                if name in BY_NAME
            ],
            "files_created": sorted(set(after) - set(before)),
            "files_modified": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
            "test_command": state.test_command,
            "tests_passed": tests.passed if tests and tests.runs else None,
            "test_iterations": len(tests.runs) if tests else 0,
            "test_runs": [
                {k: v for k, v in vars(run).items() if k != "command"} for run in tests.runs
            ]
            if tests
            else [],
            "commit": state.commit,
            **ledger_fields(totals),
            "unrecorded": unrecorded_fields(session.unrecorded),
        }
        return write_summary(plan.workdir, ".foundry/summary.json", data).model_dump(mode="json")
