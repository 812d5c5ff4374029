"""The command-line shell: help, version, and how errors reach the user."""

from __future__ import annotations

import os
import subprocess
import sys

from foundry import __version__


def test_version_and_help(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"foundry {__version__}"
    result = cli("-h")
    assert result.exit_code == 0
    for command in ("build", "analyze-prompt", "costs", "cache", "models"):
        assert command in result.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    # `foundry --help` must start fast: anthropic, mlx and transformers cost over a second each.
    code = (
        "import sys; from foundry.cli import app; heavy = ('anthropic', 'mlx', 'transformers'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_foundry_error_is_one_red_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"cachng": {}}')
    env = {**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")}
    env.pop("FOUNDRY_DEBUG", None)
    args = [sys.executable, "-m", "foundry", "analyze-prompt", "--config", str(bad)]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:")
    assert "did you mean 'caching'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    debug = subprocess.run(args, capture_output=True, text=True, env={**env, "FOUNDRY_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr
