"""The reporting tools: `foundry costs`, `foundry analyze-prompt` and `foundry cache` as data.
Each calls the core its command calls (foundry.ledger.costs, foundry.prompt.report,
foundry.local.prefix_store) with the server's config, and returns the dict the command's
--json prints; nothing is computed here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.errors import FoundryError, UsageError

if TYPE_CHECKING:
    from foundry.mcp.settings import ServerSettings


def costs(
    settings: ServerSettings,
    *,
    by: str = "day",
    since: str | None = None,
    until: str | None = None,
    tz: str | None = None,
    build: str | None = None,
    model: str | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    from foundry.config import load_config
    from foundry.ledger.costs import CostsOptions, costs_report
    from foundry.ledger.report import VIEWS

    if by not in VIEWS:  # as `foundry costs --by` refuses it
        raise UsageError(f"--by {by!r} is not a view", f"use one of: {', '.join(VIEWS)}")
    options = CostsOptions(
        by=by,
        since=since,
        until=until,
        tz=tz,
        build=build,
        model=model,
        backend=backend,
        db=settings.db,
    )
    return costs_report(load_config(settings.config), options)


def analyze_prompt(
    settings: ServerSettings,
    *,
    model: str | None = None,
    template: str | None = None,
    builds: int = 10,
    builds_per_hour: float = 1.0,
    requests_per_build: int | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """`foundry analyze-prompt --json` for a priced model, offline estimate or (exact)
    Anthropic's count_tokens; the per-backend tokenizers are the CLI's alone (they may load
    a local model)."""
    from foundry.commands.analyze import DEFAULT_REQUESTS_PER_BUILD
    from foundry.config import load_config
    from foundry.pricing import PricingTable
    from foundry.prompt.report import AnalyzeOptions, analyze

    config = load_config(settings.config)
    options = AnalyzeOptions(
        template=Path(template) if template else None,
        model=model or config.backend.anthropic_model,
        builds=builds,
        builds_per_hour=builds_per_hour,
        requests_per_build=requests_per_build or DEFAULT_REQUESTS_PER_BUILD,
        exact=exact,
    )
    PricingTable(config).require(options.model)  # the analysis is about a priced model
    count_exact = None
    if exact:
        from foundry.backends.registry import exact_token_counter

        count_exact = exact_token_counter(config, options.model)
    return analyze(config, options, count_exact)


def cache_stats(
    settings: ServerSettings, *, serve_url: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """The local prefix store, as `foundry cache stats` and `list` report it, and a running
    `foundry serve`'s /cache/stats when asked."""
    from foundry.config import load_config
    from foundry.local.prefix_store import PrefixCacheStore

    store = PrefixCacheStore.from_config(load_config(settings.config), create=False)
    entries = [{k: v for k, v in r.items() if k != "identity"} for r in store.entries()]
    served = None
    if serve_url is not None:
        served = serve_stats(serve_url, api_key, allow_remote=settings.allow_remote_serve)
    return {"store": store.stats(), "entries": entries, "serve": served}


def serve_stats(url: str, api_key: str | None, *, allow_remote: bool) -> dict[str, Any]:
    """GET <url>/cache/stats, through the client the dashboard uses. Loopback only unless the
    user started the server with --allow-remote-serve: a tool call must not make this server
    a probe of other hosts."""
    from foundry.server.stats_client import fetch_stats, serve_target

    target = serve_target(
        url,
        allow_remote=allow_remote,
        api_key=api_key,
        option="serve_url",
        remote_hint="foundry mcp reads only a serve on 127.0.0.1, ::1 or localhost unless "
        "started with --allow-remote-serve",
    )
    status, body = fetch_stats(target)
    if status != 200:
        raise FoundryError(body["error"], body["hint"])
    stats: dict[str, Any] = body["stats"]
    return stats
