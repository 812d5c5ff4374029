"""The report behind `foundry costs`, built in one place: open the ledger, run the view's
aggregate, and turn it into one JSON-ready dict of rows, totals, budgets and warnings.
No SQL here (the queries live in foundry.ledger.report) and no rendering (foundry.render.costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.config import ledger_path
from foundry.errors import UsageError
from foundry.formatting import money
from foundry.ledger import report as q
from foundry.ledger.periods import (
    Zone,
    day_start,
    month_start,
    next_month,
    parse_day,
    resolve_zone,
    today,
)
from foundry.ledger.report import ReportRow
from foundry.ledger.store import Ledger
from foundry.pricing import PricingTable

if TYPE_CHECKING:
    import sqlite3

    from foundry.config import FoundryConfig

# foundry.usage.TOKEN_FIELDS in the order the costs JSON and CSV columns have always had
# (writes before reads); scripts reading the CSV by position depend on it.
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
)
ROW_FIELDS = (
    "key",
    "label",
    "kind",
    "requests",
    *TOKEN_FIELDS,
    "hit_rate_pct",
    "cost_usd",
    "uncached_cost_usd",
    "saved_usd",
    "saved_pct",
    "unpriced_requests",
    "tokens_reused",
    "prefill_saved_s",
    "unknown_cache_requests",
    # New fields go last, so CSV columns read by position keep their places.
    "duration_s",
    "without_cache_s",
)
BUDGET_LEVELS = (100, 90, 80)


@dataclass(frozen=True)
class CostsOptions:
    """What to report: the view, the local days it spans, and the filters (all optional)."""

    by: str = "day"  # one of foundry.ledger.report.VIEWS
    since: str | None = None  # first day: YYYY-MM-DD, today, yesterday or Nd
    until: str | None = None  # last day, inclusive
    tz: str | None = None  # IANA name; None: local
    build: str | None = None  # a build's name or id
    model: str | None = None  # a model, with its aliases and dated ids
    backend: str | None = None
    db: Path | None = None  # None: $FOUNDRY_DB, the config's, else FOUNDRY_HOME's


def costs_report(config: FoundryConfig, options: CostsOptions) -> dict[str, Any]:
    """The whole report as one dict; `message` says why there are no rows, when there are
    none. UsageError for days that do not parse or do not make a range."""
    path = ledger_path(config, options.db)
    ledger = Ledger.open_existing(path, PricingTable(config))
    try:
        return report_from(ledger.conn if ledger else None, path, config, options)
    finally:
        if ledger is not None:
            ledger.close()


def report_from(
    conn: sqlite3.Connection | None, path: Path, config: FoundryConfig, options: CostsOptions
) -> dict[str, Any]:
    """costs_report's dict from an open connection to the ledger at `path` (None: there is
    none yet). Only reads: `foundry dashboard` calls it on a read-only connection."""
    zone = resolve_zone(options.tz)
    pricing = PricingTable(config)
    filters = _filters(options, zone)
    rows: list[ReportRow] = []
    message = None
    budgets: dict[str, Any] = {"daily": None, "monthly": None}
    if conn is None or not q.has_requests(conn):
        message = f"No requests recorded yet in {path}; run `foundry build` and they appear here."
    else:
        if options.model:
            recorded = q.distinct_models(conn)
            filters.models = _matching_models(options.model, recorded, pricing)
        rows = q.aggregate(conn, options.by, zone, filters)
        if not rows:
            message = "No requests match these filters."
        budgets = _budgets(conn, zone, config)
    return {
        "ledger": str(path),
        "by": options.by,
        "time_zone": zone.name,
        "filters": {
            "since": options.since,
            "until": options.until,
            "since_utc": filters.since.isoformat() if filters.since else None,
            "until_utc": filters.until.isoformat() if filters.until else None,
            "build": filters.build,
            "model": options.model,
            "models": filters.models,
            "backend": filters.backend,
        },
        "rows": [report_row(options.by, row) for row in rows],
        "totals": totals(rows),
        "budgets": budgets,
        "warnings": [w for w in (budget_warning(s) for s in budgets.values() if s) if w],
        "message": message,
    }


def _filters(options: CostsOptions, zone: Zone) -> q.Filters:
    filters = q.Filters(build=options.build, backend=options.backend)
    if options.since:
        filters.since = day_start(parse_day(options.since, zone, option="--since"), zone)
    if options.until:
        last = parse_day(options.until, zone, option="--until")
        filters.until = day_start(last + timedelta(days=1), zone)
    if filters.since and filters.until and filters.since >= filters.until:
        raise UsageError(
            f"--since {options.since} is after --until {options.until}", "swap the two dates"
        )
    return filters


def _matching_models(wanted: str, recorded: list[str], pricing: PricingTable) -> list[str]:
    """The model itself and, when it is a priced family, its aliases and dated ids —
    matched through the pricing table, never by substring."""
    family = pricing.resolve(wanted)
    return sorted(
        {wanted} | {m for m in recorded if family is not None and pricing.resolve(m) == family}
    )


def _budgets(conn: sqlite3.Connection, zone: Zone, config: FoundryConfig) -> dict[str, Any]:
    """Today's and this month's spend against the configured budgets (None: no budget)."""
    day = today(zone)
    result: dict[str, Any] = {"daily": None, "monthly": None}
    if config.budgets.daily_usd is not None:
        spent, unpriced = q.spend_between(
            conn, day_start(day, zone), day_start(day + timedelta(days=1), zone)
        )
        result["daily"] = budget_status(
            "daily", day.isoformat(), config.budgets.daily_usd, spent, unpriced
        )
    if config.budgets.monthly_usd is not None:
        first = month_start(day)
        spent, unpriced = q.spend_between(
            conn, day_start(first, zone), day_start(next_month(first), zone)
        )
        result["monthly"] = budget_status(
            "monthly", first.strftime("%Y-%m"), config.budgets.monthly_usd, spent, unpriced
        )
    return result


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _figures(values: dict[str, Any], local: bool) -> dict[str, Any]:
    """Derived figures: hit rate, saved, and the local-model equivalents. The hit rate is
    over the input whose cached share is known: a request whose server did not say is left
    out (all unknown: no hit rate), never counted as a miss."""
    read = values["cache_read_tokens"]
    known_in = (
        values["input_tokens"]
        + values["cache_write_5m_tokens"]
        + values["cache_write_1h_tokens"]
        + read
        - values["unknown_cache_input_tokens"]
    )
    cost, uncached = values["cost_usd"], values["uncached_cost_usd"]
    return {
        "hit_rate_pct": _pct(read, known_in),
        "cost_usd": round(cost, 6),
        "uncached_cost_usd": round(uncached, 6),
        "saved_usd": round(uncached - cost, 6),
        "saved_pct": None if local else _pct(uncached - cost, uncached),
        "tokens_reused": read if local else None,
        "prefill_saved_s": round(values["prefill_saved_ms"] / 1000, 3) if local else None,
        "duration_s": round(values["duration_ms"] / 1000, 3) if local else None,
        "without_cache_s": (
            _without_cache(values["duration_ms"], values["prefill_saved_ms"]) if local else None
        ),
    }


def _without_cache(duration_ms: float, prefill_saved_ms: float) -> float:
    """The local requests' time had their cache not existed: the time they took plus the
    prefill it saved. Request time, not build wall time: it covers exactly the requests
    whose prefill_saved_ms is counted (`foundry serve`'s too, which belong to no build) and
    splits by day, model and phase; a build's tool and test time was never saved."""
    return round((duration_ms + prefill_saved_ms) / 1000, 3)


def _label(by: str, row: ReportRow) -> str:
    if by == "build":
        if row.key is None:
            return "(no build)"
        name = row.build.get("name") or "?"
        return f"{name} {row.key[:8]}"
    return row.key if row.key is not None else "(none)"


def report_row(by: str, row: ReportRow) -> dict[str, Any]:
    """One aggregate row as the report shows it; build rows carry the build's details."""
    values = {f: getattr(row, f) for f in TOKEN_FIELDS}
    values |= {
        "cost_usd": row.cost_usd,
        "uncached_cost_usd": row.uncached_cost_usd,
        "prefill_saved_ms": row.prefill_saved_ms,
        "unknown_cache_input_tokens": row.unknown_cache_input_tokens,
        "duration_ms": row.duration_ms or 0.0,
    }
    out: dict[str, Any] = {
        "key": row.key,
        "label": _label(by, row),
        "kind": "local" if row.local else "api",
        "requests": row.requests,
        **{f: values[f] for f in TOKEN_FIELDS},
        **_figures(values, row.local),
        "unpriced_requests": row.unpriced_requests,
        "unknown_cache_requests": row.unknown_cache_requests,
    }
    if by == "build":
        out["build"] = row.build or None
    return {k: out[k] for k in (*ROW_FIELDS, "build") if k in out}


def totals(rows: list[ReportRow]) -> dict[str, Any]:
    values = {f: sum(getattr(r, f) for r in rows) for f in TOKEN_FIELDS}
    values |= {
        "cost_usd": sum(r.cost_usd for r in rows),
        "uncached_cost_usd": sum(r.uncached_cost_usd for r in rows),
        "prefill_saved_ms": sum(r.prefill_saved_ms for r in rows if r.local),
        "unknown_cache_input_tokens": sum(r.unknown_cache_input_tokens for r in rows),
        "duration_ms": sum(r.duration_ms or 0.0 for r in rows if r.local),
    }
    figures = _figures(values, local=False)
    local = [r for r in rows if r.local]
    figures["tokens_reused"] = sum(r.cache_read_tokens for r in local)
    figures["prefill_saved_s"] = round(values["prefill_saved_ms"] / 1000, 3)
    # Like prefill_saved_s, the total's times are the local rows' alone.
    figures["duration_s"] = round(values["duration_ms"] / 1000, 3) if local else None
    figures["without_cache_s"] = (
        _without_cache(values["duration_ms"], values["prefill_saved_ms"]) if local else None
    )
    return {
        "key": None,
        "label": "Total",
        "kind": "total",
        "requests": sum(r.requests for r in rows),
        **{f: values[f] for f in TOKEN_FIELDS},
        **figures,
        "unpriced_requests": sum(r.unpriced_requests for r in rows),
        "unknown_cache_requests": sum(r.unknown_cache_requests for r in rows),
    }


def budget_status(
    name: str, period: str, limit: float | None, spent: float, unpriced: int
) -> dict[str, Any] | None:
    """One budget's standing; `level` is the highest of 80/90/100 % reached, else None."""
    if limit is None:
        return None
    used = 100.0 * spent / limit
    level = next((lv for lv in BUDGET_LEVELS if used >= lv), None)
    return {
        "budget": name,
        "period": period,
        "limit_usd": limit,
        "spent_usd": round(spent, 6),
        "used_pct": round(used, 2),
        "level": level,
        "unpriced_requests": unpriced,
    }


def budget_warning(status: dict[str, Any]) -> str | None:
    level = status["level"]
    if level is None:
        return None
    what = "over" if level >= 100 else f"past {level}% of"
    return (
        f"{status['budget']} budget: {money(status['spent_usd'])} spent in {status['period']}, "
        f"{what} the {money(status['limit_usd'])} limit ({status['used_pct']:.0f}%)"
    )
