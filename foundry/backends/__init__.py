"""Backend registry: names map to lazily imported classes, so heavy SDKs load only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from foundry.errors import UsageError

if TYPE_CHECKING:
    from foundry.backends.base import Backend
    from foundry.config import FoundryConfig

BACKENDS: dict[str, str] = {
    "anthropic": "foundry.backends.anthropic.client:AnthropicBackend",
    "mlx": "foundry.backends.mlx:MLXBackend",
}


def create_backend(name: str, config: FoundryConfig, model: str) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"unknown backend '{name}'", f"use one of: {', '.join(sorted(BACKENDS))}"
        ) from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config, model)
