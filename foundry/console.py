"""Where output goes: results on stdout, progress, warnings and errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def one_line(message: str) -> str:
    """An error is one line, whatever a server's message or a user's input held: line
    breaks are shown escaped, as in a log."""
    return message.replace("\r\n", "\n").replace("\r", "\\r").replace("\n", "\\n")


def error(message: str) -> None:
    stderr.print(Text.assemble(("error: ", "bold red"), (one_line(message), "red")))


def warning(message: str) -> None:
    stderr.print(Text.assemble(("warning: ", "bold yellow"), message))


def info(message: str) -> None:
    stderr.print(Text(message, style="dim"))


def emit_json(payload: Any) -> None:
    """One JSON document on stdout, numbers as numbers, no rich markup or wrapping."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()
