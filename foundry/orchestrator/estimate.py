"""`foundry build --estimate`: projected requests, tokens and cost of a build, without
calling a model. Token counts use foundry.prompt.tokens' offline estimate; turn counts and sizes
are the documented assumptions below, so the result is a projection, not a quote."""

from __future__ import annotations

import json
from typing import Any

from foundry.backends.base import ToolSpec
from foundry.orchestrator.metered import PhaseStats
from foundry.orchestrator.phases import BY_NAME, first_user_turn
from foundry.pricing import PricingTable
from foundry.usage import Usage

# Expected model turns per phase (a fix round for the test phase) and per-turn sizes.
EXPECTED_TURNS = {"scout": 4, "architect": 3, "builder": 10, "test": 4, "deploy": 0}
OUTPUT_TOKENS_PER_TURN = 500
TOOL_RESULT_TOKENS_PER_TURN = 600
ARTIFACT_TOKENS = 700
EXPECTED_FIX_ROUNDS = 1  # the first test run fails once; the fix passes


def _phase_turns(phase: str, max_turns: int, max_test_iterations: int, ceiling: bool) -> int:
    if phase == "test":
        rounds = (
            max_test_iterations - 1
            if ceiling
            else min(EXPECTED_FIX_ROUNDS, max_test_iterations - 1)
        )
        return rounds * (max_turns if ceiling else EXPECTED_TURNS["test"])
    if phase == "deploy":
        return 0
    return max_turns if ceiling else min(EXPECTED_TURNS[phase], max_turns)


def project(
    *,
    static: str,
    dynamic: str,
    tools: list[ToolSpec],
    phases: tuple[str, ...],
    backend: str,
    local: bool,
    model: str,
    ttl: str | None,
    pricing: PricingTable,
    max_turns: int,
    max_test_iterations: int,
    ceiling: bool = False,
) -> dict[str, Any]:
    from foundry.prompt.tokens import estimate_tokens

    prefix = estimate_tokens(static) + estimate_tokens(json.dumps([t.to_dict() for t in tools]))
    price = pricing.get(model)
    min_tokens = price.min_cache_tokens if price and price.min_cache_tokens else 0
    static_cached = ttl is not None and prefix >= min_tokens
    rows: list[dict[str, Any]] = []
    total = PhaseStats()
    first_request_of_build = True
    artifacts = 0
    for name in phases:
        turns = _phase_turns(name, max_turns, max_test_iterations, ceiling)
        first_turn = estimate_tokens(first_user_turn(dynamic, BY_NAME[name], []))
        first_turn += artifacts * ARTIFACT_TOKENS
        row = PhaseStats()
        conversation_cached = 0
        conversation = 0
        for turn in range(1, turns + 1):
            growth = (
                first_turn if turn == 1 else OUTPUT_TOKENS_PER_TURN + TOOL_RESULT_TOKENS_PER_TURN
            )
            conversation += growth
            usage = Usage(output_tokens=OUTPUT_TOKENS_PER_TURN)
            read = prefix if static_cached and not first_request_of_build else 0
            read += conversation_cached
            written = (prefix + conversation - read) if ttl else 0
            if ttl is not None and prefix + conversation >= min_tokens:
                field = "cache_write_1h_tokens" if ttl == "1h" else "cache_write_5m_tokens"
                # A static prefix under the minimum is not cached on its own.
                setattr(usage, field, written)
                usage.cache_read_tokens = read
                conversation_cached = conversation
            else:
                usage.input_tokens = prefix + conversation
            first_request_of_build = False
            row.add(usage, pricing.cost(usage, model, local=local))
        if BY_NAME[name].artifact:
            artifacts += 1
        total.merge(row)
        rows.append(_row(name, row))
    return {
        "backend": backend,
        "model": model,
        "ttl": ttl,
        "static_prefix_tokens": prefix,
        "dynamic_tokens": estimate_tokens(dynamic),
        "static_prefix_cached": static_cached,
        "min_cache_tokens": min_tokens or None,
        "phases": rows,
        "total": _row("total", total),
    }


def _row(name: str, p: PhaseStats) -> dict[str, Any]:
    saved = None
    if p.cost_usd is not None and p.uncached_cost_usd is not None:
        saved = p.uncached_cost_usd - p.cost_usd
    return {
        "phase": name,
        "requests": p.requests,
        "input_tokens": p.usage.input_tokens,
        "output_tokens": p.usage.output_tokens,
        "cache_read_tokens": p.usage.cache_read_tokens,
        "cache_write_tokens": p.usage.cache_write_tokens,
        "cost_usd": p.cost_usd,
        "uncached_cost_usd": p.uncached_cost_usd,
        "saved_usd": saved,
    }


def estimate_build(**kwargs: Any) -> dict[str, Any]:
    """The expected projection plus a ceiling where every phase uses all its turns."""
    from foundry.prompt.tokens import ESTIMATE_METHOD

    expected = project(**kwargs)
    ceiling = project(**kwargs, ceiling=True)
    expected["ceiling"] = ceiling["total"]
    expected["assumptions"] = {
        "token_estimate": ESTIMATE_METHOD,
        "expected_turns": {p: EXPECTED_TURNS[p] for p in kwargs["phases"]},
        "output_tokens_per_turn": OUTPUT_TOKENS_PER_TURN,
        "tool_result_tokens_per_turn": TOOL_RESULT_TOKENS_PER_TURN,
        "artifact_tokens": ARTIFACT_TOKENS,
        "expected_fix_rounds": EXPECTED_FIX_ROUNDS,
        "ceiling": "every phase uses --max-turns; every test run but the last fails",
    }
    return expected


def render_estimate(projection: dict[str, Any]) -> Any:
    """The projection as a rich renderable: a table per phase and the caveats."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from foundry.formatting import money

    table = Table(
        title=f"projected build: {projection['backend']} {projection['model']}, "
        f"ttl {projection['ttl'] or 'off'} (tokens: in = uncached input, read/write = cache)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in ("phase", "reqs", "in", "read", "write", "out", "cost", "uncached"):
        table.add_column(header, justify="left" if header == "phase" else "right", no_wrap=True)
    for row in [*projection["phases"], projection["total"]]:
        table.add_row(
            row["phase"],
            str(row["requests"]),
            f"{row['input_tokens']:,}",
            f"{row['cache_read_tokens']:,}",
            f"{row['cache_write_tokens']:,}",
            f"{row['output_tokens']:,}",
            money(row["cost_usd"]),
            money(row["uncached_cost_usd"]),
            style="bold" if row["phase"] == "total" else None,
        )
    ceiling = projection["ceiling"]
    cached = "cached" if projection["static_prefix_cached"] else "NOT cached: under the minimum"
    notes = (
        f"static prefix ~{projection['static_prefix_tokens']:,} tokens ({cached}); dynamic "
        f"~{projection['dynamic_tokens']:,} tokens. Ceiling (every phase uses all its turns): "
        f"{ceiling['requests']} requests, {money(ceiling['cost_usd'])}.\n"
        f"Token counts are an {projection['assumptions']['token_estimate']}; turn counts and "
        "sizes are assumptions (see docs/build.md)."
    )
    return Group(table, Text(notes))
