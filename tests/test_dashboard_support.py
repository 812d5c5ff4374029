"""What the dashboard tests share: a ledger filled through the real recording API, and the
dashboard itself on a real socket (uvicorn in a thread). No tests here."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from foundry.config import load_config
from foundry.dashboard.run import Dashboard, DashboardOptions
from foundry.ledger import Ledger
from foundry.timestamps import format_utc
from foundry.usage import Usage

HOSTILE_TASK = "<img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>"
HOSTILE_TOOL = "<script>document.title='pwned2'</script>"


@dataclass
class Filled:
    path: Path
    finished: str  # a completed build with a summary
    running: str  # a running build with a progress row (this process: alive)
    hostile: str  # a build whose task and tool detail are markup


def _summary(build_id: str, name: str) -> dict[str, Any]:
    tokens = {"input": 900, "output": 300, "cache_read": 4000, "cache_write_5m": 1000}
    tokens["cache_write_1h"] = 0
    phase = {"status": "finished", "turns": 2, "requests": 2, "tokens": tokens}
    return {
        "schema_version": 1,
        "build_id": build_id,
        "name": name,
        "status": "completed",
        "duration_s": 42.5,
        "phases": [
            {**phase, "name": "builder", "cost_usd": 0.0123, "summary": "wrote calc.py"},
            {**phase, "name": "test", "status": "passed", "cost_usd": 0.0045, "summary": None},
        ],
        "files_created": ["calc.py", "test_calc.py"],
        "files_modified": ["README.md"],
        "test_command": "python3 -m pytest -q",
        "tests_passed": True,
        "test_iterations": 1,
        "test_runs": [
            {
                "iteration": 1,
                "exit_code": 0,
                "passed": True,
                "timed_out": False,
                "duration_s": 1.25,
                "results_file": ".foundry/test-results-1.txt",
            }
        ],
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "requests": 4,
        "tokens": tokens,
        "cache_hit_rate": 0.6667,
        "cost_usd": 0.0168,
        "uncached_cost_usd": 0.03,
        "saved_usd": 0.0132,
        "prefill_saved_s": None,
    }


def _request(ledger: Ledger, build_id: str | None, phase: str | None, backend: str, model: str,
             at: datetime, **tokens: int) -> None:  # fmt: skip
    usage = Usage(**tokens, duration_ms=1200.0, ttft_ms=200.0)
    if backend in ("mlx", "llamacpp"):
        usage.prefill_saved_ms = 1500.0
    ledger.record_request(
        build_id=build_id, phase=phase, turn=1, backend=backend, model=model, usage=usage,
        started_at=format_utc(at),
    )  # fmt: skip


def fill_ledger(path: Path) -> Filled:
    """Three builds over the last few days, priced, local and unpriced requests among them."""
    now = datetime.now(UTC)
    with Ledger.open(path) as ledger:
        common = {"workdir": "/tmp/w", "template_sha256": "t", "static_sha256": "s"}
        finished = ledger.start_build(name="calc", task="Build a calculator", backend="anthropic",
                                      model="claude-sonnet-4-6", **common)  # fmt: skip
        for days, phase in ((3, "builder"), (2, "builder"), (1, "test"), (1, "test")):
            _request(ledger, finished, phase, "anthropic", "claude-sonnet-4-6",
                     now - timedelta(days=days), input_tokens=900, output_tokens=300,
                     cache_read_tokens=4000, cache_write_5m_tokens=1000)  # fmt: skip
        _request(ledger, finished, "test", "mlx", "smollm2-135m", now - timedelta(days=2),
                 input_tokens=50, output_tokens=20, cache_read_tokens=700)  # fmt: skip
        ledger.finish_build(finished, status="completed", summary=_summary(finished, "calc"))

        running = ledger.start_build(name="todo", task="Build a todo app", backend="anthropic",
                                     model="claude-haiku-4-5", phases=("scout", "builder"),
                                     **common)  # fmt: skip
        _request(ledger, running, "scout", "anthropic", "claude-haiku-4-5", now,
                 input_tokens=1200, output_tokens=100, cache_write_5m_tokens=3000)  # fmt: skip
        ledger.record_progress(running, phase="builder", turn=3,
                               last_tool="write_file", last_tool_detail="todo.py")  # fmt: skip

        hostile = ledger.start_build(name="evil", task=HOSTILE_TASK, backend="openai",
                                     model="unpriced-model", **common)  # fmt: skip
        _request(ledger, hostile, "builder", "openai", "unpriced-model", now - timedelta(hours=5),
                 input_tokens=500, output_tokens=50)  # fmt: skip
        ledger.record_progress(hostile, phase="builder", turn=1, last_tool="run_command",
                               last_tool_detail=HOSTILE_TOOL, message=HOSTILE_TASK)  # fmt: skip
        ledger.finish_build(hostile, status="failed", error=HOSTILE_TASK)
    return Filled(path, finished, running, hostile)


@contextmanager
def running_dashboard(db: Path, **options: Any) -> Iterator[Dashboard]:
    dashboard = Dashboard(DashboardOptions(db=db, config=load_config(None), port=0, **options))
    dashboard.start_in_thread()
    try:
        yield dashboard
    finally:
        dashboard.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """GET over real HTTP: (status, headers with lower-case names, JSON body or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path or "/", headers=headers or {})
        response = conn.getresponse()
        body = response.read().decode()
        found = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    if found.get("content-type", "").startswith("application/json"):
        return response.status, found, json.loads(body)
    return response.status, found, body


def costs_json(db: Path, *args: str) -> dict[str, Any]:
    """`foundry costs --json` as a user runs it: its own process, on a copy of the ledger's
    environment (it may migrate and close abandoned builds; the dashboard never does)."""
    env = {**os.environ, "FOUNDRY_DB": str(db)}
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "costs", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)
