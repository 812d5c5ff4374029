"""`foundry build NAME "TASK"`: options → a plan (foundry.orchestrator.plan, where every
check runs before a model is called) → the build → the result on stdout and an exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from foundry import console
from foundry.commands.options import BaseUrlOption, ConfigOption, DbOption, JsonOption
from foundry.errors import FoundryError, Terminated

if TYPE_CHECKING:
    from foundry.orchestrator.build import BuildResult
    from foundry.orchestrator.confirmation import BuildFacts
    from foundry.orchestrator.plan import HeldWorkdir, PreparedBuild


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def build(
    name: Annotated[str, typer.Argument(help="The build's name; the default directory is ./NAME.")],
    task: Annotated[str, typer.Argument(help="What to build, in plain words.")],
    dir: Annotated[
        Path | None, typer.Option("--dir", help="Working directory (default ./NAME).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="anthropic, openai, llamacpp, mlx or auto.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model id (default from config).")
    ] = None,
    base_url: BaseUrlOption = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Cache TTL: 5m or 1h.")] = None,
    phases: Annotated[
        str | None,
        typer.Option("--phases", help="Ordered subset of scout,architect,builder,test,deploy."),
    ] = None,
    max_test_iterations: Annotated[
        int | None,
        typer.Option(
            "--max-test-iterations", min=1, help="Test runs before giving up (default 3)."
        ),
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option("--max-turns", min=1, help="Turns per phase.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Stop before spend would exceed USD.")
    ] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Project tokens and cost; no model.")
    ] = False,
    json_output: JsonOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    template: Annotated[
        Path | None, typer.Option("--template", help="Orchestrator prompt template.")
    ] = None,
    db: DbOption = None,
    build_id: Annotated[
        str | None,
        typer.Option(
            "--build-id",
            hidden=True,
            help="The new build's id (32 hex digits): for a caller that starts the build in "
            "another process and must know its id at once (foundry mcp).",
        ),
    ] = None,
) -> None:
    """Run an orchestrated build: scout, architect, builder, test, deploy."""
    from foundry.orchestrator.plan import BuildOptions

    options = BuildOptions(
        name=name,
        task=task,
        dir=dir,
        backend=backend,
        model=model,
        base_url=base_url,
        ttl=ttl,
        phases=phases,
        max_test_iterations=max_test_iterations,
        max_turns=max_turns,
        max_cost=max_cost,
        estimate=estimate,
        config=config,
        template=template,
        db=db,
        build_id=build_id,
    )

    def prepare() -> PreparedBuild:
        from foundry.orchestrator.plan import prepare_build

        return prepare_build(options)

    execute(prepare, json_output=json_output, yes=yes, estimate=estimate)


def execute(
    prepare: Callable[[], PreparedBuild], *, json_output: bool, yes: bool, estimate: bool = False
) -> None:
    """Prepare, confirm, run and report a build (a new one, or one resumed)."""
    # A killed build (SIGTERM from a CI runner or `kill`) must not stay "running" forever.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _execute(prepare(), json_output=json_output, yes=yes, estimate=estimate)
    except KeyboardInterrupt:
        console.error("interrupted before the build started; nothing was recorded")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _execute(prepared: PreparedBuild, *, json_output: bool, yes: bool, estimate: bool) -> None:
    try:
        if estimate:
            _show_estimate(prepared.projection, json_output)
            return
        from foundry.orchestrator.confirmation import build_facts
        from foundry.orchestrator.plan import HeldWorkdir

        # Before anything is asked or loaded: a directory another build holds is refused.
        held = HeldWorkdir.take(prepared.plan.workdir)
        try:
            prepared.backend.check()
            facts = build_facts(prepared)
            if not yes and stdin_is_tty():
                _confirm(facts)
            else:
                for note in facts.notes:  # said, even when nobody is asked
                    console.warning(note)
            result = _run(prepared, held)
        finally:
            if held is not None:
                held.release()
    finally:
        prepared.backend.close()
    _report(result, json_output, local=prepared.backend.local)


def _show_estimate(projection: dict, json_output: bool) -> None:
    from foundry.orchestrator.estimate import render_estimate

    if json_output:
        console.emit_json(projection)
    else:
        console.stdout.print(render_estimate(projection), highlight=False)


def _confirm(facts: BuildFacts) -> None:
    from rich.markup import escape

    console.stderr.print(escape(facts.headline()), highlight=False)
    if facts.deploy_target:
        console.stderr.print(f"deploy commits to {escape(facts.deploy_target)}", highlight=False)
    for note in facts.notes:
        console.stderr.print(f"[bold yellow]note:[/] {escape(note)}", highlight=False)
    if not typer.confirm("Start the build?", default=False, err=True):
        console.stderr.print("aborted: nothing was built")
        raise typer.Exit(1)


def _run(prepared: PreparedBuild, held: HeldWorkdir | None) -> BuildResult:
    from foundry.ledger import Ledger
    from foundry.orchestrator.build import BuildRun
    from foundry.orchestrator.display import make_display, phase_table
    from foundry.orchestrator.events import Fanout
    from foundry.orchestrator.phases import mark_made_by_foundry
    from foundry.orchestrator.progress import LedgerProgress
    from foundry.telemetry import telemetry_recorders

    # The ledger first: a bad --db must not leave an empty build directory behind.
    ledger = Ledger.open(prepared.db, prepared.pricing)
    workdir = prepared.plan.workdir
    try:
        made = not workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        if made:  # a later build here commits into a repository of its own
            mark_made_by_foundry(workdir)
    except BaseException:
        ledger.close()
        raise
    display = make_display(
        console.stderr, prepared.plan.max_cost, endpoint=prepared.backend.endpoint
    )
    # The display draws; the recorders keep the build watchable from elsewhere (the ledger's
    # live progress for `foundry dashboard` and `foundry mcp`, and traces where configured).
    events = Fanout(display, LedgerProgress(), *telemetry_recorders())
    try:
        result = BuildRun(
            prepared.plan,
            config=prepared.config,
            backend=prepared.backend,
            ledger=ledger,
            pricing=prepared.pricing,
            prompt=prepared.prompt,
            events=events,
            resume=prepared.resume,
            held=held,
        ).run()
    finally:
        events.close()
        ledger.close()
    console.stderr.print(phase_table(result.phases, result.total))
    return result


def _report(result: BuildResult, json_output: bool, *, local: bool) -> None:
    """The results on stdout (a few lines, or the summary JSON); the exit code."""
    from foundry.orchestrator.display import summary_lines

    summary = result.summary
    # What was finished stays finished: the phases left are one command away.
    resume = f"continue it with `foundry resume {result.build_id}`"
    if not summary:
        raise FoundryError(
            f"build ended {result.status}: {result.error}", f"see `foundry costs`; {resume}"
        )
    if json_output:
        console.emit_json(summary)
    else:
        for line in summary_lines(summary, local=local):
            console.stdout.print(line, highlight=False)
    if result.status == "failed":
        raise FoundryError(
            f"build {summary['name']} failed: {result.error}",
            f"see .foundry/ in the build directory and `foundry costs`; {resume}",
        )
    if result.status != "completed":
        console.error(f"build {summary['name']} ended {result.status}: {result.error} — {resume}")
        raise typer.Exit(result.exit_code)
