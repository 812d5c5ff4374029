"""The report behind `foundry analyze-prompt`: render and split the template, count tokens,
and put the analysis (cacheability, boundary, cache busters, cost projection) into one
JSON-ready dict. Exact token counts come from a counter the caller passes in, so this module
never talks to an API itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.errors import FoundryError
from foundry.pricing import PricingTable
from foundry.prompt import analysis, tokens
from foundry.prompt.split import (
    SAMPLE_TASKS,
    check_parts,
    contrasting_task,
    parse_template,
    static_difference,
)
from foundry.prompt.template import load_template, text_sha256

if TYPE_CHECKING:
    from foundry.config import FoundryConfig
    from foundry.prompt.template import ParsedTemplate

EXIT_WILL_NOT_CACHE = 3  # the report's exit_code when the static part will not cache


@dataclass(frozen=True)
class AnalyzeOptions:
    """What to analyze and the assumptions of the cost projection."""

    template: Path | None  # None: ./orchestrator_prompt.txt, else the packaged one
    model: str
    builds: int
    builds_per_hour: float
    requests_per_build: int
    exact: bool = False  # count with the `count_exact` callable instead of the estimate
    # What counted exactly (None: Anthropic's count_tokens), for the report.
    exact_method: str | None = None
    # When `count_exact` cannot count (a server without a tokenizer endpoint), estimate and
    # say why, instead of failing.
    estimate_if_unavailable: bool = False


def analyze(
    config: FoundryConfig,
    options: AnalyzeOptions,
    count_exact: Callable[[str], int] | None = None,
) -> dict[str, Any]:
    """Everything analyze-prompt reports, as one JSON-ready dict. With `options.exact`,
    `count_exact(text)` gives the exact tokens a system text adds to a request."""
    parsed, variants, problem = _split_and_render(config, options.template)
    static, dynamic = variants[0]
    exact, unavailable = options.exact, None
    if exact:
        if count_exact is None:
            raise ValueError("an exact analysis needs a count_exact callable")
        try:
            static_tokens, dynamic_tokens = count_exact(static), count_exact(dynamic)
            method, error = options.exact_method or tokens.EXACT_METHOD, 0.0
        except FoundryError as exc:
            if not options.estimate_if_unavailable:
                raise
            exact, unavailable = False, exc.message
    if not exact:
        static_tokens = tokens.estimate_tokens(static)
        dynamic_tokens = tokens.estimate_tokens(dynamic)
        method, error = tokens.ESTIMATE_METHOD, tokens.ESTIMATE_ERROR
        if unavailable:
            method = f"{method}; estimating because {unavailable}"

    model = options.model
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
            builds=options.builds,
            builds_per_hour=options.builds_per_hour,
            requests_per_build=options.requests_per_build,
        )
        for p in pricing.models()
    ]
    chosen = next((p for p in projections if price and p.model == price.model), None)

    will_cache: bool | None = cacheable.meets_minimum
    if problem is not None:
        will_cache = False
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
                "builds": options.builds,
                "builds_per_hour": options.builds_per_hour,
                "requests_per_build": options.requests_per_build,
                "static_tokens_per_request": static_tokens,
                "arrivals": "Poisson: P(warm) = 1 - exp(-builds_per_hour * TTL in hours)",
                "scope": "the static prefix's input cost only; the first build starts cold",
                "prices": f"{pricing.source} (table {pricing.version})",
            },
            "warm_probability": {
                ttl: analysis.warm_probability(options.builds_per_hour, ttl) for ttl in ("5m", "1h")
            },
            "chosen": asdict(chosen) if chosen else None,
            "models": [asdict(p) for p in projections],
        },
        "will_cache": will_cache,
        "verdict": _verdict(model, cacheable, problem, static_tokens, exact),
        "exit_code": EXIT_WILL_NOT_CACHE if will_cache is False else 0,
    }


def _split_and_render(
    config: FoundryConfig, template: Path | None
) -> tuple[ParsedTemplate, list[tuple[str, str]], str | None]:
    """The template split for every sample task, and why its static part varies (or None)."""
    parsed = parse_template(load_template(template), config.caching.boundary_marker)
    variants = [(parsed.render_static(t), parsed.render_dynamic(t)) for t in SAMPLE_TASKS]
    check_parts(parsed, *variants[0])
    problem = static_difference(parsed, SAMPLE_TASKS[0], contrasting_task(SAMPLE_TASKS[0]))
    return parsed, variants, problem


def _verdict(
    model: str, c: analysis.Cacheability, problem: str | None, count: int, exact: bool
) -> str:
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
            f"The static part will cache on {model}: {approx}{count:,} tokens >= the minimum "
            f"{c.min_cache_tokens:,}"
        )
    return (
        f"The static part will NOT cache on {model}: {approx}{count:,} tokens < the minimum "
        f"{c.min_cache_tokens:,}; the API would silently send it uncached"
    )
