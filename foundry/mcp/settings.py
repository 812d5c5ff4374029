"""The server's own settings, given on `foundry mcp`'s command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    """What whoever registered the server chose; a tool call cannot change it. The config,
    the ledger and a non-loopback serve URL are decisions about trust (which safety settings
    apply, where the record goes, what hosts may be contacted), so they are the user's, set
    on the command line, and never the calling model's."""

    config: Path | None = None
    db: Path | None = None
    allow_remote_serve: bool = False
