"""A build's live progress on the ledger (the `build_progress` row that `foundry dashboard`
and `foundry mcp` read), and a build id chosen by the caller (`build --build-id`)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from foundry.ledger.progress import read_progress
from foundry.orchestrator.events import Events, Fanout
from foundry.orchestrator.progress import LedgerProgress
from tests.orchestrator_helpers import finish, ledger_rows, run_build, tool, write_template


def _progress(db: Path) -> dict[str, Any] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        build_id = conn.execute("SELECT id FROM builds").fetchone()[0]
        return read_progress(conn, build_id)
    finally:
        conn.close()


def test_the_row_follows_the_build_while_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seen: list[dict[str, Any] | None] = []

    def look_then_finish(request: Any) -> tuple[list[dict], str]:
        # Another process reading the ledger mid-build sees this build's state now.
        seen.append(_progress(db))
        return [finish("wrote it")], "tool_use"

    steps = [
        ([finish("scouted")], "tool_use"),
        ([tool("write_file", path="hello.py", content="print('hi')\n")], "tool_use"),
        look_then_finish,
    ]
    recorder = LedgerProgress(clock=lambda: 0.0)  # a frozen clock: only forced writes land
    result, _, db = run_build(
        tmp_path, steps, phases=("scout", "builder"), events=Fanout(Events(), recorder)
    )
    assert result.status == "completed"
    during = seen[0]
    assert during is not None
    assert (during["phase"], during["turn"]) == ("builder", 2)
    assert during["last_tool"] == "write_file" and "hello.py" in during["last_tool_detail"]
    assert during["requests"] == 2 and during["last_tool_error"] == 0

    after = _progress(db)
    assert after is not None
    assert after["requests"] == len(ledger_rows(db, "requests")) == 3
    assert after["phase"] == "builder" and after["message"].startswith("builder")


def test_a_long_tool_detail_is_cut(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seen: list[dict[str, Any] | None] = []

    def look_then_finish(request: Any) -> tuple[list[dict], str]:
        seen.append(_progress(db))
        return [finish()], "tool_use"

    steps = [([tool("run_command", command="echo " + "x" * 5000)], "tool_use"), look_then_finish]
    run_build(tmp_path, steps, phases=("builder",), events=Fanout(Events(), LedgerProgress()))
    during = seen[0]
    assert during is not None and during["last_tool"] == "run_command"
    assert 0 < len(during["last_tool_detail"]) <= 300


class _Broken(Events):
    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        raise RuntimeError("the collector is down")


def test_a_failing_recorder_is_dropped_and_the_build_goes_on(tmp_path, caplog) -> None:
    steps = [
        ([tool("list_files")], "tool_use"),
        ([tool("list_files")], "tool_use"),
        ([finish()], "tool_use"),
    ]
    fanout = Fanout(Events(), _Broken(), LedgerProgress())
    result, _, db = run_build(tmp_path, steps, phases=("builder",), events=fanout)
    assert result.status == "completed"
    assert [type(r).__name__ for r in fanout.recorders] == ["LedgerProgress"]
    assert "_Broken stopped recording" in caplog.text
    after = _progress(db)
    assert after is not None and after["requests"] == 3


def _cli_build(cli, tmp_path: Path, *extra: str):
    return cli(
        "build",
        "hello",
        "Create hello.py",
        "--backend",
        "anthropic",
        "--template",
        str(write_template(tmp_path)),
        "--db",
        str(tmp_path / "ledger.db"),
        "--phases",
        "scout",
        "--yes",
        *extra,
    )


def test_the_cli_records_progress_under_the_id_it_was_given(cli, tmp_path, anthropic_env):
    server = anthropic_env
    server.enqueue([{"type": "tool_use", "name": "list_files", "input": {}}], "tool_use")
    server.enqueue(
        [{"type": "tool_use", "name": "finish_phase", "input": {"summary": "s", "report": "r"}}],
        "tool_use",
    )
    build_id = uuid.uuid4().hex
    result = _cli_build(cli, tmp_path, "--build-id", build_id)
    assert result.exit_code == 0, result.stderr
    db = tmp_path / "ledger.db"
    assert [row["id"] for row in ledger_rows(db, "builds")] == [build_id]
    progress = _progress(db)
    assert progress is not None and progress["build_id"] == build_id
    assert (progress["phase"], progress["last_tool"], progress["requests"]) == (
        "scout",
        "finish_phase",
        2,
    )

    # The same id again is refused: it names a build that exists.
    again = _cli_build(cli, tmp_path, "--build-id", build_id, "--dir", str(tmp_path / "other"))
    assert again.exit_code != 0
    assert f"build id {build_id} is already on the ledger" in again.stderr
    assert len(ledger_rows(db, "builds")) == 1


@pytest.mark.parametrize("bad", ["xyz", "A" * 32, "0" * 31, "../" + "0" * 29])
def test_a_malformed_build_id_is_refused_before_anything_runs(cli, tmp_path, bad) -> None:
    result = _cli_build(cli, tmp_path, "--build-id", bad)
    assert result.exit_code == 2
    assert "is not 32 lowercase hex digits" in result.stderr
    assert not (tmp_path / "ledger.db").exists() and not Path("hello").exists()
