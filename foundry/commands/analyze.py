"""`foundry analyze-prompt`: will the orchestrator prompt cache, where should the marker
sit, what would bust the cache, and what caching saves over N builds.

Exit codes: 0 when the static part will cache on the chosen model (or its minimum is not
known), 3 when it will not (below the model's minimum, or it changes with the task), 1 for
errors (a broken template or config), 2 for bad options.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from foundry.commands.options import BaseUrlOption, ConfigOption, JsonOption

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
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Count tokens with this backend's own tokenizer where it has one (a server's "
        "/tokenize, the local model's), else estimate and say so.",
    ),
    base_url: BaseUrlOption = None,
) -> None:
    """Check that the orchestrator prompt caches, and project what caching saves."""
    # Imports here keep `foundry --help` fast for every other command.
    from foundry import console
    from foundry.config import load_config
    from foundry.prompt.report import AnalyzeOptions, analyze
    from foundry.render.analysis import render_analysis

    config = load_config(config_path)  # a found one cannot name base URLs (config_trust)
    options = AnalyzeOptions(
        template=template,
        model=model or config.backend.anthropic_model,
        builds=builds,
        builds_per_hour=builds_per_hour,
        requests_per_build=requests_per_build,
        exact=exact,
    )
    count_exact: Callable[[str], int] | None = None
    counter = None
    if backend is None and base_url is None:
        from foundry.pricing import PricingTable

        PricingTable(config).require(options.model)  # the analysis is about a priced model
    if backend is not None or base_url is not None:
        from dataclasses import replace

        from foundry.backends.registry import create_backend, resolve_backend

        counter = create_backend(resolve_backend(config, backend, model), config, model, base_url)
        options = replace(
            options,
            model=counter.model,
            exact=True,
            exact_method=f"exact: the {counter.name} backend's tokenizer"
            + (f" at {counter.endpoint}" if counter.endpoint else ""),
            estimate_if_unavailable=not exact,
        )
        count_exact = counter.count_tokens
    elif exact:
        from foundry.backends.registry import exact_token_counter

        count_exact = exact_token_counter(config, options.model)
    try:
        report = analyze(config, options, count_exact)
    finally:
        if counter is not None:
            counter.close()
    if as_json:
        console.emit_json(report)
    else:
        render_analysis(report, console.stdout)
    if report["exit_code"] != 0:
        console.warning(report["verdict"])
        raise typer.Exit(report["exit_code"])
