"""Issue 23, the first ten minutes, through the real CLI: `models pull` of a model that is
already here answers at once; a bad --db is refused before any server is contacted; a
mistyped local model name gets a "did you mean"."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry.config import models_dir
from foundry.errors import FoundryError
from foundry.orchestrator import plan as build_plan
from tests.orchestrator_helpers import write_template


def _fake_model_dir(path: Path) -> Path:
    """What a model directory holds, as far as `foundry` checks without loading it."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.fixture
def no_fetching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download or conversion fails the test."""
    import foundry.local.gguf as gguf_module
    import foundry.local.pull as pull_module

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pull of an installed model downloaded or converted")

    monkeypatch.setattr(pull_module, "import_gguf", forbidden)
    monkeypatch.setattr(pull_module, "download_gguf", forbidden)
    monkeypatch.setattr(pull_module.subprocess, "run", forbidden)
    monkeypatch.setattr(gguf_module, "import_gguf", forbidden)


# --- 1. models pull of an installed model ----------------------------------------------


def test_pull_of_an_installed_model_says_so_at_once(cli, no_fetching) -> None:
    target = _fake_model_dir(models_dir() / "smollm2-135m")
    started = time.monotonic()
    result = cli("models", "pull", "smollm2-135m")
    assert time.monotonic() - started < 5
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert "already installed" in line and str(target) in line and "--force" in line
    as_json = json.loads(cli("models", "pull", "--json").stdout)
    assert as_json == {"name": "smollm2-135m", "path": str(target), "already_installed": True}


def test_pull_of_an_incomplete_model_dir_asks_for_force_without_converting(
    cli, no_fetching
) -> None:
    (models_dir() / "smollm2-135m").mkdir(parents=True)
    result = cli("models", "pull", "smollm2-135m")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "smollm2-135m" in result.stderr and "--force" in result.stderr


# --- 2. the ledger path is checked before any server -----------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that takes connections without answering; the kernel queues each
    one, so after the command `_connections` counts exactly those it made."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def _connections(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _build(cli, tmp_path: Path, port: int, *db: str):
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
    template = str(write_template(tmp_path))
    return cli(
        "build", "hello", "task", "--backend", "anthropic", "--template", template,
        *db, "--yes", env=env,
    )  # fmt: skip


@pytest.fixture
def no_build_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that gets past its checks stops there (the listener never answers a request)."""
    from foundry.commands import build as build_command

    def stop(*args: object, **kwargs: object) -> None:
        raise FoundryError("stopped before the build ran")

    monkeypatch.setattr(build_command, "_run", stop)


def test_the_counting_server_sees_the_reachability_check(cli, tmp_path, listener, no_build_run):
    """The control: with a good ledger path the check connects, and the counter sees it."""
    result = _build(cli, tmp_path, listener.getsockname()[1], "--db", str(tmp_path / "l.db"))
    assert result.exit_code == 1 and "stopped before the build ran" in result.stderr
    assert _connections(listener) == 1


@pytest.mark.parametrize("where", [".", "dir", "file/x.db", "unwritable/x.db"])
def test_a_bad_ledger_path_is_refused_before_any_server(
    cli, tmp_path, listener, monkeypatch, no_build_run, where
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "unwritable").mkdir()
    db = "." if where == "." else str(tmp_path / where)
    if where.startswith("unwritable"):  # the tests may run as root, who can write anywhere
        real = build_plan.is_writable
        monkeypatch.setattr(build_plan, "is_writable", lambda p: p.name != "unwritable" and real(p))
    result = _build(cli, tmp_path, listener.getsockname()[1], "--db", db)
    assert result.exit_code == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ledger" in result.stderr and "reach" not in result.stderr
    assert _connections(listener) == 0
    assert not Path("hello").exists() and not (tmp_path / "unwritable" / "x.db").exists()


# --- 3. did you mean -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "typo", "close"),
    [
        ("mlx", "smollm2-13m", "smollm2-135m"),  # pullable, not pulled
        ("mlx", "my-modle", "my-model"),  # an installed model directory
        ("llamacpp", "smolm2-135m", "smollm2-135m"),
        ("llamacpp", "tiny-lama", "tiny-llama"),  # an installed .gguf
    ],
)
def test_a_mistyped_local_model_name_gets_a_did_you_mean(cli, tmp_path, backend, typo, close):
    _fake_model_dir(models_dir() / "my-model")
    (models_dir() / "tiny-llama.gguf").write_bytes(b"GGUF")
    template = str(write_template(tmp_path))
    result = cli(
        "build", "hello", "task", "--backend", backend, "--model", typo,
        "--template", template, "--db", str(tmp_path / "l.db"), "--yes",
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "did you mean" in line and close in line
    assert not (tmp_path / "l.db").exists()


def test_a_bare_name_is_never_looked_up_in_the_current_directory(cli, tmp_path) -> None:
    """The suggestions come from $FOUNDRY_HOME/models and the pullable names only."""
    _fake_model_dir(Path.cwd() / "here-model")
    template = str(write_template(tmp_path))
    result = cli(
        "build", "hello", "task", "--backend", "mlx", "--model", "here-modl",
        "--template", template, "--db", str(tmp_path / "l.db"), "--yes",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "not found" in result.stderr and "here-model" not in result.stderr
