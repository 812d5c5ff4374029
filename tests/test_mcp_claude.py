"""Claude Code registers `foundry mcp` as docs/mcp.md says, and its health check connects to
it: the real `claude` CLI (CI installs it with npm), offline, in a throwaway HOME and config
directory, so the developer's own Claude Code settings are never read or written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FOUNDRY = Path(sys.executable).parent / "foundry"
# Claude Code with nothing to phone home about: no update check, telemetry or error reports.
OFFLINE = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def test_claude_code_adds_foundry_and_lists_it_connected(tmp_path: Path) -> None:
    claude = shutil.which("claude")
    if claude is None:
        pytest.fail("Claude Code is not installed: npm install -g @anthropic-ai/claude-code")
    home, config, project = tmp_path / "home", tmp_path / "claude-config", tmp_path / "project"
    for directory in (home, config, project):
        directory.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(config),
        "FOUNDRY_HOME": os.environ["FOUNDRY_HOME"],
        **OFFLINE,
    }

    def claude_code(*args: str) -> str:
        done = subprocess.run(
            [claude, *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"claude {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    claude_code("mcp", "add", "foundry", "--", str(FOUNDRY), "mcp")
    # A server that exits at once, beside it: the health check must tell the two apart.
    claude_code("mcp", "add", "broken", "--", "/bin/false")
    listed = {
        line.split(":", 1)[0]: line
        for line in claude_code("mcp", "list").splitlines()
        if line.startswith(("foundry:", "broken:"))
    }
    assert set(listed) == {"foundry", "broken"}, listed
    assert f"{FOUNDRY} mcp" in listed["foundry"]
    assert "Connected" in listed["foundry"], listed["foundry"]
    assert "Connected" not in listed["broken"], listed["broken"]
    # Written where CLAUDE_CONFIG_DIR says, nowhere in the real HOME.
    assert "foundry" in (config / ".claude.json").read_text()
