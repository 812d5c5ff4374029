"""PLACEHOLDER: replaced by the issue that implements this command."""

from foundry.errors import FoundryError


def analyze_prompt() -> None:
    """Not implemented yet."""
    raise FoundryError("not implemented yet")
