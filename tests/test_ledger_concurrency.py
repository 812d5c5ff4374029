"""Several real processes writing to one ledger at once: no lost row, no 'database is locked'."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from foundry.ledger import Ledger
from foundry.ledger.schema import MIGRATION_NAMES

WORKER = """
import sys
import time
from pathlib import Path
from foundry.usage import Usage
from foundry.ledger import Ledger, utc_now

path, barrier = Path(sys.argv[1]), Path(sys.argv[4])
worker, count = int(sys.argv[2]), int(sys.argv[3])
while not barrier.exists():  # start together, so the very first open races too
    time.sleep(0.001)
ledger = Ledger.open(path)
build = ledger.start_build(name=f"w{worker}", task="t", backend="anthropic",
    model="claude-haiku-4-5", workdir="/w", template_sha256="t", static_sha256="s")
for turn in range(count):
    ledger.record_request(build_id=build, phase="builder", turn=turn, backend="anthropic",
        model="claude-haiku-4-5", usage=Usage(1000, 10), started_at=utc_now())
    # A reader in the middle of the writers: WAL lets it read without blocking them.
    ledger.build_totals(build)
ledger.finish_build(build, status="completed")
ledger.close()
"""

WORKERS, PER_WORKER = 6, 60


def test_parallel_processes_lose_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "foundry.db"  # does not exist yet: creation races too
    barrier = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(i), str(PER_WORKER), str(barrier)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WORKERS)
    ]
    barrier.touch()
    errors = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _ in errors), errors
    assert not any("locked" in err for _, err in errors)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == WORKERS * PER_WORKER
        per_build = conn.execute(
            "SELECT b.name, COUNT(r.id), b.status FROM builds b JOIN requests r"
            " ON r.build_id = b.id GROUP BY b.id ORDER BY b.name"
        ).fetchall()
        rollup = conn.execute(
            "SELECT SUM(requests), TOTAL(cost_usd) FROM request_rollup"
        ).fetchone()
        migrations = conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0]
    assert per_build == [(f"w{i}", PER_WORKER, "completed") for i in range(WORKERS)]
    # haiku 4.5: 1000 in x $1 + 10 out x $5 per MTok = $0.00105 a request
    assert rollup[0] == WORKERS * PER_WORKER
    assert abs(rollup[1] - WORKERS * PER_WORKER * 0.00105) < 1e-9
    assert migrations == len(MIGRATION_NAMES)  # each applied exactly once, despite the race


def test_threads_of_one_process_share_a_ledger(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from foundry.ledger import utc_now
    from foundry.usage import Usage

    with Ledger.open(tmp_path / "l.db") as ledger:

        def record(i: int) -> int:
            return ledger.record_request(
                build_id=None, phase=None, turn=i, backend="anthropic",
                model="claude-haiku-4-5", usage=Usage(1), started_at=utc_now(),
            ).id  # fmt: skip

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(record, range(200)))
        assert sorted(ids) == list(range(1, 201))
