"""Time `foundry mcp`'s round trips on a big ledger: `build_status` and `costs` through the
MCP SDK's own stdio client, against the real `foundry mcp` process.

    .venv/bin/python bench/mcp_bench.py                    # 100k builds, 1M requests, temp dir
    .venv/bin/python bench/mcp_bench.py --db /tmp/big.db   # a ledger bench/make_ledger.py made
    .venv/bin/python bench/mcp_bench.py --builds 1000 --requests 10000 --rounds 5   # quick

Each call is timed end to end as a client sees it (request out, JSON-RPC response parsed),
and the same work in-process (the status snapshot, foundry.ledger.costs.costs_report), so
the protocol's share is the difference. Prints the machine's load before and after: on a
shared machine the figures mean little without it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

from foundry.config import load_config  # noqa: E402
from foundry.ledger.costs import CostsOptions, costs_report  # noqa: E402
from foundry.mcp.launch import Launcher  # noqa: E402
from foundry.mcp.settings import ServerSettings  # noqa: E402
from foundry.mcp.status import snapshot  # noqa: E402


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ensure_ledger(db: Path, builds: int, requests: int) -> None:
    if db.exists():
        return
    from make_ledger import make_ledger  # bench/make_ledger.py: the shared synthetic ledger

    started = time.perf_counter()
    counts = make_ledger(db, builds=builds, requests=requests)
    print(f"made {db} in {time.perf_counter() - started:.0f} s: {counts}", flush=True)


def targets(db: Path) -> dict[str, str]:
    """The builds to ask about: the one with the most requests, and a running one."""
    conn = sqlite3.connect(db)
    try:
        biggest = conn.execute(
            "SELECT build_id FROM requests WHERE build_id IS NOT NULL"
            " GROUP BY build_id ORDER BY COUNT(*) DESC LIMIT 1"
        ).fetchone()[0]
        running = conn.execute(
            "SELECT b.id FROM builds b JOIN build_progress p ON p.build_id = b.id"
            " WHERE b.status = 'running' LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    found = {"finished (most requests)": biggest, "finished, by 12-char prefix": biggest[:12]}
    if running:
        found["running (live progress row)"] = running[0]
    return found


def timed(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):8.1f} ms  p95 {p95:8.1f}  min {ms[0]:8.1f}"


def in_process(db: Path, builds: dict[str, str], rounds: int) -> None:
    launcher = Launcher(ServerSettings(db=db))
    print("\nin-process (no MCP): the work each tool does")
    for label, asked in builds.items():
        if "prefix" in label:
            continue
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            snapshot(launcher, asked)
            samples.append(time.perf_counter() - t0)
        print(f"  snapshot {label:32} {timed(samples)}")
    config = load_config(None)
    for by in ("day", "model"):
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            costs_report(config, CostsOptions(by=by, db=db))
            samples.append(time.perf_counter() - t0)
        print(f"  costs_report by {by:26} {timed(samples)}")


async def over_mcp(db: Path, builds: dict[str, str], rounds: int) -> None:
    foundry = Path(sys.executable).parent / "foundry"
    home = tempfile.mkdtemp(prefix="mcp-bench-home-")
    env = {**os.environ, "FOUNDRY_HOME": home}
    params = StdioServerParameters(command=str(foundry), args=["mcp", "--db", str(db)], env=env)
    print("\nover MCP (the SDK's stdio client, round trip)")
    t0 = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        print(
            f"  start + initialize                     {(time.perf_counter() - t0) * 1000:8.1f} ms"
        )

        async def measure(label: str, call: Callable[[], Awaitable[Any]], n: int) -> None:
            samples, size = [], 0
            for _ in range(n):
                t = time.perf_counter()
                result = await call()
                samples.append(time.perf_counter() - t)
                if getattr(result, "is_error", False):
                    raise SystemExit(f"{label}: {result.content}")
                size = len(result.model_dump_json(by_alias=True, exclude_none=True))
            print(f"  {label:38} {timed(samples)}  ({size:,} bytes)")

        await measure("tools/list", client.list_tools, rounds)
        for label, asked in builds.items():
            await measure(
                f"build_status {label}",
                lambda asked=asked: client.call_tool("build_status", {"id": asked}),
                rounds,
            )
        for by in ("day", "model"):
            await measure(
                f"costs by {by}", lambda by=by: client.call_tool("costs", {"by": by}), rounds
            )
        await measure(
            "costs by build, last 7 days",
            lambda: client.call_tool("costs", {"by": "build", "since": "7d"}),
            max(1, rounds // 4),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an existing ledger (default: make one)")
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="mcp-bench-")) / "ledger.db"
    ensure_ledger(db, args.builds, args.requests)
    conn = sqlite3.connect(db)
    counts = conn.execute("SELECT (SELECT COUNT(*) FROM builds), COUNT(*) FROM requests").fetchone()
    conn.close()
    print(f"ledger {db}: {counts[0]:,} builds, {counts[1]:,} requests")
    print(f"load before: {load()}")
    builds = targets(db)
    in_process(db, builds, args.rounds)
    anyio.run(over_mcp, db, builds, args.rounds)
    print(f"\nload after:  {load()}")


if __name__ == "__main__":
    main()
