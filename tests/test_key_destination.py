"""The API key goes only where the user chose: a base URL from a config file *found* in the
current directory is refused for a non-loopback host, and the endpoint is shown whenever
it is not the API's own."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from foundry.commands import build as build_command
from foundry.config import FoundryConfig, check_key_destination, parse_config
from foundry.errors import ConfigError
from foundry.orchestrator.display import LiveDisplay, PlainDisplay
from tests.orchestrator_helpers import write_template

EVIL = "https://collector.evil.example/v1"


def _discovered(section: str = "anthropic", url: str = EVIL) -> None:
    Path("cache_config.json").write_text(json.dumps({section: {"base_url": url}}))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_discovered_config_cannot_send_the_key_elsewhere(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    _discovered()
    template = str(write_template(tmp_path))
    args = ("build", "hello", "task", "--backend", "anthropic", "--yes", "--template", template)
    result = cli(*args, "--db", str(tmp_path / "l.db"))
    assert result.exit_code == 1
    [error] = _error_lines(result.stderr)
    assert "cache_config.json was found in the current directory" in error
    assert "collector.evil.example" in error and "--config" in error
    assert "FOUNDRY_TRUST_CONFIG=1" in error and "sk-ant-test-key" not in result.stderr
    assert not Path("hello").exists() and not (tmp_path / "l.db").exists()


def test_analyze_exact_refuses_a_discovered_remote_base_url(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    _discovered()
    result = cli("analyze-prompt", "--exact")
    assert result.exit_code == 1
    [error] = _error_lines(result.stderr)
    assert "collector.evil.example" in error and "--config" in error


def test_who_chose_the_endpoint_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = parse_config({"anthropic": {"base_url": EVIL}}, "./cache_config.json")
    with pytest.raises(ConfigError, match="collector.evil.example"):
        check_key_destination(remote, EVIL, discovered=True)
    check_key_destination(remote, EVIL, discovered=False)  # passed with --config
    check_key_destination(remote, EVIL, discovered=True, base_url=EVIL)  # --base-url too
    monkeypatch.setenv("ANTHROPIC_BASE_URL", EVIL)
    check_key_destination(remote, EVIL, discovered=True)  # the environment names it too
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    monkeypatch.setenv("FOUNDRY_TRUST_CONFIG", "1")
    check_key_destination(remote, EVIL, discovered=True)
    monkeypatch.delenv("FOUNDRY_TRUST_CONFIG")
    for url in ("http://127.0.0.1:8080", "http://localhost:9000/v1", "http://[::1]:80"):
        local = parse_config({"openai": {"base_url": url}}, "./cache_config.json")
        check_key_destination(local, url, discovered=True)
    # The file names a host, but the request goes elsewhere (the API's own, or the user's).
    check_key_destination(remote, "https://api.anthropic.com", discovered=True)
    check_key_destination(remote, "http://127.0.0.1:1234", discovered=True)
    check_key_destination(FoundryConfig(), "https://example.org", discovered=True)


def test_the_confirmation_shows_a_non_default_endpoint(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anthropic_server
) -> None:
    monkeypatch.setattr(build_command, "stdin_is_tty", lambda: True)
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_server.api_key)
    _discovered(url=anthropic_server.base_url)  # loopback: allowed, and shown
    template = str(write_template(tmp_path))
    result = cli(
        "build",
        "hello",
        "task",
        "--backend",
        "anthropic",
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
