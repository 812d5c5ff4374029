"""The orchestrator with a scripted in-process backend: phases, the agent loop, the test
loop, deploy, budget, interruption and the ledger rows each leaves behind."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.backends.base import FailedAttempt
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from foundry.orchestrator.build import EXIT_CODES
from foundry.orchestrator.display import PlainDisplay
from foundry.orchestrator.estimate import estimate_build
from foundry.orchestrator.loop import LAST_TURN_NOTE, NO_TOOL_NUDGE
from foundry.orchestrator.phases import parse_phases, saved_test_command
from foundry.orchestrator.summary import BuildSummary
from foundry.orchestrator.tools import TOOL_SPECS, tool_specs
from foundry.pricing import PricingTable
from foundry.usage import Usage
from tests.orchestrator_helpers import finish, ledger_rows, run_build, text, tool

PY = shlex.quote(sys.executable)
TEST_CMD = f"{PY} check.py"
CHECK = "import hello\nassert hello.greet() == 'hello', hello.greet()\nprint('ok')\n"


def happy_steps(hello_body: str = "def greet():\n    return 'hello'\n") -> list:
    return [
        ([text("Looking around."), tool("list_files")], "tool_use"),
        ([finish("empty dir", "# Scout\nNothing here yet.\n")], "tool_use"),
        ([finish("no test command", "# Arch\n")], "tool_use"),  # refused: no test_command
        ([finish("one module", "# Arch\nhello.py\n", test_command=TEST_CMD)], "tool_use"),
        (
            [
                tool("write_file", path="hello.py", content=hello_body),
                tool("write_file", path="check.py", content=CHECK),
            ],
            "tool_use",
        ),
        ([finish("wrote hello.py", "# Build log\nhello.py, check.py\n")], "tool_use"),
    ]


def test_a_full_build_runs_every_phase_and_records_everything(tmp_path: Path) -> None:
    result, backend, db = run_build(tmp_path, happy_steps())
    workdir = tmp_path / "hello"
    assert result.status == "completed" and result.exit_code == 0, result.error
    foundry_dir = workdir / ".foundry"
    assert "Nothing here yet" in (foundry_dir / "scout-report.md").read_text()
    assert saved_test_command(workdir) == TEST_CMD
    assert "hello.py, check.py" in (foundry_dir / "build-log.md").read_text()
    assert "# Test run 1: passed" in (foundry_dir / "test-results-1.md").read_text()

    summary = BuildSummary.model_validate_json((foundry_dir / "summary.json").read_text())
    assert summary.status == "completed"
    assert summary.phases_completed == ["scout", "architect", "builder", "test", "deploy"]
    assert summary.files_created == [".gitignore", "check.py", "hello.py"]
    assert summary.tests_passed is True and summary.test_iterations == 1
    assert summary.requests == len(backend.requests) == 6
    assert summary.tokens.cache_read == 5 * 2000 and summary.tokens.cache_write_5m == 2500
    assert summary.cost_usd is not None and summary.saved_usd is not None
    assert summary.saved_usd > 0

    # Every request: the same static system text and the same tool bytes.
    assert {r.system for r in backend.requests} == {backend.requests[0].system}
    tool_bytes = {json.dumps([t.to_dict() for t in r.tools]) for r in backend.requests}
    assert tool_bytes == {json.dumps([t.to_dict() for t in TOOL_SPECS])}
    # Each phase starts fresh: first user turn = dynamic part + phase + earlier artifacts.
    architect_first = backend.requests[2].messages
    assert len(architect_first) == 1
    first_text = architect_first[0].content[0]["text"]
    assert first_text.startswith("Task: build hello.")
    assert "## Current phase: architect" in first_text and "Nothing here yet" in first_text
    # The refused finish_phase came back as an error the model saw.
    refusal = backend.requests[3].messages[-1].content[0]
    assert refusal["is_error"] and "test_command" in refusal["content"]

    builds = ledger_rows(db, "builds")
    assert [b["status"] for b in builds] == ["completed"]
    assert json.loads(builds[0]["summary_json"])["build_id"] == builds[0]["id"]
    rows = ledger_rows(db, "requests")
    assert [(r["phase"], r["turn"]) for r in rows] == [
        ("scout", 1),
        ("scout", 2),
        ("architect", 1),
        ("architect", 2),
        ("builder", 1),
        ("builder", 2),
    ]
    assert {r["status"] for r in rows} == {"ok"} and {r["purpose"] for r in rows} == {"turn"}
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(summary.cost_usd)

    log = subprocess.run(
        ["git", "log", "--format=%s%n%an"], cwd=workdir, capture_output=True, text=True, check=True
    ).stdout
    assert log.startswith("foundry build hello: Create hello.py")
    assert (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True
        ).stdout.strip()
        == summary.commit
    )
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=workdir, capture_output=True, text=True
    ).stdout.split()
    assert "hello.py" in tracked and ".foundry/scout-report.md" in tracked
    assert ".foundry/summary.json" not in tracked


def test_failing_tests_go_back_to_the_model_until_they_pass(tmp_path: Path) -> None:
    steps = happy_steps("def greet():\n    return 'HELLO'\n") + [
        ([tool("read_file", path="hello.py")], "tool_use"),
        ([tool("edit_file", path="hello.py", old_text="'HELLO'", new_text="'hello'")], "tool_use"),
        ([finish("fixed the case", "fixed")], "tool_use"),
    ]
    result, backend, _ = run_build(tmp_path, steps)
    assert result.status == "completed", result.error
    fix_request = backend.requests[6].messages[0].content[0]["text"]
    assert "## Test run 1 failed" in fix_request and "AssertionError: HELLO" in fix_request
    runs = result.summary["test_runs"]
    assert [r["passed"] for r in runs] == [False, True]
    foundry_dir = tmp_path / "hello" / ".foundry"
    assert "# Test run 1: failed" in (foundry_dir / "test-results-1.md").read_text()
    assert "# Test run 2: passed" in (foundry_dir / "test-results-2.md").read_text()


def test_the_models_claim_of_success_is_never_trusted(tmp_path: Path) -> None:
    claims = [([finish("all tests pass now, trust me", "fixed")], "tool_use")] * 2
    result, backend, db = run_build(
        tmp_path, happy_steps("def greet():\n    return 'nope'\n") + claims
    )
    assert result.status == "tests_failed" and result.exit_code == EXIT_CODES["tests_failed"]
    assert [r["passed"] for r in result.summary["test_runs"]] == [False, False, False]
    # The second fix round continues the conversation: finish_phase is answered with the
    # re-run's verdict.
    answer = backend.requests[-1].messages[-1].content[0]
    assert "re-ran the tests" in answer["content"] and "Test run 2 failed" in answer["content"]
    assert result.summary["commit"] is None and "deploy" not in result.summary["phases_completed"]
    assert ledger_rows(db, "builds")[0]["status"] == "tests_failed"
    assert not (tmp_path / "hello" / ".git").exists()


def test_a_phase_ends_at_its_turn_limit_and_the_build_ends_incomplete(tmp_path: Path) -> None:
    steps = [
        ([text("hmm")], "end_turn"),
        ([tool("list_files")], "tool_use"),
        ([tool("list_files")], "tool_use"),
    ]
    result, backend, db = run_build(tmp_path, steps, phases=("scout",), max_turns=3)
    # A requested phase that did not finish is not "completed": its own status and exit code,
    # the same in the result, the summary and the ledger.
    assert (result.status, result.exit_code) == ("incomplete", 5)
    assert result.error == "not every requested phase finished: scout (turn_limit)"
    assert result.summary["status"] == "incomplete" and result.summary["phases_completed"] == []
    assert ledger_rows(db, "builds")[0]["status"] == "incomplete"
    assert result.phases["scout"].status == "turn_limit" and result.phases["scout"].turns == 3
    assert backend.requests[1].messages[-1].content[-1]["text"] == NO_TOOL_NUDGE
    assert backend.requests[2].messages[-1].content[-1]["text"] == LAST_TURN_NOTE
    report = (tmp_path / "hello" / ".foundry" / "scout-report.md").read_text()
    assert "turn limit" in report or "limit of 3 turns" in report


def test_tool_errors_go_back_to_the_model(tmp_path: Path) -> None:
    steps = [
        (
            [
                tool("read_file", path="../../etc/passwd"),
                tool("write_file", path="a.txt"),
                tool("explode"),
            ],
            "tool_use",
        ),
        ([finish()], "tool_use"),
    ]
    result, backend, _ = run_build(tmp_path, steps, phases=("scout",))
    assert result.status == "completed"
    results = backend.requests[1].messages[-1].content
    assert [r["is_error"] for r in results] == [True, True, True]
    assert "'..'" in results[0]["content"] and "content" in results[1]["content"]


def test_text_that_mentions_a_tool_call_is_never_run(tmp_path: Path) -> None:
    # Backends return tool_use blocks; a Claude answer quoting the fallback format is prose.
    quoted = (
        'The format is <tool_call>{"name": "write_file", "arguments": '
        '{"path": "pwned.txt", "content": "x"}}</tool_call>.'
    )
    steps = [([text(quoted)], "end_turn"), ([finish()], "tool_use")]
    result, backend, _ = run_build(tmp_path, steps, phases=("scout",), max_turns=2)
    assert not (tmp_path / "hello" / "pwned.txt").exists()
    second_prompt = backend.requests[1].messages[-1].content
    assert any(b.get("text") == NO_TOOL_NUDGE for b in second_prompt)


def test_max_cost_stops_before_the_request_that_would_exceed_it(tmp_path: Path) -> None:
    # Sonnet 4.6: 1000 output tokens cost $0.015, so a $0.01 budget allows no request at all.
    result, backend, db = run_build(tmp_path, happy_steps(), max_cost=0.01)
    assert result.status == "budget_exceeded" and result.exit_code == 4
    assert backend.requests == [] and ledger_rows(db, "requests") == []
    assert "--max-cost" in (result.error or "")
    # Enough for some requests, not all: it stops mid-build with what it spent recorded.
    result, backend, db = run_build(tmp_path / "b", happy_steps(), max_cost=0.022)
    assert result.status == "budget_exceeded"
    spent = sum(r["cost_usd"] for r in ledger_rows(db, "requests"))
    assert 0 < len(backend.requests) < 6 and spent <= 0.022


def test_the_budget_is_checked_before_every_retry_too(tmp_path: Path) -> None:
    # Streams cut after 8,000 output tokens ($0.12 each on Sonnet 4.6), retried: the check
    # before the first attempt passes ($0 spent); the one before the first retry sees $0.12
    # recorded plus a full reply's worth and stops, so spend never passes --max-cost.
    cut = FailedAttempt("stream_interrupted", "cut", Usage(50, 8000), None, None, True)
    steps = [cut, cut, cut, cut, cut, ([tool("list_files")], "tool_use")]
    result, backend, db = run_build(tmp_path, steps, max_cost=0.20, max_tokens=8192)
    assert (result.status, result.exit_code) == ("budget_exceeded", 4)
    assert "stopped before a retry" in (result.error or "")
    rows = ledger_rows(db, "requests")
    assert [(r["status"], r["error_class"]) for r in rows] == [("error", "stream_interrupted")]
    assert sum(r["cost_usd"] for r in rows) <= 0.20
    assert len(backend.steps) == 5  # no second attempt was made


def test_ctrl_c_marks_the_build_interrupted_and_keeps_what_was_recorded(tmp_path: Path) -> None:
    steps = [([tool("list_files")], "tool_use"), KeyboardInterrupt()]
    result, _, db = run_build(tmp_path, steps)
    assert result.status == "interrupted" and result.exit_code == 130
    assert ledger_rows(db, "builds")[0]["status"] == "interrupted"
    assert len(ledger_rows(db, "requests")) == 1
    summary = json.loads((tmp_path / "hello" / ".foundry" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["phases"][0]["status"] == "interrupted"


def test_failed_attempts_are_recorded_and_a_backend_error_fails_the_build(tmp_path: Path) -> None:
    attempt = FailedAttempt("overloaded", "529", Usage(), "req_x", "2026-11-22T10:00:00.000Z", True)
    steps = [
        attempt,
        ([tool("list_files")], "tool_use"),
        BackendError("server said no", error_class="server_error"),
    ]
    result, _, db = run_build(tmp_path, steps)
    assert result.status == "failed" and "server said no" in (result.error or "")
    rows = ledger_rows(db, "requests")
    assert [(r["status"], r["error_class"]) for r in rows] == [
        ("error", "overloaded"),
        ("ok", None),
    ]


def test_keepalive_during_a_long_test_run(tmp_path: Path) -> None:
    config = FoundryConfig.model_validate(
        {"caching": {"keepalive": True, "keepalive_after_s": 0.3}}
    )
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "slow.py").write_text("import time\ntime.sleep(1.5)\n")
    steps = [
        ([finish("a", "b", test_command=f"{PY} slow.py")], "tool_use"),
        ([text(".")], "end_turn"),
    ]
    result, backend, db = run_build(tmp_path, steps, phases=("architect", "test"), config=config)
    assert result.status == "completed"
    rows = ledger_rows(db, "requests")
    purposes = [r["purpose"] for r in rows]
    assert purposes[0] == "turn" and "keepalive" in purposes
    keepalive = backend.requests[1]
    assert keepalive.purpose == "keepalive" and keepalive.max_tokens == 1
    assert keepalive.system == backend.requests[0].system


def test_plain_display_prints_progress(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(file=(buf := __import__("io").StringIO()), width=200)
    result, _, _ = run_build(tmp_path, happy_steps(), events=PlainDisplay(console, 5.0))
    out = buf.getvalue()
    assert result.status == "completed"
    assert "== phase scout" in out and "[builder]   write_file hello.py" in out
    assert "budget left" in out and "[test] run 1: passed" in out


def test_parse_phases() -> None:
    assert parse_phases(None) == ("scout", "architect", "builder", "test", "deploy")
    assert parse_phases("builder, test") == ("builder", "test")
    for bad, message in [
        ("build", "unknown phase"),
        ("test,builder", "out of order"),
        ("test,test", "twice"),
        (",", "empty"),
    ]:
        with pytest.raises(Exception, match=message):
            parse_phases(bad)


def test_estimate_projects_cached_costs_below_uncached() -> None:
    projection = estimate_build(
        static="word " * 3000,
        dynamic="task",
        tools=tool_specs(),
        phases=("scout", "architect", "builder", "test", "deploy"),
        backend="anthropic",
        local=False,
        model="claude-sonnet-4-6",
        ttl="5m",
        pricing=PricingTable(),
        max_turns=30,
        max_test_iterations=3,
    )
    total = projection["total"]
    assert total["requests"] == 4 + 3 + 10 + 4
    assert projection["static_prefix_cached"]
    assert 0 < total["cost_usd"] < total["uncached_cost_usd"]
    assert projection["ceiling"]["requests"] == 30 * 3 + 2 * 30
    local = estimate_build(
        static="x",
        dynamic="y",
        tools=tool_specs(),
        phases=("builder",),
        backend="mlx",
        local=True,
        model="smollm2-135m",
        ttl="5m",
        pricing=PricingTable(),
        max_turns=5,
        max_test_iterations=3,
    )
    assert local["total"]["cost_usd"] == 0.0


def test_the_documented_summary_schema_is_the_models_schema() -> None:
    from foundry.orchestrator.summary import summary_schema

    doc = (Path(__file__).resolve().parent.parent / "docs" / "build.md").read_text()
    block = doc.split("<!-- summary-schema:begin -->")[1].split("<!-- summary-schema:end -->")[0]
    documented = json.loads(block.strip().removeprefix("```json").removesuffix("```"))
    assert documented == summary_schema()


def test_an_unpriced_model_gets_null_costs_and_one_warning(tmp_path: Path, capsys) -> None:
    from rich.console import Console

    console = Console(file=(buf := __import__("io").StringIO()), width=200)
    steps = [([tool("list_files")], "tool_use"), ([finish()], "tool_use")]
    result, _, db = run_build(
        tmp_path,
        steps,
        phases=("scout",),
        model="claude-unpriced-test-model",
        max_cost=1.0,
        events=PlainDisplay(console, 1.0),
    )
    assert result.status == "completed"
    assert result.summary["cost_usd"] is None and result.summary["saved_usd"] is None
    assert [r["cost_usd"] for r in ledger_rows(db, "requests")] == [None, None]
    ledger_warning = capsys.readouterr().err
    assert ledger_warning.count("claude-unpriced-test-model") == 1
    assert buf.getvalue().count("--max-cost cannot be enforced") == 1


def test_the_result_lines_show_dollars_for_claude_and_prefill_time_for_a_local_model() -> None:
    from foundry.orchestrator.display import summary_lines

    base = {
        "name": "hello",
        "status": "completed",
        "workdir": "/w",
        "phases_completed": ["scout"],
        "files_created": [],
        "test_command": None,
        "commit": None,
        "requests": 2,
        "tokens": {
            "input": 10,
            "output": 5,
            "cache_read": 90,
            "cache_write_5m": 0,
            "cache_write_1h": 0,
        },
        "cache_hit_rate": 0.9,
        "cost_usd": 0.25,
        "saved_usd": 0.75,
        "prefill_saved_s": None,
    }
    claude = "\n".join(summary_lines({**base, "backend": "anthropic"}, local=False))
    assert "saved $0.7500 by caching" in claude and "files created  0\n" in claude
    local = "\n".join(
        summary_lines(
            {**base, "backend": "mlx", "cost_usd": 0.0, "prefill_saved_s": 87.4}, local=True
        )
    )
    assert "$0 (local model); cache reuse saved ~87.4 s of prefill" in local
    assert "by caching" not in local


def test_every_final_build_status_has_an_exit_code_and_a_ledger_value():
    # Three modules name the statuses (summary schema, exit codes, ledger check); a status
    # added to one and not the others would crash a build at its very end.
    from typing import get_args

    from foundry.ledger import BUILD_STATUSES
    from foundry.orchestrator.summary import BuildStatus

    final = set(get_args(BuildStatus))
    assert final == set(EXIT_CODES)
    # "abandoned" is set by another foundry run, when a build's process is gone.
    assert final | {"running", "abandoned"} == BUILD_STATUSES


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_a_planted_artifact_symlink_is_refused_never_followed(tmp_path: Path, sandbox) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    steps = [
        ([tool("run_command", command="rm -rf .foundry && ln -s ../outside .foundry")], "tool_use"),
        ([finish("scouted", "# Scout report\n")], "tool_use"),
    ]
    config = FoundryConfig.model_validate({"build": {"sandbox": sandbox}})
    result, _, db = run_build(tmp_path, steps, phases=("scout",), config=config)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "mine"
    if result.status == "completed":
        # foundry made .foundry/ before the model's first turn; the sandbox mounts it
        # read-only, so the command could neither remove nor replace it.
        assert sandbox == "auto" and not (tmp_path / "hello/.foundry").is_symlink()
        return
    assert result.status == "failed"
    assert ".foundry is a symlink" in (result.error or "")
    assert "summary.json not written" in (result.error or "")
    assert ledger_rows(db, "builds")[0]["status"] == "failed"


def test_deploy_refuses_a_git_repository_the_model_set_up(tmp_path: Path) -> None:
    # Its hooks would run as foundry, outside the sandbox, when deploy commits.
    plant = "git init -q . 2>/dev/null || mkdir .git"
    steps = [
        ([tool("run_command", command=plant)], "tool_use"),
        ([finish("scouted", "# Scout\n")], "tool_use"),
    ]
    result, _, _ = run_build(tmp_path, steps, phases=("scout", "deploy"))
    assert result.status == "failed"
    assert "a .git directory appeared" in (result.error or "")
    assert result.summary["commit"] is None
