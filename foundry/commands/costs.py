"""PLACEHOLDER: replaced by the issue that implements this command."""

from foundry.errors import FoundryError


def costs() -> None:
    """Not implemented yet."""
    raise FoundryError("not implemented yet")
