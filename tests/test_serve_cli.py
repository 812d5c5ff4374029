"""`foundry serve` as a user runs it: the banner, a request, SIGTERM, the summary, the ledger;
and the one-line errors for what it refuses to do."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.serve_helpers import system_blocks

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")  # the serve extra: pip install -e '.[serve]'
pytest.importorskip("starlette")


def test_serve_runs_until_sigterm_then_prints_the_summary(tiny_model_dir, tmp_path) -> None:
    import anthropic

    db = tmp_path / "ledger.db"
    env = {**os.environ, "FOUNDRY_HOME": str(tmp_path / "home"), "FOUNDRY_DB": str(db)}
    env.pop("FOUNDRY_DEBUG", None)
    args = [
        sys.executable,
        "-m",
        "foundry",
        "-v",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("foundry serve: ") and " on http://127.0.0.1:" in banner
        url = banner.split(" on ")[1].split(" ")[0]
        usage_line = process.stdout.readline()
        assert f"ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=local claude" in usage_line
        client = anthropic.Anthropic(base_url=url, api_key="local", max_retries=0)
        reply = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=4,
            system=system_blocks(),
            messages=[{"role": "user", "content": "hi"}],
        )
        assert reply.usage.cache_creation_input_tokens > 100
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "served 1 requests" in out and "saved to disk" in out
    assert "MISS (no saved prefix" in err  # the -v HIT/MISS line
    assert "Traceback" not in err
    conn = sqlite3.connect(db)
    build = conn.execute("SELECT id, name, status, summary_json FROM builds").fetchone()
    assert build[1] == f"serve-{tiny_model_dir.name}" and build[2] == "completed"
    assert json.loads(build[3])["requests"] == 1
    rows = conn.execute("SELECT phase, status, build_id FROM requests").fetchall()
    assert rows == [("serve", "ok", build[0])]


def test_a_non_loopback_host_needs_a_key(cli) -> None:
    result = cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "--host 0.0.0.0" in result.stderr and "--api-key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(cli, tiny_model_dir) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        result = cli("serve", "--model", str(tiny_model_dir), "--port", port)
    finally:
        taken.close()
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


def test_an_unknown_context_policy_is_a_usage_error(cli) -> None:
    result = cli("serve", "--context-policy", "squash")
    assert result.exit_code == 2 and "unknown context policy 'squash'" in result.stderr


def test_the_cli_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, time; from foundry.cli import app; "
        "print(sorted(m for m in ('uvicorn', 'starlette', 'anyio') if m in sys.modules))"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", time.monotonic() - started
