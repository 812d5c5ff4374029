"""Where output goes: results on stdout, progress, warnings and errors on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.measure import Measurement
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import ConsoleOptions, RenderableType, RenderResult

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


# Wide enough for any table's natural width to be measured, never printed as padding.
_UNLIMITED = 100_000


def table_width(out: Console) -> int | None:
    """The width a table must fit on `out`, or None for no limit. A terminal has its own
    width, and $COLUMNS is the user's word on it; but piped into a file, a pager or `| cat`
    with no $COLUMNS, rich guesses 80 columns, and a guess is no reason to drop columns or
    cut cells with an ellipsis: such output is read later, by a person or a script, and
    both want every figure whole."""
    if out.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return out.width
    return None


class Unclipped:
    """A table (any renderable) rendered at its natural width where `table_width` sets no
    limit, and as rich would otherwise. It relies on the console soft-wrapping (both of
    ours do), since a console that crops cuts every line at its width whatever we render."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if table_width(console) is None:
            natural = Measurement.get(
                console, options.update_width(_UNLIMITED), self.renderable
            ).maximum
            options = options.update_width(max(natural, options.max_width))
        yield from console.render(self.renderable, options)


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
