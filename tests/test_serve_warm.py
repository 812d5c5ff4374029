"""`foundry cache warm`: a prefix saved (local) or written (Claude) ahead of time, so the first
real request is already a hit; each warm-up is one recorded request."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.serve_helpers import READ_TOOL, SYSTEM, serving, system_blocks

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

STATIC = "# Orchestrator\n\nRead the files, write the code, run the tests, report.\n" * 12
DYNAMIC = "# The build\n\nName: {{ build_name }}\nTask: {{ task }}\n"


def write_template(path, repeat: int = 1):
    path.write_text(f"{STATIC * repeat}<<CACHE_BOUNDARY>>\n{DYNAMIC}", encoding="utf-8")
    return path


@pytest.fixture
def template(tmp_path):
    return write_template(tmp_path / "prompt.txt")


def _rows(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    return conn.execute(
        "SELECT phase, backend, cache_write_5m_tokens, cache_read_tokens FROM requests"
    ).fetchall()


@pytest.mark.mlx
def test_warming_the_orchestrator_prompt_makes_a_builds_first_request_a_hit(
    cli, template, tmp_path
) -> None:
    from foundry.backends.mlx import MLXBackend
    from foundry.config import load_config
    from foundry.server.warm import WarmOptions, orchestrator_request
    from tests.tiny_model import build_tiny_model

    # The workspace tools' schemas alone outgrow the shared tiny model's 2,048 tokens.
    tiny_model_dir = build_tiny_model(tmp_path / "model", max_position_embeddings=8192)

    db = tmp_path / "ledger.db"
    args = ("cache", "warm", "--backend", "mlx", "--model", str(tiny_model_dir))
    result = cli(*args, "--template", str(template), "--db", str(db))
    assert result.exit_code == 0, result.stderr
    assert "prefix tokens written to the prefix store" in result.stdout
    again = cli(*args, "--template", str(template), "--db", str(db), "--json")
    data = json.loads(again.stdout)
    assert data["already_warm"] and data["cache_write_tokens"] == 0
    written = _rows(db)[0][2]
    assert data["cache_read_tokens"] == written > 100
    assert [r[0] for r in _rows(db)] == ["warm", "warm"]
    # A build's first request (same static text and tools, its own task) reads it from disk.
    config = load_config()
    build_request = orchestrator_request(WarmOptions(template=template), "tiny", config)
    build_request.messages[0].content[0]["text"] = "Name: todo\nTask: build a todo app"
    backend = MLXBackend(config, str(tiny_model_dir))
    first = backend.complete(build_request)
    assert backend.last_cache_event["source"] == "store"
    assert first.usage.cache_read_tokens == written


@pytest.mark.mlx
def test_warming_a_served_clients_request_makes_the_servers_first_request_a_hit(
    cli, tiny_model_dir, tmp_path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code."}, *system_blocks()],
        "tools": [READ_TOOL],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "stream": True,
    }
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(body))
    config = home / "config.json"
    config.write_text(json.dumps({"prefix_cache": {"dir": str(home / "prefix-cache")}}))
    result = cli(
        "cache",
        "warm",
        "--backend",
        "mlx",
        "--model",
        str(tiny_model_dir),
        "--request",
        str(request_file),
        "--config",
        str(config),
        "--db",
        str(tmp_path / "warm.db"),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    warmed = json.loads(result.stdout)["cache_write_tokens"]
    assert warmed > 100
    with serving(tiny_model_dir, home) as served:
        client = served.client()
        reply = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=4,
            system=body["system"],
            tools=[READ_TOOL],
            messages=[{"role": "user", "content": "a different first question"}],
        )
        assert reply.usage.cache_read_input_tokens == warmed
        assert served.stats()["since_start"]["disk_hits"] == 1


def test_warming_claude_sends_one_minimal_request_and_records_it(
    cli, anthropic_env, tmp_path
) -> None:
    template = write_template(tmp_path / "long.txt", repeat=4)  # over Sonnet's 1,024 minimum
    db = tmp_path / "ledger.db"
    args = ("cache", "warm", "--backend", "anthropic", "--template", str(template), "--db", str(db))
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    assert "written to Anthropic's cache" in first.stdout and "cost $" in first.stdout
    second = cli(*args, "--json")
    assert json.loads(second.stdout)["already_warm"]
    requests = anthropic_env.requests
    assert [r["max_tokens"] for r in requests] == [1, 1]
    assert requests[0]["system"][-1]["cache_control"]["type"] == "ephemeral"
    rows = _rows(db)
    assert [r[:2] for r in rows] == [("warm", "anthropic"), ("warm", "anthropic")]
    assert rows[0][2] > 0 and rows[1][3] == rows[0][2]


def test_a_request_file_is_for_local_models(cli, anthropic_env, tmp_path) -> None:
    request = tmp_path / "r.json"
    request.write_text(
        json.dumps(
            {"model": "x", "messages": [{"role": "user", "content": "hi"}], "system": SYSTEM}
        )
    )
    result = cli("cache", "warm", "--backend", "anthropic", "--request", str(request))
    assert result.exit_code == 2 and "--request warms a local model" in result.stderr


def test_a_prefix_too_short_to_cache_is_an_error_not_a_silent_miss(
    cli, anthropic_env, template
) -> None:
    result = cli("cache", "warm", "--backend", "anthropic", "--template", str(template))
    assert result.exit_code == 1
    assert "cached nothing" in result.stderr and "minimum cacheable length" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
