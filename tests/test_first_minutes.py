"""Issue 23, the first ten minutes, through the real CLI: `models pull` of a model that is
already here answers at once; a bad --db is refused before any server is contacted; a
mistyped local model name gets a "did you mean"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from foundry.config import models_dir


def _fake_model_dir(path: Path) -> Path:
    """What a model directory holds, as far as `foundry` checks without loading it."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.fixture
def no_fetching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download or conversion fails the test."""
    import foundry.local.gguf as gguf_module
    import foundry.local.pull as pull_module

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pull of an installed model downloaded or converted")

    monkeypatch.setattr(pull_module, "import_gguf", forbidden)
    monkeypatch.setattr(pull_module, "download_gguf", forbidden)
    monkeypatch.setattr(pull_module.subprocess, "run", forbidden)
    monkeypatch.setattr(gguf_module, "import_gguf", forbidden)


# --- 1. models pull of an installed model ----------------------------------------------


def test_pull_of_an_installed_model_says_so_at_once(cli, no_fetching) -> None:
    target = _fake_model_dir(models_dir() / "smollm2-135m")
    started = time.monotonic()
    result = cli("models", "pull", "smollm2-135m")
    assert time.monotonic() - started < 5
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert "already installed" in line and str(target) in line and "--force" in line
    as_json = json.loads(cli("models", "pull", "--json").stdout)
    assert as_json == {"name": "smollm2-135m", "path": str(target), "already_installed": True}


def test_pull_of_an_incomplete_model_dir_asks_for_force_without_converting(
    cli, no_fetching
) -> None:
    (models_dir() / "smollm2-135m").mkdir(parents=True)
    result = cli("models", "pull", "smollm2-135m")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "smollm2-135m" in result.stderr and "--force" in result.stderr
