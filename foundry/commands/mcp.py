"""`foundry mcp`: foundry as an MCP server over stdio (see docs/mcp.md)."""

from __future__ import annotations

from foundry.errors import UsageError


def mcp() -> None:
    """Serve foundry's builds, costs and prompt analysis to an MCP client over stdio."""
    raise UsageError("foundry mcp is not written yet", "see docs/mcp.md")
