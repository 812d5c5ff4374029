"""`foundry mcp`: foundry's builds, costs and prompt analysis as an MCP server over stdio.

The package is split by responsibility: `launch` validates a request in-process and starts
the real CLI as a child process, `status` reads what a build is doing from the ledger,
`reports` answers costs, prompt analysis and cache questions, `models` holds the typed
results, `settings` what the user chose on the command line, and `server` wires them to
the MCP SDK. Only `server` imports the SDK, and only when `serve` runs, so `foundry --help`
never pays for it.
"""

from __future__ import annotations

import importlib.util

from foundry.errors import FoundryError, install_hint
from foundry.mcp.settings import ServerSettings


def serve(settings: ServerSettings) -> None:
    """Serve MCP on stdin/stdout until the client hangs up."""
    if importlib.util.find_spec("mcp") is None:
        raise FoundryError(
            "foundry mcp needs the MCP SDK, which is not installed", install_hint("mcp")
        )
    from foundry.mcp.server import run

    run(settings)


__all__ = ["ServerSettings", "serve"]
