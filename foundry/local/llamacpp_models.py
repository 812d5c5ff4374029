"""GGUF files for the llamacpp backend: where a model's file is (a path, or a name under
$FOUNDRY_HOME/models), and the identity of the KV values it gives.

llama.cpp runs the GGUF as it is: no conversion, so the file the mlx backend imports from is
the file kept here, as models/<name>.gguf beside the mlx model directories (foundry.local.pull
fetches it).
"""

from __future__ import annotations

from pathlib import Path

from foundry.config import models_dir
from foundry.errors import LocalModelError
from foundry.fsutil import is_safe_name
from foundry.local.file_hashes import file_hashes
from foundry.local.gguf_check import validate_gguf
from foundry.local.llamacpp_engine import LlamaCppModel
from foundry.local.model_dirs import PULLABLE, did_you_mean, written_path
from foundry.local.prefix_store import PrefixIdentity
from foundry.local.pull import GGUF_SUFFIX


def _candidates(model: str) -> list[Path]:
    """A path the user wrote is that path; a bare name is looked up in models/ only (never in
    the current directory, which may be a working directory the model writes in)."""
    path = written_path(model)
    if path is not None:
        return [path]
    if not is_safe_name(model):
        return []
    root = models_dir()
    candidates = [root / model] if model.endswith(GGUF_SUFFIX) else []
    candidates.append(root / f"{model}{GGUF_SUFFIX}")
    if (root / model).is_dir():
        candidates += sorted((root / model).glob(f"*{GGUF_SUFFIX}"))
    return candidates


def find_gguf(model: str) -> Path | None:
    """The GGUF file `model` names: a path to one, models/<name>.gguf (or models/<name> when
    the name ends in .gguf), or a .gguf in models/<name>/; None when there is none (yet)."""
    for candidate in _candidates(model):
        if candidate.is_file() and candidate.suffix == GGUF_SUFFIX:
            return candidate
    return None


def resolve_gguf(model: str) -> Path:
    """The checked GGUF file of `model`, or a LocalModelError saying how to get one."""
    path = find_gguf(model)
    if path is None:
        if model in PULLABLE:
            hint = f"it is fetched on first use; or run 'foundry models pull {model}'"
        elif (written_path(model) or models_dir() / model).is_dir():
            hint = "that is an MLX model directory: run it with --backend mlx, or pass a .gguf"
        else:
            hint = (
                f"pass the path to a .gguf file (./FILE.gguf for one here), or put one at "
                f"{models_dir() / model.removesuffix(GGUF_SUFFIX)}{GGUF_SUFFIX}"
            )
        raise LocalModelError(
            f"no GGUF file for local model '{model}'{did_you_mean(model, gguf=True)}", hint
        )
    validate_gguf(path)  # a crafted header is one error line, not a native crash
    return path


def state_identity(model: LlamaCppModel, memo_file: Path | None = None) -> PrefixIdentity:
    """Everything that shapes a saved state: the GGUF's bytes (sha256, memoised by size and
    mtime), the engine and its version (the state's layout), the context size and KV type."""
    with file_hashes(memo_file) as sha256:
        gguf_sha256 = sha256(model.path)
    fields = {
        "gguf_sha256": gguf_sha256,
        "engine": "llama.cpp",
        "llama_cpp_python": model.version,
        "n_ctx": model.n_ctx,
        "kv_type": model.kv_type,
        "flash_attn": model.flash_attn,  # it stores V untransposed: another state layout
    }
    return PrefixIdentity(fields=fields, model=model.name)
