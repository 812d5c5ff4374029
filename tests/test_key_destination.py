"""The API key goes only where the user chose: a config file *found* in the current directory
may not name a base URL at all (not even a loopback one: any local process could listen
there), only one the user names with --config or FOUNDRY_CONFIG may; the endpoint is shown
whenever it is not the API's own; and loopback means 127.0.0.0/8, ::1 and localhost."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from foundry.commands import build as build_command
from foundry.config import is_loopback_host, load_config
from foundry.errors import ConfigError
from foundry.orchestrator.display import LiveDisplay, PlainDisplay
from tests.orchestrator_helpers import write_template

EVIL = "https://collector.evil.example/v1"


@pytest.fixture(autouse=True)
def no_explicit_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOUNDRY_CONFIG", raising=False)


def _discovered(section: str = "anthropic", url: str = EVIL) -> None:
    Path("cache_config.json").write_text(json.dumps({section: {"base_url": url}}))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_discovered_config_cannot_send_the_key_elsewhere(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("FOUNDRY_TRUST_CONFIG", "1")  # no longer a way around the rule
    _discovered()
    template = str(write_template(tmp_path))
    args = ("build", "hello", "task", "--backend", "anthropic", "--yes", "--template", template)
    result = cli(*args, "--db", str(tmp_path / "l.db"))
    assert result.exit_code == 1
    [error] = _error_lines(result.stderr)
    assert "./cache_config.json was found in the current directory" in error
    assert "sets anthropic.base_url;" in error and "--config ./cache_config.json" in error
    assert "FOUNDRY_CONFIG=./cache_config.json" in error and "TRUST" not in error
    assert "sk-ant-test-key" not in result.stderr
    assert not Path("hello").exists() and not (tmp_path / "l.db").exists()


@pytest.mark.parametrize("section", ["anthropic", "openai"])
def test_analyze_exact_refuses_a_discovered_base_url(
    cli, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    _discovered(section)
    result = cli("analyze-prompt", "--exact")
    assert result.exit_code == 1
    [error] = _error_lines(result.stderr)
    assert f"sets {section}.base_url;" in error and "--config" in error


@pytest.mark.parametrize("url", [EVIL, "http://127.0.0.1:8080", "http://localhost:9000/v1"])
def test_only_a_named_config_chooses_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    _discovered("openai", url)
    with pytest.raises(ConfigError, match=r"sets openai\.base_url;"):
        load_config()
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # the environment naming it too changes nothing
    with pytest.raises(ConfigError, match=r"sets openai\.base_url;"):
        load_config()
    assert load_config("cache_config.json").openai.base_url == url  # --config
    monkeypatch.setenv("FOUNDRY_CONFIG", "cache_config.json")
    assert load_config().openai.base_url == url


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("evil.localhost", False),
        ("localhost.evil.example", False),
        ("localhost.", False),
        ("::ffff:127.0.0.1", False),
        ("::1%eth0", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("127.1", False),  # the resolver's shorthand; not a literal address here
        ("", False),
    ],
)
def test_loopback_means_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_the_confirmation_shows_a_non_default_endpoint(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anthropic_server
) -> None:
    monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_server.api_key)
    _discovered(url=anthropic_server.base_url)  # named with --config below: shown
    template = str(write_template(tmp_path))
    result = cli(
        "build",
        "hello",
        "task",
        "--backend",
        "anthropic",
        "--config",
        "cache_config.json",
        "--template",
        template,
        "--db",
        str(tmp_path / "l.db"),
        input="n\n",
    )
    assert result.exit_code == 1 and "aborted: nothing was built" in result.stderr
    assert f"at {anthropic_server.base_url}" in " ".join(result.stderr.split())
    assert anthropic_server.requests == []


def test_the_display_shows_a_non_default_endpoint() -> None:
    out = io.StringIO()
    PlainDisplay(Console(file=out, width=200), endpoint="https://api.anthropic.com")
    assert out.getvalue() == ""
    PlainDisplay(Console(file=out, width=200), endpoint="http://10.0.0.5:8000/v1")
    assert "endpoint: model requests and the API key go to http://10.0.0.5:8000/v1" in (
        out.getvalue()
    )
    live_out = io.StringIO()
    live = LiveDisplay(
        Console(file=live_out, width=200, force_terminal=True), endpoint="http://10.0.0.5:8000"
    )
    live.close()
    assert "endpoint" in live_out.getvalue() and "http://10.0.0.5:8000" in live_out.getvalue()
