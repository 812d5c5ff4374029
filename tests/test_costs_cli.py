"""`foundry costs` through the CLI: grouping in time zones, filters, budgets, output shapes."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.backends.base import Usage
from foundry.ledger import Ledger, utc_now

WIDE = {"COLUMNS": "200"}


def record(path: Path, started_at: str, tokens: int = 1_000_000, *, model="claude-haiku-4-5",
           backend="anthropic", build_id=None, phase="builder", usage=None) -> None:  # fmt: skip
    """One request; by default haiku 4.5 input at $1/MTok, so `tokens` millionths of a dollar."""
    with Ledger.open(path) as ledger:
        ledger.record_request(
            build_id=build_id, phase=phase, turn=1, backend=backend, model=model,
            usage=usage or Usage(tokens), started_at=started_at,
        )  # fmt: skip


def costs_json(cli, *args: str) -> dict:
    result = cli("costs", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def keys(report: dict) -> dict[str, float]:
    return {row["key"]: row["cost_usd"] for row in report["rows"]}


def test_missing_and_empty_ledger_print_a_friendly_line_and_create_nothing(cli, isolated_env):
    result = cli("costs")
    assert result.exit_code == 0 and "No requests recorded yet" in result.stdout
    assert not (isolated_env / "foundry.db").exists()
    other = isolated_env / "elsewhere" / "x.db"
    result = cli("costs", "--db", str(other), "--json")
    assert result.exit_code == 0 and not other.exists() and not other.parent.exists()
    report = json.loads(result.stdout)
    assert report["rows"] == [] and report["totals"]["requests"] == 0 and report["message"]
    Ledger.open(other).close()  # a ledger with no requests yet
    result = cli("costs", "--db", str(other))
    assert result.exit_code == 0 and "No requests recorded yet" in result.stdout


def test_bad_file_is_an_error_and_left_untouched(cli, tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database at all\n" * 50)
    before = path.read_bytes()
    result = cli("costs", "--db", str(path))
    assert result.exit_code == 1 and "not a SQLite database" in result.stderr
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


# 2026-03-29 01:00Z: Europe/Berlin moves from +01:00 to +02:00.
DST_ROWS = [
    ("2026-03-28T23:30:00Z", 1),  # Berlin 03-29 00:30 CET      | UTC 03-28 | New York 03-28
    ("2026-03-29T22:30:00Z", 2),  # Berlin 03-30 00:30 CEST     | UTC 03-29 | New York 03-29
    ("2026-03-31T22:30:00Z", 4),  # Berlin 04-01 00:30 (April)  | UTC 03-31 | New York 03-31
    ("2026-04-01T03:30:00Z", 8),  # Berlin 04-01 05:30          | UTC 04-01 | New York 03-31
]


@pytest.mark.parametrize(
    ("tz", "by", "expected"),
    [
        ("Europe/Berlin", "day", {"2026-03-29": 1, "2026-03-30": 2, "2026-04-01": 12}),
        ("UTC", "day", {"2026-03-28": 1, "2026-03-29": 2, "2026-03-31": 4, "2026-04-01": 8}),
        ("America/New_York", "day", {"2026-03-28": 1, "2026-03-29": 2, "2026-03-31": 12}),
        ("Europe/Berlin", "month", {"2026-03": 3, "2026-04": 12}),
        ("UTC", "month", {"2026-03": 7, "2026-04": 8}),
        ("America/New_York", "month", {"2026-03": 15}),
        # ISO weeks keyed by their Monday: 2026-03-23 and 2026-03-30.
        ("Europe/Berlin", "week", {"2026-03-23": 1, "2026-03-30": 14}),
        ("UTC", "week", {"2026-03-23": 3, "2026-03-30": 12}),  # 03-29 is a Sunday
        ("America/New_York", "week", {"2026-03-23": 3, "2026-03-30": 12}),
        ("Pacific/Kiritimati", "day", {"2026-03-29": 1, "2026-03-30": 2, "2026-04-01": 12}),
    ],
)
def test_grouping_across_time_zones_dst_and_month_ends(cli, tmp_path, tz, by, expected):
    db = tmp_path / "l.db"
    for started_at, millionths in DST_ROWS:
        record(db, started_at, millionths)
    report = costs_json(cli, "--db", str(db), "--tz", tz, "--by", by)
    assert report["time_zone"] == tz and report["by"] == by
    assert keys(report) == {k: v / 1e6 for k, v in expected.items()}
    assert report["totals"]["cost_usd"] == pytest.approx(15 / 1e6)


def test_quarter_hour_zones_and_historic_offsets(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    record(db, "2026-01-31T18:10:00Z", 1)  # Kathmandu (+05:45): 01-31 23:55
    record(db, "2026-01-31T18:20:00Z", 2)  # Kathmandu: 02-01 00:05
    report = costs_json(cli, "--db", str(db), "--tz", "Asia/Kathmandu", "--by", "month")
    assert keys(report) == {"2026-01": 1e-6, "2026-02": 2e-6}
    # Monrovia was -00:44:30 until 1972: its midnights fall off the quarter hours, so the
    # report must read the raw rows (the rollup's buckets would put this on 06-01).
    old = tmp_path / "old.db"
    record(old, "1971-06-01T00:30:00Z", 5)
    report = costs_json(cli, "--db", str(old), "--tz", "Africa/Monrovia")
    assert keys(report) == {"1971-05-31": 5e-6}


def test_since_and_until_are_local_days_inclusive(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    for started_at, millionths in DST_ROWS:
        record(db, started_at, millionths)
    args = ["--db", str(db), "--tz", "Europe/Berlin"]
    report = costs_json(cli, *args, "--since", "2026-03-30", "--until", "2026-03-31")
    assert keys(report) == {"2026-03-30": 2e-6}
    assert report["filters"]["since_utc"] == "2026-03-29T22:00:00+00:00"
    report = costs_json(cli, *args, "--since", "2026-04-01", "--by", "model")
    assert keys(report) == {"claude-haiku-4-5": 12e-6}
    result = cli("costs", *args, "--since", "2026-04-02")
    assert result.exit_code == 0 and "No requests match" in result.stdout


def _mixed_ledger(db: Path) -> dict[str, str]:
    with Ledger.open(db) as ledger:
        ids = {
            name: ledger.start_build(
                name=name,
                task="t",
                backend=backend,
                model=model,
                workdir="/w",
                template_sha256="t",
                static_sha256="s",
            )  # fmt: skip
            for name, backend, model in [
                ("todo", "anthropic", "claude-sonnet-4-5-20250929"),
                ("local", "mlx", "smollm2-135m"),
            ]
        }
    now = utc_now()
    # sonnet 4.5 ($3/$15): 1,000 in + 100 out + 9,000 read + 2,000 1h write
    # = 0.003 + 0.0015 + 0.0027 + 0.012 = 0.0192; uncached = 12,000 x $3 + 0.0015 = 0.0375
    sonnet = Usage(1000, 100, 9000, 0, 2000)
    record(db, now, model="claude-sonnet-4-5-20250929", build_id=ids["todo"], phase="scout",
           usage=sonnet)  # fmt: skip
    record(db, now, model="claude-sonnet-4-5", build_id=ids["todo"], phase="builder",
           usage=sonnet)  # fmt: skip
    record(db, now, model="smollm2-135m", backend="mlx", build_id=ids["local"], phase="builder",
           usage=Usage(27, 50, 2806, prefill_saved_ms=14_030.0))  # fmt: skip
    record(db, now, model="claude-nonesuch", phase=None, usage=Usage(10))
    return ids


def test_json_shape_totals_and_local_rows(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    ids = _mixed_ledger(db)
    report = costs_json(cli, "--db", str(db), "--by", "build")
    assert set(report) == {
        "ledger", "by", "time_zone", "filters", "rows", "totals", "budgets", "warnings", "message"
    }  # fmt: skip
    rows = {row["label"].split()[0]: row for row in report["rows"]}
    todo, local, none = rows["todo"], rows["local"], rows["(no"]
    assert todo["key"] == ids["todo"] and todo["build"]["name"] == "todo"
    assert todo["requests"] == 2 and todo["cache_write_1h_tokens"] == 4000
    assert todo["cost_usd"] == pytest.approx(0.0384) and todo["uncached_cost_usd"] == 0.075
    assert todo["saved_usd"] == pytest.approx(0.0366) and todo["saved_pct"] == 48.8
    assert todo["hit_rate_pct"] == 75.0  # 18,000 read / 24,000 total input
    assert isinstance(todo["input_tokens"], int) and todo["kind"] == "api"
    assert local["kind"] == "local" and local["cost_usd"] == 0.0
    assert local["tokens_reused"] == 2806 and local["prefill_saved_s"] == 14.03
    assert none["unpriced_requests"] == 1 and none["cost_usd"] == 0.0
    totals = report["totals"]
    assert totals["requests"] == 4 and totals["unpriced_requests"] == 1
    assert totals["cost_usd"] == pytest.approx(0.0384) and totals["prefill_saved_s"] == 14.03
    assert report["budgets"] == {"daily": None, "monthly": None}


def test_filters_by_build_model_family_and_backend(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _mixed_ledger(db)
    base = ["--db", str(db), "--by", "model"]
    # The family name matches its dated id too, through the pricing table.
    report = costs_json(cli, *base, "--model", "claude-sonnet-4-5")
    assert report["totals"]["requests"] == 2
    assert set(report["filters"]["models"]) == {"claude-sonnet-4-5", "claude-sonnet-4-5-20250929"}
    # No substring guesses: "claude-sonnet" is nothing.
    assert costs_json(cli, *base, "--model", "claude-sonnet")["rows"] == []
    assert costs_json(cli, *base, "--backend", "mlx")["totals"]["requests"] == 1
    report = costs_json(cli, "--db", str(db), "--by", "phase", "--build", "todo")
    assert {r["key"]: r["requests"] for r in report["rows"]} == {"scout": 1, "builder": 1}


def test_csv_shape(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _mixed_ledger(db)
    result = cli("costs", "--db", str(db), "--by", "phase", "--csv")
    assert result.exit_code == 0
    lines = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["key"], r["kind"]) for r in lines] == [
        ("builder", "api"), ("scout", "api"), ("", "api"), ("builder", "local"), ("", "total")
    ]  # fmt: skip
    assert lines[-1]["requests"] == "4" and float(lines[-1]["cost_usd"]) == pytest.approx(0.0384)
    assert lines[3]["prefill_saved_s"] == "14.03" and lines[2]["label"] == "(none)"


def test_table_shows_every_column_local_rows_and_unpriced_marks(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _mixed_ledger(db)
    result = cli("costs", "--db", str(db), "--by", "model", env=WIDE)
    assert result.exit_code == 0
    out = result.stdout
    for header in ("Model", "Reqs", "Input", "Output", "Write 5m", "Write 1h", "Read", "Hit",
                   "Cost", "Uncached", "Saved", "Saved %", "Total"):  # fmt: skip
        assert header in out
    assert "local" in out and "14.0 s" in out and "$0.0384*" in out
    assert "no price" in result.stderr
    narrow = cli("costs", "--db", str(db), env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and "Writes" in narrow.stdout and "…" not in narrow.stdout


@pytest.mark.parametrize(
    ("millionths", "expected"),
    [(700_000, None), (850_000, "past 80%"), (950_000, "past 90%"), (1_200_000, "over the")],
)
def test_budget_warnings_at_80_90_100(cli, tmp_path, millionths, expected) -> None:
    db = tmp_path / "l.db"
    record(db, utc_now(), millionths)
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"budgets": {"daily_usd": 1.0, "monthly_usd": 100.0}}))
    result = cli("costs", "--db", str(db), "--config", str(config))
    assert result.exit_code == 0
    assert "Daily budget" in result.stdout and "Monthly budget" in result.stdout
    if expected:
        assert f"daily budget: ${millionths / 1e6:.4f} spent" in result.stderr
        assert expected in result.stderr
    else:
        assert "budget" not in result.stderr
    report = costs_json(cli, "--db", str(db), "--config", str(config))
    daily = report["budgets"]["daily"]
    assert daily["spent_usd"] == pytest.approx(millionths / 1e6) and daily["limit_usd"] == 1.0
    assert daily["level"] == {None: None, "past 80%": 80, "past 90%": 90, "over the": 100}[expected]
    assert report["budgets"]["monthly"]["level"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "year"], "not a view"),
        (["--tz", "Mars/Olympus"], "unknown time zone"),
        (["--since", "last tuesday"], "not a date"),
        (["--since", "9999999d"], "reaches back before year 1"),
        (["--since", "2026-05-02", "--until", "2026-05-01"], "after --until"),
        (["--json", "--csv"], "cannot be combined"),
    ],
)
def test_usage_errors(cli, args, message) -> None:
    result = cli("costs", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_costs_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _mixed_ledger(db)
    code = (
        "import sys\nfrom foundry.cli import app\n"
        f"try:\n    app(['costs', '--db', {str(db)!r}])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = ('anthropic', 'mlx', 'mlx_lm', 'numpy', 'sqlite_utils', 'transformers')\n"
        "print('HEAVY', code, sorted(m for m in heavy if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY 0 []" in out.stderr, out.stderr


def test_the_report_never_writes_to_an_up_to_date_ledger(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    record(db, utc_now(), 5)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db.read_bytes()
    assert cli("costs", "--db", str(db)).exit_code == 0
    assert db.read_bytes() == before


def test_a_local_only_total_shows_time_saved_not_zero_dollars(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    for saved_ms in (14_030.0, 6_000.0):
        record(db, utc_now(), model="smollm2-135m", backend="mlx",
               usage=Usage(27, 50, 2806, prefill_saved_ms=saved_ms))  # fmt: skip
    result = cli("costs", "--db", str(db), "--by", "model", env=WIDE)
    assert result.exit_code == 0, result.stderr
    total = [line for line in result.stdout.splitlines() if line.startswith("Total")][0]
    assert "local" in total and "20.0 s" in total and "$" not in total
    report = costs_json(cli, "--db", str(db))
    assert report["totals"]["kind"] == "total" and report["totals"]["prefill_saved_s"] == 20.03


def _local_ledger(db: Path, model: str = "smollm2-135m") -> None:
    """Two local requests that took 7.1 min between them and saved 46.6 min of prefill,
    and one API request (its time is not a local model's)."""
    for duration_ms, saved_ms in ((200_000.0, 1_000_000.0), (226_000.0, 1_796_000.0)):
        usage = Usage(27, 50, 2806, duration_ms=duration_ms, prefill_saved_ms=saved_ms)
        record(db, utc_now(), model=model, backend="mlx", usage=usage)
    record(db, utc_now(), usage=Usage(1000, duration_ms=3_000.0))


def test_time_saved_is_shown_beside_the_time_the_requests_took(cli, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _local_ledger(db)
    result = cli("costs", "--db", str(db), "--by", "model", env=WIDE)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())  # the note may be wrapped
    assert (
        "local model requests took 7.1 min; without the cache about 53.7 min "
        "(46.6 min of prefill saved)" in out
    ), result.stdout
    report = costs_json(cli, "--db", str(db), "--by", "model")
    local = next(r for r in report["rows"] if r["kind"] == "local")
    api = next(r for r in report["rows"] if r["kind"] == "api")
    assert local["duration_s"] == 426.0 and local["without_cache_s"] == 3222.0
    assert local["prefill_saved_s"] == 2796.0  # the old keys stay as they were
    # Like tokens_reused and prefill_saved_s, the times are local figures (the API request's
    # 3 s is in no total): caching an API prompt saves money, not a measured time.
    assert api["duration_s"] is None and api["without_cache_s"] is None
    totals = report["totals"]
    assert totals["duration_s"] == 426.0 and totals["without_cache_s"] == 3222.0
    assert totals["prefill_saved_s"] == 2796.0
    # The same figures by day (the rollup's periods) and in the CSV, appended at the end.
    day = costs_json(cli, "--db", str(db))
    assert day["totals"]["without_cache_s"] == 3222.0
    assert [r["duration_s"] for r in day["rows"]] == [None, 426.0]
    api_only = tmp_path / "api.db"
    record(api_only, utc_now(), usage=Usage(1000, duration_ms=3_000.0))
    totals = costs_json(cli, "--db", str(api_only))["totals"]
    assert totals["duration_s"] is None and totals["without_cache_s"] is None
    lines = cli("costs", "--db", str(db), "--csv").stdout.splitlines()
    assert lines[0].endswith(",unknown_cache_requests,duration_s,without_cache_s")


LONG_MODEL = "hf.co/bartowski/Qwen2.5-Coder-32B-Instruct-GGUF:Q4_K_M-with-a-long-suffix"
LONG_BUILD = "customer-portal-rewrite-with-a-rather-long-descriptive-build-name"


def test_a_piped_table_keeps_every_column_and_cell_whole(tmp_path: Path) -> None:
    """Piped into a file or `| cat` with no $COLUMNS, rich would assume 80 columns; the
    table instead has no width limit, so nothing is dropped or cut."""
    db = tmp_path / "l.db"
    _local_ledger(db, model=LONG_MODEL)
    with Ledger.open(db) as ledger:
        build = ledger.start_build(name=LONG_BUILD, task="t", backend="anthropic",
                                   model="claude-haiku-4-5", workdir="/w",
                                   template_sha256="t", static_sha256="s")  # fmt: skip
    record(db, utc_now(), 123_456_789, build_id=build,
           usage=Usage(123_456_789, 23_456_789, 345_678_901, 12_345_678, 2_345_678))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    for by, long_name in (("model", LONG_MODEL), ("build", LONG_BUILD)):
        out = subprocess.run(
            [sys.executable, "-m", "foundry", "costs", "--db", str(db), "--by", by],
            capture_output=True, text=True, env=env, check=True,
        ).stdout  # fmt: skip
        assert "…" not in out and long_name in out, out
        header = next(line for line in out.splitlines() if line.startswith(("Model", "Build")))
        for column in ("Input", "Output", "Write 5m", "Write 1h", "Uncached", "Saved %"):
            assert column in header, out
        assert "are hidden" not in out
        total = next(line for line in out.splitlines() if line.startswith("Total"))
        assert "123.5M" in total and "23.5M" in total and "345.7M" in total
