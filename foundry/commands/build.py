"""`foundry build NAME "TASK"`: validate everything, then run the orchestrated build.

Every check that can fail without a model (task, name, directory, phases, config, template,
API key, server reachability) runs before the ledger is touched or a model is called.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from foundry import console
from foundry.errors import FoundryError, Terminated, UsageError, WorkspaceError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
IGNORED_FOR_MODE = {".foundry", ".git"}


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_name(name: str) -> None:
    if not NAME_RE.match(name) or name.endswith("."):
        raise UsageError(
            f"'{name}' is not a valid build name",
            "use letters, digits, '.', '_' or '-' (no slashes, at most 100 characters)",
        )


def check_workdir(workdir: Path) -> str:
    """Refuse unusable directories; return the mode: "new" or "existing"."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkspaceError(f"--dir {workdir} is a file, not a directory", "choose a directory")
    probe = workdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WorkspaceError(f"cannot create {workdir}: {probe} is a file", "choose another --dir")
    if not is_writable(probe):
        raise WorkspaceError(f"{probe} is not writable", "choose a directory you can write to")
    if workdir.is_dir() and any(p.name not in IGNORED_FOR_MODE for p in workdir.iterdir()):
        return "existing"
    return "new"


def check_ttl(ttl: str | None, config: Any) -> str | None:
    if ttl is None:
        return config.caching.ttl if config.caching.enabled else None
    if ttl not in ("5m", "1h"):
        raise UsageError(f"--ttl must be 5m or 1h, not '{ttl}'", "use --ttl 5m or --ttl 1h")
    return ttl


def build(
    name: str = typer.Argument(..., help="The build's name; the default directory is ./NAME."),
    task: str = typer.Argument(..., help="What to build, in plain words."),
    dir: Path | None = typer.Option(None, "--dir", help="Working directory (default ./NAME)."),
    backend: str | None = typer.Option(None, "--backend", help="anthropic, mlx or auto."),
    model: str | None = typer.Option(None, "--model", help="Model id (default from config)."),
    ttl: str | None = typer.Option(None, "--ttl", help="Cache TTL: 5m or 1h."),
    phases: str | None = typer.Option(
        None, "--phases", help="Ordered subset of scout,architect,builder,test,deploy."
    ),
    max_test_iterations: int | None = typer.Option(
        None, "--max-test-iterations", min=1, help="Test runs before giving up (default 3)."
    ),
    max_turns: int | None = typer.Option(None, "--max-turns", min=1, help="Turns per phase."),
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Stop before spend would exceed USD."
    ),
    estimate: bool = typer.Option(False, "--estimate", help="Project tokens and cost; no model."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    config_path: Path | None = typer.Option(None, "--config", help="cache_config.json to use."),
    template: Path | None = typer.Option(None, "--template", help="Orchestrator prompt template."),
    db: Path | None = typer.Option(None, "--db", help="Ledger file (default in FOUNDRY_HOME)."),
) -> None:
    """Run an orchestrated build: scout, architect, builder, test, deploy."""
    arguments = locals()
    # A killed build (SIGTERM from a CI runner or `kill`) must not stay "running" forever.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _build(**arguments)
    except KeyboardInterrupt:
        console.error("interrupted before the build started; nothing was recorded")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _build(
    *,
    name: str,
    task: str,
    dir: Path | None,
    backend: str | None,
    model: str | None,
    ttl: str | None,
    phases: str | None,
    max_test_iterations: int | None,
    max_turns: int | None,
    max_cost: float | None,
    estimate: bool,
    json_output: bool,
    yes: bool,
    config_path: Path | None,
    template: Path | None,
    db: Path | None,
) -> None:
    from foundry.config import default_model, ledger_path, load_config, resolve_backend
    from foundry.orchestrator.deploy import require_git
    from foundry.orchestrator.phases import parse_phases, saved_test_command
    from foundry.orchestrator.test_detect import detect_test_command
    from foundry.pricing import PricingTable
    from foundry.prompt.split import render_split
    from foundry.prompt.template import TaskConfig, load_template

    if not task.strip():
        raise UsageError("the task is empty", 'say what to build: foundry build NAME "TASK"')
    check_name(name)
    if max_cost is not None and not max_cost > 0:
        raise UsageError(f"--max-cost must be more than 0, not {max_cost}", "give a USD amount")
    config = load_config(config_path)
    phase_list = parse_phases(phases)
    cache_ttl = check_ttl(ttl, config)
    workdir = Path(os.path.abspath((dir or Path(name)).expanduser()))
    mode = check_workdir(workdir)
    # Without architect and builder nothing can change the answer before the test phase.
    if (
        "test" in phase_list
        and not {"architect", "builder"} & set(phase_list)
        and not saved_test_command(workdir)
        and detect_test_command(workdir) is None
    ):
        raise UsageError(
            "the test phase needs a test command: no earlier build recorded one and none "
            f"can be detected in {workdir}",
            "include architect in --phases, or add tests foundry can detect (test_*.py, "
            "a package.json test script, go.mod, Cargo.toml)",
        )
    if "deploy" in phase_list and not estimate:
        require_git()
    backend_name = resolve_backend(config, backend)
    model_name = model or default_model(config, backend_name)
    iterations = max_test_iterations or config.build.max_test_iterations
    turns = max_turns or config.build.max_turns_per_phase
    task_config = TaskConfig(
        name=name,
        task=task.strip(),
        workdir=str(workdir),
        mode=mode,  # type: ignore[arg-type]
        phases=phase_list,
        max_test_iterations=iterations,
    )
    prompt = render_split(
        load_template(template), task_config, marker=config.caching.boundary_marker
    )
    pricing = PricingTable(config)
    projection = _projection(
        prompt, phase_list, backend_name, model_name, cache_ttl, pricing, turns, iterations
    )
    if estimate:
        from foundry.orchestrator.estimate import render_estimate

        if json_output:
            console.emit_json(projection)
        else:
            console.stdout.print(render_estimate(projection), highlight=False)
        return

    from foundry.backends import create_backend
    from foundry.orchestrator.build import BuildPlan

    model_backend = create_backend(backend_name, config, model_name)
    try:
        model_backend.check()
        if not yes and stdin_is_tty():
            _confirm(name, workdir, mode, backend_name, model_name, phase_list, projection)
        workdir.mkdir(parents=True, exist_ok=True)
        plan = BuildPlan(
            name=name,
            task=task.strip(),
            workdir=workdir,
            mode=mode,
            phases=phase_list,
            max_test_iterations=iterations,
            max_turns=turns,
            max_cost=max_cost,
            ttl=cache_ttl,
            max_tokens=(
                config.anthropic.max_tokens
                if model_backend.name == "anthropic"
                else config.mlx.max_tokens
            ),
        )
        result = _run(plan, config, model_backend, pricing, prompt, ledger_path(config, db))
    finally:
        model_backend.close()
    _report(result, json_output)


def _projection(prompt, phase_list, backend_name, model_name, ttl, pricing, turns, iterations):
    from foundry.orchestrator.estimate import estimate_build
    from foundry.orchestrator.tools import tool_specs

    return estimate_build(
        static=prompt.static,
        dynamic=prompt.dynamic,
        tools=tool_specs(),
        phases=phase_list,
        backend=backend_name,
        model=model_name,
        ttl=ttl,
        pricing=pricing,
        max_turns=turns,
        max_test_iterations=iterations,
    )


def _confirm(name, workdir, mode, backend_name, model_name, phase_list, projection) -> None:
    from foundry.orchestrator.display import money

    expected = money(projection["total"]["cost_usd"])
    ceiling = money(projection["ceiling"]["cost_usd"])
    console.stderr.print(
        f"foundry will build [bold]{name}[/] in {workdir} ({mode} project) with "
        f"{backend_name} {model_name}; phases {','.join(phase_list)}; projected cost "
        f"{expected} (ceiling {ceiling})",
        highlight=False,
    )
    if not typer.confirm("Start the build?", default=False, err=True):
        console.stderr.print("aborted: nothing was built")
        raise typer.Exit(1)


def _run(plan, config, model_backend, pricing, prompt, db_path: Path):
    from foundry.ledger import Ledger
    from foundry.orchestrator.build import BuildRun
    from foundry.orchestrator.display import make_display, phase_table

    ledger = Ledger.open(db_path, pricing)
    display = make_display(console.stderr, plan.max_cost)
    try:
        result = BuildRun(
            plan,
            config=config,
            backend=model_backend,
            ledger=ledger,
            pricing=pricing,
            prompt=prompt,
            events=display,
        ).run()
    finally:
        display.close()
        ledger.close()
    console.stderr.print(phase_table(result.phases, result.total))
    return result


def _report(result, json_output: bool) -> None:
    """The results on stdout (a few lines, or the summary JSON); the exit code."""
    from foundry.orchestrator.display import summary_lines

    summary = result.summary
    if not summary:
        raise FoundryError(f"build ended {result.status}: {result.error}", "see `foundry costs`")
    if json_output:
        console.emit_json(summary)
    else:
        for line in summary_lines(summary):
            console.stdout.print(line, highlight=False)
    if result.status == "failed":
        raise FoundryError(
            f"build {summary['name']} failed: {result.error}",
            "see .foundry/ in the build directory and `foundry costs`",
        )
    if result.status != "completed":
        console.error(f"build {summary['name']} ended {result.status}: {result.error}")
        raise typer.Exit(result.exit_code)
