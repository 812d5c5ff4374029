"""The foundry command line: parses options, calls the core, renders, sets exit codes."""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from foundry import __version__, console
from foundry.commands import analyze, build, cache, costs, models
from foundry.errors import FoundryError


class FoundryGroup(TyperGroup):
    """Turns every FoundryError into one red line on stderr and its exit code."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except FoundryError as exc:
            if os.environ.get("FOUNDRY_DEBUG") == "1":
                raise
            console.error(str(exc))
            raise typer.Exit(exc.exit_code) from None


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
) -> None:
    """Run autonomous LLM builds phase by phase, with prompt caching done properly."""


app.command("build")(build.build)
app.command("analyze-prompt")(analyze.analyze_prompt)
app.command("costs")(costs.costs)
app.add_typer(cache.app, name="cache")
app.add_typer(models.app, name="models")


def main() -> None:
    app()
