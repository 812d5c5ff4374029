"""The human views of `foundry costs`: a plain aligned table, and CSV. The report dict comes
from foundry.ledger.costs.costs_report(); JSON needs no view of its own."""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from foundry.console import table_width
from foundry.formatting import money
from foundry.ledger.costs import ROW_FIELDS

KEY_HEADERS = {
    "day": "Day",
    "week": "Week of",
    "month": "Month",
    "build": "Build",
    "model": "Model",
    "phase": "Phase",
}


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
    ("Hit", lambda r: _hit_cell(r)),
    ("Cost", lambda r: _cost_cell(r)),
    ("Uncached", lambda r: _local_or(r, "—", money(r["uncached_cost_usd"]))),
    ("Saved", lambda r: _saved_cell(r)),
    ("Saved %", lambda r: _local_or(r, "—", _pct_text(r["saved_pct"]))),
]


def render_table(report: dict[str, Any], out: Console) -> None:
    """A plain aligned table on `out` (rich's Table takes seconds for thousands of rows).
    When every column does not fit the terminal, Input, Output and Uncached are left out and
    the two write columns fold into one; JSON and CSV always carry every figure. No cell is
    ever cut: a line longer than the terminal runs on (the console soft-wraps)."""
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
    # Piped with no $COLUMNS there is no width to fit (see foundry.console.table_width),
    # so a file or `| cat` gets every column rather than the narrow table rich's 80 picks.
    limit = table_width(out)
    wide = limit is None or sum(grids[True][2]) + 2 * len(grids[True][2]) <= limit
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
    out.print(text, highlight=False, soft_wrap=True)
    for note in _notes(report, wide):
        out.print(note, highlight=False)


def _local_or(row: dict[str, Any], local: str, paid: str) -> str:
    return local if row["kind"] == "local" else paid


def _saved_cell(row: dict[str, Any]) -> str:
    if row["kind"] == "local":
        return duration(row["prefill_saved_s"])
    return money(row["saved_usd"])


def _hit_cell(row: dict[str, Any]) -> str:
    """The hit rate over requests whose server said what it cached; † when some did not."""
    if not row.get("unknown_cache_requests"):
        return _pct_text(row["hit_rate_pct"])
    return "unknown" if row["hit_rate_pct"] is None else _pct_text(row["hit_rate_pct"]) + "†"


def _cost_cell(row: dict[str, Any]) -> str:
    text = "local" if row["kind"] == "local" else money(row["cost_usd"])
    return text + ("*" if row["unpriced_requests"] else "")


def _notes(report: dict[str, Any], wide: bool) -> list[str]:
    total = report["totals"]
    notes = []
    if any(r["kind"] == "local" for r in report["rows"]):
        notes.append(
            f"Cost 'local' rows ran on a local model and cost nothing in money: Read is tokens "
            "reused from its cache (the saved prefix, or a local server's; "
            f"{total['tokens_reused']:,} in all), Saved is the prefill time the cache saved: "
            f"{_time_saved(total)}."
        )
    if total["unknown_cache_requests"]:
        notes.append(
            f"† {total['unknown_cache_requests']:,} request(s) went to a server that did not "
            "say how much of the prompt it served from its cache (cache_read_tokens NULL in the "
            "ledger): Hit counts only the requests that did, and says unknown where none did."
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


def _time_saved(total: dict[str, Any]) -> str:
    """Saved time beside the time taken: "46.6 min saved" alone, for 7 minutes of
    requests, reads as an exaggeration although it is exactly the prefill not redone."""
    took, without = total["duration_s"], total["without_cache_s"]
    return (
        f"local model requests took {duration(took)}; without the cache about "
        f"{duration(without)} ({duration(total['prefill_saved_s'])} of prefill saved)"
    )


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
