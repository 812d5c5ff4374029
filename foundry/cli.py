"""The foundry command line: parses options, calls the core, renders, sets exit codes."""

from __future__ import annotations

import importlib
import os
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from typer.core import TyperGroup

from foundry import __version__, console
from foundry.commands import analyze, build, cache, costs, dashboard, mcp, models, resume, serve
from foundry.errors import FoundryError
from foundry.logs import level_for, setup_logging

if TYPE_CHECKING:
    from typer._click import Context

# Typer 0.2x runs on its own copy of click (typer._click), older Typer on click itself: take
# the parser's exception classes from whichever one typer.BadParameter comes from.
_click_errors = importlib.import_module(typer.BadParameter.__module__)
ClickException = _click_errors.ClickException
ClickUsageError = _click_errors.UsageError
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2


def _debug() -> bool:
    return os.environ.get("FOUNDRY_DEBUG") == "1"


def _usage_error(exc: Any) -> NoReturn:
    """click's message as one line, with a hint naming the command whose help to read."""
    if _debug():
        traceback.print_exc()
    message = " ".join(exc.format_message().split()).rstrip(".")
    command_path = exc.ctx.command_path if exc.ctx is not None else "foundry"
    console.error(f"{message} — see '{command_path} --help'")
    raise typer.Exit(2) from None


class FoundryGroup(TyperGroup):
    """Turns every FoundryError and usage error into one red line on stderr and its exit code.

    Errors are caught here rather than in `main`, so click's own handling of --help,
    --version, typer.Exit and the exit codes stays as it is.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        # The root's own options (`foundry --bogus`) are parsed here, before invoke.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except NoArgsIsHelpError:
            raise  # bare `foundry` shows the help
        except ClickUsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except FoundryError as exc:
            if _debug():
                raise
            console.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except NoArgsIsHelpError:
            raise  # bare `foundry cache` shows the group's help
        except ClickUsageError as exc:
            _usage_error(exc)
        except ClickException as exc:
            if _debug():
                raise
            console.error(" ".join(exc.format_message().split()))
            raise typer.Exit(exc.exit_code) from None
        except typer.Abort:
            # Ctrl-C or end of input at a prompt.
            if _debug():
                raise
            console.error("aborted")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=FoundryGroup,
    name="foundry",
    help="Run autonomous LLM builds phase by phase, with prompt caching done properly.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"foundry {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    verbose: int = typer.Option(
        0,
        "-v",
        "--verbose",
        count=True,
        help="Log more on stderr: -v info (e.g. prefix-cache misses), -vv debug. "
        "Or set FOUNDRY_LOG=debug|info|warning|error.",
    ),
) -> None:
    """Run autonomous LLM builds phase by phase, with prompt caching done properly."""
    setup_logging(level_for(verbose, os.environ.get("FOUNDRY_LOG")))


app.command("build")(build.build)
app.command("resume")(resume.resume)
app.command("analyze-prompt")(analyze.analyze_prompt)
app.command("costs")(costs.costs)
app.add_typer(cache.app, name="cache")
app.add_typer(models.app, name="models")
app.command("serve")(serve.serve)
app.command("mcp")(mcp.mcp)
app.command("dashboard")(dashboard.dashboard)


def main() -> None:
    app()
