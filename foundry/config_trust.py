"""Which cache_config.json foundry reads when none is named, and what a found one may not change.

A config the user names (--config PATH, or FOUNDRY_CONFIG) is theirs. A cache_config.json
merely *found* in the current directory may have been written by anyone who could write
there: a cloned project, or the model itself, whose commands write into its working
directory. So a found file may tune foundry, but may not weaken safety: it may not loosen
the sandbox, hand variables to the model's commands, move where foundry reads and writes
its files, send requests (and the API key) elsewhere, or lift a limit. Each such key may
keep its packaged default or be made stricter; anything else is refused with one line.
And inside a build's working directory a found file is not read at all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.errors import ConfigError

# orchestrator.phases.ARTIFACT_DIR, spelled out: config sits below the orchestrator
# (tests/test_found_config.py checks the two agree).
ARTIFACT_DIR = ".foundry"

if TYPE_CHECKING:
    from foundry.config import FoundryConfig

CONFIG_ENV = "FOUNDRY_CONFIG"
# Far above any real config (the packaged one is ~2 KB); a found file past it is not read.
MAX_FOUND_BYTES = 1024 * 1024
PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
SANDBOX_STRICTNESS = {"off": 0, "auto": 1, "require": 2}

Rule = Callable[[Any, Any], bool]  # (found value, packaged default) -> allowed


def explicit_path(path: Path | str | None) -> Path | None:
    """--config PATH, else $FOUNDRY_CONFIG: a config the user chose."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(env).expanduser() if env else None


def build_workdir(cwd: Path, default_ledger: Path) -> Path | None:
    """The build working directory that `cwd` is (or is inside): one with a real .foundry/,
    or one a build on the default ledger ran in (an unsandboxed model's command can remove
    .foundry/, not the ledger). A ledger named with --db is not known this early."""
    for directory in (cwd, *cwd.parents):
        marker = directory / ARTIFACT_DIR
        if marker.is_dir() and not marker.is_symlink():
            return directory
    # Imported here: only a found config asks, and the ledger costs ~47 ms to import.
    from foundry.ledger.builds import recorded_workdir

    return recorded_workdir(default_ledger, cwd)


def _refuse(problem: str, name: str) -> ConfigError:
    return ConfigError(
        f"./{name} was found in the current directory but {problem}; foundry reads a found "
        "config only when it is a plain file of yours",
        f"if you trust it, pass it with --config ./{name} (or {CONFIG_ENV}=./{name})",
    )


def check_found_file(path: Path) -> None:
    """A found file must be a regular file (not a symlink, which could point anywhere, nor a
    FIFO or device that would block or never end), owned by this user or root (not planted
    by another user of a shared directory such as /tmp), and of a config's size."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise _refuse("is a symlink", path.name)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse("is not a regular file", path.name)
    if hasattr(os, "getuid") and info.st_uid not in (os.getuid(), 0):
        raise _refuse(f"belongs to another user (uid {info.st_uid})", path.name)
    if info.st_size > MAX_FOUND_BYTES:
        raise _refuse(f"is {info.st_size:,} bytes, past the {MAX_FOUND_BYTES:,} read", path.name)


# --- what a found config may set --------------------------------------------------------


def _same(found: Any, default: Any) -> bool:
    return bool(found == default)


def _no_higher(found: Any, default: Any) -> bool:
    """A limit, where None means none: lowering it is stricter, lifting it is not."""
    if found is None:
        return default is None
    return default is None or found <= default


def _subset(found: Any, default: Any) -> bool:
    return set(found) <= set(default)


def _sandbox(found: Any, default: Any) -> bool:
    return SANDBOX_STRICTNESS[found] >= SANDBOX_STRICTNESS[default]


def _network(found: Any, default: Any) -> bool:
    """No phase has the network that the default keeps from it (a phase a dict leaves out
    keeps the default's, as BuildConfig.network_for does)."""

    def base(phase: str) -> bool:
        return default if isinstance(default, bool) else bool(default.get(phase, True))

    phases = set(default) if isinstance(default, dict) else set()
    phases |= set(found) if isinstance(found, dict) else set()
    if isinstance(found, bool):
        return all(found <= base(p) for p in phases) if phases else found <= bool(default)
    return all(bool(found.get(p, base(p))) <= base(p) for p in phases)


def _not_free(found: Any, default: Any) -> bool:
    return found is not True  # openai.local true: a server's requests would cost nothing


def _model_name(found: Any, default: Any) -> bool:
    """A model from `foundry models list` by name; a path could load any file on disk."""
    from foundry.fsutil import is_safe_name

    return bool(found == default or (is_safe_name(found) and not found.lower().endswith(".gguf")))


# Every section of FoundryConfig was gone through; the keys not listed change what a build
# costs or how it behaves (models, caching, timeouts, retries, engine settings, the serve
# caches), never where the key, the requests or foundry's files go, nor what the model's
# commands may do. Prices (`models`) are checked in `_loosened_prices`.
SAFETY_RULES: dict[str, Rule] = {
    "build.sandbox": _sandbox,
    "build.network": _network,
    "build.env_passthrough": _subset,
    "build.limits.processes": _no_higher,
    "build.limits.memory_mb": _no_higher,
    "build.limits.cpu_s": _no_higher,
    "build.limits.file_size_mb": _no_higher,
    "build.command_timeout_s": _no_higher,
    "build.max_turns_per_phase": _no_higher,
    "build.max_test_iterations": _no_higher,
    "build.output_limit_chars": _no_higher,
    "anthropic.base_url": _same,
    "anthropic.max_tokens": _no_higher,
    "openai.base_url": _same,
    "openai.local": _not_free,
    "openai.max_tokens": _no_higher,
    "backend.mlx_model": _model_name,
    "backend.llamacpp_model": _model_name,
    "ledger.path": _same,
    "prefix_cache.dir": _same,
    "prefix_cache.max_bytes": _no_higher,
    "prefix_cache.memory_budget_mb": _no_higher,
    "budgets.daily_usd": _no_higher,
    "budgets.monthly_usd": _no_higher,
    # None is "a quarter of RAM", not "no limit": only the default is safe to take.
    "serve.memory_budget_mb": _same,
    "serve.max_request_mb": _no_higher,
    "serve.queue_size": _no_higher,
}


def _at(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _loosened_prices(found: FoundryConfig) -> list[str]:
    """A price below the packaged one lowers what --max-cost and the budgets count. A price
    for a model without one is allowed: unpriced, nothing is enforced at all."""
    from foundry.pricing import PricingTable

    table = PricingTable()
    keys = []
    for model, override in found.models.items():
        packaged = table.get(model)
        for field in PRICE_FIELDS:
            value = getattr(override, field)
            floor = getattr(packaged, field) if packaged is not None else None
            if value is not None and floor is not None and value < floor:
                keys.append(f"models.{model}.{field}")
    return keys


def weakened_keys(found: FoundryConfig) -> list[str]:
    """The safety keys `found` sets looser than the packaged default, in the table's order."""
    default = type(found)()  # equal to the packaged file (tests/test_config.py checks)
    keys = [
        key
        for key, allowed in SAFETY_RULES.items()
        if not allowed(_at(found, key), _at(default, key))
    ]
    return keys + (_loosened_prices(found) if found.models else [])


def check_found_config(found: FoundryConfig, name: str) -> None:
    keys = weakened_keys(found)
    if keys:
        raise ConfigError(
            f"./{name} was found in the current directory and sets {', '.join(keys)}; foundry "
            "takes safety settings only from a config you name",
            f"pass it with --config ./{name} (or {CONFIG_ENV}=./{name}), or remove "
            f"{'that key' if len(keys) == 1 else 'those keys'}",
        )


def ignored_notice(name: str, workdir: Path) -> str:
    return (
        f"./{name} is inside the working directory of a build ({workdir}), where the model "
        f"writes, so it is ignored and the packaged defaults apply; to use it, pass it with "
        f"--config ./{name}"
    )
