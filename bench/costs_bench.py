"""Build a ledger of N request rows and time `foundry costs` over it.

    .venv/bin/python bench/costs_bench.py                 # 1,000,000 rows in a temp dir
    .venv/bin/python bench/costs_bench.py --rows 200000 --db /tmp/l.db --keep

Times each view twice: the query alone (in-process, warm) and the whole command as a user
runs it (a fresh `python -m foundry costs` process: start-up, query, rendering).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.backends.registry import is_local  # noqa: E402
from foundry.ledger import Ledger  # noqa: E402
from foundry.ledger.periods import resolve_zone  # noqa: E402
from foundry.ledger.report import Filters, aggregate  # noqa: E402
from foundry.ledger.store import REQUEST_COLUMNS, format_utc  # noqa: E402
from foundry.pricing import PricingTable  # noqa: E402
from foundry.usage import Usage  # noqa: E402

MODELS = [
    ("anthropic", "claude-sonnet-4-6"),
    ("anthropic", "claude-opus-4-8"),
    ("anthropic", "claude-haiku-4-5-20251001"),
    ("anthropic", "claude-sonnet-5"),
    ("mlx", "smollm2-135m"),
]
PHASES = ["scout", "architect", "builder", "tester"]


def build_ledger(path: Path, rows: int, days: int = 730, seed: int = 7) -> None:
    rng = random.Random(seed)
    pricing = PricingTable()
    ledger = Ledger.open(path, pricing)
    conn = ledger.conn
    start = datetime(2025, 1, 1, tzinfo=UTC)
    # Builds run one after another, each 100-900 requests a few seconds apart, phase by
    # phase, spread evenly over `days`: the shape of a busy user's real ledger.
    sizes: list[int] = []
    while sum(sizes) < rows:
        sizes.append(min(rng.randint(100, 900), rows - sum(sizes)))
    build_every = timedelta(days=days) / len(sizes)
    build_rows = []
    for i, _ in enumerate(sizes):
        backend, model = MODELS[i % len(MODELS)]
        at = format_utc(start + build_every * i)
        build_rows.append(
            (uuid.uuid4().hex, f"build-{i % 50}", "bench", backend, model, "/w", "t", "s", at)
        )
    # Prices per model once, then per-row arithmetic in plain floats: 1M Decimal costs
    # would dominate the set-up time and the bench is about reading, not recording.
    unit = {}
    for backend, model in MODELS:
        c = pricing.cost(Usage(1_000_000, 0, 0, 0, 0), model, local=is_local(backend))
        o = pricing.cost(Usage(0, 1_000_000, 0, 0, 0), model, local=is_local(backend))
        unit[model] = (c.cost_usd or 0.0, o.cost_usd or 0.0, c.pricing_version)

    def rows_iter():
        for b, size in zip(build_rows, sizes, strict=True):
            at = datetime.fromisoformat(b[8])
            backend, model = b[3], b[4]
            pin, pout, version = unit[model]
            for turn in range(size):
                inp, out = rng.randint(50, 3000), rng.randint(20, 2000)
                read = rng.choice((0, 6000, 12000, 30000))
                w5 = rng.choice((0, 0, 0, 800, 5000))
                w1 = rng.choice((0, 0, 0, 0, 5000))
                cost = (inp + read * 0.1 + w5 * 1.25 + w1 * 2) * pin / 1e6 + out * pout / 1e6
                uncached = (inp + read + w5 + w1) * pin / 1e6 + out * pout / 1e6
                saved_ms = read / 200 * 1000 if backend == "mlx" else None
                yield (
                    b[0], PHASES[turn * 4 // size], turn, "turn", backend, model, format_utc(at),
                    1500.0, 300.0, inp, out, read, w5, w1, cost, uncached, version, None,
                    "ok", None, "end_turn", f"req_{turn:06d}_{b[0][:8]}", saved_ms, None,
                    None, None,
                )  # fmt: skip
                at += timedelta(seconds=rng.uniform(3, 30))

    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO builds (id, name, task, backend, model, workdir, template_sha256,"
        " static_sha256, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        build_rows,
    )
    conn.executemany(
        f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})",
        rows_iter(),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    ledger.close()


def time_query(path: Path, by: str, tz: str, repeat: int = 3) -> float:
    ledger = Ledger.open_existing(path)
    assert ledger is not None
    zone = resolve_zone(tz)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        aggregate(ledger.conn, by, zone, Filters())
        times.append(time.perf_counter() - t0)
    ledger.close()
    return min(times)


def time_command(args: list[str], repeat: int = 3) -> float:
    env = {**os.environ, "FOUNDRY_HOME": tempfile.mkdtemp()}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "foundry", "costs", *args],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep an existing --db as it is")
    parser.add_argument("--tz", default="Europe/Berlin")
    parser.add_argument("--no-cli", action="store_true", help="time the queries only")
    opts = parser.parse_args()
    path = opts.db or Path(tempfile.mkdtemp()) / "bench.db"
    if not (opts.keep and path.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        t0 = time.perf_counter()
        build_ledger(path, opts.rows)
        size = path.stat().st_size / 1e6
        print(f"built {opts.rows:,} rows in {time.perf_counter() - t0:.1f} s ({size:.0f} MB)")
    with sqlite3.connect(path) as conn:
        rollup = conn.execute("SELECT COUNT(*) FROM request_rollup").fetchone()[0]
    print(f"request_rollup rows: {rollup:,}")
    print(f"ledger: {path}")
    print(f"{'view':<8} {'query (warm)':>13} {'foundry costs':>14}")
    for by in ("day", "week", "month", "build", "model", "phase"):
        query = time_query(path, by, opts.tz)
        if opts.no_cli:
            print(f"{by:<8} {query * 1000:>10.0f} ms")
            continue
        command = time_command(["--by", by, "--db", str(path), "--tz", opts.tz])
        print(f"{by:<8} {query * 1000:>10.0f} ms {command * 1000:>11.0f} ms")
    if not opts.no_cli:
        small = Path(tempfile.mkdtemp()) / "small.db"
        build_ledger(small, 1000)
        small_ms = time_command(["--db", str(small)]) * 1000
        print(f"small ledger (1,000 rows), whole command: {small_ms:.0f} ms")
        month = ["--since", "2026-06-01", "--until", "2026-06-30"]
        filt = ["--db", str(path), "--tz", opts.tz, *month]
        print(f"one month filtered (--since/--until): {time_command(filt) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
