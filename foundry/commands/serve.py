"""`foundry serve`: options → the server opened (foundry.server.run.open_server) → a banner
saying how to use it → serving until Ctrl-C or SIGTERM → the cache summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from foundry import console
from foundry.commands.options import ConfigOption, DbOption

if TYPE_CHECKING:
    from foundry.server.run import OpenServer


def serve(
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="The local engine: mlx, llamacpp, or auto (llama.cpp off Apple silicon when "
            "installed, else mlx). Default: the config's backend when it is local, else auto.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Local model name or directory (default from config)."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; not loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free).")
    ] = 8082,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="FOUNDRY_SERVE_API_KEY",
            show_envvar=True,
            help="Require this key (x-api-key or Authorization: Bearer) on every request.",
        ),
    ] = None,
    context_policy: Annotated[
        str | None,
        typer.Option(
            "--context-policy",
            help="A conversation past the model's window: error (400) or trim (oldest turns).",
        ),
    ] = None,
    max_output_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-output-tokens",
            min=1,
            help="Cap every reply at this many tokens (a reply cut there ends max_tokens). "
            "Default: no cap; the client's max_tokens and the model's window bound a reply.",
        ),
    ] = None,
    no_response_cache: Annotated[
        bool,
        typer.Option("--no-response-cache", help="Always run the model, never replay a reply."),
    ] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Serve a local model over the Anthropic Messages API, with a persistent prefix cache.

    Point Claude Code (or any Anthropic SDK client) at it:
    ANTHROPIC_BASE_URL=http://127.0.0.1:8082 ANTHROPIC_API_KEY=local claude
    """
    from foundry.server.run import ServeOptions, open_server
    from foundry.server.stats import summary_lines

    opened = open_server(
        ServeOptions(
            model=model,
            backend=backend,
            host=host,
            port=port,
            api_key=api_key,
            context_policy=context_policy,
            response_cache=not no_response_cache,
            max_output_tokens=max_output_tokens,
            config=config,
            db=db,
        )
    )
    _banner(opened, api_key is not None)
    opened.runner.run()
    stats = opened.runner.service.close()
    console.stdout.print("\n".join(summary_lines(stats["since_start"], stats)), highlight=False)
    opened.runner.exit_if_worker_stuck()


def _banner(opened: OpenServer, keyed: bool) -> None:
    window = f"{opened.context_window:,}" if opened.context_window else "unknown"
    key = "<your --api-key>" if keyed else "local"
    lines = [
        f"foundry serve: {opened.model} ({opened.backend}) on {opened.url} "
        f"(context {window} tokens, KV memory budget {opened.memory_budget / 1e9:.1f} GB, "
        f"response cache {'on' if opened.response_cache else 'off'})",
        f"  use it:   ANTHROPIC_BASE_URL={opened.url} ANTHROPIC_API_KEY={key} claude",
        f"  hits:     curl {opened.url}/cache/stats   (foundry -v serve logs HIT/MISS lines)",
        "  stop:     Ctrl-C",
    ]
    if opened.runner.has_metrics:
        lines.insert(-1, f"  metrics:  {opened.url}/metrics   (Prometheus; docs/metrics.md)")
    console.stdout.print("\n".join(lines), highlight=False, soft_wrap=True)
    console.stdout.file.flush()
