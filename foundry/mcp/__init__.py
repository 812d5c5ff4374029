"""`foundry mcp`: foundry's builds, costs and prompt analysis as an MCP server over stdio.

The package is split by responsibility: `launch` validates a request in-process and starts
the real CLI as a child process, `status` reads what a build is doing from the ledger,
`reports` answers costs, prompt analysis and cache questions, `models` holds the typed
results, and `server` wires them to the MCP SDK. Only `server` imports the SDK, and only
when `serve` runs, so `foundry --help` never pays for it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from foundry.errors import FoundryError, install_hint


@dataclass(frozen=True)
class ServerSettings:
    """What whoever registered the server chose; a tool call cannot change it. The config,
    the ledger and a non-loopback serve URL are decisions about trust (which safety settings
    apply, where the record goes, what hosts may be contacted), so they are the user's, set
    on the command line, and never the calling model's."""

    config: Path | None = None
    db: Path | None = None
    allow_remote_serve: bool = False


def serve(settings: ServerSettings) -> None:
    """Serve MCP on stdin/stdout until the client hangs up."""
    if importlib.util.find_spec("mcp") is None:
        raise FoundryError(
            "foundry mcp needs the MCP SDK, which is not installed", install_hint("mcp")
        )
    from foundry.mcp.server import run

    run(settings)
