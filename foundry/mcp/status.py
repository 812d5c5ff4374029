"""What a build is doing, read from the ledger the build writes as it goes: its row (status,
phases requested and done, error, summary), its live progress row (phase, turn, last tool,
tests), and its request rows summed (tokens and spend). For a build this server started, the
child process too: a build that failed before its ledger row existed is known only there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.mcp.models import BuildStatus, Files, Process, Progress, Spend, Tests

if TYPE_CHECKING:
    from foundry.ledger import Ledger
    from foundry.mcp.launch import Child, Launcher


def ledger_file(launcher: Launcher) -> Path:
    from foundry.config import ledger_path, load_config

    return ledger_path(load_config(launcher.settings.config), launcher.settings.db)


def _open(db: Path) -> Ledger | None:
    from foundry.ledger import Ledger

    # Opening closes builds whose process is gone (abandoned), as every foundry command does.
    return Ledger.open_existing(db)


def resolve(launcher: Launcher, asked: str) -> str:
    """The build id `asked` means, as `foundry resume` resolves it (an id, a unique prefix of
    8+ characters, or a name: its only unfinished build, else its latest; several
    unfinished ones are listed, never guessed between), then this server's own builds that
    have no ledger row yet."""
    from foundry.orchestrator.plan import pick_build

    if launcher.child(asked) is not None:  # an id is unique: nothing to resolve
        return asked
    db = ledger_file(launcher)
    ledger = _open(db)
    records = []
    if ledger is not None:
        with ledger:
            records = ledger.find_builds(asked)
    if records:
        return pick_build(records, asked, db).id
    own = launcher.match(asked)
    if own is not None:
        return own
    return pick_build([], asked, db).id  # raises the CLI's "no build named or with id"


def snapshot(launcher: Launcher, build_id: str) -> BuildStatus:
    from foundry.ledger.builds import RESUMABLE, phase_names

    db = ledger_file(launcher)
    child = launcher.child(build_id)
    ledger = _open(db)
    row = progress = totals = None
    if ledger is not None:
        with ledger:
            row = ledger.build(build_id)
            if row is not None:
                progress = ledger.progress(build_id)
                totals = ledger.build_totals(build_id)
    process = _process(child) if child is not None else None
    if row is None:
        return _not_on_ledger(build_id, child, process)
    summary = _json(row.get("summary_json"))
    status = str(row["status"])
    done = list(phase_names(row.get("phases_done")))
    live = Progress(**_progress_fields(progress)) if progress else None
    snapshot = BuildStatus(
        id=build_id,
        name=row["name"],
        status=status,
        # A build started here has ended when its process has too: its exit code is known.
        finished=status != "running" and (child is None or not child.running),
        resumable=status in RESUMABLE,
        task=row.get("task"),
        workdir=row.get("workdir"),
        backend=row.get("backend"),
        model=row.get("model"),
        phases_requested=list(phase_names(row.get("phases"))),
        phases_done=done,
        current_phase=live.phase if live and status == "running" else None,
        attempts=int(row.get("attempts") or 0),
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        error=row.get("error"),
        progress=live,
        spend=Spend(**(totals or {})),
        tests=_tests(summary, live),
        files=_files(summary),
        summary=summary,
        started_here=child is not None,
        process=process,
        line="",
    )
    snapshot.line = describe(snapshot)
    return snapshot


def _not_on_ledger(build_id: str, child: Child | None, process: Process | None) -> BuildStatus:
    """A build of ours whose child has not recorded it (yet): still starting, or ended
    before it could (a missing model, a refused directory): its log's last line says why."""
    if child is None:  # resolve() only returns ids that are on the ledger or ours
        from foundry.errors import UsageError

        raise UsageError(f"no build with id {build_id}", "see the costs tool's build view")
    running = child.running
    error = None
    if not running:
        errors = [line for line in child.tail() if line.startswith("error:")]
        error = (errors[-1] if errors else f"exited with code {child.exit_code}").removeprefix(
            "error: "
        )
    status = BuildStatus(
        id=build_id,
        name=child.name,
        status="starting" if running else "not_started",
        finished=not running,
        resumable=False,
        error=error,
        started_here=True,
        process=process,
        line="",
    )
    status.line = describe(status)
    return status


def describe(status: BuildStatus) -> str:
    """One line a client can show as a progress message."""
    head = f"{status.name or status.id[:12]}: {status.status}"
    live = status.progress
    if status.status == "running" and live is not None:
        if live.phase:
            head += f", {live.phase}" + (f" turn {live.turn}" if live.turn else "")
        if live.prefill_total:
            head += f", prefill {live.prefill_done or 0:,}/{live.prefill_total:,} tokens"
        if live.last_tool:
            detail = f" {live.last_tool_detail}" if live.last_tool_detail else ""
            head += f", last tool {live.last_tool}{detail[:80]}"
        if live.test_iteration:
            verdict = "passed" if live.tests_passed else "failed"
            head += f", test run {live.test_iteration} {verdict}"
    spend = status.spend
    parts = [head, f"{spend.requests} requests", f"${spend.cost_usd:.4f}"]
    if status.phases_requested:  # not known before the build's row is written
        parts.insert(1, f"{len(status.phases_done)}/{len(status.phases_requested)} phases")
    if status.error and status.finished:
        parts.append(status.error)
    return "; ".join(parts)


def _process(child: Child) -> Process:
    return Process(
        pid=child.proc.pid,
        running=child.running,
        exit_code=child.exit_code,
        log=str(child.log),
        log_tail=child.tail(),
    )


def _progress_fields(row: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in row.items() if k in Progress.model_fields}
    for flag in ("last_tool_error", "tests_passed"):  # stored as 0/1
        if fields.get(flag) is not None:
            fields[flag] = bool(fields[flag])
    return fields


def _tests(summary: dict[str, Any] | None, live: Progress | None) -> Tests:
    if summary is not None:
        return Tests(
            command=summary.get("test_command"),
            passed=summary.get("tests_passed"),
            iterations=summary.get("test_iterations"),
        )
    if live is not None and live.test_iteration:
        return Tests(passed=live.tests_passed, iterations=live.test_iteration)
    return Tests()


def _files(summary: dict[str, Any] | None) -> Files | None:
    if summary is None:
        return None
    return Files(
        created=list(summary.get("files_created") or []),
        modified=list(summary.get("files_modified") or []),
    )


def _json(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
