"""What the openai backend needed from the ledger: a cache read may be unknown (NULL, never a
miss), and each row says whether it ran locally (free) whatever its backend's name. Covers
migration 0002 on a ledger written before it, and what `foundry costs` makes of both."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from foundry.ledger import Ledger, utc_now
from foundry.ledger.schema import MIGRATION_NAMES
from foundry.usage import Usage

WIDE = {"COLUMNS": "200"}
HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-5-5"
SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), TOTAL(cache_read_tokens),"
    " TOTAL(cost_usd), COUNT(*) - COUNT(cost_usd), TOTAL(prefill_saved_ms)"
)
ROLLUP = (
    "SUM(requests), SUM(input_tokens), SUM(output_tokens), TOTAL(cache_read_tokens),"
    " TOTAL(cost_usd), SUM(unpriced_requests), TOTAL(prefill_saved_ms)"
)


def record(ledger: Ledger, usage: Usage, *, backend="openai", model="m", local=None, at=None):
    return ledger.record_request(
        build_id=None, phase="builder", turn=1, backend=backend, model=model, usage=usage,
        started_at=at or utc_now(), local=local,
    )  # fmt: skip


def unknown(prompt: int, output: int = 10) -> Usage:
    return Usage(prompt, output, cache_read_unknown_tokens=prompt)


def test_an_older_ledger_is_migrated_and_keeps_every_figure(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from foundry.ledger.schema import build_migrations

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    build_migrations().apply(Database(conn), stop_before=MIGRATION_NAMES[1])
    conn.execute(
        "INSERT INTO builds (id, name, backend, model, started_at) VALUES"
        " ('b1', 'todo', 'anthropic', 'claude-haiku-4-5', '2026-03-01T10:00:00.000Z')"
    )
    rows = [  # (build, backend, model, started, in, read, cost, version, saved)
        ("b1", "anthropic", HAIKU, "2026-03-01T10:01:00.000Z", 100, 900, 0.5, "2026-08", None),
        ("b1", "anthropic", HAIKU, "2026-03-01T10:20:00.000Z", 50, 950, 0.2, "2026-08", None),
        (None, "mlx", "smollm2-135m", "2026-03-01T11:00:00.000Z", 80, 6000, 0.0, "local", 9000.0),
        (None, "anthropic", OPUS, "2026-03-02T09:00:00Z", 10, 0, None, "2026-08", None),
    ]  # fmt: skip
    conn.executemany(
        "INSERT INTO requests (build_id, backend, model, started_at, input_tokens,"
        " cache_read_tokens, cost_usd, pricing_version, prefill_saved_ms, output_tokens)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 7)",
        rows,
    )
    conn.commit()
    before = conn.execute(f"SELECT {SUMS} FROM requests").fetchone()
    conn.close()

    with Ledger.open(path) as ledger:
        conn = ledger.conn
        applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
        assert applied == list(MIGRATION_NAMES)
        assert conn.execute(f"SELECT {SUMS} FROM requests").fetchone() == before
        assert conn.execute(f"SELECT {ROLLUP} FROM request_rollup").fetchone() == before
        local = conn.execute(
            "SELECT backend, SUM(requests) FROM request_rollup WHERE local GROUP BY backend"
        ).fetchall()
        assert local == [("mlx", 1)]
        # The column now takes NULL, and the triggers keep the rollup exact with it.
        record(ledger, unknown(500), local=True)
        nulls = conn.execute("SELECT COUNT(*) FROM requests WHERE cache_read_tokens IS NULL")
        assert nulls.fetchone()[0] == 1
        totals = conn.execute(
            "SELECT SUM(unknown_cache_requests), SUM(unknown_cache_input_tokens)"
            " FROM request_rollup"
        ).fetchone()
        assert totals == (1, 500)
        conn.execute("DELETE FROM requests WHERE cache_read_tokens IS NULL")
        assert conn.execute(f"SELECT {ROLLUP} FROM request_rollup").fetchone() == before
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"idx_requests_started_at", "idx_requests_build_id"} <= indexes
        assert ledger.build_totals("b1")["cache_read_tokens"] == 1850


def test_costs_leave_unknown_cache_reads_out_of_the_hit_rate_and_say_so(cli, tmp_path) -> None:
    db = tmp_path / "l.db"
    with Ledger.open(db) as ledger:
        # A server that reports cached tokens: 900 of 1000 read.
        record(ledger, Usage(100, 10, cache_read_tokens=900), model="vllm-model", local=True)
        # One that does not (Ollama): 2000 tokens, split unknown.
        record(ledger, unknown(2000), model="ollama-model", local=True)
        record(ledger, unknown(1000), model="ollama-model", local=True)
    report = json.loads(cli("costs", "--db", str(db), "--by", "model", "--json").stdout)
    rows = {row["key"]: row for row in report["rows"]}
    assert rows["vllm-model"]["hit_rate_pct"] == 90.0
    assert rows["vllm-model"]["unknown_cache_requests"] == 0
    assert rows["ollama-model"]["hit_rate_pct"] is None  # unknown, not 0%
    assert rows["ollama-model"]["unknown_cache_requests"] == 2
    assert rows["ollama-model"]["input_tokens"] == 3000
    # Over all rows: 900 read of the 1000 whose split is known, not of 4000.
    assert report["totals"]["hit_rate_pct"] == 90.0
    assert report["totals"]["unknown_cache_requests"] == 2
    table = cli("costs", "--db", str(db), "--by", "model", env=WIDE).stdout
    line = next(x for x in table.splitlines() if x.startswith("ollama-model"))
    assert "unknown" in line
    total = next(x for x in table.splitlines() if x.startswith("Total"))
    assert "90.0%†" in total
    assert "2 request(s) went to a server that did not say" in table
    csv_out = cli("costs", "--db", str(db), "--by", "model", "--csv").stdout
    assert "unknown_cache_requests" in csv_out.splitlines()[0].split(",")


def test_a_build_summary_has_no_hit_rate_when_no_server_said(tmp_path: Path) -> None:
    from foundry.orchestrator.summary import ledger_fields

    with Ledger.open(tmp_path / "l.db") as ledger:
        build = ledger.start_build(
            name="b", task="t", backend="openai", model="m", workdir="/w",
            template_sha256="t", static_sha256="s",
        )  # fmt: skip
        for prompt in (1000, 1200):
            ledger.record_request(
                build_id=build, phase="scout", turn=1, backend="openai", model="m",
                usage=unknown(prompt), started_at=utc_now(), local=True,
            )  # fmt: skip
        fields = ledger_fields(ledger.build_totals(build))
    assert fields["cache_hit_rate"] is None
    assert fields["tokens"]["input"] == 2200 and fields["tokens"]["cache_read"] == 0


@pytest.mark.parametrize(("a", "b"), [(unknown(100), Usage(50, 1, cache_read_tokens=150))])
def test_usage_sums_keep_unknown_apart(a: Usage, b: Usage) -> None:
    total = a + b
    assert total.cache_read_unknown_tokens == 100
    assert total.hit_rate == pytest.approx(150 / 200)  # over the known 200, not 300
    assert a.hit_rate is None and (a + a).hit_rate is None
