"""Every error a user can see is a FoundryError: one line saying what was wrong and what to do."""

from __future__ import annotations


class FoundryError(Exception):
    """An error meant for the user. `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(FoundryError):
    """Bad command-line input (exit code 2, like a usage error from the parser)."""

    exit_code = 2


class ConfigError(FoundryError):
    """cache_config.json is missing, unreadable or does not match the schema."""


class TemplateError(FoundryError):
    """The orchestrator prompt template cannot be rendered or split."""


class LedgerError(FoundryError):
    """The SQLite ledger cannot be opened or is not a foundry ledger."""


class LedgerFull(LedgerError):
    """The disk holding the ledger is full: nothing more can be recorded."""


class PricingError(FoundryError):
    """The pricing table or a price override is invalid."""


class BackendError(FoundryError):
    """A model request failed. `error_class` is the ledger's classification of the failure."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        error_class: str = "server_error",
        retryable: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.error_class = error_class
        self.retryable = retryable


class BudgetExceeded(FoundryError):
    """The next request would take spend past --max-cost."""


class WorkspaceError(FoundryError):
    """The build directory cannot be used (not a directory, not writable, ...)."""


class LocalModelError(FoundryError):
    """A local model cannot be imported, found or loaded."""


class CacheStoreError(FoundryError):
    """The local prefix-cache store cannot be used."""


class Terminated(KeyboardInterrupt):
    """SIGTERM ends a build the way Ctrl-C does: marked interrupted, everything kept."""

    def __str__(self) -> str:
        return "terminated by a signal (SIGTERM)"


# foundry's distribution name (pyproject.toml): PyPI's `foundry` is an unrelated project.
DISTRIBUTION = "foundry-build"


def install_hint(extra: str, *, env: str = "") -> str:
    """How to install one of foundry's extras, both ways it may have been installed: from a
    checkout (with the versions CI tested) and from the package index. `env`: variables the
    install needs first (llama.cpp's build options)."""
    return (
        f"install the {extra} extra: in your foundry checkout, {env}"
        f".venv/bin/pip install -c constraints.txt -e '.[{extra}]'; from the package index, "
        f"{env}pip install '{DISTRIBUTION}[{extra}]'"
    )
