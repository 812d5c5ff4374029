"""End to end: `foundry build` against the local Anthropic test server, scripted with the
tool calls a model would make. Files are written, the tests run for real, the result is
committed, and the ledger matches the server's usage token for token and cent for cent."""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from foundry.orchestrator.summary import BuildSummary
from foundry.pricing import PricingTable
from foundry.usage import Usage
from tests.orchestrator_helpers import write_template

TASK = "Create hello.py that prints hello, with a pytest test"
TEST_COMMAND = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"
HELLO = (
    'def hello() -> str:\n    return "hello"\n\n\nif __name__ == "__main__":\n    print(hello())\n'
)
BUGGY = HELLO.replace('return "hello"', 'return "helo"')
TEST_HELLO = (
    "import subprocess\nimport sys\n\nfrom hello import hello\n\n\n"
    'def test_hello():\n    assert hello() == "hello"\n\n\n'
    "def test_prints_hello():\n"
    "    out = subprocess.run([sys.executable, 'hello.py'], capture_output=True, text=True)\n"
    "    assert out.stdout == 'hello\\n'\n"
)


def use(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}  # the server fills the id


def say(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def script_build(server: Any, hello_source: str) -> None:
    server.enqueue([say("Let me see what is there."), use("list_files")], "tool_use")
    server.enqueue(
        [
            use(
                "finish_phase",
                summary="Empty directory; new Python project",
                report="# Scout report\n\nThe directory is empty. Python 3, pytest available.\n",
            )
        ],
        "tool_use",
    )
    server.enqueue(
        [
            use(
                "finish_phase",
                summary="hello.py + test_hello.py",
                report="# Architecture\n\n- `hello.py`: `hello()` returns the greeting; run as a "
                "script it prints it.\n- `test_hello.py`: pytest tests.\n",
                test_command=TEST_COMMAND,
            )
        ],
        "tool_use",
    )
    server.enqueue(
        [
            say("Writing the module and its test."),
            use("write_file", path="hello.py", content=hello_source),
            use("write_file", path="test_hello.py", content=TEST_HELLO),
        ],
        "tool_use",
    )
    server.enqueue([use("run_command", command="ls")], "tool_use")
    server.enqueue(
        [
            use(
                "finish_phase",
                summary="Wrote hello.py and test_hello.py",
                report="# Build log\n\n- hello.py\n- test_hello.py\n",
            )
        ],
        "tool_use",
    )


def requests_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def usage_of(raw: dict[str, Any]) -> Usage:
    split = raw.get("cache_creation") or {}
    return Usage(
        input_tokens=raw["input_tokens"],
        output_tokens=raw["output_tokens"],
        cache_read_tokens=raw.get("cache_read_input_tokens") or 0,
        cache_write_5m_tokens=split.get("ephemeral_5m_input_tokens", 0),
        cache_write_1h_tokens=split.get("ephemeral_1h_input_tokens", 0),
    )


def run(cli, tmp_path: Path, *extra: str, packaged_prompt: bool = False):
    """`foundry build hello TASK` against the test server; a small test template unless
    `packaged_prompt` (the real orchestrator prompt foundry ships)."""
    template = [] if packaged_prompt else ["--template", str(write_template(tmp_path))]
    return cli(
        "build",
        "hello",
        TASK,
        "--backend",
        "anthropic",
        *template,
        "--db",
        str(tmp_path / "ledger.db"),
        "--yes",
        *extra,
    )


def static_tokens(server: Any) -> int:
    """Tokens of the static prefix (tools + system) by the server's documented rule."""
    body = server.requests[0]
    return server.prompt_tokens({"tools": body["tools"], "system": body["system"], "messages": []})


def assert_ledger_matches_server(db: Path, server: Any) -> list[dict[str, Any]]:
    rows = requests_rows(db)
    assert len(rows) == len(server.responses_usage) == len(server.requests)
    pricing = PricingTable()
    for row, raw in zip(rows, server.responses_usage, strict=True):
        usage = usage_of(raw)
        assert (
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_5m_tokens"],
            row["cache_write_1h_tokens"],
        ) == (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_5m_tokens,
            usage.cache_write_1h_tokens,
        )
        expected = pricing.cost(usage, row["model"])
        assert row["cost_usd"] == pytest.approx(expected.cost_usd, abs=1e-12)
        assert row["uncached_cost_usd"] == pytest.approx(expected.uncached_cost_usd, abs=1e-12)
    return rows


def test_hello_build_end_to_end(cli, tmp_path, anthropic_env) -> None:
    server = anthropic_env
    script_build(server, HELLO)
    result = run(cli, tmp_path, "--json", packaged_prompt=True)
    assert result.exit_code == 0, result.stderr
    workdir = Path("hello").resolve()
    assert (
        subprocess.run(
            [sys.executable, "hello.py"], cwd=workdir, capture_output=True, text=True
        ).stdout
        == "hello\n"
    )

    summary = json.loads(result.stdout)
    on_disk = BuildSummary.model_validate_json((workdir / ".foundry/summary.json").read_text())
    assert on_disk.model_dump(mode="json") == summary
    assert summary["status"] == "completed" and summary["mode"] == "new"
    assert summary["phases_completed"] == ["scout", "architect", "builder", "test", "deploy"]
    assert summary["files_created"] == [".gitignore", "hello.py", "test_hello.py"]
    assert summary["test_command"] == TEST_COMMAND
    assert summary["tests_passed"] is True and summary["test_iterations"] == 1
    results = (workdir / ".foundry/test-results-1.md").read_text()
    assert "2 passed" in results and "Exit code: 0" in results

    rows = assert_ledger_matches_server(tmp_path / "ledger.db", server)
    assert [(r["phase"], r["turn"]) for r in rows] == [
        ("scout", 1),
        ("scout", 2),
        ("architect", 1),
        ("builder", 1),
        ("builder", 2),
        ("builder", 3),
    ]
    assert summary["requests"] == 6
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert summary["tokens"]["cache_read"] == sum(r["cache_read_tokens"] for r in rows)
    # Each phase starts a fresh conversation, and every request sends the same prefix.
    assert [len(body["messages"]) for body in server.requests] == [1, 3, 1, 1, 3, 5]
    assert len({json.dumps(b["system"]) + json.dumps(b["tools"]) for b in server.requests}) == 1
    first_turn = server.requests[0]["messages"][0]["content"][0]["text"]
    assert TASK in first_turn and "## Current phase: scout" in first_turn
    # The first request writes the static prefix; every later one reads it.
    assert rows[0]["cache_read_tokens"] == 0 and rows[0]["cache_write_5m_tokens"] > 0
    prefix = static_tokens(server)
    assert rows[0]["cache_write_5m_tokens"] > prefix > 1024
    assert all(r["cache_read_tokens"] >= prefix for r in rows[1:])

    log = subprocess.run(
        ["git", "log", "--format=%s|%an"], cwd=workdir, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert log.startswith(f"foundry build hello: {TASK}"[:69])
    assert (
        summary["commit"]
        == subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True
        ).stdout.strip()
    )
    # No secret reached the model's commands or the build's files.
    assert server.api_key not in json.dumps(server.requests)
    assert "phase" in result.stderr and "total" in result.stderr  # the final table


def test_self_healing_test_loop(cli, tmp_path, anthropic_env) -> None:
    server = anthropic_env
    script_build(server, BUGGY)
    server.enqueue([use("read_file", path="hello.py")], "tool_use")
    server.enqueue(
        [
            say("The greeting is misspelt."),
            use("edit_file", path="hello.py", old_text='"helo"', new_text='"hello"'),
        ],
        "tool_use",
    )
    server.enqueue(
        [use("finish_phase", summary="Fixed the typo", report="Fixed hello()")], "tool_use"
    )
    result = run(cli, tmp_path)
    assert result.exit_code == 0, result.stderr
    workdir = Path("hello").resolve()
    summary = json.loads((workdir / ".foundry/summary.json").read_text())
    assert summary["status"] == "completed" and summary["test_iterations"] == 2
    assert [r["passed"] for r in summary["test_runs"]] == [False, True]
    first_fix = server.requests[6]["messages"][0]["content"][0]["text"]
    assert "Test run 1 failed" in first_fix and "assert 'helo' == 'hello'" in first_fix
    assert "failed" in (workdir / ".foundry/test-results-1.md").read_text()
    assert "2 passed" in (workdir / ".foundry/test-results-2.md").read_text()
    rows = assert_ledger_matches_server(tmp_path / "ledger.db", server)
    assert [r["phase"] for r in rows][-3:] == ["test", "test", "test"]
    assert "build hello: completed" in result.stdout


def test_static_prefix_is_read_from_cache_across_two_builds(cli, tmp_path, anthropic_env):
    server = anthropic_env
    script_build(server, HELLO)
    assert run(cli, tmp_path, "--phases", "scout,architect,builder,test").exit_code == 0
    script_build(server, HELLO)
    second = cli(
        "build",
        "hello2",
        TASK,
        "--backend",
        "anthropic",
        "--template",
        str(write_template(tmp_path)),
        "--db",
        str(tmp_path / "ledger.db"),
        "--yes",
        "--phases",
        "scout,architect,builder,test",
    )
    assert second.exit_code == 0, second.stderr
    rows = assert_ledger_matches_server(tmp_path / "ledger.db", server)
    assert len({r["build_id"] for r in rows}) == 2 and len(rows) == 12
    static_prefix = static_tokens(server)
    assert rows[0]["cache_read_tokens"] == 0 and static_prefix > 1024
    for row in rows[1:]:
        assert row["cache_read_tokens"] >= static_prefix, row
    # The second build's first request wrote only its own dynamic part.
    first_of_second = rows[6]
    assert first_of_second["cache_write_5m_tokens"] < static_prefix / 4


def build_statuses(db: Path) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT status, error FROM builds ORDER BY started_at").fetchall()
    finally:
        conn.close()


def test_existing_project_mode(cli, tmp_path, anthropic_env) -> None:
    server = anthropic_env
    Path("hello").mkdir()
    Path("hello/README.md").write_text("An existing project\n")
    server.enqueue([use("read_file", path="README.md")], "tool_use")
    server.enqueue([use("finish_phase", summary="s", report="r")], "tool_use")
    result = run(cli, tmp_path, "--phases", "scout")
    assert result.exit_code == 0, result.stderr
    assert "Mode: existing" in server.requests[0]["messages"][0]["content"][0]["text"]
    assert "An existing project" in server.requests[1]["messages"][-1]["content"][0]["content"]
    summary = json.loads(Path("hello/.foundry/summary.json").read_text())
    assert summary["mode"] == "existing" and summary["files_created"] == []


def test_max_cost_stops_before_the_first_request(cli, tmp_path, anthropic_env) -> None:
    # 8,192 max output tokens of Sonnet 4.6 alone cost $0.12: over a $0.03 budget.
    result = run(cli, tmp_path, "--max-cost", "0.03")
    assert result.exit_code == 4, result.stderr
    assert "ended budget_exceeded" in result.stderr and "--max-cost" in result.stderr
    assert anthropic_env.requests == []
    assert build_statuses(tmp_path / "ledger.db")[0][0] == "budget_exceeded"
    assert json.loads(Path("hello/.foundry/summary.json").read_text())["requests"] == 0


def test_ctrl_c_exits_130_and_keeps_the_record(cli, tmp_path, anthropic_env, monkeypatch):
    from foundry.orchestrator.metered import ModelSession

    real_send = ModelSession.send

    def send_then_interrupt(self, conversation, phase, turn, **options):
        if len(anthropic_env.requests) >= 2:
            raise KeyboardInterrupt
        return real_send(self, conversation, phase, turn, **options)

    monkeypatch.setattr(ModelSession, "send", send_then_interrupt)
    script_build(anthropic_env, HELLO)
    result = run(cli, tmp_path)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert build_statuses(tmp_path / "ledger.db") == [
        ("interrupted", "interrupted by the user (Ctrl-C)")
    ]
    assert len(assert_ledger_matches_server(tmp_path / "ledger.db", anthropic_env)) == 2
    summary = json.loads(Path("hello/.foundry/summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["phases_completed"] == ["scout"]


def test_keepalive_while_the_tests_run(cli, tmp_path, anthropic_env) -> None:
    server = anthropic_env
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"caching": {"keepalive": True, "keepalive_after_s": 0.6}}))
    slow = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(1.8)'"
    server.enqueue([use("finish_phase", summary="s", report="r", test_command=slow)], "tool_use")
    result = run(cli, tmp_path, "--phases", "architect,test", "--config", str(config))
    assert result.exit_code == 0, result.stderr
    rows = assert_ledger_matches_server(tmp_path / "ledger.db", server)
    assert rows[0]["purpose"] == "turn"
    keepalives = [r for r in rows if r["purpose"] == "keepalive"]
    assert keepalives and all(r["phase"] == "test" and r["turn"] is None for r in keepalives)
    # A keep-alive re-reads the cached prefix and writes nothing new.
    assert all(r["cache_read_tokens"] >= static_tokens(server) for r in keepalives)
    assert all(body["max_tokens"] == 1 for body in server.requests[1:])


def mlx_build(cli, tmp_path: Path, model_dir: Path, max_turns: int):
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"mlx": {"max_tokens": 8}}))
    return cli(
        "build",
        "hello",
        TASK,
        "--backend",
        "mlx",
        "--model",
        str(model_dir),
        "--template",
        str(write_template(tmp_path)),
        "--config",
        str(config),
        "--db",
        str(tmp_path / "ledger.db"),
        "--phases",
        "scout",
        "--max-turns",
        str(max_turns),
        "--yes",
        "--json",
    )


@pytest.mark.mlx
def test_a_build_runs_on_the_local_backend_within_its_context_window(cli, tmp_path) -> None:
    """The same orchestration on mlx with a tiny random model: with 8 tokens per reply its
    calls are always cut short, so the phase ends at its turn limit, and every request is
    on the ledger at cost 0. With a context window that only the first turn fits, the phase
    ends at turn 2 instead, and no request ever runs past the window."""
    import shutil

    from tests.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny", max_position_embeddings=32_768)
    result = mlx_build(cli, tmp_path, model_dir, max_turns=2)
    assert result.exit_code == 5, result.stderr  # incomplete: scout never finished
    assert "ended incomplete: not every requested phase finished: scout (turn_limit)" in (
        result.stderr
    )
    summary = json.loads(result.stdout)
    assert summary["backend"] == "mlx" and summary["phases"][0]["status"] == "turn_limit"
    rows = requests_rows(tmp_path / "ledger.db")
    assert [(r["backend"], r["phase"], r["turn"], r["cost_usd"]) for r in rows] == [
        ("mlx", "scout", 1, 0.0),
        ("mlx", "scout", 2, 0.0),
    ]
    assert all(r["input_tokens"] + r["cache_read_tokens"] > 0 for r in rows)
    # The second turn reuses the KV cache of the static prefix and the first turn.
    assert rows[1]["cache_read_tokens"] > rows[1]["input_tokens"]
    # A local build's saving is prefill time, summed from the ledger, not dollars.
    saved_ms = sum(r["prefill_saved_ms"] or 0 for r in rows)
    assert saved_ms > 0 and summary["prefill_saved_s"] == round(saved_ms / 1000, 3)

    def prompt(row: dict[str, Any]) -> int:
        return row["input_tokens"] + row["cache_read_tokens"] + row["cache_write_5m_tokens"]

    first_prompt = prompt(rows[0])
    config_file = model_dir / "config.json"
    declared = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**declared, "max_position_embeddings": first_prompt + 12}))
    shutil.rmtree("hello")  # the same build again, from the same empty directory
    result = mlx_build(cli, tmp_path, model_dir, max_turns=3)
    assert result.exit_code == 5, result.stderr
    assert json.loads(result.stdout)["phases"][0]["status"] == "turn_limit"
    assert "context window at turn 2" in Path("hello/.foundry/scout-report.md").read_text()
    again = requests_rows(tmp_path / "ledger.db")[2:]
    assert [(r["turn"], r["status"], r["error_class"]) for r in again] == [
        (1, "ok", None),
        (2, "error", "context_too_long"),
    ]
    assert prompt(again[0]) == first_prompt and prompt(again[1]) == 0
    assert prompt(again[0]) + again[0]["output_tokens"] <= first_prompt + 12


def test_failed_attempts_are_on_the_ledger(cli, tmp_path, anthropic_env) -> None:
    server = anthropic_env
    server.enqueue_fault("overloaded")
    server.enqueue([use("finish_phase", summary="s", report="r")], "tool_use")
    result = run(cli, tmp_path, "--phases", "scout")
    assert result.exit_code == 0, result.stderr
    rows = requests_rows(tmp_path / "ledger.db")
    assert [(r["status"], r["error_class"], r["phase"], r["turn"]) for r in rows] == [
        ("error", "overloaded", "scout", 1),
        ("ok", None, "scout", 1),
    ]
    assert "overloaded" in result.stderr


@pytest.mark.parametrize(
    ("signal_name", "reason"),
    [
        ("SIGINT", "interrupted by the user (Ctrl-C)"),
        ("SIGTERM", "terminated by a signal (SIGTERM)"),
    ],
)
def test_a_signal_during_the_test_run(tmp_path, anthropic_server, signal_name, reason) -> None:
    """A real Ctrl-C (SIGINT), or a kill (SIGTERM), while foundry runs a long test command."""
    import os
    import signal

    server = anthropic_server
    slow = "sleep 20"
    server.enqueue([use("finish_phase", summary="s", report="r", test_command=slow)], "tool_use")
    env = {**os.environ, **server.env(), "FOUNDRY_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundry",
            "build",
            "hello",
            TASK,
            "--backend",
            "anthropic",
            "--template",
            str(write_template(tmp_path)),
            "--db",
            str(tmp_path / "ledger.db"),
            "--phases",
            "architect,test,deploy",
            "--dir",
            str(tmp_path / "hello"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("== phase test"):
            break
    else:
        proc.wait()
        raise AssertionError("".join(seen))
    proc.send_signal(getattr(signal, signal_name))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(seen) + err
    assert "ended interrupted" in err
    assert build_statuses(tmp_path / "ledger.db") == [("interrupted", reason)]
    assert "build hello: interrupted" in out


def test_a_local_phase_ends_by_finish_phase(cli, tmp_path) -> None:
    """A local model must call a tool every turn and finish_phase on its last: with one turn
    the random tiny model's only reply is a finish_phase call with a summary that is not
    blank (the grammar allows no other), so the phase completes."""
    from foundry.local.runtime import import_mlx
    from tests.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny", max_position_embeddings=16_384, sharp=False)
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"mlx": {"max_tokens": 2048, "temperature": 1.0}}))
    import_mlx().random.seed(0)  # random weights sample freely: one fixed draw
    result = cli(
        "build", "hello", TASK, "--backend", "mlx", "--model", str(model_dir),
        "--template", str(write_template(tmp_path)), "--config", str(config),
        "--db", str(tmp_path / "ledger.db"), "--phases", "scout", "--max-turns", "1",
        "--yes", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = requests_rows(tmp_path / "ledger.db")
    assert [(r["phase"], r["stop_reason"]) for r in rows] == [("scout", "tool_use")]
    scout = json.loads(result.stdout)["phases"][0]
    assert scout["status"] == "finished" and scout["summary"].strip()
    assert rows[0]["output_tokens"] < 2048  # the turn ended with its call
