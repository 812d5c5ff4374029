"""`foundry dashboard`: a local web page of builds, costs and a running serve (docs/dashboard.md)"""

from __future__ import annotations

from typing import Annotated

import typer

from foundry.commands.options import ConfigOption, DbOption


def dashboard(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; not loopback needs --allow-remote.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free).")] = (
        8090
    ),
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Let a --host that is not loopback serve the page (no login)."
        ),
    ] = False,
    serve_url: Annotated[
        str, typer.Option("--serve-url", help="The foundry serve whose /cache/stats to show.")
    ] = "http://127.0.0.1:8082",
    allow_remote_serve: Annotated[
        bool,
        typer.Option("--allow-remote-serve", help="Let --serve-url name another machine."),
    ] = False,
    serve_api_key: Annotated[
        str | None,
        typer.Option(
            "--serve-api-key",
            envvar="FOUNDRY_SERVE_API_KEY",
            show_envvar=True,
            help="The key that foundry serve asks for, if it asks for one.",
        ),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Watch builds live, and see spend, savings and cache hits over time, in a browser."""
    from foundry import console
    from foundry.config import ledger_path, load_config
    from foundry.dashboard.run import Dashboard, DashboardOptions

    loaded = load_config(config)
    server = Dashboard(
        DashboardOptions(
            db=ledger_path(loaded, db),
            config=loaded,
            host=host,
            port=port,
            allow_remote=allow_remote,
            serve_url=serve_url,
            allow_remote_serve=allow_remote_serve,
            serve_api_key=serve_api_key,
        )
    )
    console.info(f"foundry dashboard: {server.url} (ledger {server.ledger_path}, read-only)")
    console.info("  stop: Ctrl-C")
    server.run()
