"""`foundry cache`: list, stats, clear and prune the local prefix-cache store, and warm a cache.

The store (foundry.local.prefix_store) is the core; this module picks it from the config,
calls it, and prints the result as a table, a line, or JSON."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from foundry import console
from foundry.commands.options import ConfigOption, DbOption, JsonOption

if TYPE_CHECKING:
    from foundry.backends.base import PrefillCallback
    from foundry.local.prefix_store import PrefixCacheStore

app = typer.Typer(
    help="Inspect and manage the saved prefix KV caches of local models.",
    no_args_is_help=True,
)


def _store(config_path: Path | None) -> PrefixCacheStore:
    from foundry.config import load_config
    from foundry.local.prefix_store import PrefixCacheStore

    return PrefixCacheStore.from_config(load_config(config_path), create=False)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _public(row: dict[str, Any]) -> dict[str, Any]:
    # The identity's fields are what the store matches on; identity_digest stands for them.
    # A llama.cpp prefix is stored as 256-token blocks, each an entry naming its parent.
    kind = "block" if "parent" in (row.get("identity") or {}) else "prefix"
    return {**{k: v for k, v in row.items() if k != "identity"}, "kind": kind}


@app.command("list")
def list_entries(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List saved prefixes, most recently used first."""
    rows = [_public(r) for r in _store(config).entries()]
    if as_json:
        console.emit_json({"entries": rows})
        return
    if not rows:
        console.info("no saved prefixes")
        return
    table = Table("key", "kind", "model", "tokens", "size", "hits", "last used", "created")
    for r in rows:
        table.add_row(
            r["key"][:12],
            r["kind"],
            str(r.get("model")),
            f"{r.get('n_tokens', 0):,}",
            _mb(r.get("size_bytes", 0)),
            str(r.get("hits", 0)),
            str(r.get("last_used_at")),
            str(r.get("created_at")),
        )
    console.stdout.print(table)


@app.command("stats")
def stats(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Totals: entries, bytes against the cap, hits, the TTL and memory budget."""
    data = _store(config).stats()
    if as_json:
        console.emit_json(data)
        return
    console.stdout.print(
        f"{data['entries']} saved prefixes, {_mb(data['total_bytes'])} of {_mb(data['max_bytes'])}"
        f" (TTL {data['ttl_days']:g} days, load budget {data['memory_budget_mb']} MB)\n"
        f"{data['hits']} hits, {data['tokens_stored']:,} tokens stored, in {data['dir']}"
    )


@app.command("clear")
def clear(
    pattern: str | None = typer.Argument(
        None, help="Glob or key prefix matched against keys and model names; all without one."
    ),
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove saved prefixes (all of them, or those matching PATTERN)."""
    store = _store(config)
    removed = store.clear(pattern)
    skipped = store.manifest.drop_invalid()  # keys that are not names: records only
    if as_json:
        console.emit_json({"removed": [_public(r) for r in removed], "skipped_keys": skipped})
        return
    freed = sum(r.get("size_bytes", 0) for r in removed)
    console.stdout.print(
        f"removed {len(removed)} saved prefixes ({_mb(freed)}){_skipped(skipped)}",
        highlight=False,
    )


@app.command("prune")
def prune(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Apply the TTL and byte cap, and remove stale temp files and unknown files."""
    result = _store(config).prune()
    if as_json:
        console.emit_json({**result, "removed": [_public(r) for r in result["removed"]]})
        return
    console.stdout.print(
        f"removed {len(result['removed'])} saved prefixes, {len(result['temp_files'])} stale "
        f"temp files, {len(result['unknown_files'])} unknown files"
        f"{_skipped(result['skipped_keys'])}",
        highlight=False,
    )


def _skipped(keys: list[str]) -> str:
    # Only the count: a key that is not a name may hold anything, a terminal escape included.
    if not keys:
        return ""
    return f"; skipped {len(keys)} manifest entries whose key is not a name (records dropped)"


@app.command("warm")
def warm(
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", help="anthropic, openai, llamacpp, mlx or auto (as a build picks)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model id or local model (default from config).")
    ] = None,
    request: Annotated[
        Path | None,
        typer.Option(
            "--request",
            help="A Messages API request (JSON) a `foundry serve` client sends: warm its "
            "system prompt and tools instead of the orchestrator prompt.",
        ),
    ] = None,
    template: Annotated[
        Path | None, typer.Option("--template", help="Orchestrator prompt template.")
    ] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Claude's cache TTL: 5m or 1h.")] = None,
    config: ConfigOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute and save a prompt prefix ahead of time, so the first real request is a hit.

    A local model saves it to the prefix store; Claude gets one minimal request (one output
    token) that writes it to Anthropic's cache. Either is recorded on the ledger."""
    from foundry.server.warm import WarmOptions
    from foundry.server.warm import warm as run_warm

    with _prefill_progress() as on_prefill:
        result = run_warm(
            WarmOptions(
                backend=backend,
                model=model,
                request_file=request,
                template=template,
                ttl=ttl,
                config=config,
                db=db,
                on_prefill=on_prefill,
            )
        )
    if as_json:
        console.emit_json(result.to_dict())
        return
    usage = result.usage
    where = "the prefix store" if result.local else "Anthropic's cache"
    if result.already_warm:
        what = f"already warm: {usage.cache_read_tokens:,} prefix tokens read from {where}"
    else:
        what = f"{usage.cache_write_tokens:,} prefix tokens written to {where}"
    cost = "" if result.cost_usd is None else f", cost ${result.cost_usd:.4f}"
    console.stdout.print(
        f"warmed {result.model} ({result.source}): {what} in {result.seconds:.1f} s{cost}",
        highlight=False,
    )


@contextlib.contextmanager
def _prefill_progress() -> Iterator[PrefillCallback]:
    """A local model's prefill on stderr, as a build shows it: a status line redrawn in place
    on a terminal, else a line every few seconds at most. Warming is that one long wait, so
    it says what it is doing rather than sitting silent for minutes."""
    from foundry.orchestrator.display import PrefillLines, describe

    if not console.stderr.is_terminal:
        yield PrefillLines(lambda progress: console.info(describe(progress)))
        return
    with console.stderr.status("loading the model", spinner="dots") as status:
        yield lambda progress: status.update(describe(progress))
