"""`foundry costs`: what was spent and saved, by day, week, month, build, model or phase."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import typer

from foundry.errors import UsageError

VIEWS = ("day", "week", "month", "build", "model", "phase")


def costs(
    by: str = typer.Option("day", "--by", help="Group by day, week, month, build, model or phase."),
    since: str = typer.Option(
        None, "--since", help="First day to include: YYYY-MM-DD, today, yesterday or Nd."
    ),
    until: str = typer.Option(None, "--until", help="Last day to include (inclusive)."),
    tz: str = typer.Option(
        None, "--tz", help="Time zone for days and months (IANA name); default: local."
    ),
    build: str = typer.Option(None, "--build", help="Only this build (name or id)."),
    model: str = typer.Option(None, "--model", help="Only this model (and its dated ids)."),
    backend: str = typer.Option(None, "--backend", help="Only this backend: anthropic or mlx."),
    db: str = typer.Option(None, "--db", help="Ledger file (default: $FOUNDRY_DB or the home's)."),
    config: str = typer.Option(None, "--config", help="cache_config.json to read budgets from."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: rows, totals, budgets."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV rows, then a totals line."),
) -> None:
    """Report tokens, cost and what caching saved, from the local ledger."""
    # Imports here keep `foundry --help` fast for every other command.
    from foundry import console
    from foundry.config import ledger_path, load_config
    from foundry.costs_report import render_csv, render_table
    from foundry.ledger import Ledger
    from foundry.ledger import report as q
    from foundry.ledger.periods import day_start, parse_day, resolve_zone
    from foundry.pricing import PricingTable

    if by not in VIEWS:
        raise UsageError(f"--by {by!r} is not a view", f"use one of: {', '.join(VIEWS)}")
    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be combined", "choose one output format")
    cfg = load_config(config)
    zone = resolve_zone(tz)
    pricing = PricingTable(cfg)
    filters = q.Filters(build=build, backend=backend)
    if since:
        filters.since = day_start(parse_day(since, zone, option="--since"), zone)
    if until:
        last = parse_day(until, zone, option="--until")
        filters.until = day_start(last + timedelta(days=1), zone)
    if filters.since and filters.until and filters.since >= filters.until:
        raise UsageError(f"--since {since} is after --until {until}", "swap the two dates")
    path = ledger_path(cfg, db)

    ledger = Ledger.open_existing(path, pricing)
    rows: list[q.ReportRow] = []
    message = None
    budgets: dict[str, Any] = {"daily": None, "monthly": None}
    try:
        if ledger is None or not q.has_requests(ledger.conn):
            message = (
                f"No requests recorded yet in {path}; run `foundry build` and they appear here."
            )
        else:
            if model:
                filters.models = _matching_models(model, q.distinct_models(ledger.conn), pricing)
            rows = q.aggregate(ledger.conn, by, zone, filters)
            if not rows:
                message = "No requests match these filters."
            budgets = _budgets(ledger.conn, zone, cfg)
    finally:
        if ledger is not None:
            ledger.close()

    asked = {"since": since, "until": until, "model": model}
    report = _report(by, zone.name, str(path), filters, rows, budgets, message, asked)
    for warning in report["warnings"]:
        console.warning(warning)
    if as_json:
        console.emit_json(report)
    elif as_csv:
        if message:
            console.info(message)
        render_csv(report)
    elif message:
        console.stdout.print(message, highlight=False)
    else:
        render_table(report)
    if report["totals"]["unpriced_requests"] and not as_json:
        console.warning(
            f"{report['totals']['unpriced_requests']:,} requests have no price, so their cost "
            "is unknown and left out of the totals — set the model's prices under 'models' "
            "in cache_config.json (recorded costs are never rewritten)"
        )


def _matching_models(wanted: str, recorded: list[str], pricing: Any) -> list[str]:
    """The model itself and, when it is a priced family, its aliases and dated ids —
    matched through the pricing table, never by substring."""
    family = pricing.resolve(wanted)
    return sorted(
        {wanted} | {m for m in recorded if family is not None and pricing.resolve(m) == family}
    )


def _budgets(conn: Any, zone: Any, cfg: Any) -> dict[str, Any]:
    from foundry.costs_report import budget_status
    from foundry.ledger import report as q
    from foundry.ledger.periods import day_start, month_start, next_month, today

    day = today(zone)
    result: dict[str, Any] = {"daily": None, "monthly": None}
    if cfg.budgets.daily_usd is not None:
        spent, unpriced = q.spend_between(
            conn, day_start(day, zone), day_start(day + timedelta(days=1), zone)
        )
        result["daily"] = budget_status(
            "daily", day.isoformat(), cfg.budgets.daily_usd, spent, unpriced
        )
    if cfg.budgets.monthly_usd is not None:
        first = month_start(day)
        spent, unpriced = q.spend_between(
            conn, day_start(first, zone), day_start(next_month(first), zone)
        )
        result["monthly"] = budget_status(
            "monthly", first.strftime("%Y-%m"), cfg.budgets.monthly_usd, spent, unpriced
        )
    return result


def _report(
    by: str,
    zone_name: str,
    path: str,
    filters: Any,
    rows: list[Any],
    budgets: dict[str, Any],
    message: str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    from foundry.costs_report import budget_warning, report_row, totals

    return {
        "ledger": path,
        "by": by,
        "time_zone": zone_name,
        "filters": {
            "since": options["since"],
            "until": options["until"],
            "since_utc": filters.since.isoformat() if filters.since else None,
            "until_utc": filters.until.isoformat() if filters.until else None,
            "build": filters.build,
            "model": options["model"],
            "models": filters.models,
            "backend": filters.backend,
        },
        "rows": [report_row(by, row) for row in rows],
        "totals": totals(rows),
        "budgets": budgets,
        "warnings": [w for w in (budget_warning(s) for s in budgets.values() if s) if w],
        "message": message,
    }
