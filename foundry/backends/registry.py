"""The one list of backend names. Each maps to a class imported on first use, so heavy SDKs
load only when a backend is really created; the few facts reports need without creating a
backend (is it local?) are written here beside the name.

Adding a backend: its own package under foundry/backends/, one entry in REGISTRY, its docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foundry.errors import UsageError

if TYPE_CHECKING:
    from foundry.backends.base import Backend
    from foundry.config import FoundryConfig

AUTO = "auto"


@dataclass(frozen=True)
class BackendEntry:
    name: str
    target: str  # "module:Class", imported on first use
    summary: str  # one line for --help and error hints
    # Mirrors the class's `local` (an instance may know better: an OpenAI-compatible server
    # on loopback is local). The ledger records each request's own word, not this.
    local: bool

    def load(self) -> type[Backend]:
        module_name, class_name = self.target.split(":")
        cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
        return cls


# In `auto` order: the first whose auto_available() says yes is chosen.
REGISTRY: tuple[BackendEntry, ...] = (
    BackendEntry(
        "anthropic",
        "foundry.backends.anthropic.client:AnthropicBackend",
        "Claude through the Anthropic API (auto picks it when ANTHROPIC_API_KEY is set)",
        local=False,
    ),
    BackendEntry(
        "openai",
        "foundry.backends.openai.client:OpenAIBackend",
        "an OpenAI-compatible server: vLLM, SGLang, llama.cpp, Ollama, LM Studio, OpenRouter "
        "(auto picks it when OPENAI_BASE_URL or openai.base_url is set)",
        local=False,
    ),
    BackendEntry(
        "llamacpp",
        "foundry.backends.llamacpp:LlamaCppBackend",
        "a local GGUF model with llama.cpp, on this machine (auto prefers it to mlx off Apple "
        "silicon when the llamacpp extra is installed)",
        local=True,
    ),
    BackendEntry(
        "mlx",
        "foundry.backends.mlx:MLXBackend",
        "a local model with mlx-lm, on this machine (auto's fallback: no key, no server)",
        local=True,
    ),
)
BACKEND_NAMES: tuple[str, ...] = tuple(entry.name for entry in REGISTRY)
LOCAL_BACKEND_NAMES: frozenset[str] = frozenset(e.name for e in REGISTRY if e.local)


def entry(name: str) -> BackendEntry:
    for candidate in REGISTRY:
        if candidate.name == name:
            return candidate
    raise UsageError(
        f"unknown backend '{name}'", f"use one of: {', '.join((*BACKEND_NAMES, AUTO))}"
    )


def is_local(name: str) -> bool:
    """Whether requests recorded under this backend name ran on this machine."""
    return name in LOCAL_BACKEND_NAMES


def _runs(cls: type[Backend], model: str | None) -> bool:
    """Whether a backend can run `model` (a local engine knows its model formats)."""
    check = getattr(cls, "runs_model", None)
    return model is None or check is None or bool(check(model))


def platform_engine() -> str:
    """The local engine the `local` extra installs here: mlx on Apple silicon, else llamacpp."""
    from foundry.local.runtime import is_apple_silicon

    return "mlx" if is_apple_silicon() else "llamacpp"


def _auto(config: FoundryConfig, model: str | None, candidates: list[BackendEntry]) -> str:
    runnable = []
    for candidate in candidates:
        cls = candidate.load()
        if cls.auto_available(config) and _runs(cls, model):
            return candidate.name
        if _runs(cls, model):
            runnable.append(candidate.name)
    # Nothing is available: the engine whose "not installed" error names the right install,
    # the one the `local` extra brings here, unless the model's format needs the other.
    engine = platform_engine()
    return engine if engine in runnable else (runnable or [candidates[-1].name])[-1]


def resolve_backend(
    config: FoundryConfig, requested: str | None = None, model: str | None = None
) -> str:
    """The backend a command will use: --backend, else the config; `auto` takes the first
    backend in REGISTRY order that says it is available (and, for a local engine, that runs
    `model`'s format: an MLX directory goes to mlx, a .gguf file to llamacpp)."""
    name = requested or config.backend.default
    if name != AUTO:
        return entry(name).name
    return _auto(config, model, list(REGISTRY))


def resolve_local_backend(
    config: FoundryConfig, requested: str | None = None, model: str | None = None
) -> str:
    """The in-process engine `foundry serve` runs: --backend, else the configured default
    when it is local; `auto` as resolve_backend's, among the local engines."""
    local = [e for e in REGISTRY if e.local]
    name = requested or config.backend.default
    if requested is None and name != AUTO and not entry(name).local:
        name = AUTO  # a build's remote default says nothing about which engine to serve
    if name == AUTO:
        return _auto(config, model, local)
    chosen = entry(name)
    if not chosen.local:
        raise UsageError(
            f"foundry serve runs a model in this process; '{name}' is not a local engine",
            f"use --backend {' or '.join(e.name for e in local)} (or auto)",
        )
    return chosen.name


def backend_class(name: str) -> type[Backend]:
    return entry(name).load()


def create_backend(
    name: str, config: FoundryConfig, model: str | None = None, base_url: str | None = None
) -> Backend:
    """A backend for `model` (default: the backend's configured default model), at
    `base_url` (--base-url) when given; a backend without a server refuses one."""
    cls = backend_class(name)
    return cls(config, model or cls.default_model(config), base_url=base_url)


def exact_token_counter(config: FoundryConfig, model: str) -> Callable[[str], int]:
    """A function giving the exact tokens a system text adds to a request for `model`, from
    the metered backend that serves it; FoundryError when exact counts cannot be had."""
    metered = next(e for e in REGISTRY if not e.local)

    def count(system: str) -> int:
        backend = create_backend(metered.name, config, model)
        try:
            return backend.count_tokens(system)
        finally:
            backend.close()

    return count
