"""`foundry build` input checks: every bad input is one line before any model call, with

nothing written to the ledger; --estimate calls no model; the confirmation prompt."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from foundry.commands import build as build_command
from foundry.orchestrator import plan as build_plan
from tests.orchestrator_helpers import write_template


@pytest.fixture
def template(tmp_path: Path) -> str:
    return str(write_template(tmp_path))


def _no_ledger(tmp_path: Path) -> None:
    assert not (tmp_path / "ledger.db").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["hello", "   "], 2, "the task is empty"),
        (["a/b", "task"], 2, "not a valid build name"),
        (["..", "task"], 2, "not a valid build name"),
        (["-x", "task"], 2, ""),  # the parser's own usage error
        (["hello", "task", "--phases", "scout,deploy,builder"], 2, "out of order"),
        (["hello", "task", "--phases", "scout,review"], 2, "unknown phase(s) in --phases: review"),
        (["hello", "task", "--phases", "test"], 2, "needs a test command"),
        (["hello", "task", "--ttl", "10m"], 2, "--ttl must be 5m or 1h"),
        (["hello", "task", "--max-cost", "0"], 2, "--max-cost must be a positive, finite"),
        (["hello", "task", "--max-cost", "inf"], 2, "--max-cost must be a positive, finite"),
        (["hello", "task", "--max-cost", "nan"], 2, "--max-cost must be a positive, finite"),
        (["abc\n", "task"], 2, "not a valid build name"),  # no name ends in a newline
        (["hello", "task", "--max-turns", "0"], 2, ""),
        (["hello", "task", "--backend", "gpt"], 2, "unknown backend"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(cli, tmp_path, template, args, code, message):
    result = cli(
        "build", *args, "--db", str(tmp_path / "ledger.db"), "--template", template, "--yes"
    )
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    if message:
        assert len(result.stderr.strip().splitlines()) == 1
    _no_ledger(tmp_path)
    assert not Path("hello").exists()


@pytest.mark.mlx
def test_a_bad_ledger_leaves_no_build_directory(cli, tmp_path, template, tiny_model_dir):
    bad = tmp_path / "not-a-ledger.db"
    bad.write_text("not a database")
    result = cli(
        "build", "hello", "task", "--backend", "mlx", "--model", str(tiny_model_dir),
        "--db", str(bad), "--template", template, "--yes",
    )  # fmt: skip
    assert result.exit_code == 1 and "is not a SQLite database" in result.stderr
    assert not Path("hello").exists() and bad.read_text() == "not a database"


def test_dir_that_is_a_file_or_not_writable(cli, tmp_path, template, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = cli("build", "hello", "task", "--dir", str(afile), "--db", str(tmp_path / "l.db"))
    assert result.exit_code == 1 and "is a file, not a directory" in result.stderr
    monkeypatch.setattr(build_plan, "is_writable", lambda path: False)
    result = cli(
        "build",
        "hello",
        "task",
        "--dir",
        str(tmp_path / "new" / "deeper"),
        "--db",
        str(tmp_path / "l.db"),
        "--template",
        template,
    )
    assert result.exit_code == 1 and "is not writable" in result.stderr
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "new").exists()


def test_missing_api_key_is_caught_before_the_ledger(cli, tmp_path, template):
    result = cli(
        "build",
        "hello",
        "task",
        "--backend",
        "anthropic",
        "--template",
        template,
        "--db",
        str(tmp_path / "ledger.db"),
        "--yes",
    )
    assert result.exit_code == 1 and "ANTHROPIC_API_KEY" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    _no_ledger(tmp_path)
    assert not Path("hello").exists()


def test_unreachable_server_is_caught_before_the_ledger(cli, tmp_path, template):
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
    }
    result = cli(
        "build",
        "hello",
        "task",
        "--backend",
        "anthropic",
        "--template",
        template,
        "--db",
        str(tmp_path / "ledger.db"),
        "--yes",
        env=env,
    )
    assert result.exit_code == 1, result.stderr
    assert "sk-ant-test" not in result.stderr + result.stdout
    _no_ledger(tmp_path)


def test_estimate_calls_no_model_and_writes_nothing(cli, tmp_path, template):
    result = cli(
        "build",
        "hello",
        "Build a CLI todo app",
        "--backend",
        "anthropic",
        "--template",
        template,
        "--db",
        str(tmp_path / "ledger.db"),
        "--estimate",
    )
    assert result.exit_code == 0, result.stderr
    assert "projected build: anthropic claude-sonnet-4-6" in result.stdout
    assert "total" in result.stdout and "Ceiling" in result.stdout
    result = cli(
        "build",
        "hello",
        "Build a CLI todo app",
        "--backend",
        "anthropic",
        "--template",
        template,
        "--estimate",
        "--json",
        "--ttl",
        "1h",
        "--phases",
        "architect,builder,test",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [p["phase"] for p in data["phases"]] == ["architect", "builder", "test"]
    assert data["ttl"] == "1h" and data["total"]["cost_usd"] > 0
    assert data["total"]["requests"] == 3 + 10 + 4
    _no_ledger(tmp_path)
    assert not Path("hello").exists()


def test_confirmation_on_a_terminal(cli, tmp_path, template, monkeypatch, anthropic_env):
    monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
    result = cli(
        "build",
        "hello",
        "task",
        "--backend",
        "anthropic",
        "--template",
        template,
        "--db",
        str(tmp_path / "ledger.db"),
        input="n\n",
    )
    assert result.exit_code == 1 and "aborted: nothing was built" in result.stderr
    assert "projected cost" in result.stderr
    _no_ledger(tmp_path)
    assert anthropic_env.requests == []


def test_a_foundry_dir_that_is_a_file_is_refused_before_the_build(cli, tmp_path, template):
    Path("hello").mkdir()
    Path("hello/.foundry").write_text("not a directory")
    result = cli("build", "hello", "task", "--db", str(tmp_path / "l.db"), "--template", template)
    assert result.exit_code == 1 and ".foundry is not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    _no_ledger(tmp_path)
    assert Path("hello/.foundry").read_text() == "not a directory"


def test_a_claude_model_typo_is_named_before_anything_runs(cli, tmp_path, template, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    result = cli(
        "build", "hello", "task", "--backend", "anthropic", "--model", "claude-sonet-4-6",
        "--db", str(tmp_path / "l.db"), "--template", template, "--yes",
    )  # fmt: skip
    assert result.exit_code == 2 and "did you mean claude-sonnet-4-6" in result.stderr
    assert "sk-test" not in result.stderr
    _no_ledger(tmp_path)
    assert not Path("hello").exists()
