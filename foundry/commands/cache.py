"""PLACEHOLDER: replaced by the issue that implements this command group."""

import typer

app = typer.Typer(help="Not implemented yet.", no_args_is_help=True)
