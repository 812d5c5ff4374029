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
        from foundry.orchestrator.plan import HeldWorkdir

        # Before anything is asked or loaded: a directory another build holds is refused.
        held = HeldWorkdir.take(prepared.plan.workdir)
        try:
            prepared.backend.check()
            notes = workdir_notes(prepared)
            if not yes and stdin_is_tty():
                _confirm(prepared, notes)
            else:
                for note in notes:  # said, even when nobody is asked
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


def workdir_notes(prepared: PreparedBuild) -> list[str]:
    """What the directory already holds that the user may not expect: another build's files."""
    from foundry.orchestrator.phases import earlier_build

    plan = prepared.plan
    if not plan.workdir.is_dir():
        return []
    earlier = earlier_build(plan.workdir)
    if earlier is None or (prepared.resume and earlier["build_id"] == prepared.resume.id):
        return []
    which = f"build {earlier['name']}" if earlier["name"] else "an earlier build"
    if earlier["build_id"]:
        which += f" ({str(earlier['build_id'])[:12]}, {earlier['status']})"
    return [
        f"{plan.workdir} already holds {which}: this build works on top of its files and "
        "replaces its .foundry/ reports; use --dir for a fresh directory"
    ]


def _confirm(prepared: PreparedBuild, notes: list[str]) -> None:
    from rich.markup import escape

    from foundry.config import is_default_endpoint
    from foundry.formatting import money

    plan, backend, projection = prepared.plan, prepared.backend, prepared.projection
    expected = money(projection["total"]["cost_usd"])
    ceiling = money(projection["ceiling"]["cost_usd"])
    # Where the requests (and the API key) go, whenever that is not the API's own host.
    endpoint = backend.endpoint
    at = "" if is_default_endpoint(endpoint) else f" at [bold]{escape(str(endpoint))}[/]"
    what = f"build [bold]{escape(plan.name)}[/]"
    if prepared.resume is not None:  # which of the builds with this name, and how far it got
        done = ",".join(prepared.resume.phases_done) or "none"
        what = f"resume {what} ({prepared.resume.id[:12]}, {prepared.resume.status}; done: {done})"
    console.stderr.print(
        f"foundry will {what} in {escape(str(plan.workdir))} ({plan.mode} project) with "
        f"{backend.name} {backend.model}{at}; phases {','.join(plan.phases)}; projected cost "
        f"{expected} (ceiling {ceiling})",
        highlight=False,
    )
    if "deploy" in plan.phases:
        from foundry.orchestrator.deploy import describe_target

        target = describe_target(plan.workdir, own_repo=plan.own_repo)
        console.stderr.print(f"deploy commits to {escape(target)}", highlight=False)
    for note in notes:
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
