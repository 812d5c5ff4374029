"""foundry's MCP tools on the official SDK's MCPServer, served over stdio.

Every tool is a thin call into launch, status or reports, run on a worker thread (they read
SQLite, render a prompt or start a process; the event loop keeps answering meanwhile). A
FoundryError becomes a tool error whose text is the CLI's one line (message — hint); any
other exception is the SDK's generic tool error, so no traceback reaches the client.

Progress: MCP ties a progress notification to a request in flight (its progressToken), and
a build outlives the `build` call that starts it. So `build` returns at once, and progress
flows while a client waits on purpose: `build_status`, `build` and `resume` take `wait_s`,
poll the ledger until the build ends or the time is up, and send a notification (to the
call's progressToken, when it gave one) each time the build's state changes."""

from __future__ import annotations

import functools
import inspect
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from foundry import __version__
from foundry.errors import FoundryError
from foundry.mcp.launch import BuildRequest, Launcher, ResumeRequest, error_text
from foundry.mcp.models import (
    BuildStarted,
    BuildStatus,
    CacheStats,
    Cancelled,
    CostsReport,
    PromptAnalysis,
)
from foundry.mcp.reports import analyze_prompt, cache_stats, costs
from foundry.mcp.settings import ServerSettings
from foundry.mcp.status import resolve, snapshot

POLL_S = 0.5  # the build writes its progress row at most every 0.25 s
MAX_WAIT_S = 600.0
SHUTDOWN_WAIT_S = 1.5
P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = (
    "foundry runs autonomous LLM builds (scout, architect, builder, test, deploy) in a "
    "sandbox and records every model request on a ledger. Start one with `build` (it "
    "returns the build's id at once; estimate=true projects the cost and starts nothing), "
    "follow it with `build_status` (wait_s long-polls and sends progress notifications), "
    "stop it with `cancel` and continue it with `resume`. `costs`, `analyze_prompt` and "
    "`cache_stats` report what was spent and whether prompts cache."
)
BuildRef = Annotated[
    str,
    Field(description="the build's id, a unique prefix of it (8+ characters), or its name"),
]
WaitS = Annotated[
    float,
    Field(
        ge=0,
        le=MAX_WAIT_S,
        description="seconds to wait for the build to end, sending progress notifications "
        "meanwhile; 0 answers at once",
    ),
]
MaxCost = Annotated[
    float | None,
    Field(description="stop before the build's spend would exceed this many USD (positive)"),
]
MaxTurns = Annotated[int | None, Field(ge=1, description="model turns per phase")]
MaxTests = Annotated[int | None, Field(ge=1, description="test runs before giving up")]


def _answers(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | CallToolResult]]:
    """A FoundryError as the CLI says it, marked as a tool error (the SDK would prefix it
    with its own words)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | CallToolResult:
        try:
            return await fn(*args, **kwargs)
        except FoundryError as exc:
            text = TextContent(type="text", text=error_text(exc))
            return CallToolResult(content=[text], is_error=True)

    # The docstring is the tool's description: without the source's indentation.
    wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return wrapper


async def _blocking(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def watch(launcher: Launcher, ctx: Context, build_id: str, wait_s: float) -> BuildStatus:
    """The build's state, after it ended or wait_s passed; a progress notification each
    time it changed. `progress` counts the changes (the spec wants it to grow with every
    notification, and a build's length is not known ahead); the message says the state."""
    deadline = anyio.current_time() + min(wait_s, MAX_WAIT_S)
    last: tuple[Any, ...] | None = None
    sent = 0
    while True:
        status = await _blocking(snapshot, launcher, build_id)
        live = status.progress
        key = (status.status, live and live.updated_at, status.spend.requests, status.phases_done)
        if key != last and wait_s > 0:
            last, sent = key, sent + 1
            await ctx.report_progress(sent, None, status.line)
        left = deadline - anyio.current_time()
        if status.finished or left <= 0:
            return status
        await anyio.sleep(min(POLL_S, left))


def create_server(launcher: Launcher) -> MCPServer:
    app: MCPServer = MCPServer("foundry", instructions=INSTRUCTIONS, version=__version__)
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @app.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=True))
    @_answers
    async def build(
        ctx: Context,
        name: Annotated[str, Field(description="letters, digits, . _ -; names the build")],
        task: Annotated[str, Field(description="what to build, in plain words")],
        dir: Annotated[
            str | None, Field(description="working directory (default ./NAME of the server's cwd)")
        ] = None,
        backend: Annotated[
            str | None, Field(description="anthropic, openai, llamacpp, mlx or auto")
        ] = None,
        model: Annotated[str | None, Field(description="model id (default from config)")] = None,
        phases: Annotated[
            list[str] | None,
            Field(description="an ordered subset of scout, architect, builder, test, deploy"),
        ] = None,
        max_cost: MaxCost = None,
        max_turns: MaxTurns = None,
        max_test_iterations: MaxTests = None,
        estimate: Annotated[
            bool, Field(description="project requests, tokens and cost; start nothing")
        ] = False,
        wait_s: WaitS = 0,
    ) -> BuildStarted:
        """Start `foundry build NAME TASK` in the background and return its id at once, with
        what the CLI would ask you to confirm (directory, backend, model, budget, phases,
        projected cost, notes). The request is checked first as the CLI checks it; the
        build itself runs as the real CLI, in its sandbox, with its limits."""
        request = BuildRequest(
            name=name,
            task=task,
            dir=dir,
            backend=backend,
            model=model,
            phases=phases,
            max_cost=max_cost,
            max_turns=max_turns,
            max_test_iterations=max_test_iterations,
            estimate=estimate,
        )
        build_id, confirmation, projection = await _blocking(launcher.build, request)
        if estimate:
            return BuildStarted(id=build_id, name=name, started=False, estimate=projection)
        child = launcher.child(build_id)
        started = BuildStarted(
            id=build_id,
            name=name,
            started=True,
            confirmation=confirmation,
            estimate=projection,
            pid=child.proc.pid if child else None,
            log=str(child.log) if child else None,
        )
        if wait_s > 0:
            started.status = await watch(launcher, ctx, build_id, wait_s)
        return started

    @app.tool(annotations=reads)
    @_answers
    async def build_status(ctx: Context, id: BuildRef, wait_s: WaitS = 0) -> BuildStatus:
        """A build's status, phases requested and done, current phase, turn and last tool,
        tests, files, tokens and spend, and its summary once it ended. With wait_s, waits
        for it to end, sending progress notifications as it goes."""
        build_id = await _blocking(resolve, launcher, id)
        return await watch(launcher, ctx, build_id, wait_s)

    @app.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=True))
    @_answers
    async def resume(
        ctx: Context,
        id: BuildRef,
        max_cost: MaxCost = None,
        max_turns: MaxTurns = None,
        max_test_iterations: MaxTests = None,
        wait_s: WaitS = 0,
    ) -> BuildStarted:
        """Continue a failed, interrupted, budget-stopped, incomplete or abandoned build
        where it stopped (`foundry resume ID --yes`), in the background; --max-cost counts
        what earlier attempts spent."""
        request = ResumeRequest(
            build=id,
            max_cost=max_cost,
            max_turns=max_turns,
            max_test_iterations=max_test_iterations,
        )
        build_id, name, confirmation = await _blocking(launcher.resume, request)
        child = launcher.child(build_id)
        started = BuildStarted(
            id=build_id,
            name=name,
            started=True,
            confirmation=confirmation,
            pid=child.proc.pid if child else None,
            log=str(child.log) if child else None,
        )
        if wait_s > 0:
            started.status = await watch(launcher, ctx, build_id, wait_s)
        return started

    @app.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
    @_answers
    async def cancel(
        ctx: Context,
        id: BuildRef,
        wait_s: Annotated[
            float, Field(ge=0, le=120, description="seconds to wait for it to stop")
        ] = 15,
    ) -> Cancelled:
        """Interrupt a build this server started, as Ctrl-C does: SIGINT to its process
        group; it ends `interrupted`, keeps everything recorded and can be resumed."""
        build_id = await _blocking(resolve, launcher, id)
        signalled, stopped = await _blocking(launcher.cancel, build_id, wait_s)
        status = await _blocking(snapshot, launcher, build_id)
        return Cancelled(id=build_id, signalled=signalled, stopped=stopped, status=status)

    @app.tool(name="costs", annotations=reads)
    @_answers
    async def costs_report(
        by: Annotated[str, Field(description="day, week, month, build, model or phase")] = "day",
        since: Annotated[
            str | None, Field(description="YYYY-MM-DD, today, yesterday or Nd")
        ] = None,
        until: Annotated[str | None, Field(description="last day, inclusive")] = None,
        tz: Annotated[str | None, Field(description="IANA time zone (default: local)")] = None,
        build: Annotated[str | None, Field(description="only this build (name or id)")] = None,
        model: Annotated[str | None, Field(description="only this model")] = None,
        backend: Annotated[str | None, Field(description="only this backend")] = None,
    ) -> CostsReport:
        """`foundry costs --json`: requests, tokens, cache reads and writes, hit rate, cost,
        uncached cost and what caching saved, grouped by the view, with totals and budgets."""
        report = await _blocking(
            costs,
            launcher.settings,
            by=by,
            since=since,
            until=until,
            tz=tz,
            build=build,
            model=model,
            backend=backend,
        )
        return CostsReport(**report)

    @app.tool(name="analyze_prompt", annotations=reads)
    @_answers
    async def analyze_prompt_tool(
        model: Annotated[str | None, Field(description="a priced model id")] = None,
        template: Annotated[
            str | None, Field(description="prompt template file (default: ./ or packaged)")
        ] = None,
        builds: Annotated[int, Field(ge=1, description="builds in the projection")] = 10,
        builds_per_hour: Annotated[float, Field(ge=0, description="for the cache TTL")] = 1.0,
        requests_per_build: Annotated[int | None, Field(ge=1)] = None,
        exact: Annotated[
            bool, Field(description="count with Anthropic's count_tokens (needs a key)")
        ] = False,
    ) -> PromptAnalysis:
        """`foundry analyze-prompt --json`: whether the orchestrator prompt caches on the
        model, where its boundary belongs, what busts the cache, and what caching saves."""
        report = await _blocking(
            analyze_prompt,
            launcher.settings,
            model=model,
            template=template,
            builds=builds,
            builds_per_hour=builds_per_hour,
            requests_per_build=requests_per_build,
            exact=exact,
        )
        return PromptAnalysis(**report)

    @app.tool(name="cache_stats", annotations=reads)
    @_answers
    async def cache_stats_tool(
        serve_url: Annotated[
            str | None,
            Field(description="a running foundry serve's base URL (loopback), for its stats"),
        ] = None,
        api_key: Annotated[str | None, Field(description="that serve's --api-key, if any")] = None,
    ) -> CacheStats:
        """The saved prefix KV caches of local models (`foundry cache stats` and `list`),
        and a running `foundry serve`'s /cache/stats."""
        data = await _blocking(cache_stats, launcher.settings, serve_url=serve_url, api_key=api_key)
        return CacheStats(**data)

    return app


def run(settings: ServerSettings) -> None:
    # A SIGINT that this process ignores (started in the background by a shell) would be
    # ignored by every build it starts too, and cancel could not stop them.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # A client stopping the server with SIGTERM still gets its builds interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    launcher = Launcher(settings)
    try:
        create_server(launcher).run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        # A client closes stdin, then sends SIGTERM 2 s later and SIGKILL 2 s after that (the
        # spec's shutdown): the builds are signalled first, then a short wait, and a SIGTERM
        # meanwhile simply ends this process; the builds stop on their own either way.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        launcher.interrupt_all(SHUTDOWN_WAIT_S)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
