"""`.foundry/summary.json`: a pydantic model whose JSON schema is the documented schema.
Every summary is validated against it before it is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from foundry.fsutil import NotAFile, write_beneath
from foundry.usage import TOKEN_FIELDS, Usage

if TYPE_CHECKING:
    from foundry.orchestrator.metered import PhaseStats

SCHEMA_VERSION: Literal[1] = 1
BuildStatus = Literal[
    "completed", "incomplete", "tests_failed", "failed", "interrupted", "budget_exceeded"
]
PhaseName = Literal["scout", "architect", "builder", "test", "deploy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCounts(_Strict):
    input: int = Field(ge=0, description="Uncached input tokens.")
    output: int = Field(ge=0)
    cache_read: int = Field(ge=0)
    cache_write_5m: int = Field(ge=0)
    cache_write_1h: int = Field(ge=0)


class PhaseSummary(_Strict):
    name: PhaseName
    status: str = Field(
        description="finished, turn_limit, passed, failed, committed, nothing_to_commit, "
        "interrupted, budget_exceeded, error, not_run, or done_earlier (finished by an earlier "
        "attempt at a resumed build)"
    )
    turns: int = Field(ge=0)
    requests: int = Field(ge=0)
    tokens: TokenCounts
    cost_usd: float | None = Field(description="null when the model has no price")
    summary: str | None = Field(default=None, description="The model's one-line summary.")


class TestRunSummary(_Strict):
    iteration: int = Field(ge=1)
    exit_code: int | None = Field(description="null when killed at the timeout")
    passed: bool
    timed_out: bool
    duration_s: float = Field(ge=0)
    results_file: str


class UnrecordedUsage(_Strict):
    requests: int = Field(ge=1)
    tokens: TokenCounts
    cost_usd: float | None


class BuildSummary(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    build_id: str
    name: str
    task: str
    mode: Literal["new", "existing"]
    workdir: str
    backend: str
    model: str
    status: BuildStatus
    error: str | None = None
    started_at: str = Field(description="UTC ISO-8601 with Z")
    finished_at: str = Field(description="UTC ISO-8601 with Z")
    duration_s: float = Field(ge=0)
    phases_requested: list[PhaseName]
    phases_completed: list[PhaseName]
    phases: list[PhaseSummary]
    files_created: list[str]
    files_modified: list[str]
    test_command: str | None
    tests_passed: bool | None = Field(description="null when the tests did not run")
    test_iterations: int = Field(ge=0, description="How many times the tests ran.")
    test_runs: list[TestRunSummary]
    commit: str | None = Field(description="The deploy commit's sha, if one was made.")
    requests: int = Field(ge=0, description="Model requests on the ledger, failed ones too.")
    tokens: TokenCounts
    cache_hit_rate: float | None = Field(ge=0, le=1, description="cache_read / total input")
    cost_usd: float | None
    uncached_cost_usd: float | None = Field(description="The same tokens with no caching.")
    saved_usd: float | None
    unrecorded: UnrecordedUsage | None = Field(
        default=None,
        description="Requests the ledger could not record (its disk was full): paid for, "
        "but in none of the figures above; null when every request was recorded.",
    )
    prefill_saved_s: float | None = Field(
        default=None,
        description="Local models: estimated prefill seconds the reused cache saved; "
        "null for API backends, whose saving is in dollars.",
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file, skipping .git, .foundry and caches: what a build created
    and modified is the difference of two snapshots."""
    from foundry.orchestrator.phases import ARTIFACT_DIR
    from foundry.orchestrator.workspace import SKIPPED_DIRS

    files: dict[str, tuple[int, int]] = {}
    for current, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and d != ARTIFACT_DIR]
        for name in names:
            path = Path(current, name)
            try:
                stat = path.lstat()
            except OSError:
                continue
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def phase_fields(name: str, stats: PhaseStats, summary: str | None) -> dict[str, Any]:
    """One phase's entry, from its PhaseStats."""
    return {
        "name": name,
        "status": stats.status,
        "turns": stats.turns,
        "requests": stats.requests,
        "tokens": stats.usage.token_counts(),
        "cost_usd": stats.cost_usd,
        "summary": summary,
    }


def unrecorded_fields(stats: PhaseStats) -> dict[str, Any] | None:
    if not stats.requests:
        return None
    return {
        "requests": stats.requests,
        "tokens": stats.usage.token_counts(),
        "cost_usd": stats.cost_usd,
    }


def ledger_fields(totals: dict[str, Any]) -> dict[str, Any]:
    """Requests, tokens, hit rate and costs from Ledger.build_totals: the ledger is the
    record, so the summary repeats its figures. Any unpriced request makes costs null."""
    usage = Usage(**{name: totals[name] for name in TOKEN_FIELDS})
    # A server that did not say what it cached leaves the hit rate over the rest (null
    # when no request said), never a miss counted as 0.
    usage.cache_read_unknown_tokens = totals.get("cache_read_unknown_tokens", 0)
    hit_rate = usage.hit_rate
    priced = not totals["unpriced_requests"]
    cost = totals["cost_usd"] if priced else None
    uncached = totals["uncached_cost_usd"] if priced else None
    return {
        "requests": totals["requests"],
        "tokens": usage.token_counts(),
        "cache_hit_rate": None if hit_rate is None else round(hit_rate, 4),
        "cost_usd": cost,
        "uncached_cost_usd": uncached,
        "saved_usd": None if cost is None or uncached is None else uncached - cost,
        "prefill_saved_s": (
            round(totals["prefill_saved_ms"] / 1000, 3) if totals["prefill_saved_ms"] else None
        ),
    }


def summary_schema() -> dict:
    return BuildSummary.model_json_schema()


def write_summary(workdir: Path, relative: str, data: dict) -> BuildSummary:
    """Validate `data` against the schema, then write it atomically at workdir/relative,
    through no link (a model's command may have planted one there)."""
    summary = BuildSummary.model_validate(data)
    text = json.dumps(summary.model_dump(mode="json"), indent=2) + "\n"
    try:
        write_beneath(workdir, relative, text)
    except NotAFile as exc:
        raise OSError(f"{exc} in {workdir}") from None
    return summary
