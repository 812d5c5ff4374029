"""A scripted in-process backend and helpers for the orchestrator's tests."""

from __future__ import annotations

import copy
import itertools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.backends.anthropic.layout import keepalive_request
from foundry.backends.base import FailedAttempt, ModelRequest, ModelResponse
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from foundry.ledger import Ledger
from foundry.orchestrator.build import BuildPlan, BuildResult, BuildRun
from foundry.orchestrator.events import Events
from foundry.pricing import PricingTable
from foundry.usage import Usage

_ids = itertools.count(1)
Step = tuple[list[dict], str] | Callable[[ModelRequest], Any] | BaseException


def tool(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": args}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def finish(summary: str = "done", report: str = "# Report\n", **extra: Any) -> dict[str, Any]:
    return tool("finish_phase", summary=summary, report=report, **extra)


def context_too_long(tokens: int = 8_505, window: int = 8_192) -> list[Step]:
    """What a local backend does when the conversation outgrew the model's context window:
    reports the failed attempt (a ledger row), then raises."""
    message = f"the prompt is {tokens:,} tokens; the context window is {window:,} tokens"
    return [
        FailedAttempt("context_too_long", message),
        BackendError(message, "use a model with a longer context", error_class="context_too_long"),
    ]


@dataclass(frozen=True)
class FakePrompt:
    static: str = "You are the foundry orchestrator. " * 50
    dynamic: str = "Task: build hello.\nWorking directory: (test)\n"
    static_sha256: str = "s" * 64
    template_sha256: str = "t" * 64


class ScriptedBackend:
    """Answers each request with the next scripted step; usage mimics a cached prefix.
    Its capabilities are Claude's: metered, with a cache that keep-alives refresh."""

    name = "anthropic"
    local = False
    max_tokens = 1000
    context_window = None
    endpoint = None

    def __init__(self, steps: list[Step], model: str = "claude-sonnet-4-6") -> None:
        self.steps = list(steps)
        self.model = model
        self.requests: list[ModelRequest] = []

    def keepalive_request(self, last: ModelRequest) -> ModelRequest | None:
        return keepalive_request(last)

    def check(self) -> None:
        pass

    def complete(self, request: ModelRequest, *, on_text=None, on_failed_attempt=None):
        self.requests.append(copy.deepcopy(request))
        if request.purpose == "keepalive":
            usage = Usage(input_tokens=10, output_tokens=1, cache_read_tokens=2000)
            return ModelResponse([text("ok")], "max_tokens", usage, self.model)
        if not self.steps:
            raise AssertionError(f"no scripted step left for request {len(self.requests)}")
        step = self.steps.pop(0)
        if callable(step):
            step = step(request)
        if isinstance(step, FailedAttempt):
            on_failed_attempt(step)
            return self.complete(request, on_text=on_text, on_failed_attempt=on_failed_attempt)
        if isinstance(step, BaseException):
            raise step
        content, stop = step
        first = len(self.requests) == 1
        usage = Usage(
            input_tokens=50,
            output_tokens=20,
            cache_read_tokens=0 if first else 2000,
            cache_write_5m_tokens=2000 if first else 100,
        )
        if on_text:
            on_text("thinking")
        return ModelResponse(
            content, stop, usage, self.model, request_id=f"req_{len(self.requests)}"
        )

    def close(self) -> None:
        pass


def run_build(
    tmp_path: Path,
    steps: list[Step],
    *,
    phases: tuple[str, ...] = ("scout", "architect", "builder", "test", "deploy"),
    config: FoundryConfig | None = None,
    events: Events | None = None,
    resume: str | None = None,  # continue the latest build of this name on the same ledger
    **plan_args: Any,
) -> tuple[BuildResult, ScriptedBackend, Path]:
    workdir = tmp_path / "hello"
    workdir.mkdir(parents=True, exist_ok=True)
    config = config or FoundryConfig()
    backend = ScriptedBackend(steps, model=plan_args.pop("model", "claude-sonnet-4-6"))
    db = tmp_path / "ledger.db"
    plan = BuildPlan(
        name="hello",
        task="Create hello.py",
        workdir=workdir,
        mode="new",
        phases=phases,
        max_test_iterations=plan_args.pop("max_test_iterations", 3),
        max_turns=plan_args.pop("max_turns", 6),
        max_cost=plan_args.pop("max_cost", None),
        ttl="5m",
        max_tokens=plan_args.pop("max_tokens", 1000),
    )
    pricing = PricingTable(config)
    with Ledger.open(db, pricing) as ledger:
        record = ledger.find_build(resume) if resume else None
        assert resume is None or record is not None, f"no build {resume} to resume"
        result = BuildRun(
            plan,
            config=config,
            backend=backend,
            ledger=ledger,
            pricing=pricing,
            prompt=FakePrompt(),  # type: ignore[arg-type]
            events=events or Events(),
            resume=record,
        ).run()
    return result, backend, db


def ledger_rows(db: Path, table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


STATIC_LINE = (
    "You are the orchestrator's model. Work only inside the working directory, with the "
    "workspace tools; keep changes small and tested; report through finish_phase.\n"
)


def write_template(directory: Path) -> Path:
    """A small valid orchestrator template (static part ~1,800 tokens by any count)."""
    path = directory / "test_prompt.txt"
    static = "# Orchestrator\n\n" + STATIC_LINE * 45
    dynamic = (
        "# The build\n\nName: {{ build_name }}\nTask: {{ task }}\n"
        "Working directory: {{ workdir }}\nMode: {{ mode }}\n"
        "Phases: {{ phases | join(', ') }}\n"
    )
    path.write_text(f"{static}<<CACHE_BOUNDARY>>\n{dynamic}", encoding="utf-8")
    return path
