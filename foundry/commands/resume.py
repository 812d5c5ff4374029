"""`foundry resume BUILD`: continue a failed, interrupted, budget-stopped, incomplete or
abandoned build where it stopped: the same build on the ledger, the same working directory
and artifacts, and no phase it finished is run again."""

from __future__ import annotations

from typing import Annotated

import typer

from foundry.commands.options import BaseUrlOption, ConfigOption, DbOption, JsonOption


def resume(
    build: Annotated[str, typer.Argument(help="The build's id, or its name (its latest build).")],
    max_test_iterations: Annotated[
        int | None, typer.Option("--max-test-iterations", min=1, help="Test runs before giving up.")
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option("--max-turns", min=1, help="Turns per phase.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", help="Stop before the build's whole spend would exceed USD."),
    ] = None,
    base_url: BaseUrlOption = None,
    json_output: JsonOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Continue an unfinished build from its last finished phase."""
    from foundry.commands.build import execute
    from foundry.orchestrator.plan import ResumeOptions, prepare_resume

    options = ResumeOptions(
        build=build,
        base_url=base_url,
        max_test_iterations=max_test_iterations,
        max_turns=max_turns,
        max_cost=max_cost,
        config=config,
        db=db,
    )
    execute(lambda: prepare_resume(options), json_output=json_output, yes=yes)
