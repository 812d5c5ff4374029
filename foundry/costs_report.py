"""`foundry costs`: turn the ledger's aggregates into the report (a dict), and render it as a
table, JSON or CSV. No SQL here: the queries live in foundry.ledger.report."""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

from foundry.formatting import money
from foundry.ledger.report import ReportRow

KEY_HEADERS = {
    "day": "Day",
    "week": "Week of",
    "month": "Month",
    "build": "Build",
    "model": "Model",
    "phase": "Phase",
}
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
)
BUDGET_LEVELS = (100, 90, 80)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _figures(values: dict[str, Any], local: bool) -> dict[str, Any]:
    """Derived figures: hit rate, saved, and the local-model equivalents."""
    read = values["cache_read_tokens"]
    total_in = (
        values["input_tokens"]
        + values["cache_write_5m_tokens"]
        + values["cache_write_1h_tokens"]
        + read
    )
    cost, uncached = values["cost_usd"], values["uncached_cost_usd"]
    return {
        "hit_rate_pct": _pct(read, total_in),
        "cost_usd": round(cost, 6),
        "uncached_cost_usd": round(uncached, 6),
        "saved_usd": round(uncached - cost, 6),
        "saved_pct": None if local else _pct(uncached - cost, uncached),
        "tokens_reused": read if local else None,
        "prefill_saved_s": round(values["prefill_saved_ms"] / 1000, 3) if local else None,
    }


def _label(by: str, row: ReportRow) -> str:
    if by == "build":
        if row.key is None:
            return "(no build)"
        name = row.build.get("name") or "?"
        return f"{name} {row.key[:8]}"
    return row.key if row.key is not None else "(none)"


def report_row(by: str, row: ReportRow) -> dict[str, Any]:
    values = {f: getattr(row, f) for f in TOKEN_FIELDS}
    values |= {
        "cost_usd": row.cost_usd,
        "uncached_cost_usd": row.uncached_cost_usd,
        "prefill_saved_ms": row.prefill_saved_ms,
    }
    out: dict[str, Any] = {
        "key": row.key,
        "label": _label(by, row),
        "kind": "local" if row.local else "api",
        "requests": row.requests,
        **{f: values[f] for f in TOKEN_FIELDS},
        **_figures(values, row.local),
        "unpriced_requests": row.unpriced_requests,
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
    }
    figures = _figures(values, local=False)
    local = [r for r in rows if r.local]
    figures["tokens_reused"] = sum(r.cache_read_tokens for r in local)
    figures["prefill_saved_s"] = round(values["prefill_saved_ms"] / 1000, 3)
    return {
        "key": None,
        "label": "Total",
        "kind": "total",
        "requests": sum(r.requests for r in rows),
        **{f: values[f] for f in TOKEN_FIELDS},
        **figures,
        "unpriced_requests": sum(r.unpriced_requests for r in rows),
    }


def budget_status(name: str, period: str, limit: float | None, spent: float, unpriced: int):
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


# ---- rendering ---------------------------------------------------------------------------


def _num(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def tokens(value: int | None) -> str:
    """Compact token count for the table (JSON and CSV carry the exact figures)."""
    if value is None:
        return "—"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= size:
            scaled = value / (size if suffix != "k" else 1e3)
            return f"{scaled:.1f}{suffix}" if suffix != "k" else f"{scaled:,.1f}k"
    return f"{value:,}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _pct_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


WIDE_ONLY = {"Input", "Output", "Write 5m", "Write 1h", "Uncached"}
COLUMNS: list[tuple[str, Any]] = [
    ("Reqs", lambda r: tokens(r["requests"])),
    ("Input", lambda r: tokens(r["input_tokens"])),
    ("Output", lambda r: tokens(r["output_tokens"])),
    ("Write 5m", lambda r: tokens(r["cache_write_5m_tokens"])),
    ("Write 1h", lambda r: tokens(r["cache_write_1h_tokens"])),
    ("Writes", lambda r: tokens(r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"])),
    ("Read", lambda r: tokens(r["cache_read_tokens"])),
    ("Hit", lambda r: _pct_text(r["hit_rate_pct"])),
    ("Cost", lambda r: _cost_cell(r)),
    ("Uncached", lambda r: _local_or(r, "—", money(r["uncached_cost_usd"]))),
    ("Saved", lambda r: _saved_cell(r)),
    ("Saved %", lambda r: _local_or(r, "—", _pct_text(r["saved_pct"]))),
]


def render_table(report: dict[str, Any]) -> None:
    """A plain aligned table (rich's Table takes seconds for thousands of rows). When every
    column does not fit the terminal, Input, Output and Uncached are left out and the two
    write columns fold into one; JSON and CSV always carry every figure."""
    from rich.text import Text

    from foundry import console

    total = report["totals"]
    if report["rows"] and all(r["kind"] == "local" for r in report["rows"]):
        # Nothing was paid for: the total is local too (time saved, not "$0.0000 saved").
        total = {**total, "kind": "local"}
    rows = [*report["rows"], total]
    grids = {}
    for wide in (True, False):
        if wide:
            chosen = [c for c in COLUMNS if c[0] != "Writes"]
        else:
            chosen = [c for c in COLUMNS if c[0] not in WIDE_ONLY]
        header = [KEY_HEADERS[report["by"]], *(name for name, _ in chosen)]
        cells = [[row["label"], *(cell(row) for _, cell in chosen)] for row in rows]
        widths = [max(len(x) for x in column) for column in zip(header, *cells, strict=True)]
        grids[wide] = (header, cells, widths)
    wide = sum(grids[True][2]) + 2 * len(grids[True][2]) <= console.stdout.width
    header, cells, widths = grids[wide]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "─" * (sum(widths) + 2 * (len(widths) - 1))
    text = Text(f"Costs by {report['by']} · {report['time_zone']}\n", style="bold")
    text.append(line(header) + "\n", style="bold")
    text.append(rule + "\n" + "\n".join(line(c) for c in cells[:-1]) + "\n" + rule + "\n")
    text.append(line(cells[-1]), style="bold")
    console.stdout.print(text, highlight=False, soft_wrap=True)
    for note in _notes(report, wide):
        console.stdout.print(note, highlight=False)


def _local_or(row: dict[str, Any], local: str, paid: str) -> str:
    return local if row["kind"] == "local" else paid


def _saved_cell(row: dict[str, Any]) -> str:
    if row["kind"] == "local":
        return duration(row["prefill_saved_s"])
    return money(row["saved_usd"])


def _cost_cell(row: dict[str, Any]) -> str:
    text = "local" if row["kind"] == "local" else money(row["cost_usd"])
    return text + ("*" if row["unpriced_requests"] else "")


def _notes(report: dict[str, Any], wide: bool) -> list[str]:
    total = report["totals"]
    notes = []
    if any(r["kind"] == "local" for r in report["rows"]):
        notes.append(
            f"Cost 'local' rows ran on a local model and cost nothing in money: Read is tokens "
            f"reused from the saved prefix cache ({total['tokens_reused']:,} in all), Saved is "
            f"prefill time saved ({total['prefill_saved_s']:,.1f} s in all)."
        )
    if total["unpriced_requests"]:
        notes.append(
            f"* {total['unpriced_requests']:,} requests have no price (cost NULL in the ledger) "
            "and are not counted in Cost, Uncached or Saved."
        )
    if not wide:
        notes.append(
            "Input, Output and Uncached are hidden and Writes = 5m + 1h cache writes: widen "
            "the terminal, or use --json or --csv, for every column."
        )
    for status in report["budgets"].values():
        if status:
            notes.append(
                f"{status['budget'].capitalize()} budget ({status['period']}): "
                f"{money(status['spent_usd'])} of {money(status['limit_usd'])} "
                f"({status['used_pct']:.0f}%)"
            )
    return notes


def render_csv(report: dict[str, Any]) -> None:
    """One line per row plus a final totals line (kind "total"); build rows add name/status."""
    fields = list(ROW_FIELDS)
    if report["by"] == "build":
        fields += ["build_name", "build_status", "build_started_at"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in [*report["rows"], report["totals"]]:
        flat = dict(row)
        build = row.get("build") or {}
        flat |= {
            "build_name": build.get("name"),
            "build_status": build.get("status"),
            "build_started_at": build.get("started_at"),
        }
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    sys.stdout.write(buffer.getvalue())
    sys.stdout.flush()
