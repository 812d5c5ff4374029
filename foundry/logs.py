"""The `foundry` logger: one rich handler on stderr, set up once by the CLI.

Modules log with `logging.getLogger(__name__)`; every name starts with "foundry.", so their
records reach the one handler attached here. Nothing else configures logging.
"""

from __future__ import annotations

import logging

from rich.logging import RichHandler

from foundry import console
from foundry.errors import UsageError

LOGGER_NAME = "foundry"
HANDLER_NAME = "foundry-cli"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def level_for(verbose: int, env_value: str | None) -> int:
    """-v is INFO, -vv DEBUG; without the flag, FOUNDRY_LOG names the level; else WARNING."""
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    if not env_value:
        return logging.WARNING
    level = LEVELS.get(env_value.strip().lower())
    if level is None:
        raise UsageError(
            f"FOUNDRY_LOG={env_value!r} is not a log level",
            f"use one of {', '.join(LEVELS)}, or unset it",
        )
    return level


def setup_logging(level: int = logging.WARNING) -> logging.Logger:
    """Attach the handler to the `foundry` logger (once, however often it is called)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(h.get_name() == HANDLER_NAME for h in logger.handlers):
        # console.stderr resolves sys.stderr when it prints, so redirected stderr is honoured.
        handler = RichHandler(
            console=console.stderr,
            show_time=False,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    # Records stop here: no duplicate lines from a root handler another library installed.
    logger.propagate = False
    return logger
