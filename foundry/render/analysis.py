"""The human view of `foundry analyze-prompt`: sizes, the caching verdict, the boundary,
cache busters and the cost projection, from the dict foundry.prompt.report.analyze() returns.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from foundry.console import Unclipped  # piped: every column whole, not cut at 80
from foundry.formatting import money
from foundry.prompt.split import SAMPLE_TASKS  # the boundary compares one rendering per task


def _lines(count: int) -> str:
    return f"{count:,} rendered line{'' if count == 1 else 's'}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def render_analysis(report: dict[str, Any], out: Console) -> None:
    """The human view of analyze()'s dict, printed on `out`."""
    approx = "~" if report["tokens"]["method"] == "estimate" else ""
    out.print(Text("Prompt analysis", style="bold"))
    out.print(f"template: {report['template']}  (marker line {report['marker_line']})")
    out.print(f"config:   {report['config']}")
    out.print(f"tokens:   {report['tokens']['description']}")
    out.print()

    sizes = Table(title="Sizes", title_justify="left", show_edge=False)
    for column in ("part", "lines", "characters", "tokens"):
        sizes.add_column(column, justify="left" if column == "part" else "right")
    for part in ("static", "dynamic"):
        row = report[part]
        sizes.add_row(part, f"{row['lines']:,}", f"{row['chars']:,}", f"{approx}{row['tokens']:,}")
    out.print(Unclipped(sizes))
    out.print(
        f"static sha256 {report['static']['sha256'][:16]}…; the dynamic part is shown for the "
        f"sample task '{report['sample_task']['build_name']}'"
    )
    out.print()

    c = report["cacheability"]
    style = {True: "green", False: "red", None: "yellow"}[report["will_cache"]]
    out.print(Text(f"Caching on {report['model']}", style="bold"))
    out.print(Text(report["verdict"], style=style))
    if c["near_minimum"]:
        out.print(
            Text(
                f"The estimate is within {report['tokens']['relative_error']:.0%} of the minimum: "
                "check with --exact before relying on it.",
                style="yellow",
            )
        )
    below = ", ".join(
        f"{m['model']} (min {m['min_cache_tokens']:,})" for m in report["not_cached_on"]
    )
    out.print(f"Would not cache on: {below or 'none of the models in the pricing table'}")
    if report["minimum_unknown"]:
        out.print(f"Minimum unknown for: {', '.join(report['minimum_unknown'])}")
    out.print()

    b = report["boundary"]
    boundary_style = "green" if b["status"] == "ok" else "red"
    out.print(Text("Boundary", style="bold"))
    out.print(Text(f"{b['status']}: {b['message']}", style=boundary_style))
    out.print(
        f"Longest never-changing prefix over {len(SAMPLE_TASKS)} different tasks: "
        f"{_lines(b['common_prefix_lines'])} (~{b['common_prefix_tokens']:,} tokens); "
        f"the static part is {_lines(b['static_lines'])}."
    )
    if report["static_problem"]:
        out.print(Text(report["static_problem"], style="red"))
    out.print()

    out.print(Text("Cache busters in the static part", style="bold"))
    if not report["cache_busters"]:
        out.print(Text("none found", style="green"))
    else:
        table = Table(show_edge=False)
        for column in ("line", "kind", "text", "written at"):
            table.add_column(column)
        for buster in report["cache_busters"]:
            table.add_row(
                str(buster["line"]), buster["kind"], buster["text"], buster["source"] or "?"
            )
        out.print(Unclipped(table))
    out.print()
    _render_projection(report, out, approx)


def _render_projection(report: dict[str, Any], out: Console, approx: str) -> None:
    p = report["projection"]
    a = p["assumptions"]
    out.print(Text("Cost projection (static prefix only)", style="bold"))
    out.print(
        f"{a['builds']} builds at {a['builds_per_hour']:g} builds/hour, "
        f"{a['requests_per_build']} requests per build, {approx}{a['static_tokens_per_request']:,} "
        f"static tokens per request. P(next build finds the cache warm): "
        f"5m {_pct(p['warm_probability']['5m'])}, 1h {_pct(p['warm_probability']['1h'])}."
    )
    table = Table(show_edge=False)
    for column in ("model", "min", "uncached", "cached 5m", "cached 1h", "best"):
        right = column not in ("model", "best")
        table.add_column(column, justify="right" if right else "left", no_wrap=True)
    for row in p["models"]:
        if not row["priced"]:
            continue
        minimum = "?" if row["min_cache_tokens"] is None else f"{row['min_cache_tokens']:,}"
        is_chosen = row["model"] == (p["chosen"] or {}).get("model")
        table.add_row(
            row["model"],
            minimum,
            money(row["uncached_usd"]),
            money(row["cached_5m_usd"]),
            money(row["cached_1h_usd"]),
            row["recommended_ttl"],
            style="bold" if is_chosen else ("dim" if row["will_cache"] is False else None),
        )
    out.print(Unclipped(table))
    out.print("best = the cheapest option; 'none' = below the model's minimum or not worth it.")
    unpriced = [row["model"] for row in p["models"] if not row["priced"]]
    if unpriced:
        out.print(f"No sourced price (set one under 'models' in the config): {', '.join(unpriced)}")
    chosen = p["chosen"]
    if chosen and chosen["priced"]:
        req = chosen["break_even_requests"]
        rate = chosen["break_even_builds_per_hour"]
        out.print(
            f"Break-even: in a build that starts cold, caching pays from request "
            f"{req['5m']} with a 5m TTL and from request {req['1h']} with 1h"
            + (f"; 1h beats 5m above {rate:.2f} builds/hour." if rate is not None else ".")
        )
        advice = (
            f"none: the static part is below {chosen['model']}'s minimum, so it cannot cache"
            if chosen["will_cache"] is False
            else f"{chosen['recommended_ttl']} (saves {money(chosen['saving_usd'])} over "
            f"{a['builds']} builds against no caching)"
        )
        out.print(Text(f"Recommended TTL for {chosen['model']}: {advice}", style="bold"))
    out.print(f"Prices: {a['prices']}.")
