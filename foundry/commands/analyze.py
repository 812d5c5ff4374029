"""`foundry analyze-prompt`: will the orchestrator prompt cache, where should the marker
sit, what would bust the cache, and what caching saves over N builds.

Exit codes: 0 when the static part will cache on the chosen model (or its minimum is not
known), 3 when it will not (below the model's minimum, or it changes with the task), 1 for
errors (a broken template or config), 2 for bad options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from foundry.formatting import money

if TYPE_CHECKING:
    from foundry.config import FoundryConfig
    from foundry.prompt.template import ParsedTemplate

EXIT_WILL_NOT_CACHE = 3
DEFAULT_REQUESTS_PER_BUILD = 20  # ~ scout 4 + architect 3 + builder 10 + one test fix round 4


def analyze_prompt(
    template: Path | None = typer.Option(
        None, "--template", help="Prompt template (default: ./ or the packaged one)."
    ),
    config_path: Path | None = typer.Option(None, "--config", help="cache_config.json to use."),
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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
    exact: bool = typer.Option(
        False, "--exact", help="Count tokens with Anthropic's count_tokens (needs an API key)."
    ),
) -> None:
    """Check that the orchestrator prompt caches, and project what caching saves."""
    from foundry import console
    from foundry.config import load_config

    config = load_config(config_path)
    report = run_analysis(
        config,
        template=template,
        model=model or config.backend.anthropic_model,
        builds=builds,
        builds_per_hour=builds_per_hour,
        requests_per_build=requests_per_build,
        exact=exact,
    )
    if as_json:
        console.emit_json(report)
    else:
        render_report(report, console.stdout)
    if report["exit_code"] != 0:
        console.warning(report["verdict"])
        raise typer.Exit(report["exit_code"])


def _split_and_render(
    config: FoundryConfig, template: Path | None
) -> tuple[ParsedTemplate, list[tuple[str, str]], str | None]:
    from foundry.prompt.split import (
        SAMPLE_TASKS,
        check_parts,
        contrasting_task,
        parse_template,
        static_difference,
    )
    from foundry.prompt.template import load_template

    parsed = parse_template(load_template(template), config.caching.boundary_marker)
    variants = [(parsed.render_static(t), parsed.render_dynamic(t)) for t in SAMPLE_TASKS]
    check_parts(parsed, *variants[0])
    problem = static_difference(parsed, SAMPLE_TASKS[0], contrasting_task(SAMPLE_TASKS[0]))
    return parsed, variants, problem


def run_analysis(
    config: FoundryConfig,
    *,
    template: Path | None,
    model: str,
    builds: int,
    builds_per_hour: float,
    requests_per_build: int,
    exact: bool,
) -> dict[str, Any]:
    """Everything analyze-prompt reports, as one JSON-ready dict."""
    from dataclasses import asdict

    from foundry.pricing import PricingTable
    from foundry.prompt import analysis, tokens
    from foundry.prompt.split import SAMPLE_TASKS
    from foundry.prompt.template import text_sha256

    parsed, variants, problem = _split_and_render(config, template)
    static, dynamic = variants[0]
    if exact:
        static_tokens = tokens.count_tokens_exact(static, model, config)
        dynamic_tokens = tokens.count_tokens_exact(dynamic, model, config)
        method, error = tokens.EXACT_METHOD, 0.0
    else:
        static_tokens = tokens.estimate_tokens(static)
        dynamic_tokens = tokens.estimate_tokens(dynamic)
        method, error = tokens.ESTIMATE_METHOD, tokens.ESTIMATE_ERROR

    pricing = PricingTable(config)
    price = pricing.get(model)
    cacheable = analysis.cacheability(static_tokens, model, price, error)
    below, unknown = analysis.models_not_cached(static_tokens, pricing.models())
    advice = analysis.boundary_advice(
        variants, parsed.marker_line, parsed.variable_uses(), tokens.estimate_tokens
    )
    busters = [
        {**asdict(b), "source": parsed.locate(b.text)} for b in analysis.find_cache_busters(static)
    ]
    projections = [
        analysis.project_model(
            p,
            static_tokens,
            builds=builds,
            builds_per_hour=builds_per_hour,
            requests_per_build=requests_per_build,
        )
        for p in pricing.models()
    ]
    chosen = next((p for p in projections if price and p.model == price.model), None)

    will_cache: bool | None = cacheable.meets_minimum
    if problem is not None:
        will_cache = False
    exit_code = EXIT_WILL_NOT_CACHE if will_cache is False else 0
    return {
        "template": parsed.name,
        "config": config.source,
        "model": model,
        "marker": parsed.marker,
        "marker_line": parsed.marker_line,
        "template_sha256": parsed.template_sha256(),
        "tokens": {
            "method": "exact" if exact else "estimate",
            "description": method,
            "relative_error": error,
        },
        "sample_task": SAMPLE_TASKS[0].context(),
        "static": {
            **asdict(analysis.part_size(static, static_tokens)),
            "sha256": text_sha256(static),
        },
        "dynamic": asdict(analysis.part_size(dynamic, dynamic_tokens)),
        "cacheability": asdict(cacheable),
        "not_cached_on": below,
        "minimum_unknown": unknown,
        "static_is_static": problem is None,
        "static_problem": problem,
        "boundary": asdict(advice),
        "cache_busters": busters,
        "projection": {
            "assumptions": {
                "builds": builds,
                "builds_per_hour": builds_per_hour,
                "requests_per_build": requests_per_build,
                "static_tokens_per_request": static_tokens,
                "arrivals": "Poisson: P(warm) = 1 - exp(-builds_per_hour * TTL in hours)",
                "scope": "the static prefix's input cost only; the first build starts cold",
                "prices": f"{pricing.source} (table {pricing.version})",
            },
            "warm_probability": {
                ttl: analysis.warm_probability(builds_per_hour, ttl) for ttl in ("5m", "1h")
            },
            "chosen": asdict(chosen) if chosen else None,
            "models": [asdict(p) for p in projections],
        },
        "will_cache": will_cache,
        "verdict": _verdict(model, cacheable, problem, static_tokens, exact),
        "exit_code": exit_code,
    }


def _verdict(model: str, c: Any, problem: str | None, tokens: int, exact: bool) -> str:
    approx = "" if exact else "~"
    if problem is not None:
        return (
            f"The static part will NOT cache across builds on {model}: it changes with the task "
            "(see the boundary section)"
        )
    if c.meets_minimum is None:
        known = (
            "its minimum cacheable length is not documented"
            if c.known_model
            else ("it is not in the pricing table")
        )
        return f"Cannot tell whether the static part caches on {model}: {known}"
    if c.meets_minimum:
        return (
            f"The static part will cache on {model}: {approx}{tokens:,} tokens >= the minimum "
            f"{c.min_cache_tokens:,}"
        )
    return (
        f"The static part will NOT cache on {model}: {approx}{tokens:,} tokens < the minimum "
        f"{c.min_cache_tokens:,}; the API would silently send it uncached"
    )


# --------------------------------------------------------------------------- the rich view


def _lines(count: int) -> str:
    return f"{count:,} rendered line{'' if count == 1 else 's'}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def render_report(report: dict[str, Any], out: Any) -> None:
    """The human view of run_analysis()'s dict."""
    from rich.table import Table
    from rich.text import Text

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
    out.print(sizes)
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
        f"Longest never-changing prefix over {len(_sample_names())} different tasks: "
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
        out.print(table)
    out.print()
    _render_projection(report, out, approx)


def _sample_names() -> list[str]:
    from foundry.prompt.split import SAMPLE_TASKS

    return [t.name for t in SAMPLE_TASKS]


def _render_projection(report: dict[str, Any], out: Any, approx: str) -> None:
    from rich.table import Table
    from rich.text import Text

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
    out.print(table)
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
