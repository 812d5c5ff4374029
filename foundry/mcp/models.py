"""The typed results of foundry's MCP tools. Their JSON schemas are what a client sees as
each tool's outputSchema, so a field is named and described once, here. Field values come
from the ledger and the CLI's own reports unchanged; nothing is recomputed for MCP."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Confirmation(BaseModel):
    """What `foundry build` asks the user to confirm on a terminal, as data: the MCP client
    shows it (or acts on it) instead of a prompt."""

    action: str = Field(description="build, or resume (of the build named by resume_of)")
    directory: str
    mode: str = Field(description="new or existing project")
    backend: str
    model: str
    endpoint: str | None = Field(
        description="where the requests (and the API key) go, when not the API's own host"
    )
    phases: list[str]
    budget_usd: float | None = Field(description="--max-cost; null: no budget")
    projected_cost_usd: float | None
    ceiling_cost_usd: float | None
    deploy_target: str | None = Field(description="where deploy's commit goes, if it runs")
    resume_of: dict[str, Any] | None = Field(
        description="the build a resume continues: id, status, phases done"
    )
    notes: list[str] = Field(description="the CLI's notes about the directory")
    text: str = Field(description="the confirmation as the CLI words it, in one line")


class Process(BaseModel):
    """The child process this server started for a build (absent for other builds)."""

    pid: int
    running: bool
    exit_code: int | None
    log: str = Field(description="the child's stdout and stderr")
    log_tail: list[str] = Field(description="the log's last lines")


class Progress(BaseModel):
    """The build's live progress row (ledger table build_progress), as the build wrote it."""

    phase: str | None = None
    turn: int | None = None
    requests: int | None = None
    last_tool: str | None = None
    last_tool_detail: str | None = None
    last_tool_error: bool | None = None
    test_iteration: int | None = None
    tests_passed: bool | None = None
    prefill_done: int | None = None
    prefill_total: int | None = None
    message: str | None = None
    updated_at: str | None = None


class Spend(BaseModel):
    """Every attempt's requests, tokens and costs (the ledger's request rows)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: float = Field(default=0.0, description="priced requests only; see unpriced_requests")
    uncached_cost_usd: float = 0.0
    unpriced_requests: int = 0
    prefill_saved_ms: float = 0.0
    unknown_cache_requests: int = 0
    cache_read_unknown_tokens: int = 0


class Tests(BaseModel):
    command: str | None = None
    passed: bool | None = None
    iterations: int | None = None


class Files(BaseModel):
    created: list[str] = []
    modified: list[str] = []


class BuildStatus(BaseModel):
    id: str
    name: str
    status: str = Field(
        description="the ledger's status (running, completed, incomplete, tests_failed, "
        "failed, interrupted, budget_exceeded, abandoned), or, for a build this server "
        "started that is not on the ledger yet: starting, or not_started when its process "
        "ended first (error says why)"
    )
    finished: bool = Field(
        description="the build ended (and, for one started here, its process exited)"
    )
    resumable: bool
    task: str | None = None
    workdir: str | None = None
    backend: str | None = None
    model: str | None = None
    phases_requested: list[str] = []
    phases_done: list[str] = []
    current_phase: str | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    progress: Progress | None = None
    spend: Spend = Spend()
    tests: Tests = Tests()
    files: Files | None = Field(default=None, description="from the summary, once the build ended")
    summary: dict[str, Any] | None = Field(
        default=None,
        description="builds.summary_json (.foundry/summary.json), once the build ended",
    )
    started_here: bool = Field(description="whether this server started (and may cancel) it")
    process: Process | None = None
    line: str = Field(description="the state in one line, as progress messages say it")


class BuildStarted(BaseModel):
    id: str = Field(description="the build's ledger id (32 hex digits)")
    name: str
    started: bool = Field(description="false for an estimate: nothing was started")
    confirmation: Confirmation | None = None
    estimate: dict[str, Any] | None = Field(
        default=None, description="the projection `foundry build --estimate --json` prints"
    )
    pid: int | None = None
    log: str | None = None
    status: BuildStatus | None = Field(
        default=None, description="the state after wait_s, if waited"
    )


class Cancelled(BaseModel):
    id: str
    signalled: bool = Field(description="SIGINT was sent to the build's process group")
    stopped: bool = Field(description="its process ended within wait_s")
    status: BuildStatus


class CostsReport(BaseModel):
    """`foundry costs --json`, as it prints it."""

    ledger: str
    by: str
    time_zone: str
    filters: dict[str, Any]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    budgets: dict[str, Any]
    warnings: list[str]
    message: str | None


class CacheStats(BaseModel):
    store: dict[str, Any] = Field(description="`foundry cache stats --json`")
    entries: list[dict[str, Any]] = Field(description="`foundry cache list --json`")
    serve: dict[str, Any] | None = Field(
        default=None,
        description="a running `foundry serve`'s GET /cache/stats, when serve_url is given",
    )


class PromptAnalysis(BaseModel):
    """`foundry analyze-prompt --json`: every field it prints (those below, and the rest of
    the report: static, dynamic, boundary, cache_busters, projection...)."""

    model_config = ConfigDict(extra="allow")

    template: str
    model: str
    will_cache: bool
    verdict: str
    exit_code: int = Field(description="the CLI's: 0 will cache, 3 will not")
