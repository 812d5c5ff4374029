"""Builds under injected faults: do they finish, resume, and keep the ledger true?

Runs N builds (scout, architect, builder, test) through the real CLI against the local
Anthropic test server, which answers 30% of requests with a 429, 500, 529 or a stream cut
mid-way. Retries are cut to one per request, so a build does give up now and then; the
bench then runs `foundry resume` until the build completes. It reports:

* builds completed, and how many resumes they needed;
* requests lost: responses the server started whose usage is not on the ledger (goal 0);
* the ledger's input-side tokens (input + cache read + cache write) against the server's
  usage, build by build (goal: equal for every build);
* builds whose spend passed --max-cost (goal: never).

Usage: python bench/fault_bench.py [--builds 10] [--fault-rate 0.3] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_anthropic import FakeAnthropic  # noqa: E402

FAULTS = [
    ("rate_limit", {"retry_after": 1}),
    ("overloaded", {}),
    ("server_error", {}),
    ("stream_cut", {"after_events": 2}),
]
PHASES = "scout,architect,builder,test"
MAX_COST = 0.50
MAX_RESUMES = 10
TEST_COMMAND = "python3 -c \"import hello; assert hello.greet() == 'hello'\""


def tool(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}


def responder(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """A model that does each phase in two turns: a look or a write, then finish_phase."""
    first = json.dumps(body["messages"][0]["content"])
    phase = re.search(r"## Current phase: (\w+)", first)
    name = phase.group(1) if phase else "scout"
    answered = sum(1 for m in body["messages"] if m["role"] == "assistant")
    if answered == 0:
        if name == "builder":
            code = "def greet():\n    return 'hello'\n"
            return [tool("write_file", path="hello.py", content=code)], "tool_use"
        return [tool("list_files")], "tool_use"
    finish = {"summary": f"{name} done", "report": f"# {name}\n"}
    if name == "architect":
        finish["test_command"] = TEST_COMMAND
    return [tool("finish_phase", **finish)], "tool_use"


def ledger_rows(db: Path, build: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return list(
            conn.execute(
                "SELECT r.* FROM requests r JOIN builds b ON b.id = r.build_id"
                " WHERE b.name = ? ORDER BY r.id",
                [build],
            )
        )


def input_side(usage: dict[str, Any]) -> int:
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=10)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="foundry-fault-bench-"))
    db, config = tmp / "ledger.db", tmp / "cache_config.json"
    # One retry per request (at most 2 s of backoff): a build gives up sometimes, and resumes.
    config.write_text(json.dumps({"anthropic": {"max_retries": 1, "retry_budget_s": 10}}))
    results = []
    with FakeAnthropic() as server:
        server.responder = responder
        server.fault_source = lambda: rng.choice(FAULTS) if rng.random() < args.fault_rate else None
        env = {**os.environ, **server.env(), "FOUNDRY_HOME": str(tmp / "home")}
        for i in range(args.builds):
            name = f"b{i:02d}"
            before = len(server.responses_usage)
            common = ["--yes", "--json", "--db", str(db), "--config", str(config)]
            command = ["build", name, "Create hello.py with greet()", "--backend", "anthropic"]
            command += ["--phases", PHASES, "--dir", str(tmp / name), "--max-cost", str(MAX_COST)]
            run = subprocess.run(
                [sys.executable, "-m", "foundry", *command, *common],
                env=env, capture_output=True, text=True, cwd=tmp, timeout=600,
            )  # fmt: skip
            resumes = 0
            while run.returncode != 0 and resumes < MAX_RESUMES:
                resumes += 1
                run = subprocess.run(
                    [sys.executable, "-m", "foundry", "resume", name, *common],
                    env=env, capture_output=True, text=True, cwd=tmp, timeout=600,
                )  # fmt: skip
            served = server.responses_usage[before:]
            rows = ledger_rows(db, name)
            recorded = [r for r in rows if input_side(_row_usage(r)) > 0]
            spend = sum(r["cost_usd"] or 0 for r in rows)
            results.append(
                {
                    "build": name,
                    "completed": run.returncode == 0,
                    "resumes": resumes,
                    "requests": len(rows),
                    "lost": len(served) - len(recorded),
                    "ledger_equals_server": sum(input_side(_row_usage(r)) for r in rows)
                    == sum(input_side(u) for u in served),
                    "spend": spend,
                    "over_budget": spend > MAX_COST,
                    "last_error": run.stderr.strip().splitlines()[-1:] if run.returncode else [],
                }
            )
    _report(results, args.fault_rate)


def _row_usage(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "input_tokens": row["input_tokens"],
        "cache_read_input_tokens": row["cache_read_tokens"],
        "cache_creation_input_tokens": row["cache_write_5m_tokens"] + row["cache_write_1h_tokens"],
    }


def _report(results: list[dict[str, Any]], rate: float) -> None:
    print(f"{len(results)} builds, {rate:.0%} of requests faulted, one retry per request")
    print(f"{'build':6} {'done':>5} {'resumes':>8} {'reqs':>5} {'lost':>5} {'ledger=server':>14} "
          f"{'spend':>8}")  # fmt: skip
    for r in results:
        print(
            f"{r['build']:6} {'yes' if r['completed'] else 'NO':>5} {r['resumes']:>8} "
            f"{r['requests']:>5} {r['lost']:>5} {'yes' if r['ledger_equals_server'] else 'NO':>14} "
            f"${r['spend']:>7.4f}"
        )
        if r["last_error"]:
            print(f"       last error: {r['last_error'][0][:150]}")
    completed = sum(r["completed"] for r in results)
    print(
        f"\nbuilds completed {completed}/{len(results)}; resumes needed "
        f"{sum(r['resumes'] for r in results)} (by {sum(1 for r in results if r['resumes'])} "
        f"builds); requests lost {sum(r['lost'] for r in results)} (goal 0); ledger equal to "
        f"the server's usage for {sum(r['ledger_equals_server'] for r in results)}/"
        f"{len(results)} builds; spend over --max-cost {sum(r['over_budget'] for r in results)} "
        f"(goal 0)"
    )


if __name__ == "__main__":
    main()
