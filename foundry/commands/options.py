"""Options that recur across commands, declared once as `Annotated` aliases for Typer.

A command writes `config: ConfigOption = None`, so every command spells, types and explains
`--config`, `--db` and `--json` the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="cache_config.json to use (default: ./cache_config.json, else the packaged one).",
    ),
]
DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Ledger file (default: $FOUNDRY_DB, else FOUNDRY_HOME's)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="A server backend's address, e.g. http://127.0.0.1:8000/v1 for an "
        "OpenAI-compatible server (default: OPENAI_BASE_URL / ANTHROPIC_BASE_URL, the config).",
    ),
]
