"""Time `foundry dashboard` on a big ledger: every API view's query, the first paint in a real
browser, and how fast a progress row reaches an open build page.

    .venv/bin/python bench/dashboard_bench.py --db /tmp/big.db     # made first if missing:
                                                                   # 100k builds, 1M requests
    .venv/bin/python bench/dashboard_bench.py --db /tmp/s.db --builds 1000 --requests 10000

Figures:
* query: each API view's work in-process (read-only connection, no HTTP, no cache), best
  of --repeat; the largest is named at the end.
* HTTP: the same views through the running dashboard: the first call (its reports cache
  empty) and the next (cached until a request is recorded).
* first paint: Debian's chromium (Playwright) opening the overview (the builds lists and
  both charts drawn: the page marks <body data-ready>), the builds list and the costs view,
  each in a fresh browser context (no HTTP cache): on a dashboard just started without its
  warm-up (cold), on one whose start-up warm-up has finished, and reloaded.
* live: a progress row written to the ledger until the open build page shows it.
`uptime` is printed before and after: on a shared machine, quote figures with the load.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.config import load_config  # noqa: E402
from foundry.dashboard import builds as q  # noqa: E402
from foundry.dashboard.costs import backends_view, costs_view  # noqa: E402
from foundry.dashboard.readonly import ReadOnlyLedger  # noqa: E402
from foundry.dashboard.run import Dashboard, DashboardOptions  # noqa: E402
from foundry.ledger.costs import CostsOptions  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ensure_ledger(path: Path, builds: int, requests: int) -> None:
    if path.exists():
        return
    spec = importlib.util.spec_from_file_location(
        "make_ledger", Path(__file__).parent / "make_ledger.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"making {path}: {builds:,} builds, {requests:,} requests ...", flush=True)
    print(module.make_ledger(path, builds=builds, requests=requests))


def best_of(repeat: int, func: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def query_times(path: Path, repeat: int) -> dict[str, float]:
    ledger = ReadOnlyLedger(path)
    ledger.check()
    config = load_config(None)
    with ledger.connection() as conn:
        running = q.running_builds(conn)
        build_id = running[0]["id"] if running else q.list_builds(conn)["builds"][0]["id"]
        last_page = q.list_builds(conn)["pages"]
    views: dict[str, Callable[[Any], Any]] = {
        "builds page 1": lambda c: q.list_builds(c),
        f"builds page {last_page} (last)": lambda c: q.list_builds(c, page=last_page),
        "builds status=completed": lambda c: q.list_builds(c, status="completed"),
        "builds status=abandoned page 20": lambda c: q.list_builds(c, status="abandoned", page=20),
        "builds name=todo": lambda c: q.list_builds(c, name="todo"),
        "running builds": lambda c: q.running_builds(c),
        "a build's page": lambda c: q.build_detail(c, build_id),
        "live state (one poll)": lambda c: q.live_state(c, build_id),
    }
    for by, since in (("day", "29d"), ("day", None), ("week", None), ("model", "29d"),
                      ("model", None), ("phase", None), ("build", "6d")):  # fmt: skip
        options = CostsOptions(by=by, since=since)
        views[f"costs by={by} since={since or 'all'}"] = lambda c, o=options: costs_view(
            c, path, config, o
        )
    views["costs backends since=29d"] = lambda c: backends_view(
        c, path, config, CostsOptions(by="model", since="29d")
    )
    results = {}
    for label, view in views.items():
        with ledger.connection() as conn:
            results[label] = best_of(repeat, lambda v=view, c=conn: v(c))
        print(f"  query  {label:<36} {results[label] * 1000:9.1f} ms", flush=True)
    return results


def http_get(url: str) -> float:
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200, (url, response.status)
    return time.perf_counter() - started


def http_times(server: Dashboard) -> None:
    for path in ("/api/builds", "/api/builds/running", "/api/costs?by=day&since=29d",
                 "/api/costs?by=model&since=29d", "/api/costs/backends?since=29d",
                 "/api/costs?by=day"):  # fmt: skip
        first = http_get(server.url + path)
        second = http_get(server.url + path)
        print(f"  http   {path:<36} first {first * 1000:8.1f} ms   again {second * 1000:7.1f} ms")


def paint_times(path: Path, repeat: int) -> None:
    """Three starts per view: `cold` (no start-up warm-up: every report computed on the
    page's request), `warmed` (the first visit once the start-up warm-up has finished), and
    `reload` (the same page opened again)."""
    from playwright.sync_api import sync_playwright

    views = [("overview", "/"), ("builds", "/#/builds"), ("costs", "/#/costs")]
    warm_urls = ["/api/costs?by=day&since=29d", "/api/costs?by=model&since=29d",
                 "/api/costs/backends?since=29d"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)

        def paint(server: Dashboard, view: str, fragment: str) -> float:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(server.url + fragment)
            page.wait_for_selector(f'body[data-ready="{view}"]', state="attached",
                                   timeout=120_000)  # fmt: skip
            took = time.perf_counter() - started
            if view == "overview":
                assert page.locator('[data-testid="chart-spend"] svg').count() == 1
                assert page.locator('[data-testid="latest"] tbody tr').count() == 10
            context.close()
            return took

        for view, fragment in views:
            times: dict[str, list[float]] = {"cold": [], "warmed": [], "reload": []}
            for _ in range(repeat):
                for warm in (False, True):
                    options = DashboardOptions(db=path, config=load_config(None), port=0,
                                               warm=warm)  # fmt: skip
                    server = Dashboard(options)
                    server.start_in_thread()
                    try:
                        if not warm:
                            times["cold"].append(paint(server, view, fragment))
                            continue
                        for url in warm_urls:  # waits for the warm-up's computation
                            http_get(server.url + url)
                        times["warmed"].append(paint(server, view, fragment))
                        times["reload"].append(paint(server, view, fragment))
                    finally:
                        server.stop()
            line = "; ".join(
                f"{name} {statistics.median(values):.2f} s"
                f" ({', '.join(f'{t:.2f}' for t in values)})"
                for name, values in times.items()
            )
            print(f"  paint  {view:<9} {line}", flush=True)
        browser.close()


def live_latency(path: Path) -> None:
    """A progress row written (as a build does) until the open build page shows it."""
    from playwright.sync_api import expect, sync_playwright

    from foundry.ledger import Ledger

    with ReadOnlyLedger(path).connection() as conn:
        running = q.running_builds(conn)
    if not running:
        print("  live   (no running build on this ledger)")
        return
    build_id = running[0]["id"]
    server = Dashboard(DashboardOptions(db=path, config=load_config(None), port=0))
    server.start_in_thread()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"{server.url}/#/build/{build_id}")
            page.wait_for_selector('body[data-ready="builds"]', state="attached")
            times = []
            with Ledger.open(path) as ledger:
                for turn in range(1001, 1006):
                    started = time.perf_counter()
                    ledger.record_progress(build_id, turn=turn)
                    expect(page.locator('[data-live="turn"]')).to_have_text(str(turn))
                    times.append(time.perf_counter() - started)
            browser.close()
    finally:
        server.stop()
    runs = ", ".join(f"{t * 1000:.0f}" for t in times)
    print(f"  live   progress row to page: median {statistics.median(times) * 1000:.0f} ms"
          f" (runs {runs} ms; polled every 250 ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--builds", type=int, default=100_000, help="when making --db")
    parser.add_argument("--requests", type=int, default=1_000_000, help="when making --db")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    opts = parser.parse_args()
    ensure_ledger(opts.db, opts.builds, opts.requests)
    print(f"ledger {opts.db} ({opts.db.stat().st_size / 1e6:.0f} MB)")
    print(f"before: {uptime()}")
    results = query_times(opts.db, opts.repeat)
    largest = max(results, key=lambda k: results[k])
    print(f"  largest query: {largest}, {results[largest] * 1000:.0f} ms")
    # No warm-up here: the first call of each view is its real cost.
    server = Dashboard(DashboardOptions(db=opts.db, config=load_config(None), port=0, warm=False))
    server.start_in_thread()
    try:
        http_times(server)
    finally:
        server.stop()
    if not opts.no_browser:
        paint_times(opts.db, opts.repeat)
        live_latency(opts.db)
    print(f"after:  {uptime()}")


if __name__ == "__main__":
    main()
