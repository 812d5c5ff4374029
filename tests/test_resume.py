"""Builds that lose no work: a failed, stopped or abandoned build resumes from its last
finished phase, as the same build on the ledger; a build whose process is gone is closed
as abandoned by the next foundry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import BackendError, FoundryError
from foundry.ledger import Ledger
from tests.orchestrator_helpers import finish, ledger_rows, run_build, tool
from tests.test_orchestrator import happy_steps


def failed_after_the_architect(tmp_path: Path):
    steps = happy_steps()[:4] + [BackendError("server said no", error_class="server_error")]
    return run_build(tmp_path, steps)


def test_a_failed_build_resumes_from_its_last_finished_phase(tmp_path: Path) -> None:
    first, _, db = failed_after_the_architect(tmp_path)
    assert first.status == "failed"
    assert ledger_rows(db, "builds")[0]["phases_done"] == "scout,architect"

    second, backend, _ = run_build(tmp_path, happy_steps()[4:], resume="hello")
    assert (second.status, second.build_id) == ("completed", first.build_id), second.error
    # Only the builder talked to the model; scout and architect were not run again.
    first_turn = backend.requests[0].messages[0].content[0]["text"]
    assert "## Current phase: builder" in first_turn
    assert second.phases["scout"].status == "done_earlier"
    assert second.summary["phases_completed"] == ["scout", "architect", "builder", "test", "deploy"]
    # One build on the ledger, two attempts, every request of both counted in the summary.
    builds = ledger_rows(db, "builds")
    assert len(builds) == 1 and builds[0]["attempts"] == 2 and builds[0]["status"] == "completed"
    attempts = [(a["attempt"], a["status"]) for a in ledger_rows(db, "build_attempts")]
    assert attempts == [(1, "failed"), (2, "completed")]
    assert second.summary["requests"] == len(ledger_rows(db, "requests")) == 4 + 2


def test_max_cost_on_resume_counts_what_earlier_attempts_spent(tmp_path: Path) -> None:
    first, _, db = failed_after_the_architect(tmp_path)
    spent = sum(r["cost_usd"] for r in ledger_rows(db, "requests"))
    # Room for the next request alone, but not on top of what the first attempt spent.
    second, backend, _ = run_build(
        tmp_path, happy_steps()[4:], resume="hello", max_cost=spent + 0.01
    )
    assert second.status == "budget_exceeded" and backend.requests == []
    assert f"${spent:.4f} spent" in (second.error or "")


def test_a_build_whose_process_is_gone_is_closed_as_abandoned_and_resumes(
    tmp_path: Path, cli
) -> None:
    db = tmp_path / "ledger.db"
    # A build started by a process that then died (as after kill -9): status running.
    code = (
        "import sys\nfrom foundry.ledger import Ledger\n"
        "with Ledger.open(sys.argv[1]) as ledger:\n"
        "    ledger.start_build(name='hello', task='Create hello.py', backend='anthropic',"
        " model='claude-sonnet-4-6', workdir=sys.argv[2], template_sha256='t',"
        " static_sha256='s', phases=('scout', 'architect'))\n"
    )
    workdir = tmp_path / "hello"
    workdir.mkdir()
    subprocess.run([sys.executable, "-c", code, str(db), str(workdir)], check=True)
    assert ledger_rows(db, "builds")[0]["status"] == "running"  # nothing has looked yet

    result = cli("costs", "--by", "build", "--json", "--db", str(db))  # the next foundry run
    assert result.exit_code == 0, result.stderr
    build = ledger_rows(db, "builds")[0]
    assert build["status"] == "abandoned" and build["finished_at"] is not None
    assert "ended without finishing the build" in build["error"]
    assert [a["status"] for a in ledger_rows(db, "build_attempts")] == ["abandoned"]

    steps = happy_steps()[:4]
    resumed, _, _ = run_build(tmp_path, steps, phases=("scout", "architect"), resume="hello")
    assert resumed.status == "completed" and resumed.build_id == build["id"]


def test_a_live_build_is_not_abandoned(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with Ledger.open(db) as ledger:
        ledger.start_build(
            name="live", task="t", backend="anthropic", model="claude-sonnet-4-6",
            workdir=str(tmp_path), template_sha256="t", static_sha256="s",
        )  # fmt: skip
    with Ledger.open(db) as ledger:  # this very process is alive
        assert ledger.close_abandoned() == 0
    assert ledger_rows(db, "builds")[0]["status"] == "running"


def test_resume_refuses_what_cannot_be_resumed(cli, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    result = cli("resume", "nothing", "--db", str(db))
    assert result.exit_code == 2 and "no ledger at" in result.stderr
    first, _, db = run_build(tmp_path, happy_steps())
    assert first.status == "completed"
    result = cli("resume", "hello", "--db", str(db))
    assert result.exit_code == 2 and "is completed; nothing to resume" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("resume", "no-such-build", "--db", str(db))
    assert result.exit_code == 2 and "no build named or with id 'no-such-build'" in result.stderr


def test_the_error_that_ends_a_build_says_how_to_resume(tmp_path: Path, capsys) -> None:
    from foundry.commands.build import _report

    first, _, db = failed_after_the_architect(tmp_path)
    assert json.loads(ledger_rows(db, "builds")[0]["summary_json"])["status"] == "failed"
    with pytest.raises(FoundryError) as caught:  # the CLI prints it as one red line
        _report(first, json_output=True, local=False)
    assert f"continue it with `foundry resume {first.build_id}`" in str(caught.value)


def test_a_full_disk_is_named_and_the_unrecorded_usage_goes_to_the_summary(tmp_path: Path):
    from foundry.config import FoundryConfig
    from foundry.orchestrator.build import BuildPlan, BuildRun
    from foundry.orchestrator.events import Events
    from foundry.pricing import PricingTable
    from tests.orchestrator_helpers import FakePrompt, ScriptedBackend, text, tool

    class Warnings(Events):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def warning(self, message: str) -> None:
            self.seen.append(message)

    workdir = tmp_path / "hello"
    workdir.mkdir()
    ledger = Ledger.open(tmp_path / "ledger.db", PricingTable())

    def fill_the_disk(request):
        # From now on the ledger file cannot grow: SQLite answers SQLITE_FULL.
        pages = ledger.conn.execute("PRAGMA page_count").fetchone()[0]
        ledger.conn.execute(f"PRAGMA max_page_count = {pages}")
        return [text("looking"), tool("list_files")], "tool_use"

    # The model looks around until a request can no longer be recorded (the free pages
    # left in the file take a few dozen rows).
    looks = [([tool("list_files")], "tool_use")] * 400
    backend = ScriptedBackend([([tool("list_files")], "tool_use"), fill_the_disk, *looks])
    plan = BuildPlan(
        name="hello", task="Create hello.py", workdir=workdir, mode="new", phases=("scout",),
        max_test_iterations=1, max_turns=400, max_cost=None, ttl="5m", max_tokens=1000,
    )  # fmt: skip
    events = Warnings()
    with ledger:
        result = BuildRun(
            plan, config=FoundryConfig(), backend=backend, ledger=ledger,
            pricing=PricingTable(), prompt=FakePrompt(), events=events,  # type: ignore[arg-type]
        ).run()  # fmt: skip
    assert result.status == "failed"
    assert "the disk holding the ledger" in (result.error or "") and "is full" in result.error
    assert "another process holds it locked" not in result.error
    # The second request was paid for but is not on the ledger: the summary keeps it.
    unrecorded = result.summary["unrecorded"]
    assert unrecorded["requests"] == 1 and unrecorded["tokens"]["cache_read"] == 2000
    assert result.summary["requests"] == len(backend.requests) - 1  # what the ledger holds
    assert any("could not be recorded (the ledger's disk is full)" in w for w in events.seen)
    # The row's small update still fitted: the build is closed, and resumable.
    assert ledger_rows(tmp_path / "ledger.db", "builds")[0]["status"] == "failed"


def test_a_resume_keeps_what_the_first_attempt_ran_with(tmp_path: Path) -> None:
    from foundry.orchestrator.plan import ResumeOptions, prepare_resume

    first, _, db = run_build(tmp_path, happy_steps()[:4] + [BackendError("no")], max_cost=3.0)
    assert first.status == "failed"
    prepared = prepare_resume(ResumeOptions(build="hello", db=db))
    try:
        # The directory now has files, but the build was a new project and stays one; its
        # budget holds without being given again.
        assert prepared.plan.mode == "new" and prepared.plan.max_cost == 3.0
        assert "- Mode: new project" in prepared.prompt.dynamic
        assert prepared.resume is not None and prepared.resume.id == first.build_id
    finally:
        prepared.backend.close()


def test_a_git_repository_the_model_made_is_refused_after_a_resume_too(tmp_path: Path) -> None:
    plant = [([tool("run_command", command="git init -q . 2>/dev/null || mkdir .git")], "tool_use")]
    first, _, _ = run_build(tmp_path, [*plant, BackendError("no")], phases=("builder", "deploy"))
    assert first.status == "failed" and (tmp_path / "hello" / ".git").exists()
    steps = [([finish("built", "# Build log\n")], "tool_use")]
    second, _, _ = run_build(tmp_path, steps, phases=("builder", "deploy"), resume="hello")
    assert second.status == "failed" and "a .git directory appeared" in (second.error or "")


def test_a_live_pid_that_started_at_another_time_is_another_process() -> None:
    import os
    import socket

    from foundry.ledger.builds import process_is_gone, process_start_ticks

    me, host = os.getpid(), socket.gethostname()
    started = process_start_ticks(me)
    assert started is not None
    assert not process_is_gone(me, host, started)
    assert process_is_gone(me, host, started + 1)  # pid reused by a later process
    assert not process_is_gone(me, "another-host", started + 1)  # cannot tell: left alone


def test_a_name_with_one_unfinished_build_among_finished_ones_resumes_that_one(
    tmp_path: Path,
) -> None:
    from foundry.orchestrator.plan import ResumeOptions, prepare_resume

    scouted = [([finish("scouted", "# Scout\n")], "tool_use")]
    failed, _, db = run_build(tmp_path, [BackendError("no")], phases=("scout",))
    done, _, _ = run_build(tmp_path, scouted, phases=("scout",))
    assert (failed.status, done.status) == ("failed", "completed")
    prepared = prepare_resume(ResumeOptions(build="hello", db=db))
    try:
        assert prepared.resume is not None and prepared.resume.id == failed.build_id
    finally:
        prepared.backend.close()
    # An id prefix of 8+ characters names a build too (the listing shows 12).
    prepared = prepare_resume(ResumeOptions(build=failed.build_id[:12], db=db))
    try:
        assert prepared.resume is not None and prepared.resume.id == failed.build_id
    finally:
        prepared.backend.close()
