"""`foundry mcp` end to end: the MCP SDK's own client over stdio against the real `foundry mcp`
process, which starts real builds (the real CLI, as child processes) against the local
Anthropic test server. What the tools say is checked against the ledger and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from foundry.errors import install_hint

try:
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp_types import CallToolResult
except ImportError:  # a failure that says what to do, never a skip
    pytest.fail(f"the MCP SDK is not installed: {install_hint('mcp')}", pytrace=False)
from tests.test_build_e2e import HELLO, TASK, script_build

FOUNDRY = Path(sys.executable).parent / "foundry"
TOOLS = {"build", "build_status", "resume", "cancel", "costs", "analyze_prompt", "cache_stats"}
ALL_PHASES = ["scout", "architect", "builder", "test", "deploy"]


@contextlib.asynccontextmanager
async def session(*args: str) -> AsyncIterator[ClientSession]:
    """`foundry mcp` as a client starts it: a child process speaking MCP on its stdio, with
    this test's environment (FOUNDRY_HOME, the test server's key and URL) and cwd."""
    if not FOUNDRY.exists():
        pytest.fail(f"{FOUNDRY} is missing: install foundry into this venv (pip install -e .)")
    params = StdioServerParameters(
        command=str(FOUNDRY), args=["mcp", *args], env=dict(os.environ), cwd=os.getcwd()
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        yield client


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


def data(result: CallToolResult) -> dict[str, Any]:
    """A tool's structured result; a tool error fails the test with its text."""
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


def text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def cli_error(*args: str) -> str:
    """The one line the CLI prints for an error, without its `error: ` label."""
    done = subprocess.run(
        [str(FOUNDRY), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert done.returncode != 0, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert lines, done.stderr
    return lines[-1].removeprefix("error: ")


def ledger_rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(os.environ["FOUNDRY_HOME"]) / "foundry.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def wait_until(
    client: ClientSession, build_id: str, done: Callable[[dict[str, Any]], bool], limit_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        status = data(await client.call_tool("build_status", {"id": build_id}))
        if done(status):
            return status
        assert time.monotonic() < deadline, f"gave up waiting; last status: {status}"
        await anyio.sleep(0.2)


def test_tools_and_their_schemas(anthropic_env) -> None:
    async def test() -> None:
        async with session() as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        build = tools["build"].input_schema
        assert build["required"] == ["name", "task"]
        assert {"dir", "backend", "model", "phases", "max_cost", "estimate", "wait_s"} <= set(
            build["properties"]
        )
        assert build["properties"]["phases"]["anyOf"][0] == {
            "items": {"type": "string"},
            "type": "array",
        }
        for name in ("build_status", "resume", "cancel"):
            assert tools[name].input_schema["required"] == ["id"], name
        for name, tool in tools.items():  # every result is typed data, not only text
            assert tool.output_schema and tool.output_schema["type"] == "object", name
            assert tool.description and not tool.description.startswith(" "), name
        status_fields = tools["build_status"].output_schema["properties"]
        assert {"phases_requested", "phases_done", "progress", "spend", "summary"} <= set(
            status_fields
        )
        assert tools["cancel"].annotations.destructive_hint is True
        assert tools["costs"].annotations.read_only_hint is True

    run(test)


def test_an_estimate_is_the_clis_and_starts_nothing(anthropic_env) -> None:
    args = ["hello", TASK, "--backend", "anthropic", "--max-turns", "3"]
    cli = subprocess.run(
        [str(FOUNDRY), "build", *args, "--estimate", "--json"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr

    async def test() -> None:
        async with session() as client:
            result = data(
                await client.call_tool(
                    "build",
                    {
                        "name": "hello",
                        "task": TASK,
                        "backend": "anthropic",
                        "max_turns": 3,
                        "estimate": True,
                    },
                )
            )
        assert result["started"] is False and result["confirmation"] is None
        assert result["estimate"] == json.loads(cli.stdout)

    run(test)
    assert not Path("hello").exists()
    assert not (Path(os.environ["FOUNDRY_HOME"]) / "foundry.db").exists()


def test_bad_requests_get_the_clis_own_error(anthropic_env, tmp_path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    expected = {
        "dir": cli_error("build", "x", "a task", "--dir", str(a_file), "--yes"),
        "max_cost": cli_error("build", "x", "a task", "--max-cost", "-1", "--yes"),
        "phases": cli_error("build", "x", "a task", "--phases", "test,scout", "--yes"),
        "name": cli_error("build", "../x", "a task", "--yes"),
        "unknown": cli_error("resume", "nope-nope"),
    }
    assert "is a file, not a directory" in expected["dir"]

    async def test() -> None:
        async with session() as client:

            async def error_of(tool: str, args: dict[str, Any]) -> str:
                result = await client.call_tool(tool, args)
                assert result.is_error, result
                return text(result)

            base = {"name": "x", "task": "a task"}
            assert await error_of("build", {**base, "dir": str(a_file)}) == expected["dir"]
            assert await error_of("build", {**base, "max_cost": -1}) == expected["max_cost"]
            phases = {**base, "phases": ["test", "scout"]}
            assert await error_of("build", phases) == expected["phases"]
            assert await error_of("build", {"name": "../x", "task": "t"}) == expected["name"]
            # The ledger does not exist yet: the CLI says so for resume; an unknown build
            # is refused the same way by every tool that takes one.
            unknown = await error_of("build_status", {"id": "nope-nope"})
            assert unknown.startswith("no build named or with id 'nope-nope'")
            assert await error_of("cancel", {"id": "nope-nope"}) == unknown
            assert await error_of("resume", {"id": "nope-nope"}) == expected["unknown"]
            by = await error_of("costs", {"by": "year"})
            assert by.startswith("--by 'year' is not a view — use one of: day")
            remote = await error_of("cache_stats", {"serve_url": "http://192.0.2.1:8082"})
            assert "is not on this machine (loopback)" in remote and "—" in remote
            # No traceback ever reaches the client, and the schema still guards the types.
            bad = await client.call_tool("build", {**base, "max_turns": 0})
            assert bad.is_error and "Traceback" not in text(bad)

    run(test)
    assert not Path("x").exists()


def test_a_build_runs_to_completion_as_the_ledger_records_it(anthropic_env) -> None:
    server = anthropic_env
    script_build(server, HELLO)
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    async def test() -> dict[str, Any]:
        async with session() as client:
            started = data(
                await client.call_tool(
                    "build",
                    {"name": "hello", "task": TASK, "backend": "anthropic", "max_cost": 5},
                )
            )
            build_id = started["id"]
            confirm = started["confirmation"]
            assert started["started"] is True and len(build_id) == 32
            assert confirm["directory"] == str(Path("hello").resolve())
            assert (confirm["backend"], confirm["mode"]) == ("anthropic", "new")
            assert confirm["model"] == "claude-sonnet-4-6"
            assert confirm["endpoint"] == server.base_url  # not the API's own host: said
            assert confirm["phases"] == ALL_PHASES and confirm["budget_usd"] == 5
            assert confirm["deploy_target"].startswith("a new repository in")
            assert "budget $5.0000" in confirm["text"]
            status = data(
                await client.call_tool(
                    "build_status",
                    {"id": build_id, "wait_s": 90},
                    progress_callback=on_progress,
                )
            )
            # A prefix and the name find the same build, as `foundry resume` does.
            by_prefix = data(await client.call_tool("build_status", {"id": build_id[:8]}))
            by_name = data(await client.call_tool("build_status", {"id": "hello"}))
            costs = data(await client.call_tool("costs", {"by": "build"}))
        assert by_prefix["id"] == by_name["id"] == build_id
        return {"id": build_id, "status": status, "costs": costs}

    result = anyio.run(test)
    status, build_id = result["status"], result["id"]
    assert status["status"] == "completed", status
    assert status["finished"] is True and status["resumable"] is False
    assert status["phases_requested"] == ALL_PHASES == status["phases_done"]
    assert status["started_here"] is True and status["process"]["exit_code"] == 0
    assert status["tests"]["passed"] is True and status["tests"]["iterations"] == 1
    assert set(status["files"]["created"]) == {".gitignore", "hello.py", "test_hello.py"}
    assert status["summary"]["status"] == "completed"
    assert status["progress"]["phase"] in ("test", "deploy")

    ((requests, cost, read, inp),) = ledger_rows(
        "SELECT COUNT(*), TOTAL(cost_usd), TOTAL(cache_read_tokens), TOTAL(input_tokens)"
        " FROM requests WHERE build_id = ?",
        build_id,
    )
    spend = status["spend"]
    assert requests == spend["requests"] == 6 == len(server.requests)
    assert spend["cost_usd"] == pytest.approx(cost) and cost > 0
    assert (spend["cache_read_tokens"], spend["input_tokens"]) == (read, inp)
    assert status["summary"]["cost_usd"] == pytest.approx(cost)
    (phases_done,) = ledger_rows("SELECT phases_done FROM builds WHERE id = ?", build_id)[0]
    assert phases_done.split(",") == ALL_PHASES

    # Progress went out while the client waited: growing values, the build's state in words.
    assert notes, "no progress notification arrived"
    values = [value for value, _ in notes]
    assert values == sorted(set(values))
    assert all(message and message.startswith("hello: ") for _, message in notes), notes
    assert notes[-1][1].startswith("hello: completed; 5/5 phases; 6 requests")

    # The costs tool is `foundry costs --json`, row for row.
    cli = subprocess.run(
        [str(FOUNDRY), "costs", "--by", "build", "--json"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert result["costs"] == json.loads(cli.stdout)
    assert result["costs"]["rows"][0]["key"] == build_id


def test_cancel_interrupts_a_running_build_which_then_resumes(anthropic_env) -> None:
    server = anthropic_env
    # The first request hangs (the server only pings), as a slow model would.
    server.enqueue_fault("pings", every_s=0.2, for_s=60)

    async def test() -> None:
        async with session() as client:
            started = data(
                await client.call_tool(
                    "build",
                    {"name": "slow", "task": "say hello", "phases": ["scout"]},
                )
            )
            build_id = started["id"]
            running = await wait_until(
                client,
                build_id,
                # Waiting on the model: the request reached the server, which only pings.
                lambda s: s["status"] == "running" and len(server.requests) == 1,
                limit_s=30,
            )
            assert running["current_phase"] == "scout" and not running["finished"]
            assert running["process"]["running"] is True
            # Its directory is locked: a second build there is refused at once, as the CLI
            # refuses it (before it would ask to confirm), and nothing is started.
            second = await client.call_tool(
                "build", {"name": "again", "task": "t", "dir": "slow", "phases": ["scout"]}
            )
            assert second.is_error
            pid = running["process"]["pid"]
            assert text(second) == (
                f"another foundry build (pid {pid}) is running in {Path('slow').resolve()} — "
                "wait for it to end, or build in another directory with --dir"
            )

            t0 = time.monotonic()
            cancelled = data(await client.call_tool("cancel", {"id": build_id, "wait_s": 30}))
            assert time.monotonic() - t0 < 20
            assert cancelled["signalled"] is True and cancelled["stopped"] is True
            status = cancelled["status"]
            assert status["status"] == "interrupted", status
            assert status["resumable"] is True and status["process"]["exit_code"] == 130
            assert status["phases_done"] == []
            # Cancelling again has nothing to stop, and says so.
            again = data(await client.call_tool("cancel", {"id": build_id}))
            assert again["signalled"] is False and again["status"]["status"] == "interrupted"

            # Resumed, the same build finishes its phase.
            server.enqueue(
                [
                    {
                        "type": "tool_use",
                        "name": "finish_phase",
                        "input": {"summary": "empty", "report": "# Scout\n\nNothing here.\n"},
                    }
                ],
                "tool_use",
            )
            resumed = data(await client.call_tool("resume", {"id": build_id[:12], "wait_s": 60}))
            assert resumed["id"] == build_id and resumed["name"] == "slow"
            assert resumed["confirmation"]["action"] == "resume"
            assert resumed["confirmation"]["resume_of"]["status"] == "interrupted"
            final = resumed["status"]
            assert final["status"] == "completed", (final["process"], final["progress"])
            assert final["attempts"] == 2 and final["phases_done"] == ["scout"]

    run(test)
    statuses = ledger_rows("SELECT status FROM build_attempts ORDER BY attempt")
    assert [s for (s,) in statuses] == ["interrupted", "completed"]


def test_when_the_client_hangs_up_its_running_builds_are_interrupted(anthropic_env) -> None:
    server = anthropic_env
    server.enqueue_fault("pings", every_s=0.2, for_s=60)

    async def test() -> str:
        async with session() as client:
            started = data(
                await client.call_tool("build", {"name": "left", "task": "t", "phases": ["scout"]})
            )
            await wait_until(client, started["id"], lambda s: len(server.requests) == 1, limit_s=30)
            return str(started["id"])

    build_id = anyio.run(test)  # leaving the session closes the server's stdin
    deadline = time.monotonic() + 20
    while ledger_rows("SELECT status FROM builds WHERE id = ?", build_id) == [("running",)]:
        assert time.monotonic() < deadline, "the build was left running"
        time.sleep(0.2)
    assert ledger_rows("SELECT status FROM builds WHERE id = ?", build_id) == [("interrupted",)]


def test_a_build_started_elsewhere_cannot_be_cancelled_here(anthropic_env) -> None:
    server = anthropic_env
    server.enqueue(
        [{"type": "tool_use", "name": "finish_phase", "input": {"summary": "s", "report": "r"}}],
        "tool_use",
    )
    cli = subprocess.run(
        [str(FOUNDRY), "build", "other", "look", "--phases", "scout", "--yes"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert cli.returncode == 0, cli.stderr

    async def test() -> None:
        async with session() as client:
            status = data(await client.call_tool("build_status", {"id": "other"}))
            assert status["status"] == "completed" and status["started_here"] is False
            assert status["process"] is None
            refused = await client.call_tool("cancel", {"id": "other"})
            assert refused.is_error
            assert "was not started by this foundry mcp server" in text(refused)
            # A second build in its directory: the CLI's note about the earlier build.
            server.enqueue(
                [
                    {
                        "type": "tool_use",
                        "name": "finish_phase",
                        "input": {"summary": "s", "report": "r"},
                    }
                ],
                "tool_use",
            )
            args = {"name": "more", "task": "t", "dir": "other", "phases": ["scout"], "wait_s": 60}
            started = data(await client.call_tool("build", args))
            (note,) = started["confirmation"]["notes"]
            assert note.startswith(f"{Path('other').resolve()} already holds build other (")
            assert started["status"]["status"] == "completed"

    run(test)


def test_the_reports_are_the_clis(anthropic_env) -> None:
    cli = subprocess.run([str(FOUNDRY), "analyze-prompt", "--json"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    stats = subprocess.run(
        [str(FOUNDRY), "cache", "stats", "--json"], capture_output=True, text=True
    )
    assert stats.returncode == 0, stats.stderr

    async def test() -> None:
        async with session() as client:
            analysis = data(await client.call_tool("analyze_prompt", {}))
            cache = data(await client.call_tool("cache_stats", {}))
            costs = data(await client.call_tool("costs", {}))
        assert analysis == json.loads(cli.stdout)
        assert cache["store"] == json.loads(stats.stdout) and cache["entries"] == []
        assert cache["serve"] is None
        assert costs["rows"] == [] and costs["message"].startswith("No requests recorded yet")

    run(test)


def test_without_the_sdk_foundry_mcp_says_how_to_install_it() -> None:
    blocked = (
        "import sys; sys.modules['mcp'] = None; sys.argv = ['foundry', 'mcp'];"
        " from foundry.cli import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: foundry mcp needs the MCP SDK, which is not installed — {install_hint('mcp')}"
    ]
    assert "pip install" in install_hint("mcp")


def test_foundry_help_does_not_load_the_sdk() -> None:
    probe = (
        "import sys; from foundry.cli import app; from typer.testing import CliRunner;"
        " CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['mcp', '--help']);"
        " print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
