"""`foundry mcp`: foundry as an MCP server over stdio (see docs/mcp.md). Register it with
`claude mcp add foundry -- /abs/path/.venv/bin/foundry mcp`."""

from __future__ import annotations

from typing import Annotated

import typer

from foundry.commands.options import ConfigOption, DbOption


def mcp(
    config: ConfigOption = None,
    db: DbOption = None,
    allow_remote_serve: Annotated[
        bool,
        typer.Option(
            "--allow-remote-serve",
            help="Let the cache_stats tool read a foundry serve on another host (default: "
            "loopback only).",
        ),
    ] = False,
) -> None:
    """Serve foundry's builds, costs and prompt analysis to an MCP client over stdio."""
    from foundry.mcp import serve
    from foundry.mcp.settings import ServerSettings

    serve(ServerSettings(config=config, db=db, allow_remote_serve=allow_remote_serve))
