"""Issue 22: the real Claude Code (npm @anthropic-ai/claude-code; CI installs it) runs
`claude -p` against `foundry serve` and exits 0. It used to fail every time: a reply the loop
guard or foundry's own cap stopped came back as max_tokens, Claude Code asked to continue
three times and gave up ("exceeded the 64000 output token maximum")."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.serve_helpers import serving

pytestmark = pytest.mark.mlx
OFFLINE = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def _claude_p(url: str, tmp_path, prompt: str) -> subprocess.CompletedProcess[str]:
    claude = shutil.which("claude")
    if claude is None:
        pytest.fail("Claude Code is not installed: npm install -g @anthropic-ai/claude-code")
    home, project = tmp_path / "claude-home", tmp_path / "project"
    home.mkdir(exist_ok=True)
    project.mkdir(exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))},
        **OFFLINE,
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "local",
    }
    # --bare with a short system prompt and no tools: what fits the tiny model's window.
    args = [claude, "-p", prompt, "--bare", "--system-prompt", "You are terse.", "--tools", ""]
    return subprocess.run(
        args, cwd=project, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_claude_p_gets_a_whole_reply(tiny_model_dir, tmp_path, script) -> None:
    script.replies += ["Hello from foundry serve."] * 4
    with serving(tiny_model_dir, tmp_path / "serve") as served:
        done = _claude_p(served.url, tmp_path, "say hi")
        rows = served.ledger_rows()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello from foundry serve." in done.stdout
    assert rows and all(r["status"] == "ok" for r in rows)


def test_claude_p_lives_with_the_loop_guards_stop(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """The tiny model's real decode loop, its loop guard firing after 12 tokens (a real model
    repeating itself): end_turn, and Claude Code takes the reply as it is."""
    import foundry.local.engine as engine

    monkeypatch.setattr(engine, "looping", lambda reply: len(reply) >= 12)
    with serving(tiny_model_dir, tmp_path / "serve") as served:
        done = _claude_p(served.url, tmp_path, "say hi")
        rows = served.ledger_rows()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exceeded" not in done.stdout + done.stderr
    assert rows and {r["stop_reason"] for r in rows} == {"end_turn"}
    assert all(r["output_tokens"] <= 12 for r in rows)
