"""The `local` extra, the README's first install: MLX on Apple silicon, llama.cpp everywhere
else; and a build whose machine has only llama.cpp (no mlx) runs on it with `auto`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.orchestrator_helpers import write_template
from tests.tiny_model import write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = {
    "Linux x86-64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "Linux arm64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "Apple silicon": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "Intel Mac": {"sys_platform": "darwin", "platform_machine": "x86_64"},
}


def _engines(platform: dict[str, str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chosen: set[str] = set()
    for line in project["optional-dependencies"]["local"]:
        requirement = Requirement(line)
        assert requirement.name == project["name"], "local names this project's own extras"
        if requirement.marker is None or requirement.marker.evaluate(platform):
            chosen |= requirement.extras
    return chosen


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_local_extra_installs_one_engine_per_platform(platform: str) -> None:
    expected = {"mlx"} if platform == "Apple silicon" else {"llamacpp"}
    assert _engines(PLATFORMS[platform]) == expected


# Runs the CLI with mlx and mlx_lm unimportable, as on a machine with only the local extra.
WITHOUT_MLX = (
    "import sys\n"
    "sys.modules['mlx'] = None\n"
    "sys.modules['mlx_lm'] = None\n"
    "from foundry.cli import main\n"
    "sys.argv = ['foundry', *sys.argv[1:]]\n"
    "main()\n"
)


@pytest.mark.llamacpp
def test_auto_builds_on_llama_cpp_when_mlx_is_absent(tiny_model_dir, tmp_path) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    gguf = write_tiny_gguf(tiny_model_dir, home / "models" / "tiny.gguf")
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"llamacpp": {"max_tokens": 8}}))
    env = {**os.environ, "FOUNDRY_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MLX, "build", "hello", "Create hello.py"]
        + ["--backend", "auto", "--model", gguf.stem, "--config", str(config)]
        + ["--template", str(write_template(tmp_path)), "--db", str(tmp_path / "ledger.db")]
        + ["--dir", str(tmp_path / "hello"), "--phases", "scout", "--max-turns", "1"]
        + ["--yes", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert "mlx" not in result.stderr.lower(), result.stderr
    summary = json.loads(result.stdout)
    assert summary["backend"] == "llamacpp" and summary["requests"] == 1
