"""The command-line shell: help, version, and how errors reach the user."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize(
    ("args", "message", "command_path"),
    [
        (("build", "x", "t", "--max-turns", "0"), "Invalid value for '--max-turns'", "build"),
        (("costs", "--bogus"), "No such option: --bogus", "costs"),
        (("build", "x"), "Missing argument 'task'", "build"),
        (("cache", "stats", "--bogus"), "No such option: --bogus", "cache stats"),
        (("--bogus",), "No such option: --bogus", ""),
        (("nosuchcommand",), "No such command 'nosuchcommand'", ""),
    ],
)
def test_usage_errors_are_one_red_line_with_exit_code_2(cli, args, message, command_path) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert lines[0].endswith(f" — see '{' '.join(['foundry', command_path]).strip()} --help'")
    for box in ("Traceback", "Usage:", "╭", "Try '"):
        assert box not in result.stderr
    assert result.stdout == ""


def test_help_is_not_an_error(cli) -> None:
    assert "Commands" in cli().stdout  # bare `foundry` shows the help
    assert "stats" in cli("cache").stdout
    for args in (("build", "--help"), ("cache", "stats", "-h"), ("-v", "--version")):
        result = cli(*args)
        assert result.exit_code == 0 and result.stderr == ""


def test_usage_error_traceback_only_with_foundry_debug(cli) -> None:
    result = cli("costs", "--bogus", env={"FOUNDRY_DEBUG": "1"})
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: No such option")


@pytest.fixture
def foundry_logger():
    """The `foundry` logger as it was, restored afterwards (the CLI configures it globally)."""
    logger = logging.getLogger("foundry")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers.clear()
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def log_probe(monkeypatch):
    """A hidden command that logs from foundry.* loggers like the prefix store does."""
    from foundry.cli import app

    def probe() -> None:
        logging.getLogger("foundry.local.prefix_store").info("prefix cache miss: probe")
        logging.getLogger("foundry.local.chat").debug("debug probe")

    # A copy of the command list, so the probe is gone when monkeypatch restores it.
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))
    app.command("log-probe", hidden=True)(probe)


@pytest.mark.parametrize(
    ("args", "env", "info", "debug"),
    [
        ((), {}, False, False),
        (("-v",), {}, True, False),
        (("--verbose", "--verbose"), {}, True, True),
        ((), {"FOUNDRY_LOG": "info"}, True, False),
        ((), {"FOUNDRY_LOG": "DEBUG"}, True, True),
        (("-v",), {"FOUNDRY_LOG": "error"}, True, False),  # the flag wins
    ],
)
def test_verbose_and_foundry_log_show_info_records_on_stderr(
    cli, foundry_logger, log_probe, args, env, info, debug
) -> None:
    result = cli(*args, "log-probe", env=env)
    assert result.exit_code == 0 and result.stdout == ""
    assert ("prefix cache miss: probe" in result.stderr) is info
    assert ("debug probe" in result.stderr) is debug
    if info:
        assert "foundry.local.prefix_store" in result.stderr


def test_an_unknown_foundry_log_level_is_a_usage_error(cli, foundry_logger) -> None:
    result = cli("cache", "stats", env={"FOUNDRY_LOG": "loud"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: FOUNDRY_LOG='loud'")
    assert "debug, info, warning, error" in lines[0]


def test_setup_logging_attaches_one_handler(cli, foundry_logger, log_probe) -> None:
    from rich.logging import RichHandler

    from foundry.logs import setup_logging

    setup_logging(logging.INFO)
    setup_logging(logging.DEBUG)
    cli("-v", "log-probe")
    # (pytest adds its own capture handlers to a logger that does not propagate)
    ours = [h for h in foundry_logger.handlers if isinstance(h, RichHandler)]
    assert len(ours) == 1 and foundry_logger.propagate is False
    result = cli("-v", "log-probe")
    assert result.stderr.count("prefix cache miss: probe") == 1
