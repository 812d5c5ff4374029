"""Fill a ledger with N builds and M model requests, fast, through the real schema.

    .venv/bin/python bench/make_ledger.py --db /tmp/big.db   # 100k builds, 1M requests
    .venv/bin/python bench/make_ledger.py --db /tmp/s.db --builds 500 --requests 5000 --running 3

The ledger is opened once with `foundry.ledger.Ledger.open` (so every migration runs and the
file is a real, current ledger), then every row goes in with bulk INSERTs in one
transaction: the request_rollup triggers run on each request as they do for a build, so the
rollup is exact. The spread is meant to look like a busy user's ledger: builds over the last
`--days` days (more on weekdays and in working hours), five phases, Claude models priced by
the packaged pricing table, an OpenAI-compatible model with no price and sometimes no cached
count (NULL cost, NULL cache read), local mlx/llama.cpp models with prefill time saved, a
few `foundry serve` requests outside any build, every build status, a summary_json for each
finished build (its phases, files, tests and cost, as docs/build.md describes), and
`--running` builds still running, each with a build_progress row. Running builds carry a
host that is not this machine, so no foundry process on it marks them abandoned.

Usable as a module: `make_ledger(path, builds=..., requests=...)` returns a dict of counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.ledger import Ledger  # noqa: E402
from foundry.ledger.schema import REQUEST_COLUMNS  # noqa: E402
from foundry.pricing import PricingTable  # noqa: E402
from foundry.timestamps import format_utc  # noqa: E402
from foundry.usage import Usage  # noqa: E402

# (backend, model, weight, local): what builds run on, and how often.
MODELS = [
    ("anthropic", "claude-sonnet-4-6", 30, False),
    ("anthropic", "claude-opus-4-8", 10, False),
    ("anthropic", "claude-haiku-4-5-20251001", 15, False),
    ("anthropic", "claude-sonnet-5", 15, False),
    ("openai", "gpt-5.1-local-vllm", 8, False),  # no price: NULL cost, sometimes NULL reads
    ("mlx", "smollm2-135m", 12, True),
    ("llamacpp", "qwen2.5-coder-7b-q4", 10, True),
]
MODEL_PHASES = ("scout", "architect", "builder", "test")
ALL_PHASES = (*MODEL_PHASES, "deploy")
# Finished builds' statuses and their weights ("running" builds are made apart).
STATUSES = [
    ("completed", 70),
    ("tests_failed", 10),
    ("incomplete", 5),
    ("failed", 5),
    ("interrupted", 4),
    ("budget_exceeded", 3),
    ("abandoned", 3),
]
TASKS = [
    "Build a CLI todo app with tests",
    "Add a REST endpoint for invoices with pagination",
    "Write a markdown-to-HTML converter with a test suite",
    "Port the CSV importer to async and keep its tests green",
    "Make a URL shortener with SQLite storage",
]
TOOLS = [
    ("run_command", "python3 -m pytest -q"),
    ("write_file", "src/app.py"),
    ("read_file", "README.md"),
    ("list_files", "."),
    ("edit_file", "tests/test_app.py"),
]
RUNNING_HOST = "make-ledger.invalid"  # never this machine: close_abandoned leaves them alone
BUILD_COLUMNS = (
    "id, name, task, backend, model, workdir, template_sha256, static_sha256, started_at,"
    " finished_at, status, summary_json, error, phases, phases_done, attempts, pid, host,"
    " pid_start, settings"
)


def _unit_prices(pricing: PricingTable) -> dict[str, tuple[list[float], str | None]]:
    """Dollars per token of each kind, per model, from the real pricing table once: 1M
    Decimal cost computations would dominate the run. Prices are linear per token kind."""
    prices: dict[str, tuple[list[float], str | None]] = {}
    for _, model, _, local in MODELS:
        per_kind = []
        version = None
        for kind in range(5):
            counts = [0] * 5
            counts[kind] = 1_000_000
            cost = pricing.cost(Usage(*counts), model, local=local)
            version = cost.pricing_version
            per_kind.append(cost.cost_usd / 1e6 if cost.cost_usd is not None else float("nan"))
        prices[model] = (per_kind, version)
    return prices


def _when(rng: random.Random, end: datetime, days: int) -> datetime:
    """A build's start: uniform over the days, fewer at weekends and at night."""
    while True:
        moment = end - timedelta(seconds=rng.uniform(0, days * 86400))
        weight = (0.35 if moment.weekday() >= 5 else 1.0) * (1.0 if 7 <= moment.hour < 20 else 0.25)
        if rng.random() < weight:
            return moment


def _request_counts(rng: random.Random, builds: int, requests: int) -> list[int]:
    """How many requests each build made: M/N on average, skewed (most builds short, a few
    long), summing exactly to `requests`."""
    if builds == 0:
        return []
    weights = [rng.expovariate(1.0) + 0.05 for _ in range(builds)]
    scale = requests / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(requests - sum(counts)):
        counts[i % builds] += 1
    return counts


def make_ledger(
    path: Path,
    *,
    builds: int = 100_000,
    requests: int = 1_000_000,
    days: int = 90,
    running: int = 5,
    serve_share: float = 0.01,
    seed: int = 24,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Create (or add to) the ledger at `path`; returns what was written."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC)
    pricing = PricingTable()
    prices = _unit_prices(pricing)
    ledger = Ledger.open(Path(path), pricing)  # migrations run here, once
    conn = ledger.conn
    serve_requests = int(requests * serve_share) if builds else requests
    counts = _request_counts(rng, builds, requests - serve_requests)
    weights = [w for _, _, w, _ in MODELS]
    status_names = [s for s, _ in STATUSES]
    status_weights = [w for _, w in STATUSES]
    starts = sorted(_when(rng, end, days) for _ in range(builds))
    build_rows: list[tuple[Any, ...]] = []
    progress_rows: list[tuple[Any, ...]] = []
    running_from = builds - min(running, builds)  # the newest builds are the running ones

    def request_row(
        build_id: str | None, phase: str | None, turn: int, model_entry: tuple, at: datetime
    ) -> tuple[tuple[Any, ...], list[int], float | None, float | None]:
        backend, model, _, local = model_entry
        per_kind, version = prices[model]
        inp, out = rng.randint(30, 4000), rng.randint(20, 1800)
        read: int | None = rng.choice((0, 4000, 9000, 18000, 30000)) if turn else 0
        w5 = rng.choice((0, 0, 0, 600, 4000)) if not local else 0
        w1 = rng.choice((0, 0, 0, 0, 0, 3000)) if backend == "anthropic" else 0
        if backend == "openai" and rng.random() < 0.4:
            inp, read = inp + 9000, None  # the server did not say what it cached
        tokens = [inp, out, read or 0, w5, w1]
        if version is None or per_kind[0] != per_kind[0]:  # NaN: the model has no price
            cost = uncached = None
        else:
            cost = sum(t * p for t, p in zip(tokens, per_kind, strict=True))
            uncached = (inp + (read or 0) + w5 + w1) * per_kind[0] + out * per_kind[1]
        saved_ms = (read or 0) / 450 * 1000 if local else None
        duration = rng.uniform(400, 9000) if not local else rng.uniform(2000, 40000)
        row = (
            build_id, phase, turn, "turn", backend, model, format_utc(at), round(duration, 1),
            round(duration * rng.uniform(0.05, 0.3), 1), inp, out, read, w5, w1, cost, uncached,
            version, None if cost is not None else "no price for this model",
            "ok" if rng.random() > 0.01 else "error", None, "tool_use", None, saved_ms,
            450.0 if local else None, 35.0 if local else None, 900.0 if local else None,
        )  # fmt: skip
        return row, tokens, cost, uncached

    def rows_iter():
        for index, (start, count) in enumerate(zip(starts, counts, strict=True)):
            build_id = uuid.UUID(int=rng.getrandbits(128)).hex
            entry = rng.choices(MODELS, weights)[0]
            backend, model, _, local = entry
            is_running = index >= running_from
            status = "running" if is_running else rng.choices(status_names, status_weights)[0]
            # Finished builds ran every phase up to where they stopped; a running one is
            # somewhere in the middle.
            reached = 4 if status in ("completed", "tests_failed") else rng.randint(1, 4)
            phases = MODEL_PHASES[:reached]
            at = start
            per_phase: dict[str, list[float]] = {p: [0, 0, 0, 0, 0, 0, 0.0] for p in phases}
            unpriced = False
            for turn_index in range(count):
                phase = phases[min(turn_index * len(phases) // max(count, 1), len(phases) - 1)]
                row, tokens, cost, _ = request_row(build_id, phase, turn_index, entry, at)
                unpriced = unpriced or cost is None
                sums = per_phase[phase]
                sums[0] += 1
                for k in range(5):
                    sums[k + 1] += tokens[k]
                sums[6] += cost or 0.0
                yield row
                at += timedelta(seconds=rng.uniform(4, 40))
            finished = None if is_running else at + timedelta(seconds=rng.uniform(5, 120))
            done = [] if is_running else list(phases)
            summary = None
            if not is_running:
                summary = _summary(
                    rng, build_id, entry, status, start, finished, per_phase, unpriced, index
                )
            name = f"{rng.choice(('todo', 'invoices', 'md2html', 'csv', 'shortener'))}-{index % 97}"
            build_rows.append((
                build_id, name, TASKS[index % len(TASKS)], backend, model,
                f"/home/me/builds/{name}", "t" * 64, "s" * 64, format_utc(start),
                format_utc(finished) if finished else None, status,
                json.dumps(summary) if summary else None,
                "the model stopped answering" if status == "failed" else None,
                ",".join(ALL_PHASES), ",".join(done), 1, 4242 if is_running else None,
                RUNNING_HOST if is_running else None, None, json.dumps({"mode": "new"}),
            ))  # fmt: skip
            if is_running:
                tool, detail = rng.choice(TOOLS)
                progress_rows.append((
                    build_id, phases[-1], rng.randint(1, 20), count, tool, detail, 0,
                    1 if phases[-1] == "test" else None, None, None, None,
                    f"{phases[-1]}: working", format_utc(at),
                ))  # fmt: skip
        serve_entry = MODELS[5]
        for _ in range(serve_requests):
            moment = _when(rng, end, days)
            yield request_row(None, None, 1, serve_entry, moment)[0]

    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    # A build's row is written after its requests (the generator learns its totals as it
    # goes), so foreign keys are checked at COMMIT instead of per row.
    conn.execute("PRAGMA defer_foreign_keys = ON")
    try:
        conn.executemany(
            f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})",
            rows_iter(),
        )
        conn.executemany(
            f"INSERT INTO builds ({BUILD_COLUMNS}) VALUES ({', '.join('?' * 20)})", build_rows
        )
        conn.executemany(
            "INSERT INTO build_attempts (build_id, attempt, started_at, finished_at, status,"
            " pid, host) SELECT id, 1, started_at, finished_at, status, pid, host FROM builds"
            " WHERE id = ?",
            [(row[0],) for row in build_rows],
        )
        conn.executemany(
            "INSERT INTO build_progress (build_id, phase, turn, requests, last_tool,"
            " last_tool_detail, last_tool_error, test_iteration, tests_passed, prefill_done,"
            " prefill_total, message, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            progress_rows,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    ledger.close()
    return {
        "path": str(path),
        "builds": builds,
        "running": len(progress_rows),
        "requests": requests,
        "serve_requests": serve_requests,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _summary(
    rng: random.Random,
    build_id: str,
    entry: tuple,
    status: str,
    start: datetime,
    finished: datetime,
    per_phase: dict[str, list[float]],
    unpriced: bool,
    index: int,
) -> dict[str, Any]:
    """A summary.json (docs/build.md's schema) whose figures are the build's own requests."""
    backend, model, _, local = entry

    def tokens(sums: list[float]) -> dict[str, int]:
        keys = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
        return {k: int(sums[i + 1]) for i, k in enumerate(keys)}

    phases = []
    total = [0, 0, 0, 0, 0, 0, 0.0]
    for name in ALL_PHASES:
        sums = per_phase.get(name)
        if sums is None:
            empty = tokens([0] * 7)
            phases.append({"name": name, "status": "not_run", "turns": 0, "requests": 0,
                           "tokens": empty, "cost_usd": 0.0, "summary": None})  # fmt: skip
            continue
        total = [a + b for a, b in zip(total, sums, strict=True)]
        phases.append({
            "name": name, "status": "passed" if name == "test" and status == "completed"
            else "failed" if name == "test" else "finished", "turns": int(sums[0]),
            "requests": int(sums[0]), "tokens": tokens(sums),
            "cost_usd": None if unpriced else round(sums[6], 6),
            "summary": f"{name} done for build {index}",
        })  # fmt: skip
    tests_ran = "test" in per_phase
    iterations = rng.randint(1, 3) if tests_ran else 0
    passed = status == "completed" if tests_ran else None
    read, known = total[3], total[1] + total[3] + total[4] + total[5]
    return {
        "schema_version": 1, "build_id": build_id, "name": f"build-{index}",
        "task": TASKS[index % len(TASKS)], "mode": "new", "workdir": "/home/me/builds/x",
        "backend": backend, "model": model,
        "status": "interrupted" if status == "abandoned" else status, "error": None,
        "started_at": format_utc(start), "finished_at": format_utc(finished),
        "duration_s": round((finished - start).total_seconds(), 1),
        "phases_requested": list(ALL_PHASES), "phases_completed": list(per_phase),
        "phases": phases, "files_created": ["src/app.py", "tests/test_app.py", "README.md"],
        "files_modified": ["pyproject.toml"], "test_command": "python3 -m pytest -q",
        "tests_passed": passed, "test_iterations": iterations,
        "test_runs": [
            {"iteration": i + 1, "exit_code": 0 if passed and i == iterations - 1 else 1,
             "passed": bool(passed and i == iterations - 1), "timed_out": False,
             "duration_s": round(rng.uniform(0.5, 20), 2),
             "results_file": f".foundry/test-results-{i + 1}.txt"}
            for i in range(iterations)
        ],
        "commit": uuid.UUID(int=rng.getrandbits(128)).hex[:40] if status == "completed" else None,
        "requests": int(total[0]), "tokens": tokens(total),
        "cache_hit_rate": round(read / known, 4) if known else None,
        "cost_usd": None if unpriced else round(total[6], 6),
        "uncached_cost_usd": None, "saved_usd": None, "unrecorded": None,
        "prefill_saved_s": round(read / 450, 3) if local else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the ledger file to fill")
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="spread over the last N days")
    parser.add_argument("--running", type=int, default=5, help="builds still running")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    opts = parser.parse_args()
    if opts.db.exists():
        if not opts.force:
            parser.error(f"{opts.db} exists; add --force to replace it")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{opts.db}{suffix}").unlink(missing_ok=True)
    result = make_ledger(
        opts.db,
        builds=opts.builds,
        requests=opts.requests,
        days=opts.days,
        running=opts.running,
        seed=opts.seed,
    )
    size = opts.db.stat().st_size / 1e6
    print(
        f"{result['builds']:,} builds ({result['running']} running), {result['requests']:,}"
        f" requests ({result['serve_requests']:,} outside builds) in {result['seconds']} s;"
        f" {size:.0f} MB at {result['path']}"
    )


if __name__ == "__main__":
    main()
