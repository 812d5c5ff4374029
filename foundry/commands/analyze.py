"""`foundry analyze-prompt`: will the orchestrator prompt cache, where should the marker
sit, what would bust the cache, and what caching saves over N builds.

Exit codes: 0 when the static part will cache on the chosen model (or its minimum is not
known), 3 when it will not (below the model's minimum, or it changes with the task), 1 for
errors (a broken template or config), 2 for bad options.
"""

from __future__ import annotations

from pathlib import Path

import typer

from foundry.commands.options import ConfigOption, JsonOption

DEFAULT_REQUESTS_PER_BUILD = 20  # ~ scout 4 + architect 3 + builder 10 + one test fix round 4


def analyze_prompt(
    template: Path | None = typer.Option(
        None, "--template", help="Prompt template (default: ./ or the packaged one)."
    ),
    config_path: ConfigOption = None,
    model: str | None = typer.Option(
        None, "--model", help="Model to check (default: the config's anthropic_model)."
    ),
    builds_per_hour: float = typer.Option(
        1.0, "--builds-per-hour", min=0.0, help="How often builds start, for the cache TTL."
    ),
    builds: int = typer.Option(10, "--builds", min=1, help="Builds in the cost projection."),
    requests_per_build: int = typer.Option(
        DEFAULT_REQUESTS_PER_BUILD,
        "--requests-per-build",
        min=1,
        help="Model requests one build makes (each sends the static prefix).",
    ),
    as_json: JsonOption = False,
    exact: bool = typer.Option(
        False, "--exact", help="Count tokens with Anthropic's count_tokens (needs an API key)."
    ),
) -> None:
    """Check that the orchestrator prompt caches, and project what caching saves."""
    # Imports here keep `foundry --help` fast for every other command.
    from foundry import console
    from foundry.config import load_config
    from foundry.prompt.report import AnalyzeOptions, analyze
    from foundry.render.analysis import render_analysis

    config = load_config(config_path)
    options = AnalyzeOptions(
        template=template,
        model=model or config.backend.anthropic_model,
        builds=builds,
        builds_per_hour=builds_per_hour,
        requests_per_build=requests_per_build,
        exact=exact,
    )
    count_exact = None
    if exact:
        from foundry.backends.registry import exact_token_counter

        count_exact = exact_token_counter(config, options.model)
    report = analyze(config, options, count_exact)
    if as_json:
        console.emit_json(report)
    else:
        render_analysis(report, console.stdout)
    if report["exit_code"] != 0:
        console.warning(report["verdict"])
        raise typer.Exit(report["exit_code"])
