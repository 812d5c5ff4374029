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
    from foundry.orchestrator.plan import PreparedBuild


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
        prepared.backend.check()
        if not yes and stdin_is_tty():
            _confirm(prepared)
        result = _run(prepared)
    finally:
        prepared.backend.close()
    _report(result, json_output, local=prepared.backend.local)


def _show_estimate(projection: dict, json_output: bool) -> None:
    from foundry.orchestrator.estimate import render_estimate

    if json_output:
        console.emit_json(projection)
    else:
        console.stdout.print(render_estimate(projection), highlight=False)


def _confirm(prepared: PreparedBuild) -> None:
    from rich.markup import escape

    from foundry.config import is_default_endpoint
    from foundry.formatting import money

    plan, backend, projection = prepared.plan, prepared.backend, prepared.projection
    expected = money(projection["total"]["cost_usd"])
    ceiling = money(projection["ceiling"]["cost_usd"])
    # Where the requests (and the API key) go, whenever that is not the API's own host.
    endpoint = backend.endpoint
    at = "" if is_default_endpoint(endpoint) else f" at [bold]{escape(str(endpoint))}[/]"
    console.stderr.print(
        f"foundry will build [bold]{plan.name}[/] in {plan.workdir} ({plan.mode} project) with "
        f"{backend.name} {backend.model}{at}; phases {','.join(plan.phases)}; projected cost "
        f"{expected} (ceiling {ceiling})",
        highlight=False,
    )
    if not typer.confirm("Start the build?", default=False, err=True):
        console.stderr.print("aborted: nothing was built")
        raise typer.Exit(1)


def _run(prepared: PreparedBuild) -> BuildResult:
    from foundry.ledger import Ledger
    from foundry.orchestrator.build import BuildRun
    from foundry.orchestrator.display import make_display, phase_table

    # The ledger first: a bad --db must not leave an empty build directory behind.
    ledger = Ledger.open(prepared.db, prepared.pricing)
    try:
        prepared.plan.workdir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        ledger.close()
        raise
    display = make_display(
        console.stderr, prepared.plan.max_cost, endpoint=prepared.backend.endpoint
    )
    try:
        result = BuildRun(
            prepared.plan,
            config=prepared.config,
            backend=prepared.backend,
            ledger=ledger,
            pricing=prepared.pricing,
            prompt=prepared.prompt,
            events=display,
            resume=prepared.resume,
        ).run()
    finally:
        display.close()
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
