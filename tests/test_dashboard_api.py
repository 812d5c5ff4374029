"""`foundry dashboard`'s JSON API over real HTTP, on ledgers the tests fill: the costs equal
`foundry costs --json`, the builds list pages and filters, a build's page, the ledger is never
written, the serve's stats are fetched server-side, and the security rules hold."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from foundry.config import load_config
from foundry.dashboard.app import CSP
from foundry.dashboard.run import Dashboard, DashboardOptions, import_web_libraries
from foundry.errors import LedgerError, UsageError
from foundry.ledger import Ledger, utc_now
from foundry.usage import Usage
from tests.test_dashboard_support import Filled, costs_json, fill_ledger, get, running_dashboard

STATIC = Path(__file__).resolve().parent.parent / "foundry" / "dashboard" / "static"
BENCH = Path(__file__).resolve().parent.parent / "bench" / "make_ledger.py"


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    return fill_ledger(tmp_path / "ledger.db")


@pytest.fixture
def dashboard(filled: Filled) -> Iterator[Dashboard]:
    with running_dashboard(filled.path) as server:
        yield server


def test_costs_are_the_numbers_foundry_costs_prints(filled: Filled, dashboard: Dashboard) -> None:
    for by, extra in (("day", ["--since", "7d"]), ("model", []), ("build", []), ("phase", [])):
        pairs = zip(extra[::2], extra[1::2], strict=True)
        query = "&".join(f"{k.lstrip('-')}={v}" for k, v in pairs)
        status, _, page = get(f"{dashboard.url}/api/costs?by={by}&tz=UTC&{query}")
        assert status == 200
        expected = costs_json(filled.path, "--by", by, "--tz", "UTC", *extra)
        assert page == expected, by
        assert page["rows"], by
    # Local rows are their own rows, unpriced requests are counted as such.
    kinds = {row["kind"] for row in page["rows"]}
    assert kinds == {"api", "local"}
    assert page["totals"]["unpriced_requests"] == 1
    # The backend table: each row is `foundry costs --backend B`'s totals.
    status, _, backends = get(f"{dashboard.url}/api/costs/backends?tz=UTC")
    assert status == 200
    assert [row["key"] for row in backends["rows"]] == ["anthropic", "mlx", "openai"]
    for row in backends["rows"]:
        cli_totals = costs_json(filled.path, "--backend", row["key"], "--tz", "UTC")["totals"]
        assert {k: v for k, v in row.items() if k not in ("key", "label", "local")} == {
            k: v for k, v in cli_totals.items() if k not in ("key", "label")
        }
    assert [row["local"] for row in backends["rows"]] == [False, True, False]


def test_costs_api_refuses_bad_input_with_a_message(dashboard: Dashboard) -> None:
    status, _, body = get(f"{dashboard.url}/api/costs?by=hour")
    assert status == 400 and "not a view" in body["error"]
    status, _, body = get(f"{dashboard.url}/api/costs?since=someday")
    assert status == 400 and "is not a date" in body["error"]
    status, _, body = get(f"{dashboard.url}/api/costs?colour=red")
    assert status == 400 and "unknown parameter" in body["error"]


def _load_make_ledger():
    spec = importlib.util.spec_from_file_location("make_ledger", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_ledger


def test_builds_list_pages_newest_first_and_filters(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    _load_make_ledger()(db, builds=130, requests=1300, running=3, days=10)
    with sqlite3.connect(db) as conn:
        order = "SELECT id FROM builds ORDER BY started_at DESC, rowid DESC"
        newest_first = [r[0] for r in conn.execute(order)]
        completed = conn.execute("SELECT COUNT(*) FROM builds WHERE status = 'completed'")
        completed = completed.fetchone()
        todo = conn.execute("SELECT COUNT(*) FROM builds WHERE name LIKE 'todo%'").fetchone()
        spend = dict(conn.execute("SELECT build_id, TOTAL(cost_usd) FROM requests GROUP BY 1"))
    with running_dashboard(db) as server:
        seen = []
        for page in (1, 2, 3):
            status, _, body = get(f"{server.url}/api/builds?page={page}")
            assert status == 200
            assert (body["total"], body["pages"], body["page"]) == (130, 3, page)
            seen += [b["id"] for b in body["builds"]]
        assert seen == newest_first
        first = body["builds"][0]
        assert first["cost_usd"] == pytest.approx(spend.get(first["id"], 0.0))
        _, _, body = get(f"{server.url}/api/builds?status=completed&per_page=200")
        assert body["total"] == completed[0] == len(body["builds"])
        assert {b["status"] for b in body["builds"]} == {"completed"}
        _, _, body = get(f"{server.url}/api/builds?name=todo&per_page=200")
        assert body["total"] == todo[0] > 0
        assert all(b["name"].startswith("todo") for b in body["builds"])
        _, _, running = get(f"{server.url}/api/builds/running")
        assert len(running["builds"]) == 3
        assert all(b["progress"]["phase"] for b in running["builds"])
        for bad in ("page=0", "per_page=500", "status=exploded", "page=x"):
            status, _, body = get(f"{server.url}/api/builds?{bad}")
            assert status == 400 and body["error"], bad


def test_a_builds_page_has_its_summary_totals_and_progress(
    filled: Filled, dashboard: Dashboard
) -> None:
    status, _, body = get(f"{dashboard.url}/api/builds/{filled.finished}")
    assert status == 200
    assert body["build"]["name"] == "calc" and body["status"] == "completed"
    assert [p["name"] for p in body["summary"]["phases"]] == ["builder", "test"]
    assert body["summary"]["files_created"] == ["calc.py", "test_calc.py"]
    assert body["summary"]["test_runs"][0]["passed"] is True
    with Ledger.open(filled.path) as ledger:
        assert body["totals"] == ledger.build_totals(filled.finished)
    assert body["totals"]["requests"] == 5
    assert [a["status"] for a in body["attempts"]] == ["completed"]
    assert "pid" not in body["build"] and "host" not in body["build"]
    _, _, body = get(f"{dashboard.url}/api/builds/{filled.running}")
    assert body["progress"]["phase"] == "builder" and body["progress"]["last_tool"] == "write_file"
    assert body["summary"] is None
    status, _, body = get(f"{dashboard.url}/api/builds/{'0' * 32}")
    assert status == 404 and "no build" in body["error"]


def _digest(path: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (path, Path(f"{path}-wal"))
        if p.exists()
    }


def test_the_ledger_is_never_written(filled: Filled) -> None:
    # A running build whose process is gone: any Ledger.open would mark it abandoned.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(filled.path) as conn:
        conn.execute("UPDATE builds SET pid = ? WHERE id = ?", [gone.pid, filled.running])
    before = _digest(filled.path)
    with running_dashboard(filled.path) as server:
        for path in (
            "/", "/api/builds", "/api/builds/running", f"/api/builds/{filled.running}",
            "/api/costs", "/api/costs?by=week", "/api/costs/backends", "/api/serve",
        ):  # fmt: skip
            status, _, _ = get(server.url + path)
            assert status in (200, 502), path
    assert _digest(filled.path) == before
    with sqlite3.connect(filled.path) as conn:
        status = conn.execute("SELECT status FROM builds WHERE id = ?", [filled.running])
        assert status.fetchone()[0] == "running"


def _options(db: Path, **kw) -> DashboardOptions:
    return DashboardOptions(db=db, config=load_config(None), port=0, **kw)


def test_a_missing_or_foreign_ledger_is_a_clear_error_and_left_alone(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        Dashboard(_options(tmp_path / "nothing.db"))
    assert not (tmp_path / "nothing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError, match="not a SQLite database"):
        Dashboard(_options(junk))
    assert junk.read_bytes() == b"not a database at all" * 100
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    before = other.read_bytes()
    with pytest.raises(LedgerError, match="not a foundry ledger"):
        Dashboard(_options(other))
    assert other.read_bytes() == before
    # A ledger from an older foundry: migrating it is a write, left to the recording tools.
    older = tmp_path / "older.db"
    Ledger.open(older).close()
    with sqlite3.connect(older) as conn:
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0005_build_progress'")
        conn.execute("DROP TABLE build_progress")
    before = older.read_bytes()
    with pytest.raises(LedgerError, match="needs migrating"):
        Dashboard(_options(older))
    assert older.read_bytes() == before
    # As a user sees it: one line, exit 1, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "dashboard", "--db", str(tmp_path / "nothing.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no ledger at" in result.stderr and "Traceback" not in result.stderr


def test_only_loopback_unless_asked(filled: Filled) -> None:
    with pytest.raises(UsageError, match="--allow-remote"):
        Dashboard(_options(filled.path, host="0.0.0.0"))
    with pytest.raises(UsageError, match="--allow-remote-serve"):
        Dashboard(_options(filled.path, serve_url="http://192.0.2.7:8082"))
    with pytest.raises(UsageError, match="only scheme, host and port"):
        Dashboard(_options(filled.path, serve_url="http://127.0.0.1:8082/elsewhere"))
    server = Dashboard(_options(filled.path, host="0.0.0.0", allow_remote=True))
    server.sock.close()


def test_security_headers_host_check_and_no_inline_script(dashboard: Dashboard) -> None:
    for path in ("/", "/static/app.js", "/api/builds", "/api/nothing", "/static/nothing.js"):
        _, headers, _ = get(dashboard.url + path)
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff"
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
    status, _, body = get(f"{dashboard.url}/api/builds", {"Host": "evil.example:8090"})
    assert status == 421 and "builds" not in json.dumps(body)

    class Scripts(HTMLParser):
        inline: list[str] = []
        handlers: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.handlers += [name for name, _ in attrs if name.startswith("on")]
            self.current = tag if tag == "script" and not dict(attrs).get("src") else None

        def handle_data(self, data: str) -> None:
            if getattr(self, "current", None) == "script" and data.strip():
                self.inline.append(data)

    parser = Scripts()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.inline == [] and parser.handlers == []
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{script.name} uses {sink}"


class _FakeServe(http.server.BaseHTTPRequestHandler):
    """Answers /cache/stats as foundry serve does (or as told)."""

    answer: tuple[int, bytes, dict[str, str]] = (200, b"{}", {})
    seen_keys: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen_keys.append(self.headers.get("x-api-key"))
        status, body, headers = self.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_serve_stats_are_fetched_server_side(filled: Filled) -> None:
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServe)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{fake.server_address[1]}"
    stats = {
        "model": "smollm2-135m",
        "since_start": {"requests": 7, "hit_rate": 0.5, "l1_hits": 3, "misses": 3},
        "l1": {"entries": [{"tokens": 900, "bytes": 1000, "hits": 2, "age_s": 1, "idle_s": 0}]},
        "memory": {"kv_bytes_in_memory": 1000, "budget_bytes": 5000},
    }
    try:
        with running_dashboard(filled.path, serve_url=url, serve_api_key="k3y") as server:
            _FakeServe.answer = (200, json.dumps(stats).encode(), {})
            status, _, body = get(f"{server.url}/api/serve")
            assert status == 200 and body == {"available": True, "url": url, "stats": stats}
            assert _FakeServe.seen_keys[-1] == "k3y"
            # A redirect is never followed: the fetch stays where the operator pointed it.
            _FakeServe.answer = (302, b"", {"location": "http://192.0.2.1/cache/stats"})
            status, _, body = get(f"{server.url}/api/serve")
            assert status == 502 and "answered HTTP 302" in body["error"]
            _FakeServe.answer = (401, b"{}", {})
            status, _, body = get(f"{server.url}/api/serve")
            assert status == 502 and "--serve-api-key" in body["hint"]
            _FakeServe.answer = (200, b"<html>a router's page</html>", {})
            status, _, body = get(f"{server.url}/api/serve")
            assert status == 502 and "did not answer like foundry serve" in body["error"]
    finally:
        fake.shutdown()
        fake.server_close()
    with running_dashboard(filled.path, serve_url=url) as server:  # now nothing listens there
        status, _, body = get(f"{server.url}/api/serve")
        assert status == 502
        assert body["available"] is False and body["error"].startswith("nothing answered at")
        assert "foundry serve" in body["hint"]


def test_a_new_request_is_in_the_next_report(filled: Filled, dashboard: Dashboard) -> None:
    """Reports are cached until something is recorded: never a stale figure."""
    url = f"{dashboard.url}/api/costs?by=model&tz=UTC"
    _, _, first = get(url)
    assert get(url)[2] == first
    with Ledger.open(filled.path) as ledger:
        ledger.record_request(
            build_id=None, phase=None, turn=None, backend="anthropic", model="claude-opus-4-8",
            usage=Usage(input_tokens=1000, output_tokens=1000), started_at=utc_now(),
        )  # fmt: skip
    _, _, second = get(url)
    assert second["totals"]["requests"] == first["totals"]["requests"] + 1
    assert second == costs_json(filled.path, "--by", "model", "--tz", "UTC")
    _, _, backends = get(f"{dashboard.url}/api/costs/backends?tz=UTC")
    anthropic = next(row for row in backends["rows"] if row["key"] == "anthropic")
    assert anthropic["cost_usd"] == pytest.approx(
        costs_json(filled.path, "--backend", "anthropic")["totals"]["cost_usd"]
    )


def test_the_command_serves_the_page_until_stopped(filled: Filled) -> None:
    """`foundry dashboard` as a user starts it: the ledger from FOUNDRY_DB, the address on
    stderr, the page and its API there, and Ctrl-C (SIGINT) ends it cleanly."""
    env = {**os.environ, "FOUNDRY_DB": str(filled.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry", "dashboard", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert f"(ledger {filled.path}, read-only)" in line, line
        url = line.split("foundry dashboard: ", 1)[1].split(" ", 1)[0]
        status, headers, body = get(url + "/")
        assert status == 200 and '<script type="module" src="/static/app.js">' in body
        status, _, builds = get(url + "/api/builds")
        assert status == 200 and builds["total"] == 3
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_without_the_serve_extra_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    with pytest.raises(UsageError) as raised:
        import_web_libraries()
    assert "needs uvicorn and starlette" in str(raised.value)
    assert ".[serve]" in str(raised.value)
