"""`foundry costs`: what was spent and saved, by day, week, month, build, model or phase."""

from __future__ import annotations

import typer

from foundry.commands.options import ConfigOption, DbOption, JsonOption
from foundry.errors import UsageError


def costs(
    by: str = typer.Option("day", "--by", help="Group by day, week, month, build, model or phase."),
    since: str | None = typer.Option(
        None, "--since", help="First day to include: YYYY-MM-DD, today, yesterday or Nd."
    ),
    until: str | None = typer.Option(None, "--until", help="Last day to include (inclusive)."),
    tz: str | None = typer.Option(
        None, "--tz", help="Time zone for days and months (IANA name); default: local."
    ),
    build: str | None = typer.Option(None, "--build", help="Only this build (name or id)."),
    model: str | None = typer.Option(None, "--model", help="Only this model (and its dated ids)."),
    backend: str | None = typer.Option(
        None, "--backend", help="Only this backend: anthropic, openai, llamacpp or mlx."
    ),
    db: DbOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    as_csv: bool = typer.Option(False, "--csv", help="CSV rows, then a totals line."),
) -> None:
    """Report tokens, cost and what caching saved, from the local ledger."""
    # Imports here keep `foundry --help` fast for every other command.
    from foundry import console
    from foundry.config import load_config
    from foundry.ledger.costs import CostsOptions, costs_report
    from foundry.ledger.report import VIEWS
    from foundry.render.costs import render_csv, render_table

    if by not in VIEWS:
        raise UsageError(f"--by {by!r} is not a view", f"use one of: {', '.join(VIEWS)}")
    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be combined", "choose one output format")
    options = CostsOptions(
        by=by, since=since, until=until, tz=tz, build=build, model=model, backend=backend, db=db
    )
    report = costs_report(load_config(config), options)
    for warning in report["warnings"]:
        console.warning(warning)
    message = report["message"]
    if as_json:
        console.emit_json(report)
    elif as_csv:
        if message:
            console.info(message)
        render_csv(report)
    elif message:
        console.stdout.print(message, highlight=False)
    else:
        render_table(report, console.stdout)
    unpriced = report["totals"]["unpriced_requests"]
    if unpriced and not as_json:
        console.warning(
            f"{unpriced:,} requests have no price, so their cost is unknown and left out of the "
            "totals — set the model's prices under 'models' in cache_config.json (recorded "
            "costs are never rewritten)"
        )
