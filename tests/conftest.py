"""Shared test set-up: no test touches the network, the developer's home or a real API key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

# The local Anthropic test server (real HTTP on 127.0.0.1) and its `anthropic_server` fixture.
pytest_plugins = ["tests.anthropic_server"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FOUNDRY_HOME in a temp dir, no API keys, and a clean working directory."""
    home = tmp_path_factory.mktemp("foundry-home")
    workdir = tmp_path_factory.mktemp("cwd")
    monkeypatch.setenv("FOUNDRY_HOME", str(home))
    # The llama.cpp processes' registry is the user's, machine-wide: a test's is its own.
    monkeypatch.setenv("FOUNDRY_CPU_SHARE_DIR", str(home / "cpu-share"))
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "FOUNDRY_DB",
        "FOUNDRY_DEBUG",
        "FOUNDRY_LOG",
        "FOUNDRY_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(workdir)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """The default tiny random-weight model, built once per session. Read-only: tests that
    need a different model call tests.tiny_model.build_tiny_model themselves."""
    from tests.tiny_model import build_tiny_model

    # Session-wide, so outside any test's FOUNDRY_HOME.
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")
    before = _snapshot(path)
    yield path
    assert _snapshot(path) == before, "a test changed the shared tiny model; build its own"


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.fixture
def cli():
    """Run the foundry CLI in-process; returns click's Result (stdout, stderr, exit_code)."""
    from foundry.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture(autouse=True)
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenAI-compatible server or key from the developer's environment: with one set,
    `--backend auto` would pick it."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# `foundry serve` tests (test_serve*.py). Modules with a `server` of their own (the OpenAI
# fakes) override it.
@pytest.fixture
def server(tiny_model_dir, tmp_path):
    """`foundry serve` on 127.0.0.1 with the tiny model, for the real anthropic SDK."""
    from tests.serve_helpers import serving

    with serving(tiny_model_dir, tmp_path) as served:
        yield served


@pytest.fixture
def script(monkeypatch):
    """Scripted model replies for the served backend (tests.serve_helpers.Script)."""
    from tests.serve_helpers import Script

    return Script().install(monkeypatch)


@pytest.fixture
def bwrap() -> None:
    """The real bubblewrap: on Linux a sandbox test fails (never skips) when it is missing,
    unless FOUNDRY_TEST_NO_BWRAP=1."""
    import os
    import sys

    from foundry.orchestrator.sandbox import availability

    if sys.platform != "linux" or os.environ.get("FOUNDRY_TEST_NO_BWRAP") == "1":
        pytest.skip("needs bubblewrap (Linux); FOUNDRY_TEST_NO_BWRAP=1 opted out")
    found = availability()
    if not found.ok:
        pytest.fail(f"{found.reason}: install bubblewrap, or set FOUNDRY_TEST_NO_BWRAP=1")
