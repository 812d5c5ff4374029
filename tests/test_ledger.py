"""The ledger file: migrations, recording, costs at record time, bad files, the rollup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from foundry.config import parse_config
from foundry.errors import LedgerError
from foundry.ledger import Ledger, utc_now
from foundry.ledger import store as ledger_store
from foundry.ledger.schema import MIGRATION_NAMES, build_migrations
from foundry.pricing import PricingTable
from foundry.usage import Usage

BUILD_COLUMNS = {
    "id", "name", "task", "backend", "model", "workdir", "template_sha256", "static_sha256",
    "started_at", "finished_at", "status", "summary_json", "error", "phases", "phases_done",
    "attempts", "pid", "host", "pid_start", "settings",
}  # fmt: skip
REQUEST_COLUMNS = {
    "id", "build_id", "phase", "turn", "backend", "model", "started_at", "duration_ms",
    "ttft_ms", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens",
    "cache_write_1h_tokens", "cost_usd", "uncached_cost_usd", "pricing_version", "status",
    "error_class", "stop_reason", "provider_request_id", "purpose", "prefill_saved_ms",
    "prefill_tokens_per_s", "generation_tokens_per_s", "peak_memory_mb", "cost_warning",
}  # fmt: skip


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def new_build(ledger: Ledger, name: str = "todo") -> str:
    return ledger.start_build(
        name=name, task="Build a todo app", backend="anthropic", model="claude-sonnet-4-6",
        workdir="/tmp/todo", template_sha256="t" * 64, static_sha256="s" * 64,
    )  # fmt: skip


def test_migrations_on_a_blank_db_and_twice_in_a_row(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "foundry.db"
    Ledger.open(path).close()
    assert columns(path, "builds") == BUILD_COLUMNS
    assert columns(path, "requests") == REQUEST_COLUMNS
    Ledger.open(path).close()
    with sqlite3.connect(path) as conn:
        applied = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        assert applied == [("foundry", name) for name in MIGRATION_NAMES]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"idx_requests_started_at", "idx_requests_build_id"} <= indexes


def test_migration_names_match_the_migrations_object() -> None:
    assert tuple(m.name for m in build_migrations()._migrations) == MIGRATION_NAMES


def test_recording_a_build_and_its_requests(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        build_id = new_build(ledger)
        assert len(build_id) == 32 and ledger.build(build_id)["status"] == "running"
        usage = Usage(1200, 350, 40_000, 3000, 2000, ttft_ms=420.5, duration_ms=2100.0)
        recorded = ledger.record_request(
            build_id=build_id, phase="scout", turn=1, backend="anthropic",
            model="claude-sonnet-4-6", usage=usage, started_at="2026-11-22T10:00:00+01:00",
            stop_reason="tool_use", provider_request_id="req_1",
        )  # fmt: skip
        assert recorded.id == 1 and recorded.warning is None
        assert recorded.cost.cost_usd == pytest.approx(0.0441)
        ledger.record_request(
            build_id=build_id, phase="scout", turn=2, backend="anthropic",
            model="claude-sonnet-4-6", usage=Usage(10, 0), started_at=utc_now(),
            status="error", error_class="overloaded", purpose="keepalive",
        )  # fmt: skip
        ledger.finish_build(build_id, status="completed", summary={"phases": 4})
        totals = ledger.build_totals(build_id)
        build = ledger.build(build_id)
        row = ledger.conn.execute("SELECT * FROM requests WHERE id = 1").fetchone()
        names = [d[0] for d in ledger.conn.execute("SELECT * FROM requests").description]
    assert totals["requests"] == 2 and totals["input_tokens"] == 1210
    assert totals["cache_write_1h_tokens"] == 2000 and totals["unpriced_requests"] == 0
    assert totals["cost_usd"] == pytest.approx(0.0441 + 10 * 3 / 1e6)
    assert build["status"] == "completed" and build["summary_json"] == '{"phases": 4}'
    assert build["finished_at"].endswith("Z") and build["started_at"] <= build["finished_at"]
    stored = dict(zip(names, row, strict=True))
    assert stored["started_at"] == "2026-11-22T09:00:00.000Z"  # normalized to UTC with Z
    assert stored["pricing_version"] == "2026-08" and stored["ttft_ms"] == 420.5
    assert stored["uncached_cost_usd"] == pytest.approx(0.14385)


def test_cost_is_fixed_at_record_time(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    usage = Usage(1_000_000)
    with Ledger.open(path) as ledger:
        ledger.record_request(
            build_id=None, phase=None, turn=None, backend="anthropic",
            model="claude-sonnet-4-6", usage=usage, started_at=utc_now(),
        )  # fmt: skip
    config = parse_config({"models": {"claude-sonnet-4-6": {"input": 100}}}, "t")
    with Ledger.open(path, PricingTable(config)) as ledger:
        ledger.record_request(
            build_id=None, phase=None, turn=None, backend="anthropic",
            model="claude-sonnet-4-6", usage=usage, started_at=utc_now(),
        )  # fmt: skip
        rows = ledger.conn.execute("SELECT cost_usd, pricing_version FROM requests").fetchall()
    assert rows == [(3.0, "2026-08"), (100.0, "2026-08+config")]


def test_unknown_model_is_null_with_one_warning_per_model(tmp_path: Path, capsys) -> None:
    ledger_store._warned_models.discard("claude-nonesuch")
    with Ledger.open(tmp_path / "l.db") as ledger:
        for _ in range(3):
            recorded = ledger.record_request(
                build_id=None, phase=None, turn=None, backend="anthropic",
                model="claude-nonesuch", usage=Usage(100, 100), started_at=utc_now(),
            )  # fmt: skip
        assert recorded.cost.cost_usd is None and "claude-nonesuch" in recorded.warning
        row = ledger.conn.execute(
            "SELECT cost_usd, uncached_cost_usd, cost_warning FROM requests LIMIT 1"
        ).fetchone()
        totals = ledger.build_totals("none")
    assert row[0] is None and row[1] is None and "claude-nonesuch" in row[2]
    assert capsys.readouterr().err.count("claude-nonesuch") == 1
    assert totals["requests"] == 0


def test_local_rows_cost_zero_and_keep_their_timings(tmp_path: Path) -> None:
    usage = Usage(27, 40, 2806, prefill_saved_ms=31_600.0, prefill_tokens_per_s=200.0,
                  generation_tokens_per_s=35.0, peak_memory_mb=812.5)  # fmt: skip
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.record_request(
            build_id=None, phase="builder", turn=3, backend="mlx", model="smollm2-135m",
            usage=usage, started_at=utc_now(),
        )  # fmt: skip
        row = ledger.conn.execute(
            "SELECT cost_usd, uncached_cost_usd, pricing_version, prefill_saved_ms,"
            " prefill_tokens_per_s, generation_tokens_per_s, peak_memory_mb FROM requests"
        ).fetchone()
    assert row == (0.0, 0.0, "local", 31_600.0, 200.0, 35.0, 812.5)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        with pytest.raises(LedgerError, match="no such build"):
            ledger.record_request(
                build_id="missing", phase=None, turn=None, backend="anthropic",
                model="claude-sonnet-4-6", usage=Usage(), started_at=utc_now(),
            )  # fmt: skip
        with pytest.raises(ValueError, match="status"):
            ledger.finish_build(new_build(ledger), status="done")
        with pytest.raises(LedgerError, match="no build"):
            ledger.finish_build("missing", status="failed")
        with pytest.raises(ValueError, match="ISO-8601"):
            ledger.record_request(
                build_id=None, phase=None, turn=None, backend="anthropic",
                model="claude-sonnet-4-6", usage=Usage(), started_at="yesterday",
            )  # fmt: skip
        assert ledger.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
    with pytest.raises(LedgerError, match="directory"):
        Ledger.open(tmp_path)


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO requests (note) VALUES ('not ours')")


def _other_migrations(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE _sqlite_migrations (id INTEGER PRIMARY KEY,"
                     " migration_set TEXT, name TEXT, applied_at TEXT)")  # fmt: skip
        conn.execute("INSERT INTO _sqlite_migrations VALUES (1, 'otherapp', 'm1', 'x')")


def _corrupt(path: Path) -> None:
    with Ledger.open(path) as ledger:
        ledger.record_request(
            build_id=None, phase=None, turn=None, backend="anthropic",
            model="claude-sonnet-4-6", usage=Usage(1), started_at=utc_now(),
        )  # fmt: skip
        ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ledger.conn.execute("PRAGMA journal_mode = DELETE")
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # keep the header, wreck the schema page
    path.write_bytes(bytes(data))


def _newer(path: Path) -> None:
    Ledger.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('foundry', '9999_from_the_future', 'x')"
        )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"hello, I am a text file\n" * 40), "not a SQLite database"),
        (lambda p: p.write_bytes(bytes(range(256)) * 64), "not a SQLite database"),
        (_foreign, "not a foundry ledger"),
        (_other_migrations, "not a foundry ledger"),
        (_corrupt, "corrupt"),
        (_newer, "newer foundry"),
    ],
    ids=["text", "binary", "foreign", "other-migrations", "corrupt", "newer"],
)
def test_bad_files_get_a_clear_error_and_stay_byte_identical(tmp_path: Path, make, message):
    path = tmp_path / "ledger.db"
    make(path)
    before = path.read_bytes()
    siblings = sorted(p.name for p in tmp_path.iterdir())
    for opener in (Ledger.open, Ledger.open_existing):
        with pytest.raises(LedgerError, match=message) as info:
            opener(path)
        assert str(path) in info.value.message and info.value.hint
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no -wal/-shm left behind


def test_open_existing_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "sub" / "none.db"
    assert Ledger.open_existing(missing) is None
    assert not missing.exists() and not missing.parent.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert Ledger.open_existing(empty) is None and empty.read_bytes() == b""


def test_rollup_matches_the_rows_through_insert_update_delete(tmp_path: Path) -> None:
    sums = (
        "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),"
        " SUM(cache_write_5m_tokens), SUM(cache_write_1h_tokens), TOTAL(cost_usd),"
        " TOTAL(uncached_cost_usd), COUNT(*) - COUNT(cost_usd), TOTAL(prefill_saved_ms)"
    )
    rollup = (
        "SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),"
        " SUM(cache_write_5m_tokens), SUM(cache_write_1h_tokens), TOTAL(cost_usd),"
        " TOTAL(uncached_cost_usd), SUM(unpriced_requests), TOTAL(prefill_saved_ms)"
    )
    with Ledger.open(tmp_path / "l.db") as ledger:
        build_id = new_build(ledger)
        for i in range(40):
            ledger.record_request(
                build_id=build_id if i % 3 else None, phase=["scout", None][i % 2], turn=i,
                backend="mlx" if i % 5 == 0 else "anthropic",
                model="claude-nonesuch" if i % 7 == 0 else "claude-haiku-4-5",
                usage=Usage(i, 2 * i, 100 * i, i % 4, i % 3, prefill_saved_ms=float(i)),
                started_at=f"2026-03-29T00:{i:02d}:30Z",
            )  # fmt: skip
        conn = ledger.conn
        conn.execute("UPDATE requests SET model = 'claude-sonnet-4-6' WHERE id % 4 = 0")
        conn.execute("DELETE FROM requests WHERE id % 6 = 0")

        def close(a, b):
            return all(x == pytest.approx(y) for x, y in zip(a, b, strict=True))

        assert close(
            conn.execute(f"SELECT {sums} FROM requests").fetchone(),
            conn.execute(f"SELECT {rollup} FROM request_rollup").fetchone(),
        )
        buckets = {r[0] for r in conn.execute("SELECT bucket FROM request_rollup")}
        assert buckets == {"2026-03-29T00:00", "2026-03-29T00:15", "2026-03-29T00:30"}
        conn.execute("DELETE FROM requests")
        assert conn.execute("SELECT COUNT(*) FROM request_rollup").fetchone()[0] == 0


def test_a_damaged_byte_in_a_text_column_reads_as_a_replacement_character(tmp_path: Path):
    from foundry.ledger.periods import resolve_zone
    from foundry.ledger.report import Filters, aggregate

    path = tmp_path / "l.db"
    with Ledger.open(path) as ledger:
        ledger.record_request(
            build_id=new_build(ledger), phase="scout", turn=1, backend="anthropic",
            model="claude-sonnet-4-6", usage=Usage(10, 5), started_at=utc_now(),
        )  # fmt: skip
        ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[data.index(b"scout")] = 0xFF  # no longer UTF-8
    path.write_bytes(bytes(data))
    with Ledger.open(path) as ledger:
        rows = aggregate(ledger.conn, "phase", resolve_zone("UTC"), Filters())
    assert [(r.key, r.requests) for r in rows] == [("\ufffdcout", 1)]


def test_local_request_time_falls_in_its_local_period(tmp_path: Path) -> None:
    """The summed duration_ms of local rows, which only the raw rows hold, lands in the same
    period, model and build as the row's other figures, at the edges of a local day too."""
    from foundry.ledger.periods import resolve_zone
    from foundry.ledger.report import Filters, aggregate

    path = tmp_path / "l.db"
    with Ledger.open(path) as ledger:
        build = new_build(ledger)
        for started_at, ms in [
            ("2026-03-29T21:59:59.999Z", 1.0),  # Berlin 03-29 23:59:59.999 (CEST)
            ("2026-03-29T22:00:00.000Z", 20.0),  # Berlin 03-30 00:00, the day's first instant
            ("2026-03-31T21:59:59.999Z", 300.0),  # Berlin 03-31, the last instant
        ]:
            ledger.record_request(
                build_id=build, phase="builder", turn=1, backend="mlx", model="smollm2-135m",
                usage=Usage(10, duration_ms=ms, prefill_saved_ms=1.0), started_at=started_at,
            )  # fmt: skip
        ledger.record_request(
            build_id=build, phase="builder", turn=1, backend="anthropic",
            model="claude-haiku-4-5", usage=Usage(10, duration_ms=4000.0),
            started_at="2026-03-30T10:00:00.000Z",
        )  # fmt: skip
        zone = resolve_zone("Europe/Berlin")

        def times(by: str, **filters) -> dict:
            rows = aggregate(ledger.conn, by, zone, Filters(**filters))
            return {(r.key, r.local): r.duration_ms for r in rows}

        assert times("day") == {
            ("2026-03-29", True): 1.0,
            ("2026-03-30", False): None,  # an API row's time is not summed
            ("2026-03-30", True): 20.0,
            ("2026-03-31", True): 300.0,
        }
        assert times("month") == {("2026-03", False): None, ("2026-03", True): 321.0}
        assert times("build") == {(build, False): None, (build, True): 321.0}
        assert times("model", backend="anthropic") == {("claude-haiku-4-5", False): None}


def test_a_write_interrupted_after_begin_does_not_block_the_next(tmp_path) -> None:
    """Ctrl-C or SIGTERM can land right after BEGIN IMMEDIATE returned (seen in a build
    killed as it started a phase): the next write, the build's final status, still lands."""
    from foundry.ledger import Ledger

    with Ledger.open(tmp_path / "ledger.db") as ledger:
        build_id = ledger.start_build(
            name="x", task="t", backend="anthropic", model="m", workdir=str(tmp_path),
            template_sha256="a", static_sha256="b",
        )  # fmt: skip
        ledger.conn.execute("BEGIN IMMEDIATE")  # what the interrupted write left open
        ledger.finish_build(build_id, status="interrupted", summary=None, error="SIGTERM")
        row = ledger.build(build_id)
    assert row is not None and (row["status"], row["error"]) == ("interrupted", "SIGTERM")
